"""The protocols' HMC samplers: the paper's keeps its versions, the adaptive one has its own."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from mmvae_bench.cli import app
from mmvae_bench.config import RunConfig
from mmvae_bench.errors import BenchError
from mmvae_bench.eval.protocol import DEFAULT_HMC, HMC_SAMPLERS, PROTOCOLS, get_protocol
from mmvae_bench.hmc import HMCSettings


def test_the_paper_sampler_keeps_the_recorded_versions_and_settings() -> None:
    full, quick = get_protocol("full", "paper"), get_protocol("quick", "paper")
    assert full.version == "full-1" and quick.version == "quick-1"
    assert full.hmc == HMCSettings(steps=100, n_leapfrog=10, step_size=0.01)
    assert quick.hmc == HMCSettings(steps=30, n_leapfrog=10, step_size=0.01)
    assert quick.label == "quick protocol (CPU smoke run: 500 test points, HMC 30x10)"
    assert full.as_record()["hmc"]["kind"] == "paper"


@pytest.mark.parametrize("name", ["full", "quick"])
def test_the_adaptive_sampler_is_another_protocol_version(name: str) -> None:
    adaptive, paper = get_protocol(name, "adaptive"), get_protocol(name, "paper")
    assert adaptive.version != paper.version  # never one leaderboard row
    assert adaptive.hmc.kind == "adaptive" and adaptive.hmc.warmup > 0
    assert adaptive.as_record()["hmc"]["kind"] == "adaptive"  # the record says which ran
    assert "adaptive HMC" in adaptive.label and "HMC 30x10" not in adaptive.label
    assert adaptive.hmc.gradient_evaluations < paper.hmc.gradient_evaluations
    # everything but the sampler is the protocol's
    assert (adaptive.test_samples, adaptive.joint_samples) == (
        paper.test_samples,
        paper.joint_samples,
    )
    assert get_protocol(name) == PROTOCOLS[name] == get_protocol(name, DEFAULT_HMC)
    assert PROTOCOLS[name].version == HMC_SAMPLERS[name][DEFAULT_HMC][0]


def test_unknown_samplers_are_user_errors(tmp_path) -> None:
    with pytest.raises(BenchError, match="--hmc.*paper, adaptive"):
        get_protocol("full", "nuts")
    with pytest.raises(BenchError, match="hmc"):
        RunConfig(model="jnf", hmc="nuts")  # type: ignore[arg-type]
    res = CliRunner().invoke(app, ["run", "jnf", "--hmc", "nuts", "--out", str(tmp_path)])
    assert res.exit_code == 2 and "--hmc" in res.output
    assert not any(tmp_path.iterdir())  # nothing claimed
