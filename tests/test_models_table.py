"""``mmvae-bench models``: each model's stages and where it comes from; broken plugins."""

from __future__ import annotations

import importlib.metadata
import types

import pytest
from rich.console import Console

from mmvae_bench.api import ModelConfig, ModelEntry, MultimodalVAE, hookimpl
from mmvae_bench.plugins import load_registry
from mmvae_bench.present import models_table


def _text(table) -> list[str]:
    console = Console(width=300, record=True, color_system=None)
    console.print(table)
    return console.export_text().splitlines()


def _row(lines: list[str], name: str) -> list[str]:
    [line] = [x for x in lines if x.startswith(f"│ {name} ")]
    return [cell.strip() for cell in line.strip("│").split("│")]


class Unbuildable(MultimodalVAE):
    def __init__(self, dataset, config) -> None:
        raise RuntimeError("needs a sound modality")


def test_models_show_stages_and_source_and_broken_plugins_show_why(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    @hookimpl
    def mmvae_bench_models():
        return [ModelEntry(name="unbuildable", cls=Unbuildable, config=ModelConfig)]

    mod = types.ModuleType("unbuildable_plugin")
    mod.mmvae_bench_models = mmvae_bench_models
    broken = importlib.metadata.EntryPoint(name="gone", value="no_such_xyz", group="mmvae_bench")
    real = importlib.metadata.entry_points
    monkeypatch.setattr(
        importlib.metadata,
        "entry_points",
        lambda **kw: list(real(**kw)) + ([broken] if kw.get("group") == "mmvae_bench" else []),
    )
    lines = _text(models_table(load_registry(modules=[mod])))
    [header] = [x for x in lines if x.startswith("┃")]
    assert [c.strip() for c in header.strip("┃").split("┃")] == [
        "name",
        "stages",
        "source",
        "description",
    ]
    version = importlib.metadata.version("mmvae-bench")
    assert _row(lines, "jnf")[1:3] == ["joint, unimodal", f"mmvae-bench {version}"]
    assert _row(lines, "jnf-shared")[1] == "projector, joint, unimodal"
    assert _row(lines, "mvae")[1] == "train"
    # A model that cannot be built says why in its row; the listing goes on.
    cells = _row(lines, "unbuildable")
    assert cells[1] == "? cannot build: RuntimeError: needs a sound modality"
    assert cells[2] == "module unbuildable_plugin"
    cells = _row(lines, "gone")
    assert cells[1] == "broken" and cells[2] == "entry point gone = no_such_xyz"
    assert "no_such_xyz" in cells[3]


def test_listing_models_leaves_the_random_state_alone() -> None:
    import torch

    state = torch.random.get_rng_state()
    _text(models_table(load_registry()))
    assert torch.equal(state, torch.random.get_rng_state())
