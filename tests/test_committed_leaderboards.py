"""The committed leaderboards rebuild unchanged from migrated schema-1 records (issue 11).

The run records behind ``leaderboards/`` are not in the repository (``runs/`` is ignored), but
each leaderboard JSON keeps, per row, everything the build read from them: per-seed metric
values, the config identity (model config, epochs per stage, precision), protocol, sampler,
run ids and paths, seeds, best seed, the unconditional grid's source, the FID extractors and
the reproduce command (which carries the run options). From those this test writes one record
per (row, seed) in the layout mmvae-bench 0.1 wrote (schema 1, the keys of
``tests/fixtures/records_v1/runs/*/results.json``), puts the committed sample grids back into
the best seed's run folder, rebuilds, and compares with the committed files.

Values a leaderboard does not keep (stage losses and steps, environment, dataset sizes, per-
subset coherences, sampler fit statistics) are placeholders: None where the schema takes any
JSON, 0 where it asks for a number. The build reads none of them.

One difference is intended: the reproduce commands now spell out the epochs every stage ran
(``--epochs N`` when all stages ran N, else ``--epochs stage=N`` per stage in stage order)
instead of repeating the original ``--epochs`` options; :data:`RUN_LINES` lists them.
"""

from __future__ import annotations

import datetime as dt
import difflib
import json
import shlex
import shutil
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from mmvae_bench.eval.protocol import (
    COND_COHERENCE_BY_SIZE,
    FID,
    FID_EXTRACTORS,
    JOINT_COHERENCE,
)
from mmvae_bench.leaderboard import build_leaderboards, load_references
from mmvae_bench.leaderboard.reference import REFERENCE_FILE
from mmvae_bench.results import COND_GRID, PRIOR_GRID, SCHEMA_VERSION, RunRecord

BOARDS = Path(__file__).resolve().parent.parent / "leaderboards"
REFERENCES = BOARDS / REFERENCE_FILE
DATASETS = ("circles-squares", "polymnist-lite")

# The first reproduce line of each row as the build writes it now. circles-squares ran with
# `--epochs 5` and every stage ran 5 epochs: unchanged. polymnist-lite ran the default epochs
# (no `--epochs`): the line now names them.
RUN_LINES: dict[str, dict[str, str]] = {
    "circles-squares": {
        "mmvae-2af68083-quick-1-gmm-b5586416": (
            "for s in 0 1 2; do mmvae-bench run mmvae --dataset circles-squares "
            "--protocol quick --epochs 5 "
            "--sampler gmm --seed $s; done"
        ),
        "jnf-shared-57c6aebe-quick-1-gmm-b5586416": (
            "for s in 0 1 2; do mmvae-bench run jnf-shared --dataset circles-squares "
            "--protocol quick --epochs 5 "
            "--sampler gmm --seed $s; done"
        ),
        "mopoe-cdd27b4b-quick-1-gmm-b5586416": (
            "for s in 0 1 2; do mmvae-bench run mopoe --dataset circles-squares "
            "--protocol quick --epochs 5 "
            "--sampler gmm --seed $s; done"
        ),
        "jnf-dfd1b1f2-quick-1-gmm-b5586416": (
            "for s in 0 1 2; do mmvae-bench run jnf --dataset circles-squares "
            "--protocol quick --epochs 5 "
            "--sampler gmm --seed $s; done"
        ),
        "mvae-9ff4b1c4-quick-1-gmm-b5586416": (
            "for s in 0 1 2; do mmvae-bench run mvae --dataset circles-squares "
            "--protocol quick --epochs 5 "
            "--sampler gmm --seed $s; done"
        ),
    },
    "polymnist-lite": {
        "jnf-shared-97b73843-quick-1-gmm-b5586416": (
            "for s in 0 1 2; do mmvae-bench run jnf-shared --dataset polymnist-lite "
            "--protocol quick --epochs projector=10 --epochs joint=20 --epochs unimodal=20 "
            "--sampler gmm --seed $s; done"
        ),
        "jnf-8908ae8b-quick-1-gmm-b5586416": (
            "for s in 0 1 2; do mmvae-bench run jnf --dataset polymnist-lite "
            "--protocol quick --epochs 20 "
            "--sampler gmm --seed $s; done"
        ),
        "mvae-9490cdd7-quick-1-gmm-b5586416": (
            "for s in 0 1 2; do mmvae-bench run mvae --dataset polymnist-lite "
            "--protocol quick --epochs 20 "
            "--sampler gmm --seed $s; done"
        ),
        "mopoe-436da2b9-quick-1-gmm-b5586416": (
            "for s in 0 1 2; do mmvae-bench run mopoe --dataset polymnist-lite "
            "--protocol quick --epochs 20 "
            "--sampler gmm --seed $s; done"
        ),
        "mmvae-467a2bfc-quick-1-gmm-b5586416": (
            "for s in 0 1 2; do mmvae-bench run mmvae --dataset polymnist-lite "
            "--protocol quick --epochs 20 "
            "--sampler gmm --seed $s; done"
        ),
    },
}


# -- reading a row's run options back from its (original) reproduce line --------------------
def _typed(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def _run_options(line: str) -> dict[str, Any]:
    """The run options of a 0.1 reproduce line: protocol, epochs, overrides, precision,
    sampler (the keys of the record's ``run`` they fill)."""
    loop, _, rest = line.partition("; do ")
    assert loop.startswith("for s in ") and rest.endswith("; done"), line
    words = shlex.split(rest.removesuffix("; done"))
    assert words[:3] == ["mmvae-bench", "run", words[2]], line
    opts: dict[str, Any] = {
        "epochs": {},
        "overrides": {},
        "precision": "no",
        "sampler": "prior",
    }
    it = iter(words[3:])
    for flag in it:
        value = next(it)
        if flag == "--epochs":
            stage, _, n = value.rpartition("=")
            opts["epochs"][stage or "*"] = int(n)
        elif flag == "--set":
            key, _, v = value.partition("=")
            opts["overrides"][key] = _typed(v)
        elif flag in ("--dataset", "--protocol", "--precision", "--sampler"):
            opts[flag.removeprefix("--")] = value
        elif flag == "--seed":
            assert value == "$s", line
        else:  # an option this reconstruction does not know: fail rather than drop it
            raise AssertionError(f"unknown option {flag} in {line!r}")
    return opts


# -- one schema-1 record per (row, seed) -----------------------------------------------------
def _metrics(row: dict[str, Any], seed: int, board: dict[str, Any]) -> tuple[dict, float]:
    """The record's metrics (0.1 layout) and train_s of one seed of a row."""
    by_size: dict[str, dict[str, Any]] = {}
    fid: dict[str, dict[str, dict[str, float]]] = {}
    joint = train_s = None
    for key, stat in row["metrics"].items():
        if str(seed) not in stat["values"]:
            continue
        v = stat["values"][str(seed)]
        parts = key.split("/")
        if parts[0] == "coherence" and len(parts) == 2:
            by_size[parts[1]] = {"mean": v, "std": None, "n": None}
        elif key == JOINT_COHERENCE:
            joint = v
        elif key == "train_s":
            train_s = v
        elif parts[0] == "fid" and len(parts) == 4:
            fid.setdefault(parts[1], {}).setdefault(parts[2], {})[parts[3]] = v
        elif parts[0] == "fid" and len(parts) == 3 and parts[2] in ("prior", "conditional"):
            pass  # the build's own means of the per-modality values above
        else:
            raise AssertionError(f"metric {key} of row {row['id']} has no place in a record")
    assert joint is not None and train_s is not None and by_size, row["id"]
    for per_mod in fid.values():  # 0.1 wrote "unconditional" first, then the subsets
        for mod, per_key in per_mod.items():
            per_mod[mod] = dict(sorted(per_key.items(), key=lambda kv: kv[0] != "unconditional"))
    metrics: dict[str, Any] = {
        "classifier_accuracy": {},
        "test_samples": board["protocols"][row["protocol"]].get("test_samples"),
        "conditional_coherence": {},
        COND_COHERENCE_BY_SIZE: dict(sorted(by_size.items(), key=lambda kv: int(kv[0]))),
        "hmc_acceptance": {},
        JOINT_COHERENCE: joint,
        "joint_label_histogram": {},
    }
    if fid:
        metrics[FID] = fid
        metrics[FID_EXTRACTORS] = {ext: board["extractors"][ext] for ext in fid}
    metrics["eval_timings"] = {}
    return metrics, train_s


def _record(
    row: dict[str, Any], run: dict[str, Any], board: dict[str, Any], t: dt.datetime
) -> dict[str, Any]:
    seed, run_id = run["seed"], run["run_id"]
    opts = _run_options(row["reproduce"][0])
    identity = row["config"]
    assert opts["precision"] == identity["precision"], row["id"]
    assert opts["sampler"] == row["sampler"], row["id"]
    metrics, train_s = _metrics(row, seed, board)
    sampler: dict[str, Any] | None = None
    if row["sampler"] != "prior":
        sampler = {
            "kind": row["sampler"],
            "settings": row["sampler_settings"],
            "latent_dim": identity["config"].get("latent_dim"),
            "seed": seed,
            "embed_s": None,
            "fit_s": None,
            "train_log_likelihood": None,
            "file": "sampler.pt",
        }
    stamp = (t + dt.timedelta(seconds=30)).isoformat(timespec="seconds")
    return {
        "schema": 1,
        "run_id": run_id,
        "status": "ok",
        "model": row["model"],
        "dataset": board["dataset"],
        "seed": seed,
        "config": identity["config"],
        "run": {
            "model": row["model"],
            "dataset": board["dataset"],
            "seed": seed,
            "device": None,
            "threads": None,
            "out": None,
            "protocol": opts["protocol"],
            "data_dir": None,
            "cache_dir": None,
            "epochs": opts["epochs"],
            "overrides": opts["overrides"],
            "precision": opts["precision"],
            "compile": False,
            "evaluate": True,
            "classifier_weights": None,
            "sampler": opts["sampler"],
            "fid": None,
            "inception_weights": None,
            "run_id": run_id,
        },
        "protocol": board["protocols"][row["protocol"]],
        "environment": {"versions": {"mmvae-bench": "0.1.0"}},
        "dataset_info": {},
        "stages": {
            name: {
                "name": name,
                "epochs": epochs,
                "steps": 0,
                "samples": 0,
                "wall_s": 0.0,
                "samples_per_s": 0.0,
                "loss": {},
                "precompute_s": 0.0,
            }
            for name, epochs in identity["epochs"].items()
        },
        "metrics": metrics,
        "timings": {"train_s": train_s, "sampler_s": 0.0, "eval_s": 0.0},
        "created": t.isoformat(timespec="seconds"),
        "sampler": sampler,
        "figures": {
            COND_GRID: {"what": "conditional samples from each modality"},
            PRIOR_GRID: {"what": "unconditional samples", "source": row["unconditional_source"]},
        },
        "finished": stamp,
    }


def _write_runs(board: dict[str, Any], runs_dir: Path) -> None:
    """Every row's records (in row order, one minute apart) and the best seed's grids."""
    t = dt.datetime(2026, 11, 1, tzinfo=dt.timezone.utc)
    for row in board["rows"]:
        for run in row["runs"]:
            path = runs_dir / run["path"]
            path.parent.mkdir(parents=True)
            path.write_text(json.dumps(_record(row, run, board, t), indent=2) + "\n")
            t += dt.timedelta(minutes=1)
            loaded = RunRecord.load(path)  # schema-1 migration: the plan from the stages
            assert loaded.schema == SCHEMA_VERSION and loaded.epochs == row["config"]["epochs"]
        best = next(r for r in row["runs"] if r["seed"] == row["best_seed"])
        run_dir = (runs_dir / best["path"]).parent
        source = row["unconditional_source"]
        unconditional = "prior" if source == "prior" else f"unconditional-{source}"
        for kind, rel in row.get("figures", {}).items():
            assert kind in ("conditional", unconditional), (row["id"], kind)
            grid = COND_GRID if kind == "conditional" else PRIOR_GRID
            shutil.copyfile(BOARDS / rel, run_dir / grid)


# -- comparing -------------------------------------------------------------------------------
def _assert_same_text(got: str, want: str, what: str) -> None:
    if got != want:
        diff = difflib.unified_diff(
            want.splitlines(), got.splitlines(), "committed", "rebuilt", lineterm="", n=1
        )
        pytest.fail(f"{what} differs:\n" + "\n".join(list(diff)[:80]))


@pytest.mark.parametrize("dataset", DATASETS)
def test_committed_leaderboard_rebuilds_from_migrated_records(dataset: str, tmp_path: Path) -> None:
    committed_json = (BOARDS / f"{dataset}.json").read_text()
    committed_md = (BOARDS / f"{dataset}.md").read_text()
    board = json.loads(committed_json)
    assert sorted(r["id"] for r in board["rows"]) == sorted(RUN_LINES[dataset])

    runs_dir, out = tmp_path / "runs", tmp_path / "out"
    _write_runs(board, runs_dir)
    # With the committed published figures: none is of this dataset, so none is shown.
    report = build_leaderboards(
        runs_dir, out, command=board["command"], figures=True, references=REFERENCES
    )
    assert report.skipped == [] and report.used == board["n_runs"]
    assert dataset not in {e.dataset for e in load_references(REFERENCES)}
    assert sorted(report.written) == [dataset]

    rebuilt = json.loads((out / f"{dataset}.json").read_text())
    # The intended difference, asserted explicitly: the first reproduce line names the epochs.
    for row in rebuilt["rows"]:
        assert row["reproduce"][0] == RUN_LINES[dataset][row["id"]], row["id"]
    # Everything else exactly: the committed files with only those lines replaced.
    want_json, want_md = committed_json, committed_md
    want_board = json.loads(committed_json)
    for row in want_board["rows"]:
        old, new = row["reproduce"][0], RUN_LINES[dataset][row["id"]]
        given = _run_options(old)["epochs"]
        if list(given) == ["*"] and set(row["config"]["epochs"].values()) == {given["*"]}:
            assert new == old, row["id"]  # `--epochs N` and every stage ran N: no change
        row["reproduce"][0] = new
        if old != new:
            assert want_json.count(json.dumps(old)) == 1 and want_md.count(f"`{old}`") == 1
            want_json = want_json.replace(json.dumps(old), json.dumps(new))
            want_md = want_md.replace(f"`{old}`", f"`{new}`")
    _assert_same_text((out / f"{dataset}.json").read_text(), want_json, f"{dataset}.json")
    _assert_same_text((out / f"{dataset}.md").read_text(), want_md, f"{dataset}.md")
    assert rebuilt == want_board

    # The sample grids are copies of the committed ones.
    grids = [rel for row in board["rows"] for rel in row.get("figures", {}).values()]
    assert grids
    for rel in grids:
        assert (out / rel).read_bytes() == (BOARDS / rel).read_bytes(), rel
    # The coherence plot is redrawn by matplotlib (bytes may differ across its builds).
    rel = board["figures"]["coherence_by_size"]
    with Image.open(out / rel) as got, Image.open(BOARDS / rel) as want:
        assert got.format == "PNG" and got.size == want.size
        got.verify()
    assert sorted(p.name for p in (out / dataset).iterdir()) == sorted(
        p.name for p in (BOARDS / dataset).iterdir()
    )
