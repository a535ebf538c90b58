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
    version = importlib.metadata.version("mmvae-bench")
    assert reg.origin("models", "jnf") == f"mmvae-bench {version}"  # distribution and version
    assert reg.origin("datasets", "circles-squares") == "mmvae-bench (built-in)"
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
    # Made by hand, it has no distribution: its origin says what it points at.
    assert reg.origins["broken"] == "entry point broken = no_such_module_xyz"


def _write_plugin(path: Path, model_name: str) -> Path:
    path.write_text(
        textwrap.dedent(
            f"""
            from mmvae_bench.api import ModelEntry, hookimpl
            from plugins.jnf import JNF, JNFConfig

            @hookimpl
            def mmvae_bench_models():
                return [ModelEntry(name={model_name!r}, cls=JNF, config=JNFConfig)]
            """
        )
    )
    return path


def test_plugin_file_adds_a_model(tmp_path: Path) -> None:
    reg = load_registry([_write_plugin(tmp_path / "mine.py", "my-jnf")])
    assert "my-jnf" in reg.models
    assert reg.sources[("models", "my-jnf")].startswith("file:")
    assert reg.origin("models", "my-jnf") == str((tmp_path / "mine.py").resolve())


def test_name_clash_names_both_plugins(tmp_path: Path) -> None:
    with pytest.raises(BenchError) as e:
        load_registry([_write_plugin(tmp_path / "clash.py", "jnf")])
    msg = str(e.value)
    assert "'jnf'" in msg and "plugin 'jnf'" in msg and "clash.py" in msg


def test_plugin_file_that_fails_to_import_is_a_user_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text("raise RuntimeError('boom')\n")
    with pytest.raises(BenchError, match=r"plugin file .*bad\.py failed to import: .*boom"):
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
    with pytest.raises(BenchError, match="unknown hook.*mmvae_bench_modelz"):
        load_registry(modules=[mod], entry_points=False)


# -- contract violations (issue 11): an entry point is reported in Registry.broken while the
# others load; the same fault in a --plugin file is the user's error (BenchError naming it) ----
HEADER = """\
import sys
from mmvae_bench.api import DatasetEntry, ModelEntry, hookimpl
from mmvae_bench.eval.metric import MetricEntry
from plugins.jnf import JNF, JNFConfig

"""
ENTRY = "ModelEntry(name='mine', cls=JNF, config=JNFConfig)"
FAULTS = {
    "returns-none": (
        f"@hookimpl\ndef mmvae_bench_models():\n    [{ENTRY}]\n",
        "returned None from mmvae_bench_models(), expected a list of ModelEntry",
    ),
    "returns-an-entry": (
        f"@hookimpl\ndef mmvae_bench_models():\n    return {ENTRY}\n",
        "returned a ModelEntry from mmvae_bench_models(), expected a list of ModelEntry",
    ),
    "raises": (
        "@hookimpl\ndef mmvae_bench_models():\n    raise RuntimeError('kaput')\n",
        "raised RuntimeError in mmvae_bench_models(): kaput",
    ),
    "exits": (
        "@hookimpl\ndef mmvae_bench_datasets():\n    sys.exit(3)\n",
        "called sys.exit(3) in mmvae_bench_datasets()",
    ),
    "exits-on-import": ("sys.exit('bye')\n", "called sys.exit('bye') while importing"),
    "wrong-entry-type": (
        "@hookimpl\ndef mmvae_bench_models():\n    return [DatasetEntry(name='x', load=print)]\n",
        "returned a DatasetEntry at index 0 of mmvae_bench_models(), expected a list of ModelEntry",
    ),
    "bad-model-name": (
        "@hookimpl\ndef mmvae_bench_models():\n"
        "    return [ModelEntry(name='My_JNF', cls=JNF, config=JNFConfig)]\n",
        "bad model name 'My_JNF' in mmvae_bench_models()",
    ),
    "bad-dataset-name": (
        "@hookimpl\ndef mmvae_bench_datasets():\n"
        "    return [DatasetEntry(name='../x', load=print)]\n",
        "bad dataset name '../x' in mmvae_bench_datasets()",
    ),
    "bad-metric-name": (
        "@hookimpl\ndef mmvae_bench_metrics():\n    return [MetricEntry(name='', compute=print)]\n",
        "bad metric name '' in mmvae_bench_metrics()",
    ),
    "cls-not-a-model": (
        "@hookimpl\ndef mmvae_bench_models():\n"
        "    return [ModelEntry(name='mine', cls=dict, config=JNFConfig)]\n",
        "model 'mine' in mmvae_bench_models() with cls=<class 'dict'>, which is not a "
        "MultimodalVAE subclass",
    ),
    "config-not-a-dataclass": (
        "@hookimpl\ndef mmvae_bench_models():\n"
        "    return [ModelEntry(name='mine', cls=JNF, config=dict)]\n",
        "which is not a dataclass subclassing ModelConfig",
    ),
    "same-name-twice": (
        f"@hookimpl\ndef mmvae_bench_models():\n    return [{ENTRY}, {ENTRY}]\n",
        "registered model 'mine' twice in mmvae_bench_models()",
    ),
    "no-decorator": (
        f"def mmvae_bench_models():\n    return [{ENTRY}]\n",
        "registers no hooks: decorate its mmvae_bench_models() with @hookimpl from mmvae_bench.api",
    ),
    "one-decorator-forgotten": (
        f"@hookimpl\ndef mmvae_bench_models():\n    return [{ENTRY}]\n"
        "def mmvae_bench_datasets():\n    return []\n",
        "does not register mmvae_bench_datasets(): decorate it with @hookimpl",
    ),
    "no-hooks-at-all": (
        "x = 1\n",
        "registers no hooks: define mmvae_bench_models() or mmvae_bench_datasets() or "
        "mmvae_bench_metrics() with @hookimpl from mmvae_bench.api",
    ),
    "unknown-hook": (
        "@hookimpl\ndef mmvae_bench_modelz():\n    return []\n",
        "defines unknown hook(s) mmvae_bench_modelz; the hooks: mmvae_bench_models()",
    ),
    "argument-not-in-spec": (
        "@hookimpl\ndef mmvae_bench_models(registry):\n    return []\n",
        "does not match the hook specification",
    ),
}


@pytest.mark.parametrize("fault", FAULTS)
def test_a_broken_entry_point_is_reported_by_name_and_the_others_load(
    fault: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    code, message = FAULTS[fault]
    module = f"faulty_{fault.replace('-', '_')}"
    (tmp_path / f"{module}.py").write_text(HEADER + code)
    monkeypatch.syspath_prepend(str(tmp_path))
    ep = importlib.metadata.EntryPoint(name="faulty", value=module, group="mmvae_bench")
    _fake_entry_points(monkeypatch, [ep])
    try:
        reg = load_registry()
    finally:
        sys.modules.pop(module, None)
    assert message in reg.broken["faulty"], reg.broken
    assert {"jnf", "mvae"} <= set(reg.models) and "mine" not in reg.models
    assert "faulty" not in reg.sources.values()


@pytest.mark.parametrize("fault", FAULTS)
def test_a_broken_plugin_file_is_a_user_error_naming_it(fault: str, tmp_path: Path) -> None:
    code, message = FAULTS[fault]
    path = tmp_path / f"{fault.replace('-', '_')}.py"
    path.write_text(HEADER + code)
    with pytest.raises(BenchError) as e:
        load_registry([path], entry_points=False)
    assert str(e.value).startswith(f"plugin file {path} ")
    assert message in str(e.value)


def test_a_broken_plugin_adds_none_of_its_entries(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Its datasets hook is fine, its models hook is not: the dataset is not registered either.
    code = (
        "@hookimpl\ndef mmvae_bench_datasets():\n"
        "    return [DatasetEntry(name='side', load=print)]\n"
        "@hookimpl\ndef mmvae_bench_models():\n    return None\n"
    )
    (tmp_path / "half_broken.py").write_text(HEADER + code)
    monkeypatch.syspath_prepend(str(tmp_path))
    ep = importlib.metadata.EntryPoint(name="half", value="half_broken", group="mmvae_bench")
    _fake_entry_points(monkeypatch, [ep])
    try:
        reg = load_registry()
    finally:
        sys.modules.pop("half_broken", None)
    assert "returned None" in reg.broken["half"]
    assert "side" not in reg.datasets and "circles-squares" in reg.datasets


def test_ctrl_c_in_a_hook_still_stops_loading(tmp_path: Path) -> None:
    path = tmp_path / "interrupted.py"
    path.write_text(HEADER + "@hookimpl\ndef mmvae_bench_models():\n    raise KeyboardInterrupt\n")
    with pytest.raises(KeyboardInterrupt):
        load_registry([path], entry_points=False)


@pytest.mark.parametrize(
    "name", ["My-JNF", "my_jnf", "-jnf", "jnf-", "a--b", "a/b", "..", "jnf\n", "a" * 65, "é"]
)
def test_a_name_that_is_no_safe_lower_kebab_path_component_is_refused(
    name: str, tmp_path: Path
) -> None:
    with pytest.raises(BenchError) as e:
        load_registry([_write_plugin(tmp_path / "named.py", name)], entry_points=False)
    assert "named.py registered the bad model name" in str(e.value)
    assert repr(name) in str(e.value)


@pytest.mark.parametrize("name", ["a", "jnf-2", "polymnist-lite", "a" * 64])
def test_lower_kebab_names_up_to_64_characters_are_accepted(name: str, tmp_path: Path) -> None:
    reg = load_registry([_write_plugin(tmp_path / "named.py", name)], entry_points=False)
    assert name in reg.models


def test_a_plugin_path_that_is_no_python_file_is_a_user_error(tmp_path: Path) -> None:
    with pytest.raises(BenchError, match=f"--plugin {tmp_path} is a folder"):
        load_registry([tmp_path], entry_points=False)
    text = _write_plugin(tmp_path / "mine.py", "mine").rename(tmp_path / "mine.txt")
    with pytest.raises(BenchError, match=r"plugin file .*mine\.txt is not a \.py file"):
        load_registry([text], entry_points=False)


def test_a_plugin_file_with_a_syntax_error_names_the_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "typo.py"
    path.write_text("from mmvae_bench.api import hookimpl\n\ndef mmvae_bench_models(:\n")
    with pytest.raises(BenchError) as e:
        load_registry([path], entry_points=False)
    assert str(e.value).startswith(f"plugin file {path} has a syntax error at line 3: ")


def test_the_same_plugin_file_twice_is_a_user_error(tmp_path: Path) -> None:
    path = _write_plugin(tmp_path / "mine.py", "mine")
    with pytest.raises(BenchError, match="given twice"):
        load_registry([path, path], entry_points=False)
