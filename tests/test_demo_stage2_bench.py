"""``benchmarks/demo_stage2.py``: JNF's unimodal stage retrained on a finished run's joint stage."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from mmvae_bench.cli import app
from tests.benchmark_scripts import load_script
from tests.tiny import TINY_RUN


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("stage2")
    args = ["run", "jnf", *TINY_RUN, "--no-evaluate", "--run-id", "r"]
    args += ["--out", str(root / "runs"), "--cache-dir", str(root / "cache")]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    return root / "runs" / "r"


def _same(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.mark.parametrize("init", ["random", "joint", "joint-frozen"])
def test_keeps_the_joint_stage_and_starts_the_unimodal_one_afresh(run_dir: Path, init) -> None:
    from mmvae_bench.plugins import load_registry
    from mmvae_bench.runner import load_run

    trained, *_ = load_run(run_dir, load_registry())
    model, _, _, done = load_script("demo_stage2").prepare(run_dir, {}, init)
    assert done == ["joint"]
    for name in ("joint_encoders", "joint_merge", "decoders"):
        assert _same(getattr(model, name), getattr(trained, name)), name
    assert not _same(model.posteriors, trained.posteriors)
    assert _same(model.unimodal_encoders, model.joint_encoders) == (init != "random")
    [stage2] = [s for s in model.stages if s.name == "unimodal"]
    frozen = init == "joint-frozen"
    assert ("unimodal_encoders" in stage2.modules) != frozen


def test_scores_one_input_coherence_at_the_epochs_asked_for(run_dir: Path) -> None:
    rows = load_script("demo_stage2").run(run_dir, "tiny", {"batch_size": 32}, epochs=3, every=2)
    assert [r["epoch"] for r in rows] == [2, 3]  # every 2 epochs, and after the last
    assert all(0.0 <= r["coherence_1"] <= 1.0 for r in rows)
    assert 0 < rows[0]["train_s"] < rows[1]["train_s"]
