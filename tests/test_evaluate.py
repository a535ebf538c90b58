"""``mmvae-bench evaluate``: re-evaluating a saved run updates its record atomically."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from mmvae_bench.cli import app
from mmvae_bench.errors import BenchError
from mmvae_bench.results import REQUIRED_KEYS
from tests.tiny import TINY_RUN

runner = CliRunner()


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One tiny JNF run on circles-squares (classifiers cached beside it), trained once."""
    root = tmp_path_factory.mktemp("evaluate")
    args = ["run", "jnf", *TINY_RUN]
    args += ["--out", str(root / "runs"), "--cache-dir", str(root / "cache"), "--run-id", "r"]
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    return root / "runs" / "r"


@pytest.fixture
def run_dir(trained: Path, tmp_path: Path) -> Path:
    # A copy per test: each one starts from the record `run` wrote.
    return Path(shutil.copytree(trained, tmp_path / "r"))


def _record(run_dir: Path) -> dict:
    return json.loads((run_dir / "results.json").read_text())


@pytest.mark.slow
def test_evaluate_replaces_metrics_and_appends_history(run_dir: Path) -> None:
    before = _record(run_dir)
    assert "fid" not in before["metrics"] and before["evaluations"] == []
    res = runner.invoke(app, ["evaluate", str(run_dir), "--protocol", "quick", "--threads", "1"])
    assert res.exit_code == 0, res.output
    after = _record(run_dir)
    assert all(k in after for k in REQUIRED_KEYS) and after["status"] == "ok"
    for key in ("run_id", "seed", "config", "run", "stages", "created", "environment"):
        assert after[key] == before[key], key
    [(name, values)] = after["metrics"]["fid"].items()
    assert name.startswith("mmvae-clf-circles-squares-")
    assert set(values) == {"circle", "square"}
    assert set(values["circle"]) == {"unconditional", "square"}
    assert all(v >= 0 for per in values.values() for v in per.values())
    assert after["metrics"]["fid_extractors"][name]["kind"] == "classifier"
    assert after["protocol"]["version"] == "quick-1"
    [entry] = after["evaluations"]
    assert entry["protocol"] == "quick-1" and entry["previous_protocol"] == "quick-1"
    assert entry["fid"] == {"kind": "classifier", "extractors": [name]}
    assert entry["wall_s"] > 0 and entry["environment"]["versions"]
    assert after["timings"]["eval_s"] == entry["wall_s"]
    assert after["timings"]["train_s"] == before["timings"]["train_s"]
    assert (run_dir / "prior_samples.png").stat().st_size > 1000
    assert after["figures"]["prior_samples.png"]["source"] == after["sampler"]["kind"]
    assert not list(run_dir.glob("*.tmp")), "temp files left behind"
    assert name in res.output  # the FID table names its extractor
    prior_png = (run_dir / "prior_samples.png").read_bytes()

    # Again without FID: metrics are replaced (no stale FID), the history grows.
    res = runner.invoke(app, ["evaluate", str(run_dir), "--no-fid", "--threads", "1"])
    assert res.exit_code == 0, res.output
    again = _record(run_dir)
    assert "fid" not in again["metrics"]
    # Seeded by the run's seed: the same checkpoint gives the same numbers and samples (the
    # prior grid is drawn after the evaluation, so it shows the RNG stream was the same).
    for key in ("conditional_coherence", "joint_coherence", "joint_label_histogram"):
        assert again["metrics"][key] == after["metrics"][key], key
    assert (run_dir / "prior_samples.png").read_bytes() == prior_png
    assert [e["fid"] for e in again["evaluations"]] == [entry["fid"], None]


@pytest.mark.slow
def test_a_failed_evaluation_leaves_the_record_untouched(
    run_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import mmvae_bench.runner as runner_mod

    before = (run_dir / "results.json").read_bytes()

    def boom(*args, **kwargs):
        raise BenchError("evaluation failed half-way")

    monkeypatch.setattr(runner_mod, "evaluate_model", boom)
    res = runner.invoke(app, ["evaluate", str(run_dir), "--threads", "1"])
    assert res.exit_code == 2 and "half-way" in res.output
    assert (run_dir / "results.json").read_bytes() == before
    assert not list(run_dir.glob("*.tmp"))


def test_missing_inception_weights_fail_before_any_work(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(torch.hub, "_hub_dir", str(tmp_path / "hub"))
    res = runner.invoke(app, ["evaluate", str(tmp_path / "nope"), "--fid-extractor", "inception"])
    assert res.exit_code == 2, res.output
    assert "weights-inception-2015-12-05-6726825d.pth" in res.output
    assert "Traceback" not in res.output
    res = runner.invoke(
        app, ["evaluate", str(tmp_path), "--inception-weights", str(tmp_path / "w.pth")]
    )
    assert res.exit_code == 2 and "w.pth" in res.output


def test_user_errors_exit_2(tmp_path: Path) -> None:
    res = runner.invoke(
        app, ["evaluate", str(tmp_path), "--no-fid", "--fid-extractor", "inception"]
    )
    assert res.exit_code == 2 and "need --fid" in res.output
    res = runner.invoke(app, ["evaluate", str(tmp_path), "--fid-extractor", "vgg"])
    assert res.exit_code == 2 and "must be one of" in res.output
    res = runner.invoke(app, ["evaluate", str(tmp_path / "missing")])
    assert res.exit_code == 2 and "no run record" in res.output


def test_a_run_that_failed_in_training_is_not_evaluated(tmp_path: Path) -> None:
    fixture = Path(__file__).parent / "fixtures" / "records_v1" / "runs" / "failed"
    record = json.loads((fixture / "results.json").read_text())
    record["stages"] = {}  # it failed before any stage finished
    (tmp_path / "results.json").write_text(json.dumps(record))
    res = runner.invoke(app, ["evaluate", str(tmp_path), "--no-fid"])
    assert res.exit_code == 2 and "has not finished training (status 'failed')" in res.output
    assert "--resume" in res.output


@pytest.mark.slow
def test_evaluate_hmc_sampler_is_recorded_and_kept(run_dir: Path) -> None:
    assert _record(run_dir)["protocol"]["hmc"]["kind"] == "paper"
    args = ["evaluate", str(run_dir), "--no-fid", "--threads", "1"]
    res = runner.invoke(app, [*args, "--hmc", "adaptive"])
    assert res.exit_code == 0, res.output
    record = _record(run_dir)
    assert record["protocol"]["hmc"]["kind"] == "adaptive"
    assert record["protocol"]["version"] == "quick-1-hmc-adaptive"
    # Without --hmc the run's sampler stays; --hmc paper goes back to the paper's version.
    assert runner.invoke(app, args).exit_code == 0
    assert _record(run_dir)["protocol"]["version"] == "quick-1-hmc-adaptive"
    assert runner.invoke(app, [*args, "--hmc", "paper"]).exit_code == 0
    assert _record(run_dir)["protocol"]["version"] == "quick-1"


@pytest.mark.slow
def test_evaluate_threads_auto_is_recorded_and_gives_the_same_numbers(run_dir: Path) -> None:
    args = ["evaluate", str(run_dir), "--no-fid"]
    assert runner.invoke(app, [*args, "--threads", "1"]).exit_code == 0
    one = _record(run_dir)
    res = runner.invoke(app, [*args, "--threads", "auto"])
    assert res.exit_code == 0, res.output
    auto = _record(run_dir)
    assert auto["evaluations"][-1]["environment"]["threads"] == "auto"
    # Two modalities: no subset needs HMC, so the governor counted no iteration.
    assert auto["metrics"]["eval_timings"]["hmc_thread_steps"] == {}
    assert "hmc_thread_steps" not in one["metrics"]["eval_timings"]
    for key in ("conditional_coherence", "joint_coherence"):
        assert auto["metrics"][key] == one["metrics"][key], key
    bad = runner.invoke(app, [*args, "--threads", "0"])
    assert bad.exit_code == 2 and "--threads must be >= 1 or 'auto'" in bad.output
