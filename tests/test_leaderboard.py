"""Leaderboards from hand-made run records: aggregation, separation, skipped records, output."""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from mmvae_bench.cli import app
from mmvae_bench.errors import BenchError
from mmvae_bench.leaderboard import build_leaderboards, load_leaderboard, table

runner = CliRunner()
CLF = "mmvae-clf-toy-aaaaaaaaaaaa"
CLF2 = "mmvae-clf-toy-bbbbbbbbbbbb"


def record(
    run_id: str,
    *,
    model: str = "jnf",
    seed: int = 0,
    coherence: tuple[float, float] = (0.5, 0.6),
    joint: float = 0.4,
    train_s: float = 10.0,
    latent_dim: int = 4,
    version: str = "quick-1",
    fid: dict[str, dict[str, dict[str, float]]] | None = None,
    finished: str = "2024-01-01T00:00:00+00:00",
    **extra: Any,
) -> dict[str, Any]:
    """A complete, ok record of a 3-modality dataset 'toy' (|S| = 1, 2)."""
    metrics: dict[str, Any] = {
        "conditional_coherence_by_size": {
            str(k + 1): {"mean": c, "std": 0.0, "n": 3} for k, c in enumerate(coherence)
        },
        "joint_coherence": joint,
    }
    if fid:
        metrics["fid"] = fid
        metrics["fid_extractors"] = {
            name: {"kind": "classifier", "label": "classifier features"} for name in fid
        }
    rec = {
        "schema": 1,
        "run_id": run_id,
        "status": "ok",
        "model": model,
        "dataset": "toy",
        "seed": seed,
        "config": {"latent_dim": latent_dim, "beta": 1.0},
        "run": {
            "model": model,
            "dataset": "toy",
            "seed": seed,
            "device": "cpu",
            "threads": seed + 1,  # differs per run, must not split rows
            "protocol": version.split("-")[0],
            "epochs": {"*": 1},
            "overrides": {"latent_dim": latent_dim},
            "precision": "no",
        },
        "protocol": {"name": version.split("-")[0], "version": version, "label": "test"},
        "environment": {},
        "stages": {
            "joint": {
                "name": "joint",
                "epochs": 1,
                "steps": 1,
                "samples": 64,
                "wall_s": train_s,
                "samples_per_s": 64 / train_s,
                "loss": {"loss": 1.0},
            }
        },
        "metrics": metrics,
        "timings": {"train_s": train_s},
        "created": finished,
        "finished": finished,
    }
    rec.update(extra)
    return rec


def write(runs: Path, rec: dict[str, Any] | str) -> Path:
    name = rec["run_id"] if isinstance(rec, dict) else f"raw-{abs(hash(rec))}"
    path = runs / name / "results.json"
    path.parent.mkdir(parents=True)
    path.write_text(rec if isinstance(rec, str) else json.dumps(rec))
    return path


def build(tmp_path: Path) -> dict[str, Any]:
    build_leaderboards(tmp_path / "runs", tmp_path / "lb")
    return load_leaderboard(tmp_path / "lb", "toy")


def test_mean_and_sample_std_over_seeds(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    for seed, c in enumerate((0.5, 0.6, 0.7)):
        write(runs, record(f"r{seed}", seed=seed, coherence=(c, c + 0.1), train_s=10 + seed))
    board = build(tmp_path)
    [row] = board["rows"]
    assert row["n_seeds"] == 3 and row["seeds"] == [0, 1, 2]
    coh = row["metrics"]["coherence/1"]
    assert coh["mean"] == pytest.approx(0.6)
    assert coh["std"] == pytest.approx(statistics.stdev([0.5, 0.6, 0.7]))
    assert coh["n"] == 3 and coh["values"] == {"0": 0.5, "1": 0.6, "2": 0.7}
    assert row["metrics"]["train_s"]["mean"] == pytest.approx(11.0)
    headers, [cells] = table(board, "quick-1")
    assert headers[:5] == ["model", "config", "seeds", "coh |S|=1", "coh |S|=2"]
    assert cells[2] == "3" and cells[3] == "0.600 ± 0.100" and cells[4] == "0.700 ± 0.100"
    md = (tmp_path / "lb" / "toy.md").read_text()
    assert "0.600 ± 0.100" in md and "coh \\|S\\|=1" in md


def test_rows_group_by_config_without_seed(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    for seed in (0, 1):
        write(runs, record(f"a{seed}", seed=seed, latent_dim=4))
        write(runs, record(f"b{seed}", seed=seed, latent_dim=8, coherence=(0.9, 0.9)))
    write(runs, record("m0", model="mvae"))
    board = build(tmp_path)
    rows = {(r["model"], r["config"]["config"]["latent_dim"]): r for r in board["rows"]}
    assert set(rows) == {("jnf", 4), ("jnf", 8), ("mvae", 4)}
    assert rows["jnf", 4]["n_seeds"] == 2 and rows["jnf", 8]["n_seeds"] == 2
    assert rows["jnf", 4]["config_id"] != rows["jnf", 8]["config_id"]
    # Configs of one model are labelled by what differs; a lone config needs no label.
    assert rows["jnf", 8]["config_label"] == "latent_dim=8"
    assert rows["mvae", 4]["config_label"] == ""
    # Ranked by mean conditional coherence.
    assert board["rows"][0]["config"]["config"]["latent_dim"] == 8


def test_protocols_never_share_a_row_or_a_table(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    write(runs, record("q", version="quick-1", coherence=(0.2, 0.2)))
    write(runs, record("f", version="full-1", coherence=(0.8, 0.8)))
    write(runs, record("q2", version="quick-2", coherence=(0.3, 0.3)))
    board = build(tmp_path)
    assert sorted(r["protocol"] for r in board["rows"]) == ["full-1", "quick-1", "quick-2"]
    assert all(r["n_seeds"] == 1 for r in board["rows"])
    for version, mean in (("quick-1", "0.200"), ("full-1", "0.800")):
        _, body = table(board, version)
        assert [c[3] for c in body] == [mean]
    md = (tmp_path / "lb" / "toy.md").read_text()
    assert md.count("## protocol `") == 3


def test_fid_extractors_get_separate_columns(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    fid_a = {CLF: {"m0": {"unconditional": 10.0, "m1": 20.0, "m1+m2": 30.0}}}
    fid_b = {CLF2: {"m0": {"unconditional": 100.0, "m1": 200.0, "m1+m2": 300.0}}}
    write(runs, record("s0", seed=0, fid=fid_a))
    write(runs, record("s1", seed=1, fid=fid_b))
    write(runs, record("s2", seed=2))
    board = build(tmp_path)
    [row] = board["rows"]
    m = row["metrics"]
    assert m[f"fid/{CLF}/prior"]["mean"] == 10.0 and m[f"fid/{CLF}/prior"]["n"] == 1
    assert m[f"fid/{CLF}/conditional"]["mean"] == 25.0  # over modalities and subsets
    assert m[f"fid/{CLF2}/prior"]["mean"] == 100.0 and m[f"fid/{CLF2}/prior"]["n"] == 1
    headers, [cells] = table(board, "quick-1")
    assert "FID prior [clf:aaaaaa]" in headers and "FID prior [clf:bbbbbb]" in headers
    col = dict(zip(headers, cells, strict=True))
    # One seed of three has each: never averaged together, the count is shown.
    assert col["FID prior [clf:aaaaaa]"] == "10 (n=1)"
    assert col["FID cond [clf:bbbbbb]"] == "250 (n=1)"
    assert set(board["extractors"]) == {CLF, CLF2}


def test_corrupt_and_partial_records_are_reported_and_skipped(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    write(runs, record("good", coherence=(0.5, 0.5)))
    write(runs, "{not json")
    partial = record("partial", coherence=(0.0, 0.0))
    del partial["stages"]
    write(runs, partial)
    write(runs, record("failed", status="failed", error="BenchError: boom"))
    no_metrics = record("nometrics")
    no_metrics["metrics"] = {}
    write(runs, no_metrics)
    nan = record("nan")
    nan["metrics"]["joint_coherence"] = float("nan")
    write(runs, nan)
    report = build_leaderboards(runs, tmp_path / "lb")
    board = load_leaderboard(tmp_path / "lb", "toy")
    reasons = {s["path"].split("/")[0]: s["reason"] for s in board["skipped"]}
    assert report.used == 1 and len(report.skipped) == 5
    assert "missing keys ['stages']" in reasons["partial"]
    assert "status is 'failed'" in reasons["failed"] and "boom" in reasons["failed"]
    assert "missing metrics" in reasons["nometrics"]
    assert "non-finite" in reasons["nan"]
    assert any("corrupt" in r for p, r in reasons.items() if p.startswith("raw-"))
    [row] = board["rows"]
    assert row["n_seeds"] == 1 and row["metrics"]["coherence/1"]["mean"] == 0.5
    md = (tmp_path / "lb" / "toy.md").read_text()
    assert "## Skipped records" in md and "partial/results.json" in md


def test_a_duplicate_seed_counts_once(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    write(runs, record("old", seed=0, coherence=(0.1, 0.1), finished="2024-01-01T00:00:00+00:00"))
    write(runs, record("new", seed=0, coherence=(0.9, 0.9), finished="2024-02-01T00:00:00+00:00"))
    board = build(tmp_path)
    [row] = board["rows"]
    assert row["n_seeds"] == 1 and row["metrics"]["coherence/1"]["mean"] == 0.9
    assert [s["path"] for s in board["skipped"]] == ["old/results.json"]


def test_no_usable_record_is_an_error(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    write(runs, "[]")
    with pytest.raises(BenchError, match="no usable run records"):
        build_leaderboards(runs, tmp_path / "lb")
    with pytest.raises(BenchError, match="no runs folder"):
        build_leaderboards(tmp_path / "missing", tmp_path / "lb")


def test_figures_and_sample_grids_are_linked_from_the_markdown(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    for seed, c in enumerate((0.3, 0.8)):
        p = write(runs, record(f"r{seed}", seed=seed, coherence=(c, c)))
        (p.parent / "samples.png").write_bytes(b"cond-%d" % seed)
        (p.parent / "prior_samples.png").write_bytes(b"prior-%d" % seed)
    board = build(tmp_path)
    [row] = board["rows"]
    assert row["best_seed"] == 1
    lb = tmp_path / "lb"
    assert (lb / row["figures"]["conditional"]).read_bytes() == b"cond-1"
    assert (lb / row["figures"]["prior"]).read_bytes() == b"prior-1"
    assert (lb / board["figures"]["coherence_by_size"]).stat().st_size > 1000
    md = (lb / "toy.md").read_text()
    for path in [*row["figures"].values(), board["figures"]["coherence_by_size"]]:
        assert f"]({path})" in md
    assert "## Legend" in md and "mmvae-bench leaderboard build --runs" in md
    assert "--seed $s" in md  # how to reproduce the row


def test_the_unconditional_grid_is_named_by_the_sampler_that_drew_it(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    sampler = {"sampler": {"kind": "gmm", "settings": {"components": 10}}}
    # A record that says its grid came from the gmm sampler, and an older one that does not
    # say (its grid was drawn from the prior even though its row's sampler is the gmm).
    new = {"figures": {"prior_samples.png": {"source": "gmm"}}}
    for name, model, extra in (("new", "jnf", new), ("old", "mvae", {})):
        p = write(runs, record(name, model=model, **sampler, **extra))
        (p.parent / "prior_samples.png").write_bytes(name.encode())
    rows = {r["model"]: r for r in build(tmp_path)["rows"]}
    lb = tmp_path / "lb"
    assert set(rows["jnf"]["figures"]) == {"unconditional-gmm"}
    assert (lb / rows["jnf"]["figures"]["unconditional-gmm"]).read_bytes() == b"new"
    assert set(rows["mvae"]["figures"]) == {"prior"}


def test_cli_build_and_show(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    write(runs, record("r0"))
    write(runs, "{broken")
    out = tmp_path / "lb"
    res = runner.invoke(app, ["leaderboard", "build", "--runs", str(runs), "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert "1 runs used, 1 records skipped" in res.output and "corrupt" in res.output
    res = runner.invoke(app, ["leaderboard", "show", "toy", "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert "jnf" in res.output and "0.500" in res.output and "skipped" in res.output
    res = runner.invoke(app, ["leaderboard", "show", "nope", "--out", str(out)])
    assert res.exit_code == 2 and "leaderboard build" in res.output


def test_samplers_never_share_a_row(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    gmm = {"kind": "gmm", "settings": {"components": 10}, "train_log_likelihood": -3.0}
    gmm20 = {**gmm, "settings": {"components": 20}}
    # Seed 0 once per sampler: the same trained weights, evaluated with three samplers.
    write(runs, record("p0", seed=0, joint=0.1))  # written before samplers: the prior
    write(runs, record("p1", seed=1, joint=0.3, sampler={"kind": "prior", "settings": {}}))
    write(runs, record("g0", seed=0, joint=0.8, sampler=gmm))
    write(runs, record("g1", seed=1, joint=0.9, sampler=gmm))
    write(runs, record("h0", seed=0, joint=0.5, sampler=gmm20))
    board = build(tmp_path)
    assert board["skipped"] == []  # same seed, other sampler: not a duplicate
    rows = {(r["sampler"], r["sampler_settings"].get("components")): r for r in board["rows"]}
    assert set(rows) == {("prior", None), ("gmm", 10), ("gmm", 20)}
    assert rows["prior", None]["metrics"]["joint_coherence"]["mean"] == pytest.approx(0.2)
    assert rows["gmm", 10]["metrics"]["joint_coherence"]["mean"] == pytest.approx(0.85)
    assert rows["gmm", 20]["n_seeds"] == 1
    assert len({r["id"] for r in board["rows"]}) == 3
    assert rows["prior", None]["id"] == "jnf-" + rows["prior", None]["config_id"] + "-quick-1"
    assert any("--sampler gmm" in c for c in rows["gmm", 10]["reproduce"])
    assert not any("--sampler" in c for c in rows["prior", None]["reproduce"])
    headers, body = table(board, "quick-1")
    assert headers.index("sampler") == headers.index("joint coh") - 1
    cells = sorted((c[headers.index("sampler")], c[headers.index("joint coh")]) for c in body)
    assert cells == [("gmm", "0.500"), ("gmm", "0.850 ± 0.071"), ("prior", "0.200 ± 0.141")]
    md = (tmp_path / "lb" / "toy.md").read_text()
    assert "**sampler**" in md and 'sampler `gmm` `{"components": 20}`' in md


def test_a_malformed_sampler_entry_is_skipped(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    write(runs, record("ok"))
    write(runs, record("bad", seed=1, sampler={"settings": {}}))
    board = build(tmp_path)
    assert [s["reason"] for s in board["skipped"]] == ["malformed: sampler has no kind"]
