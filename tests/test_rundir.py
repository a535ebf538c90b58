"""Run folders: claimed once, locked while in use, replaced only on request, resumed exactly."""

from __future__ import annotations

import dataclasses
import json
import os
import stat
from pathlib import Path

import pytest
import torch

from mmvae_bench.config import RunConfig
from mmvae_bench.errors import BenchError
from mmvae_bench.plugins import load_registry
from mmvae_bench.results import RunRecord
from mmvae_bench.rundir import ARTEFACTS, CHECKPOINT_FILE, claim_run_dir, locked
from mmvae_bench.runner import evaluate_run, load_run, run


def test_a_run_id_is_claimed_once(tmp_path: Path) -> None:
    first = claim_run_dir(tmp_path, "r")
    try:
        # The same id while the first holds it: refused whatever the mode.
        with pytest.raises(BenchError, match="in use by another mmvae-bench process"):
            claim_run_dir(tmp_path, "r")
        with pytest.raises(BenchError, match="in use by another mmvae-bench process"):
            claim_run_dir(tmp_path, "r", "overwrite")
        with pytest.raises(BenchError, match="in use"), locked(tmp_path / "r"):
            pass
    finally:
        first.release()
    # Released (as when the process dies): overwrite may take it.
    claim_run_dir(tmp_path, "r", "overwrite").release()


def test_a_claim_whose_owner_died_before_writing_is_taken_over(tmp_path: Path) -> None:
    # A sweep driver killed just as a trial claimed its folder leaves it holding only the lock
    # file; the resumed sweep starts that trial anew in the same folder.
    claim_run_dir(tmp_path, "r").release()
    assert [p.name for p in (tmp_path / "r").iterdir()] == [".lock"]
    claim_run_dir(tmp_path, "r").release()
    # Anything else in the folder (a record, a checkpoint, a file of the user's): not taken.
    (tmp_path / "r" / "notes.txt").write_text("mine")
    with pytest.raises(BenchError, match="already exists"):
        claim_run_dir(tmp_path, "r")
    assert (tmp_path / "r" / "notes.txt").read_text() == "mine"


def test_overwrite_deletes_only_the_runs_own_files(tmp_path: Path) -> None:
    folder = tmp_path / "r"
    folder.mkdir()
    for name in (*ARTEFACTS, "notes.txt"):
        (folder / name).write_text("old")
    claim_run_dir(tmp_path, "r", "overwrite").release()
    assert sorted(p.name for p in folder.iterdir()) == [".lock", "notes.txt"]


@pytest.mark.parametrize("run_id", ["../x", "/abs/path", ".hidden", "a/b", "", "x" * 129, "a..b"])
def test_unsafe_run_ids_are_refused_before_anything_is_written(tmp_path: Path, run_id: str) -> None:
    out = tmp_path / "out"
    with pytest.raises(BenchError, match="not a safe name"):
        claim_run_dir(out, run_id)
    with pytest.raises(BenchError, match="not a safe name"):
        RunConfig(model="jnf", run_id=run_id)
    assert list(tmp_path.iterdir()) == []


def test_out_must_be_a_writable_folder(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(BenchError, match="is a file, not a folder"):
        claim_run_dir(tmp_path / "file", "r")
    with pytest.raises(BenchError, match="cannot create the output folder"):
        claim_run_dir(tmp_path / "file" / "sub", "r")


def test_resume_needs_a_record(tmp_path: Path) -> None:
    with pytest.raises(BenchError, match="nothing to resume"):
        claim_run_dir(tmp_path, "r", "resume")


@pytest.mark.parametrize("umask", [0o022, 0o002])
def test_records_honour_the_umask(tmp_path: Path, umask: int) -> None:
    old = os.umask(umask)
    try:
        record = RunRecord.load(V1 / "mvae-s0")
        path = record.save(tmp_path)
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask


V1 = Path(__file__).parent / "fixtures" / "records_v1" / "runs"


# -- the runner: resume and the checkpoint's identity ------------------------------------------
def _cfg(tmp_path: Path, **kw) -> RunConfig:
    overrides = {"latent_dim": 4, "width": 4, "features": 16, "flow_hidden": 16, "beta": 1.0}
    overrides.update(kw.pop("overrides", {}))
    return RunConfig(
        model="jnf",
        dataset="circles-squares",
        epochs={"*": 1},
        overrides=overrides,
        out=tmp_path / "runs",
        cache_dir=tmp_path / "cache",
        device="cpu",
        evaluate=False,
        **kw,
    )


class _Killed(Exception):
    """Stands in for the process dying during a stage."""


@pytest.mark.slow
def test_a_resumed_run_continues_exactly_where_it_stopped(tmp_path: Path) -> None:
    registry = load_registry()
    whole = run(_cfg(tmp_path, run_id="whole"), registry, progress=False)
    assert whole.status == "ok" and list(whole.stages) == ["joint", "unimodal"]

    def die_in_stage_two(stage: str, epoch: int, metrics: dict) -> None:
        if stage == "unimodal":
            raise _Killed

    cfg = _cfg(tmp_path, run_id="cut")
    with pytest.raises(_Killed):
        run(cfg, registry, progress=False, on_epoch=die_in_stage_two)
    cut = RunRecord.load(tmp_path / "runs" / "cut")
    assert cut.status == "failed" and list(cut.stages) == ["joint"] and not cut.trained
    # An unfinished run is neither evaluated nor silently restarted.
    with pytest.raises(BenchError, match="has not finished training"):
        load_run(tmp_path / "runs" / "cut", registry)
    with pytest.raises(BenchError, match="already exists"):
        run(cfg, registry, progress=False)
    other = _cfg(tmp_path, run_id="cut", overrides={"beta": 2.0})
    with pytest.raises(BenchError, match="another config"):
        run(other, registry, progress=False, mode="resume")

    resumed = run(cfg, registry, progress=False, mode="resume")
    assert resumed.status == "ok" and list(resumed.stages) == ["joint", "unimodal"]
    assert resumed.uid == cut.uid and [r["stages_done"] for r in resumed.resumed] == [["joint"]]
    a = torch.load(tmp_path / "runs" / "whole" / CHECKPOINT_FILE, weights_only=True)
    b = torch.load(tmp_path / "runs" / "cut" / CHECKPOINT_FILE, weights_only=True)
    # Same batches and noise as the uninterrupted run (random states saved per stage).
    assert a["state_dict"].keys() == b["state_dict"].keys()
    assert all(torch.equal(a["state_dict"][k], b["state_dict"][k]) for k in a["state_dict"])

    # Resuming a finished run does nothing; overwriting starts afresh with a new uid.
    assert run(cfg, registry, progress=False, mode="resume").uid == cut.uid
    fresh = run(cfg, registry, progress=False, mode="overwrite")
    assert fresh.uid != cut.uid and fresh.resumed == []


@pytest.mark.slow
def test_evaluate_refuses_a_checkpoint_of_another_run_and_finishes_a_trained_one(
    tmp_path: Path,
) -> None:
    registry = load_registry()
    cfg = _cfg(tmp_path, run_id="a", sampler="prior")
    run(cfg, registry, progress=False)
    run(dataclasses.replace(cfg, run_id="b"), registry, progress=False)
    runs = tmp_path / "runs"
    # b's checkpoint beside a's record (a rerun killed early used to leave this): refused.
    (runs / "a" / CHECKPOINT_FILE).write_bytes((runs / "b" / CHECKPOINT_FILE).read_bytes())
    with pytest.raises(BenchError, match="belongs to another run"):
        load_run(runs / "a", registry)
    # A run killed during its evaluation ("trained") is evaluated and becomes ok.
    data = json.loads((runs / "b" / "results.json").read_text())
    data["status"] = "trained"
    (runs / "b" / "results.json").write_text(json.dumps(data))
    record = evaluate_run(runs / "b", registry, protocol="quick", fid=None)
    assert record.status == "ok" and record.metrics["joint_coherence"] >= 0.0
