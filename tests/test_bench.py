"""The performance suite: a smoke run at tiny sizes, its record, baselines and ratios; our JNF
beside MultiVae's in one process (``--preset paper``).

No timing assertions: numbers depend on the machine; the tests check that every section runs
and that the record holds what BENCHMARKS.md reads from it.
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from mmvae_bench.cli import app
from mmvae_bench.errors import BenchError
from mmvae_bench.perf import BenchSettings, run_bench
from mmvae_bench.perf import reference as same_process
from mmvae_bench.perf.archs import ARCHS, get_arch
from mmvae_bench.perf.suite import ratios
from mmvae_bench.perf.timing import Timing
from mmvae_bench.perf.training import naive_variant
from mmvae_bench.plugins import load_registry
from mmvae_bench.train import freeze_for_stage

REGISTRY = load_registry()
runner = CliRunner()


@pytest.mark.slow
def test_quick_bench_writes_every_section(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    settings = BenchSettings(quick=True, models=("jnf", "mvae"), archs=("mnist-svhn",))
    record = run_bench(settings, REGISTRY, out=out)
    assert json.loads(out.read_text())["wall_s"] == pytest.approx(record["wall_s"])
    train = record["training"]
    assert {(r["model"], r["stage"], r["variant"]) for r in train} == {
        ("jnf", "joint", "ours"),
        ("jnf", "unimodal", "ours"),
        ("mvae", "train", "ours"),
    }  # the naive stage 2 runs at the PolyMNIST architecture only
    assert all(r["samples_per_s"]["median"] > 0 and r["peak_rss_mib"] > 0 for r in train)
    hmc = {(r["subset_size"], r["variant"]): r for r in record["hmc"]}
    assert {(2, "ours"), (3, "ours"), (4, "ours"), (2, "naive"), (2, "encode-once")} <= set(hmc)
    assert all(0.0 <= hmc[k]["acceptance"] <= 1.0 for k in hmc if k[0] > 1)
    evals = {r["protocol"]: r for r in record["evaluation"]}
    assert set(evals) == {"full", "quick"} and all(r["extrapolated"] for r in evals.values())
    assert evals["full"]["evaluated_tuples"] == 10_000
    assert {r["vs"] for r in record["ratios"]} >= {"naive -> ours", "encode-once -> ours"}
    assert "targets" not in record and "reference" not in record  # no cross-run ratios


def test_cli_bench_hmc_section(tmp_path: Path) -> None:
    out = tmp_path / "b.json"
    args = ["bench", "--quick", "--sections", "hmc", "--device", "cpu", "--out", str(out)]
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    assert "record:" in res.output and out.is_file()
    record = json.loads(out.read_text())
    assert record["mode"] == "quick" and "training" not in record and record["hmc"]


@pytest.mark.parametrize(
    ("flag", "message"),
    [("--sections=nope", "unknown bench sections"), ("--archs=nope", "unknown architecture")],
)
def test_cli_bench_user_errors(flag: str, message: str, tmp_path: Path) -> None:
    res = runner.invoke(app, ["bench", "--quick", flag, "--out", str(tmp_path / "x.json")])
    assert res.exit_code == 2 and message in res.output


def test_archs_match_the_published_datasets() -> None:
    poly, mhd, ms = (get_arch(a) for a in ("polymnist", "mhd", "mnist-svhn"))
    assert [s.shape for s in poly.specs.values()] == [(3, 28, 28)] * 5 and poly.latent_dim == 512
    assert {m: s.shape for m, s in mhd.specs.items()} == {
        "image": (1, 28, 28),
        "trajectory": (200,),
        "sound": (1, 32, 128),
    }
    assert mhd.latent_dim == 64 and ms.latent_dim == 20
    assert ms.rescale["mnist"] == pytest.approx(3 * 32 * 32 / (28 * 28))
    cfg = poly.config(REGISTRY.model("jnf"), quick=False)
    assert (cfg.latent_dim, cfg.batch_size, cfg.width) == (512, 128, 32)
    assert (cfg.flow_depth, cfg.flow_hidden, cfg.flow_layers) == (2, 128, 3)
    ds = ARCHS["mhd"].dataset(3)
    assert ds.train.x["sound"].shape == (3, 1, 32, 128) and len(ds.test) == 3


def test_naive_stage_two_runs_the_joint_elbo_and_precomputes_nothing() -> None:
    arch = get_arch("mnist-svhn")
    entry = REGISTRY.model("jnf")
    ds = arch.dataset(4)
    model = naive_variant(entry.cls)(ds, arch.config(entry, quick=True))
    calls = []
    for dec in model.decoders.values():
        dec.register_forward_hook(lambda *a: calls.append(1))
    freeze_for_stage(model, model.stages[1])
    batch = ds.train.batch()
    assert model.precompute(batch, "unimodal") == {}
    out = model.loss(batch, "unimodal", {})
    out["loss"].backward()
    assert calls and "naive_joint" in out  # the decoders ran, their result only reported
    assert not any(p.grad is not None for p in model.decoders.parameters())


def _train_row(variant: str, stage: str, rate: float) -> dict:
    rates = {k: rate for k in ("median", "q1", "q3", "min", "max")}
    return {"model": "jnf", "arch": "polymnist", "stage": stage, "variant": variant,
            "samples_per_s": rates}  # fmt: skip


def test_ratios_from_a_record() -> None:
    record = {
        "mode": "full",
        "environment": {"device": "cpu"},
        "training": [
            _train_row("ours", "joint", 600.0),
            _train_row("ours", "unimodal", 500.0),
            _train_row("naive", "unimodal", 250.0),
        ],
        "hmc": [
            {"subset_size": 2, "variant": "ours", "s_per_128_samples": 1.5},
            {"subset_size": 2, "variant": "naive", "s_per_128_samples": 45.0},
        ],
        "evaluation": [{"protocol": "full", "total_s": 7200.0, "extrapolated": True}],
    }
    (train_ratio, hmc_ratio) = ratios(record)
    assert train_ratio["speedup"] == pytest.approx(2.0) and hmc_ratio["speedup"] == 30.0


def test_timing_summary() -> None:
    t = Timing.of([3.0, 1.0, 2.0, 4.0])
    assert (t.median_s, t.min_s, t.max_s, t.repeats) == (2.5, 1.0, 4.0, 4)
    assert t.q1_s <= t.median_s <= t.q3_s
    rate = t.rate(10.0)
    assert rate["min"] == 2.5 and rate["max"] == 10.0 and rate["q1"] <= rate["q3"]
    assert torch.get_num_threads() >= 1


@pytest.mark.slow
@pytest.mark.reference
def test_preset_paper_times_multivae_in_the_same_process(tmp_path: Path) -> None:
    if not same_process.available():
        pytest.skip(same_process.MISSING)
    out = tmp_path / "b.json"
    args = ["bench", "--quick", "--preset", "paper", "--sections", "reference", "--out", str(out)]
    res = runner.invoke(app, [*args, "--device", "cpu"])
    assert res.exit_code == 0, res.output
    assert "JNF vs MultiVae in this process" in res.output
    ref = json.loads(out.read_text())["reference"]
    assert ref["parameters"]["ours"] == ref["parameters"]["reference"]  # equal size
    rounds = ref["settings"]["repeats"]
    rows = [*ref["training"].values(), ref["hmc"]]
    assert set(ref["training"]) == {"joint", "unimodal"}
    for row in rows:  # every ratio is computed from this run's own alternated timings
        ours, theirs = row["ours"]["times_s"], row["reference"]["times_s"]
        assert len(ours) == len(theirs) == rounds and min(ours + theirs) > 0
        assert row["ratio"]["speedup"] == pytest.approx(
            statistics.median(theirs) / statistics.median(ours)
        )
        per_round = [t / o for o, t in zip(ours, theirs, strict=True)]
        assert row["ratio"]["per_round_min"] == pytest.approx(min(per_round))
    hmc = ref["hmc"]
    assert hmc["extrapolated_to_paper_hmc"] and hmc["gradient_evaluations"] == 2 * 10 + 1
    assert hmc["ours_closed_form_product"] is False  # the preset's MultiVae affine map
    assert hmc["ours"]["s_per_128_samples_at_paper_hmc"] == pytest.approx(
        hmc["ours"]["s_per_128_samples"] * 1001 / 21
    )


def test_preset_paper_without_multivae_is_recorded_as_skipped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(same_process, "available", lambda: False)
    settings = BenchSettings(quick=True, sections=(), preset="paper")
    record = run_bench(settings, REGISTRY, out=tmp_path / "b.json")
    assert record["reference"] == {"skipped": same_process.MISSING}
    with pytest.raises(BenchError, match="reference"):
        same_process.compare(settings.reference, REGISTRY, torch.device("cpu"))


def test_cli_bench_unknown_preset(tmp_path: Path) -> None:
    res = runner.invoke(app, ["bench", "--quick", "--preset", "nope", "--out", str(tmp_path / "x")])
    assert res.exit_code == 2 and "unknown bench preset" in res.output
