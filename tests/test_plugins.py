"""The plugin registry: entry points, broken plugins, name clashes, plugins from files."""

from __future__ import annotations

import importlib.metadata
import sys
import textwrap
import types
from pathlib import Path

import pytest

from mmvae_bench.api import BenchError
from mmvae_bench.plugins import load_registry


def test_builtins_load_through_entry_points() -> None:
    reg = load_registry()
    assert "jnf" in reg.models
    assert reg.sources[("models", "jnf")] == "jnf"  # the entry point's name, like any plugin
    assert {"circles-squares", "polymnist-lite", "mhd", "polymnist", "mnist-svhn"} <= set(
        reg.datasets
    )
    assert list(reg.models) == sorted(reg.models)


def _fake_entry_points(monkeypatch: pytest.MonkeyPatch, extra: list) -> None:
    real = importlib.metadata.entry_points

    def entry_points(**kw):
        eps = list(real(**kw))
        return eps + extra if kw.get("group") == "mmvae_bench" else eps

    monkeypatch.setattr(importlib.metadata, "entry_points", entry_points)


def test_broken_plugin_is_reported_and_others_load(monkeypatch: pytest.MonkeyPatch) -> None:
    ep = importlib.metadata.EntryPoint(
        name="broken", value="no_such_module_xyz", group="mmvae_bench"
    )
    _fake_entry_points(monkeypatch, [ep])
    reg = load_registry()
    assert "broken" in reg.broken and "no_such_module_xyz" in reg.broken["broken"]
    assert "jnf" in reg.models


def _write_plugin(path: Path, model_name: str) -> Path:
    path.write_text(
        textwrap.dedent(
            f"""
            from mmvae_bench.api import ModelEntry, hookimpl
            from plugins.jnf import JNF, JNFConfig

            @hookimpl
            def mmvae_bench_models():
                return [ModelEntry(name="{model_name}", cls=JNF, config=JNFConfig)]
            """
        )
    )
    return path


def test_plugin_file_adds_a_model(tmp_path: Path) -> None:
    reg = load_registry([_write_plugin(tmp_path / "mine.py", "my-jnf")])
    assert "my-jnf" in reg.models
    assert reg.sources[("models", "my-jnf")].startswith("file:")


def test_name_clash_names_both_plugins(tmp_path: Path) -> None:
    with pytest.raises(BenchError) as e:
        load_registry([_write_plugin(tmp_path / "clash.py", "jnf")])
    msg = str(e.value)
    assert "'jnf'" in msg and "plugin 'jnf'" in msg and "clash.py" in msg


def test_plugin_file_that_fails_to_import_is_a_user_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text("raise RuntimeError('boom')\n")
    with pytest.raises(BenchError, match="bad.py failed to import.*boom"):
        load_registry([bad])
    with pytest.raises(BenchError, match="not found"):
        load_registry([tmp_path / "missing.py"])


def test_hookimpl_with_a_typo_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    from mmvae_bench.api import hookimpl

    mod = types.ModuleType("typo_plugin")

    @hookimpl
    def mmvae_bench_modelz():  # not a hook: check_pending must refuse it
        return []

    mod.mmvae_bench_modelz = mmvae_bench_modelz
    monkeypatch.setitem(sys.modules, "typo_plugin", mod)
    with pytest.raises(Exception, match="mmvae_bench_modelz"):
        load_registry(modules=[mod])
