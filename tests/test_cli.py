"""The command line: end-to-end run, listing, and user errors (exit code 2, no traceback)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from typer.testing import CliRunner

from mmvae_bench.cli import app
from mmvae_bench.results import REQUIRED_KEYS
from tests.tiny import TINY_JNF

runner = CliRunner()


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # Classifiers are trained once per session and shared by the CLI tests.
    return tmp_path_factory.mktemp("cache")


@pytest.mark.slow
def test_run_jnf_circles_squares_end_to_end(tmp_path: Path, cache_dir: Path) -> None:
    args = [
        "run",
        "jnf",
        "--dataset",
        "circles-squares",
        "--epochs",
        "1",
        "--quick",
        "--out",
        str(tmp_path),
        "--cache-dir",
        str(cache_dir),
        "--run-id",
        "r1",
        "--fid",
        "--sampler",
        "gmm",
        *TINY_JNF,
    ]
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    record = json.loads((tmp_path / "r1" / "results.json").read_text())
    assert all(k in record for k in REQUIRED_KEYS)
    assert record["status"] == "ok"
    assert record["config"]["latent_dim"] == 4 and record["config"]["flow_depth"] == 2
    assert record["protocol"]["name"] == "quick" and record["protocol"]["label"]
    assert set(record["stages"]) == {"joint", "unimodal"}
    assert all(s["samples_per_s"] > 0 for s in record["stages"].values())
    m = record["metrics"]
    assert set(m["conditional_coherence"]) == {"circle", "square"}
    assert 0.0 <= m["joint_coherence"] <= 1.0
    assert sum(m["joint_label_histogram"]["circle"]) == record["protocol"]["joint_samples"]
    assert record["environment"]["versions"]["torch"]
    assert (tmp_path / "r1" / "samples.png").stat().st_size > 1000
    assert (tmp_path / "r1" / "checkpoint.pt").is_file()
    assert "record:" in res.output
    # What a user times a run by: the phases and the command's wall time, on which CPU.
    assert record["environment"]["cpu"] and record["timings"]["eval_s"] > 0
    assert "evaluation" in res.output and "wall time" in res.output
    assert record["environment"]["cpu"] in " ".join(res.output.split())
    # --fid: the classifier extractor (offline) for both image modalities, shown in a table;
    # the unconditional grid decodes the gmm sampler's codes and the record says so.
    assert set(m["fid"][next(iter(m["fid_extractors"]))]) == {"circle", "square"}
    assert "FID" in res.output and "comparable only" in res.output  # the table and caption
    assert record["figures"]["prior_samples.png"]["source"] == "gmm"
    assert (tmp_path / "r1" / "prior_samples.png").stat().st_size > 1000


def _error(args: list[str]) -> str:
    res = runner.invoke(app, args)
    assert res.exit_code == 2, res.output
    assert "Traceback" not in res.output
    return res.output


def test_unknown_model_lists_valid_names() -> None:
    out = _error(["run", "nope"])
    assert "unknown model 'nope'" in out and "jnf" in out


def test_unknown_dataset_lists_valid_names() -> None:
    out = _error(["run", "jnf", "--dataset", "nope"])
    assert "unknown dataset 'nope'" in out and "polymnist-lite" in out


@pytest.mark.parametrize(
    ("assignment", "field"),
    [
        ("betta=1", "betta"),
        ("beta=abc", "beta"),
        ("beta=-1", "beta"),
        ("flow_depth=0", "flow_depth"),
        ("flow_depth=1.5", "flow_depth"),
        ("flow_context=maybe", "flow_context"),
        ("noequals", "key=value"),
    ],
)
def test_bad_set_names_the_field(assignment: str, field: str) -> None:
    out = _error(["run", "jnf", "--dataset", "circles-squares", "--set", assignment])
    assert field in out


def test_fid_options_are_checked_before_training(tmp_path: Path) -> None:
    assert "need --fid" in _error(["run", "jnf", "--fid-extractor", "inception"])
    assert "fid-extractor" in _error(["run", "jnf", "--fid", "--fid-extractor", "swav"])
    missing = tmp_path / "inception.pth"
    out = _error(
        ["run", "jnf", "--fid", "--inception-weights", str(missing), "--out", str(tmp_path)]
    )
    assert "inception.pth" in out
    assert not list(tmp_path.glob("*/results.json")), "no run may start"


def test_bad_epochs_and_device() -> None:
    assert "epochs" in _error(["run", "jnf", "--epochs", "joint=-1"])
    assert "device" in _error(["run", "jnf", "--device", "tpu"])


def test_threads_auto_and_a_cosine_schedule_are_recorded(tmp_path: Path, cache_dir: Path) -> None:
    args = ["run", "jnf", "--dataset", "circles-squares", "--epochs", "2", "--no-evaluate"]
    tiny = [a for a in TINY_JNF if a not in ("--threads", "1")]
    where = ["--out", str(tmp_path), "--cache-dir", str(cache_dir), "--run-id", "r"]
    res = runner.invoke(app, [*args, *tiny, *where, "--threads", "auto", "--lr-schedule", "cosine"])
    assert res.exit_code == 0, res.output
    record = json.loads((tmp_path / "r" / "results.json").read_text())
    assert record["environment"]["threads"] == "auto"
    assert record["run"]["lr_schedule"] == "cosine"
    for stage in record["stages"].values():  # every step ran at 1 or at every usable core
        counts = stage["thread_steps"]
        assert counts and set(counts) <= {"1", str(min(8, len(os.sched_getaffinity(0))))}
        assert sum(counts.values()) == stage["steps"]
        assert stage["loss"]["lr"] == pytest.approx(0.0, abs=1e-12)  # decayed to zero
    for bad in ("0", "two"):
        assert "--threads must be >= 1 or 'auto'" in _error([*args, "--threads", bad])
    assert "must be one of" in _error([*args, "--lr-schedule", "linear"])
    assert "exclude each other" in _error([*args, "--lr-schedule", "cosine", "--lr-patience", "2"])


def test_models_and_datasets_list() -> None:
    res = runner.invoke(app, ["models"])
    assert res.exit_code == 0 and "jnf" in res.output
    res = runner.invoke(app, ["datasets"])
    assert res.exit_code == 0
    assert "circles-squares" in res.output and "polymnist-lite" in res.output
