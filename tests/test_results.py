"""The run record: provenance, the typed schema (strict load, lenient scan), migration."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from mmvae_bench.errors import BenchError
from mmvae_bench.leaderboard import build_leaderboards
from mmvae_bench.results import SCHEMA_VERSION, RunRecord, git_revision, scan

ROOT = Path(__file__).resolve().parent.parent


def test_git_revision_of_this_checkout_is_its_head() -> None:
    head = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True
    ).stdout.strip()
    if not head:
        pytest.skip("not a git checkout")
    assert git_revision(ROOT).removesuffix("-dirty") == head


def test_a_copy_without_git_uses_the_declared_revision(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # tmp_path is outside any repository, like a tree synced to a GPU machine.
    monkeypatch.delenv("MMVAE_BENCH_GIT_REVISION", raising=False)
    assert git_revision(tmp_path) is None
    monkeypatch.setenv("MMVAE_BENCH_GIT_REVISION", "abc1234")
    assert git_revision(tmp_path) == "abc1234"
    # A real repository wins over the declaration.
    if git_revision(ROOT) is not None:
        assert git_revision(ROOT) != "abc1234"


# -- the typed record: strict load, lenient scan, migration -----------------------------------

V1 = ROOT / "tests" / "fixtures" / "records_v1"


def test_schema_1_records_migrate_and_round_trip(tmp_path: Path) -> None:
    record = RunRecord.load(V1 / "runs" / "jnf-s0")
    assert record.schema == SCHEMA_VERSION and record.status == "ok"
    # The plan of a schema-1 record is what its stages ran; it recorded no plugins or command.
    assert record.epochs == {"joint": 1, "unimodal": 1} and record.plugins == []
    assert record.stages["joint"].samples_per_s > 0 and record.sampler_kind == "gmm"
    again = RunRecord.load(record.save(tmp_path))
    assert again == record


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda r: None, "NoneType, not a JSON object"),
        (lambda r: [r], "list, not a JSON object"),
        (lambda r: {**r, "schema": 99}, "written by a newer mmvae-bench"),
        (lambda r: {k: v for k, v in r.items() if k != "metrics"}, "missing keys ['metrics']"),
        (lambda r: {**r, "seed": "0"}, "seed: expected an integer"),
        (lambda r: {**r, "status": "done"}, "status: expected one of"),
        (lambda r: {**r, "dataset": "../victim"}, "dataset: dataset '../victim' is not a safe"),
        (lambda r: {**r, "run_id": "/abs/x"}, "run_id: run_id '/abs/x' is not a safe"),
        (lambda r: {**r, "stages": {"joint": {"name": "joint"}}}, "stages.joint.epochs: missing"),
        (lambda r: {**r, "surprise": 1}, "unknown field(s) ['surprise']"),
    ],
)
def test_a_bad_record_is_an_error_naming_file_and_field(tmp_path: Path, change, message) -> None:
    raw = json.loads((V1 / "runs" / "mvae-s0" / "results.json").read_text())
    path = tmp_path / "results.json"
    path.write_text(json.dumps(change(raw)))
    with pytest.raises(BenchError, match="results.json") as e:
        RunRecord.load(tmp_path)
    assert message in str(e.value)


def test_scan_lists_bad_records_and_names_only_safe_datasets(tmp_path: Path) -> None:
    shutil.copytree(V1 / "runs", tmp_path / "runs")
    evil = json.loads((tmp_path / "runs" / "mvae-s0" / "results.json").read_text())
    evil["dataset"] = "../victim"
    (tmp_path / "runs" / "evil").mkdir()
    (tmp_path / "runs" / "evil" / "results.json").write_text(json.dumps(evil))
    found = scan(tmp_path / "runs")
    assert {r.run_id for _, r in found.records} == {
        "jnf-s0",
        "jnf-s1",
        "mvae-s0",
        "mvae-s1",
        "mopoe-s0",
        "failed",
    }
    skipped = {s.path.split("/")[0]: s for s in found.skipped}
    assert set(skipped) == {"broken", "evil"}
    assert skipped["evil"].dataset is None and "not a safe name" in skipped["evil"].reason
    assert "corrupt" in skipped["broken"].reason


def test_leaderboards_from_schema_1_records_match_the_old_build(tmp_path: Path) -> None:
    """Records written by mmvae-bench 0.1 build the leaderboard that version built.

    One intended difference: reproduce commands spell out the epochs each stage ran. The
    MoPoE record was run with `--epochs joint=1 --epochs train=2`, whose `joint` MoPoE lacks
    (0.1 ignored it silently; it is an error now), so its row reproduces as `--epochs 2`.
    """
    runs = tmp_path / "runs"
    shutil.copytree(V1 / "runs", runs)
    old_cmd = "mmvae-bench leaderboard build --runs runs --out lb_nofig"
    build_leaderboards(runs, tmp_path / "lb", command=old_cmd, figures=False)
    for name in ("circles-squares.json", "circles-squares.md"):
        expected = (V1 / "leaderboard" / name).read_text()
        expected = expected.replace("--epochs joint=1 --epochs train=2", "--epochs 2")
        if name.endswith(".json"):
            assert json.loads((tmp_path / "lb" / name).read_text()) == json.loads(expected)
        else:
            assert (tmp_path / "lb" / name).read_text() == expected


def test_leaderboard_build_writes_and_deletes_only_inside_out(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    shutil.copytree(V1 / "runs", runs)
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "keep.png").write_bytes(b"precious")
    for bad in ("../victim", str(victim)):
        raw = json.loads((runs / "mvae-s0" / "results.json").read_text())
        raw.update(dataset=bad, run_id="bad")
        (runs / f"bad{len(bad)}").mkdir()
        (runs / f"bad{len(bad)}" / "results.json").write_text(json.dumps(raw))
    out = tmp_path / "lb"
    # A previous build's JSON that lists a figure outside its folder: never deleted.
    out.mkdir()
    (out / "circles-squares.json").write_text(
        json.dumps({"figures": {"x": "../victim/keep.png"}, "rows": []})
    )
    report = build_leaderboards(runs, out, figures=True)
    assert list(report.written) == ["circles-squares"]
    assert (victim / "keep.png").read_bytes() == b"precious"
    assert sorted(p.name for p in victim.iterdir()) == ["keep.png"]
    assert not (tmp_path / "victim.json").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["lb", "runs", "victim"]
