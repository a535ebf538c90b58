"""Leaderboards: run records -> ``leaderboards/<dataset>.json`` and ``.md`` with figures.

One row per (model, config without the seed, protocol version, latent sampler): mean ± std over
seeds and the seed count. Results of different protocols never share a row or a table; FID
numbers of different extractors never share a column. The latent sampler (``--sampler``: what
joint coherence and unconditional FID decode) is part of a row's identity and shown in its own
column, so numbers from different samplers are never averaged together; records written before
samplers existed drew from the prior and count as ``prior``. A record that is corrupt, partial
or not ``ok`` is reported with its reason and skipped, never averaged.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import re
import shutil
import statistics
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mmvae_bench.errors import BenchError
from mmvae_bench.eval.protocol import (
    COND_COHERENCE_BY_SIZE,
    FID,
    FID_EXTRACTORS,
    JOINT_COHERENCE,
)
from mmvae_bench.io import atomic_write, atomic_write_json
from mmvae_bench.results import COND_GRID, PRIOR_GRID, RECORD_KEYS

__all__ = [
    "LEADERBOARD_VERSION",
    "BuildReport",
    "RunSummary",
    "Skipped",
    "aggregate",
    "build_leaderboards",
    "collect_runs",
    "leaderboard_path",
    "load_leaderboard",
    "summarize",
    "table",
]

log = logging.getLogger(__name__)

LEADERBOARD_VERSION = 1
# Run settings besides the model config that change results; the seed, run id, device, threads
# and paths do not, so runs that differ only in those share a row.
_RUN_KEYS_IN_CONFIG = ("precision",)
PRIOR_SAMPLER: dict[str, Any] = {"kind": "prior", "settings": {}}


class _Invalid(Exception):
    """A record that cannot be used, with the reason (reported, never raised to the user)."""


@dataclass(frozen=True)
class Skipped:
    """A record left out of the leaderboard, and why."""

    path: str
    reason: str
    dataset: str | None = None


@dataclass
class RunSummary:
    """The numbers of one usable run record, flattened to leaderboard metric keys.

    Attributes:
        values: ``{metric_key: value}``; keys are ``coherence/<k>``, ``joint_coherence``,
            ``train_s``, ``fid/<extractor>/prior``, ``fid/<extractor>/conditional`` and
            ``fid/<extractor>/<modality>/<key>``.
    """

    path: Path
    run_id: str
    dataset: str
    model: str
    seed: int
    config: dict[str, Any]
    config_id: str
    protocol: dict[str, Any]
    run: dict[str, Any]
    finished: str
    values: dict[str, float]
    extractors: dict[str, dict[str, Any]] = field(default_factory=dict)
    sampler: dict[str, Any] = field(default_factory=lambda: dict(PRIOR_SAMPLER))
    # Where the unconditional grid's codes came from; records older than the field drew them
    # from the prior whatever their sampler.
    unconditional_source: str = "prior"

    @property
    def sampler_id(self) -> str:
        """The latent sampler's part of a row's identity: ``prior`` or ``<kind>-<settings id>``."""
        if self.sampler == PRIOR_SAMPLER:
            return "prior"
        return f"{self.sampler['kind']}-{_config_id(self.sampler)}"

    @property
    def protocol_version(self) -> str:
        """The protocol version string (part of a row's identity)."""
        return str(self.protocol["version"])

    @property
    def coherence(self) -> float:
        """Mean over |S| of conditional coherence: picks the best seed's sample grids."""
        vals = [v for k, v in self.values.items() if k.startswith("coherence/")]
        return statistics.fmean(vals) if vals else 0.0


@dataclass
class BuildReport:
    """What ``build_leaderboards`` did: files per dataset, runs used, records skipped."""

    written: dict[str, list[Path]]
    used: int
    skipped: list[Skipped]


# -- reading records -------------------------------------------------------------------------
def _number(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _Invalid(f"malformed: {what} is {value!r}, not a number")
    if not math.isfinite(value):
        raise _Invalid(f"non-finite {what}: {value}")
    return float(value)


def config_identity(record: Mapping[str, Any]) -> dict[str, Any]:
    """What makes two runs the same configuration: model config, epochs run, precision."""
    config = {k: v for k, v in dict(record["config"]).items() if k != "seed"}
    epochs = {name: s.get("epochs") for name, s in dict(record["stages"]).items()}
    run = dict(record.get("run") or {})
    return {
        "config": config,
        "epochs": epochs,
        **{k: run.get(k) for k in _RUN_KEYS_IN_CONFIG},
    }


def sampler_identity(record: Mapping[str, Any]) -> dict[str, Any]:
    """Which latent sampler produced joint coherence and unconditional FID: kind and settings.

    Records from before samplers existed (no ``sampler`` entry) drew from the prior.
    """
    sampler = record.get("sampler")
    if sampler is None:
        return dict(PRIOR_SAMPLER)
    if not isinstance(sampler, dict) or not isinstance(sampler.get("kind"), str):
        raise _Invalid("malformed: sampler has no kind")
    settings = sampler.get("settings") or {}
    if not isinstance(settings, dict):
        raise _Invalid("malformed: sampler.settings is not an object")
    return {"kind": sampler["kind"], "settings": settings}


def _config_id(identity: Mapping[str, Any]) -> str:
    blob = json.dumps(identity, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:8]


def _fid_values(metrics: Mapping[str, Any]) -> tuple[dict[str, float], dict[str, dict]]:
    fid = metrics.get(FID)
    if fid is None:
        return {}, {}
    if not isinstance(fid, dict):
        raise _Invalid(f"malformed: metrics.{FID} is not an object")
    infos = metrics.get(FID_EXTRACTORS) or {}
    values: dict[str, float] = {}
    extractors: dict[str, dict] = {}
    for ext, per_mod in fid.items():
        if not isinstance(per_mod, dict) or not per_mod:
            raise _Invalid(f"malformed: metrics.{FID}.{ext} holds no modalities")
        prior, cond = [], []
        for mod, per_key in per_mod.items():
            if not isinstance(per_key, dict):
                raise _Invalid(f"malformed: metrics.{FID}.{ext}.{mod} is not an object")
            for key, v in per_key.items():
                x = _number(v, f"FID {ext}/{mod}/{key}")
                values[f"fid/{ext}/{mod}/{key}"] = x
                (prior if key == "unconditional" else cond).append(x)
        if prior:
            values[f"fid/{ext}/prior"] = statistics.fmean(prior)
        if cond:
            values[f"fid/{ext}/conditional"] = statistics.fmean(cond)
        info = infos.get(ext) if isinstance(infos, dict) else None
        extractors[ext] = dict(info) if isinstance(info, dict) else {"kind": "unknown"}
    return values, extractors


def summarize(path: Path, record: Any, root: Path | None = None) -> RunSummary:
    """Check one parsed record and flatten its numbers; raises ``_Invalid`` with the reason."""
    if not isinstance(record, dict):
        raise _Invalid("not a JSON object")
    missing = [k for k in RECORD_KEYS if k not in record]
    if missing:
        raise _Invalid(f"partial record: missing keys {missing}")
    if record["status"] != "ok":
        err = f" ({record['error']})" if record.get("error") else ""
        raise _Invalid(f"status is {record['status']!r}, not 'ok'{err}")
    metrics = record["metrics"]
    if not isinstance(metrics, dict):
        raise _Invalid("malformed: metrics is not an object")
    absent = [k for k in (COND_COHERENCE_BY_SIZE, JOINT_COHERENCE) if k not in metrics]
    if absent:
        raise _Invalid(f"partial record: missing metrics {absent} (run `mmvae-bench evaluate`)")
    train_s = (record.get("timings") or {}).get("train_s")
    if train_s is None:
        raise _Invalid("partial record: missing timings.train_s")
    try:
        values: dict[str, float] = {"train_s": _number(train_s, "timings.train_s")}
        by_size = metrics[COND_COHERENCE_BY_SIZE]
        if not isinstance(by_size, dict) or not by_size:
            raise _Invalid(f"malformed: metrics.{COND_COHERENCE_BY_SIZE} is empty")
        for k, v in by_size.items():
            if not isinstance(v, dict):
                raise _Invalid(f"malformed: metrics.{COND_COHERENCE_BY_SIZE}.{k}")
            values[f"coherence/{int(k)}"] = _number(v.get("mean"), f"coherence |S|={k}")
        values["joint_coherence"] = _number(metrics[JOINT_COHERENCE], JOINT_COHERENCE)
        fid_values, extractors = _fid_values(metrics)
        values.update(fid_values)
        protocol = dict(record["protocol"])
        if "version" not in protocol:
            raise _Invalid("partial record: protocol has no version")
        identity = config_identity(record)
        sampler = sampler_identity(record)
        seed = int(record["seed"])
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise _Invalid(f"malformed: {type(e).__name__}: {e}") from None
    rel = path.relative_to(root) if root and path.is_relative_to(root) else path
    return RunSummary(
        path=rel,
        run_id=str(record["run_id"]),
        dataset=str(record["dataset"]),
        model=str(record["model"]),
        seed=seed,
        config=identity,
        config_id=_config_id(identity),
        protocol=protocol,
        run=dict(record.get("run") or {}),
        finished=str(record.get("finished") or record["created"]),
        values=values,
        extractors=extractors,
        sampler=sampler,
        unconditional_source=str(
            ((record.get("figures") or {}).get(PRIOR_GRID) or {}).get("source", "prior")
        ),
    )


def collect_runs(runs_dir: Path) -> tuple[list[RunSummary], list[Skipped]]:
    """Every ``results.json`` under ``runs_dir`` (recursively): usable runs and skipped ones."""
    runs_dir = Path(runs_dir)
    if not runs_dir.is_dir():
        raise BenchError(f"no runs folder at {runs_dir}; train with `mmvae-bench run` first")
    used: list[RunSummary] = []
    skipped: list[Skipped] = []
    for path in sorted(runs_dir.rglob("results.json")):
        rel = str(path.relative_to(runs_dir))
        try:
            record = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            skipped.append(Skipped(rel, f"corrupt: {type(e).__name__}: {e}"))
            continue
        dataset = record.get("dataset") if isinstance(record, dict) else None
        try:
            used.append(summarize(path, record, runs_dir))
        except _Invalid as e:
            skipped.append(Skipped(rel, str(e), dataset if isinstance(dataset, str) else None))
    return used, skipped


# -- aggregation -----------------------------------------------------------------------------
def _stats(values: dict[int, float]) -> dict[str, Any]:
    vals = list(values.values())
    return {
        "mean": statistics.fmean(vals),
        # Sample standard deviation over seeds (n - 1); undefined for one seed.
        "std": statistics.stdev(vals) if len(vals) > 1 else None,
        "n": len(vals),
        "values": {str(s): v for s, v in sorted(values.items())},
    }


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-")


def _config_labels(rows: list[dict[str, Any]]) -> None:
    """Label each row's config by the fields that differ between configs of the same model."""
    by_model: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        by_model.setdefault(r["model"], []).append(r)
    for group in by_model.values():
        flat = [_flatten(r["config"]) for r in group]
        keys = sorted(set().union(*flat))
        differ = [k for k in keys if len({json.dumps(f.get(k), default=str) for f in flat}) > 1]
        for r, f in zip(group, flat, strict=True):
            r["config_label"] = ", ".join(f"{k}={f.get(k)}" for k in differ)


def _flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        name = f"{prefix}{k}"
        if isinstance(v, Mapping) and v:
            out.update(_flatten(v, f"{name}."))
        else:
            out[name.removeprefix("config.")] = v
    return out


def _reproduce(run: RunSummary, seeds: list[int]) -> list[str]:
    """The commands that regenerate a row's runs (one line per seed loop)."""
    r = run.run
    args = [f"mmvae-bench run {run.model} --dataset {run.dataset}"]
    args.append(f"--protocol {r.get('protocol') or run.protocol.get('name')}")
    for stage, n in sorted(dict(r.get("epochs") or {}).items()):
        args.append(f"--epochs {n}" if stage == "*" else f"--epochs {stage}={n}")
    for k, v in sorted(dict(r.get("overrides") or {}).items()):
        value = ",".join(map(str, v)) if isinstance(v, list | tuple) else v
        args.append(f"--set {k}={value}")
    if r.get("precision") not in (None, "no"):
        args.append(f"--precision {r['precision']}")
    if run.sampler["kind"] != "prior":
        args.append(f"--sampler {run.sampler['kind']}")
    seed_list = " ".join(map(str, seeds))
    cmds = [f"for s in {seed_list}; do {' '.join(args)} --seed $s; done"]
    for ext, info in sorted(run.extractors.items()):
        kind = info.get("kind", "classifier")
        cmds.append(
            f"# FID ({ext}): mmvae-bench evaluate RUN_DIR --protocol "
            f"{run.protocol.get('name')} --fid --fid-extractor {kind}"
        )
    return cmds


def aggregate(
    runs: Iterable[RunSummary],
) -> tuple[dict[str, list[dict[str, Any]]], list[Skipped], dict[str, dict], dict[str, dict]]:
    """Group runs into rows per dataset: (model, config, protocol version, sampler) -> mean ± std.

    Returns:
        ``(rows by dataset, skipped duplicates, protocols by version, FID extractors by name)``.
        Two records of one row with the same seed are duplicates: the newer one is used and
        the other is skipped, so no seed is counted twice.
    """
    groups: dict[tuple[str, str, str, str, str], dict[int, RunSummary]] = {}
    skipped: list[Skipped] = []
    protocols: dict[str, dict[str, Any]] = {}
    extractors: dict[str, dict[str, Any]] = {}
    for run in sorted(runs, key=lambda r: (r.finished, str(r.path))):
        key = (run.dataset, run.model, run.config_id, run.protocol_version, run.sampler_id)
        seeds = groups.setdefault(key, {})
        if run.seed in seeds:
            old = seeds[run.seed]
            skipped.append(
                Skipped(
                    str(old.path),
                    f"duplicate of seed {run.seed} in {run.path} (the newer record is used)",
                    run.dataset,
                )
            )
        seeds[run.seed] = run
        protocols.setdefault(run.protocol_version, run.protocol)
        for name, info in run.extractors.items():
            extractors.setdefault(name, info)
    rows: dict[str, list[dict[str, Any]]] = {}
    for (dataset, model, config_id, version, sampler_id), seeds in groups.items():
        runs_ = [seeds[s] for s in sorted(seeds)]
        keys = sorted(set().union(*(r.values for r in runs_)))
        metrics = {k: _stats({r.seed: r.values[k] for r in runs_ if k in r.values}) for k in keys}
        best = max(runs_, key=lambda r: (r.coherence, r.values["joint_coherence"], -r.seed))
        # Prior rows keep the ids they had before samplers existed.
        suffix = "" if sampler_id == "prior" else f"-{sampler_id}"
        rows.setdefault(dataset, []).append(
            {
                "id": _slug(f"{model}-{config_id}-{version}{suffix}"),
                "model": model,
                "config_id": config_id,
                "config": runs_[0].config,
                "protocol": version,
                "sampler": runs_[0].sampler["kind"],
                "sampler_settings": runs_[0].sampler["settings"],
                "seeds": [r.seed for r in runs_],
                "n_seeds": len(runs_),
                "best_seed": best.seed,
                "unconditional_source": best.unconditional_source,
                "runs": [{"run_id": r.run_id, "seed": r.seed, "path": str(r.path)} for r in runs_],
                "metrics": metrics,
                "reproduce": _reproduce(best, [r.seed for r in runs_]),
            }
        )
    for dataset_rows in rows.values():
        dataset_rows.sort(key=_rank_key)
        _config_labels(dataset_rows)
    return rows, skipped, protocols, extractors


def _rank_key(row: dict[str, Any]) -> tuple:
    coh = [v["mean"] for k, v in row["metrics"].items() if k.startswith("coherence/")]
    return (row["protocol"], -(statistics.fmean(coh) if coh else 0.0), row["model"], row["id"])


# -- tables ----------------------------------------------------------------------------------
def extractor_short(name: str, info: Mapping[str, Any]) -> str:
    """A column-sized name: ``inception`` or ``clf:<fingerprint>`` for classifier features."""
    if info.get("kind") == "inception":
        return "inception"
    if info.get("kind") == "classifier":
        return "clf:" + name.rsplit("-", 1)[-1][:6]
    return name


def columns(board: Mapping[str, Any], version: str | None) -> list[dict[str, str]]:
    """The columns of one protocol's table (all tables' when None): key, title, definition."""
    rows = [r for r in board["rows"] if version is None or r["protocol"] == version]
    present = set().union(*(r["metrics"] for r in rows)) if rows else set()
    cols = [
        {"key": "model", "title": "model", "definition": "registry name of the model"},
        {
            "key": "config",
            "title": "config",
            "definition": "id of the configuration (model config, epochs per stage, precision; "
            "the seed excluded) and the fields that differ from the model's other rows; full "
            "configs are listed below",
        },
        {"key": "seeds", "title": "seeds", "definition": "number of seeds averaged"},
    ]
    for k in board["subset_sizes"]:
        cols.append(
            {
                "key": f"coherence/{k}",
                "title": f"coh |S|={k}",
                "definition": f"conditional coherence from {k} input modalit"
                f"{'y' if k == 1 else 'ies'}: class-balanced accuracy of the coherence "
                "classifiers on generated missing modalities, averaged over subsets S of that "
                "size and targets; mean ± std over seeds (higher is better)",
            }
        )
    cols.append(
        {
            "key": "sampler",
            "title": "sampler",
            "definition": "the latent sampler that joint coherence and unconditional (prior) FID "
            "decode: `prior` (the model's prior), `gmm` (a Gaussian mixture) or `flow` (a zuko "
            "flow) fitted to the training set's joint embeddings after training (`--sampler`); "
            "part of the row's identity, so numbers of different samplers are never averaged",
        }
    )
    cols.append(
        {
            "key": "joint_coherence",
            "title": "joint coh",
            "definition": "fraction of latent draws from the row's sampler whose decoded "
            "modalities all classifiers give one label; mean ± std over seeds (higher is "
            "better; read with the label histograms in the run records)",
        }
    )
    for ext, info in sorted(board["extractors"].items()):
        short = extractor_short(ext, info)
        label = info.get("label") or info.get("kind", "")
        for part, what in (
            (
                "prior",
                "unconditional samples (latent draws from the row's sampler, the prior unless "
                "the sampler column says otherwise), averaged over image modalities",
            ),
            (
                "conditional",
                "samples generated from every subset not containing the modality, averaged "
                "over modalities and subsets",
            ),
        ):
            key = f"fid/{ext}/{part}"
            if key in present:
                cols.append(
                    {
                        "key": key,
                        "title": f"FID {'prior' if part == 'prior' else 'cond'} [{short}]",
                        "definition": f"FID against the test split of {what}, with features of "
                        f"`{ext}` ({label}); mean ± std over seeds (lower is better; never "
                        "compare across extractors)",
                    }
                )
    cols.append(
        {
            "key": "train_s",
            "title": "train s",
            "definition": "training wall time in seconds, all stages (hardware in the records)",
        }
    )
    return cols


def _fmt(stat: Mapping[str, Any] | None, key: str, n_seeds: int) -> str:
    if not stat:
        return "–"
    spec = ".1f" if key == "train_s" else (".4g" if key.startswith("fid/") else ".3f")
    text = format(stat["mean"], spec)
    if stat.get("std") is not None:
        text += f" ± {format(stat['std'], spec)}"
    if stat["n"] != n_seeds:
        text += f" (n={stat['n']})"
    return text


def table(board: Mapping[str, Any], version: str) -> tuple[list[str], list[list[str]]]:
    """Headers and string cells of one protocol's table (shared by the .md and ``show``)."""
    cols = columns(board, version)
    body = []
    for r in board["rows"]:
        if r["protocol"] != version:
            continue
        cells = []
        for c in cols:
            if c["key"] == "model":
                cells.append(r["model"])
            elif c["key"] == "config":
                label = r.get("config_label")
                cells.append(f"{r['config_id']} ({label})" if label else r["config_id"])
            elif c["key"] == "seeds":
                cells.append(str(r["n_seeds"]))
            elif c["key"] == "sampler":
                cells.append(r.get("sampler", "prior"))
            else:
                cells.append(_fmt(r["metrics"].get(c["key"]), c["key"], r["n_seeds"]))
        body.append(cells)
    return [c["title"] for c in cols], body


# -- writing ---------------------------------------------------------------------------------
def leaderboard_path(out_dir: Path, dataset: str) -> Path:
    """Where the JSON leaderboard of ``dataset`` lives."""
    return Path(out_dir) / f"{dataset}.json"


def load_leaderboard(out_dir: Path, dataset: str) -> dict[str, Any]:
    """Read a built leaderboard; a missing or corrupt one is a ``BenchError``."""
    path = leaderboard_path(out_dir, dataset)
    if not path.is_file():
        raise BenchError(
            f"no leaderboard for '{dataset}' at {path}; run: mmvae-bench leaderboard build "
            f"--out {out_dir}"
        )
    try:
        board = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise BenchError(f"leaderboard {path} is corrupt ({e}); rebuild it") from None
    if not isinstance(board, dict) or board.get("leaderboard_version") != LEADERBOARD_VERSION:
        raise BenchError(f"leaderboard {path} has an unknown format; rebuild it")
    return board


def _protocol_title(version: str, p: Mapping[str, Any]) -> str:
    label = f": {p['label']}" if p.get("label") else ""
    return f"protocol `{version}` ({p.get('name', '?')}){label}"


def _figures(board: dict[str, Any], runs_dir: Path, out_dir: Path) -> None:
    """Coherence-by-|S| plot and each row's sample grids, next to the leaderboard."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    dataset = board["dataset"]
    fig_dir = out_dir / dataset
    if fig_dir.is_dir():  # only our own PNGs live here; stale ones would be linked to nothing
        for old in fig_dir.glob("*.png"):
            old.unlink()
    fig_dir.mkdir(parents=True, exist_ok=True)
    versions = sorted({r["protocol"] for r in board["rows"]})
    sizes = board["subset_sizes"]
    if versions and sizes:
        fig, axes = plt.subplots(
            1, len(versions), figsize=(5.5 * len(versions), 3.8), squeeze=False, dpi=100
        )
        for ax, version in zip(axes[0], versions, strict=True):
            for r in (r for r in board["rows"] if r["protocol"] == version):
                ks = [k for k in sizes if f"coherence/{k}" in r["metrics"]]
                stats = [r["metrics"][f"coherence/{k}"] for k in ks]
                label = _row_label(r)
                ax.errorbar(
                    ks,
                    [s["mean"] for s in stats],
                    yerr=[s["std"] or 0.0 for s in stats],
                    marker="o",
                    capsize=3,
                    label=f"{label}, {r['n_seeds']} seed{'s' if r['n_seeds'] != 1 else ''}",
                )
            ax.set_xticks(sizes)
            ax.set_xlabel("number of input modalities |S|")
            ax.set_ylabel("conditional coherence")
            ax.set_ylim(0, 1.02)
            ax.set_title(f"{dataset}, protocol {version}", fontsize=10)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
        fig.tight_layout()
        name = "coherence_by_size.png"
        fig.savefig(fig_dir / name)
        plt.close(fig)
        board["figures"]["coherence_by_size"] = f"{dataset}/{name}"
    for r in board["rows"]:
        best = next(x for x in r["runs"] if x["seed"] == r["best_seed"])
        run_dir = (runs_dir / best["path"]).parent
        r["figures"] = {}
        source = r.get("unconditional_source", "prior")
        unconditional = "prior" if source == "prior" else f"unconditional-{source}"
        for kind, src in (("conditional", COND_GRID), (unconditional, PRIOR_GRID)):
            if (run_dir / src).is_file():
                name = f"{r['id']}-{kind}.png"
                shutil.copyfile(run_dir / src, fig_dir / name)
                r["figures"][kind] = f"{dataset}/{name}"


def _row_label(row: Mapping[str, Any]) -> str:
    """Model, the config fields that differ, and a sampler other than the prior."""
    label = row["model"] + (f" ({row['config_label']})" if row.get("config_label") else "")
    sampler = row.get("sampler", "prior")
    return label if sampler == "prior" else f"{label} [{sampler} sampler]"


def _md_escape(text: str) -> str:
    return text.replace("|", "\\|")


def render_markdown(board: Mapping[str, Any]) -> str:
    """The leaderboard as markdown: tables per protocol, figures, legend, configs, skipped."""
    ds = board["dataset"]
    lines = [
        f"# Leaderboard: {ds}",
        "",
        f"Built from {board['n_runs']} run records ({len(board['skipped'])} skipped) by "
        f"`{board['command']}`; rerun that command to regenerate this file, its JSON and "
        "figures (never edit them by hand).",
        "",
    ]
    for version in sorted(board["protocols"]):
        headers, body = table(board, version)
        if not body:
            continue
        lines += [f"## {_protocol_title(version, board['protocols'][version])}", ""]
        lines.append("| " + " | ".join(_md_escape(h) for h in headers) + " |")
        lines.append("|" + "|".join("---" if i < 2 else "---:" for i in range(len(headers))) + "|")
        lines += ["| " + " | ".join(_md_escape(c) for c in row) + " |" for row in body]
        lines.append("")
    if board["figures"].get("coherence_by_size"):
        lines += [
            "## Coherence by number of input modalities",
            "",
            f"![coherence vs |S|]({board['figures']['coherence_by_size']})",
            "",
            "Error bars: standard deviation over seeds.",
            "",
        ]
    grids = [r for r in board["rows"] if r.get("figures")]
    if grids:
        lines += ["## Samples (best seed of each row)", ""]
        for r in grids:
            label = _row_label(r)
            links = [f"[{k}]({v})" for k, v in sorted(r["figures"].items())]
            lines.append(
                f"- **{label}**, protocol `{r['protocol']}`, seed {r['best_seed']}: "
                + ", ".join(links)
            )
        lines.append("")
        for r in grids:
            for kind, path in sorted(r["figures"].items()):
                lines += [f"![{r['model']} {kind} samples]({path})", ""]
    lines += ["## Legend", ""]
    for c in columns(board, None):
        lines.append(f"- **{_md_escape(c['title'])}**: {c['definition']}.")
    lines += [
        "- Cells are mean ± sample standard deviation over seeds; `(n=k)` marks a metric that "
        "only k of the row's seeds have; `–` means no seed has it.",
        "- Rows are ranked within a protocol by mean conditional coherence over |S|. Results of "
        "different protocol versions are in different tables and are not comparable.",
        "- Runs that differ only in their latent sampler are separate rows: conditional "
        "coherence does not depend on the sampler (they agree), joint coherence and "
        "unconditional FID do.",
        "- The best seed (highest mean conditional coherence) provides the sample grids.",
        "",
    ]
    if board["extractors"]:
        lines += ["### FID feature extractors", ""]
        for ext, info in sorted(board["extractors"].items()):
            lines.append(f"- `{extractor_short(ext, info)}` = `{ext}`: {info.get('label') or info}")
        lines.append("")
    lines += ["### Protocols", ""]
    for version, p in sorted(board["protocols"].items()):
        settings = {k: v for k, v in p.items() if k not in ("label",)}
        lines.append(f"- {_protocol_title(version, p)}: `{json.dumps(settings, default=str)}`")
    lines += ["", "## Configs and how to reproduce them", ""]
    for r in board["rows"]:
        sampler = r.get("sampler", "prior")
        settings = r.get("sampler_settings") or {}
        used = "" if sampler == "prior" else f", sampler `{sampler}` `{json.dumps(settings)}`"
        lines.append(
            f"- `{r['model']} {r['config_id']}` (protocol `{r['protocol']}`{used}, seeds "
            f"{', '.join(map(str, r['seeds']))}): `{json.dumps(r['config'], default=str)}`"
        )
        lines += [f"  - `{cmd}`" for cmd in r["reproduce"]]
    if board["skipped"]:
        lines += ["", "## Skipped records", ""]
        lines += [f"- `{s['path']}`: {_md_escape(s['reason'])}" for s in board["skipped"]]
    return "\n".join(lines) + "\n"


def build_leaderboards(
    runs_dir: Path, out_dir: Path, *, command: str | None = None, figures: bool = True
) -> BuildReport:
    """Aggregate every record under ``runs_dir`` into ``out_dir/<dataset>.json|.md`` + figures.

    Args:
        runs_dir: folder searched recursively for ``results.json``.
        out_dir: where leaderboards go (``leaderboards/``).
        command: the command line that regenerates them, printed in the markdown.
        figures: write the coherence plot and copy sample grids.

    Returns:
        A :class:`BuildReport`; skipped records are listed there and in each dataset's JSON.
        Records without a readable dataset are listed in every dataset's JSON.
    """
    runs_dir, out_dir = Path(runs_dir), Path(out_dir)
    runs, skipped = collect_runs(runs_dir)
    rows, dupes, protocols, extractors = aggregate(runs)
    skipped += dupes
    if not runs:
        reasons = "; ".join(f"{s.path}: {s.reason}" for s in skipped) or "none found"
        raise BenchError(f"no usable run records under {runs_dir} ({reasons})")
    command = command or f"mmvae-bench leaderboard build --runs {runs_dir} --out {out_dir}"
    datasets = sorted({r.dataset for r in runs} | {s.dataset for s in skipped if s.dataset})
    written: dict[str, list[Path]] = {}
    for ds in datasets:
        ds_rows = rows.get(ds, [])
        ds_runs = [r for r in runs if r.dataset == ds]
        versions = {r["protocol"] for r in ds_rows}
        used_ext = {e for r in ds_runs for e in r.extractors}
        board: dict[str, Any] = {
            "leaderboard_version": LEADERBOARD_VERSION,
            "dataset": ds,
            "command": command,
            "n_runs": sum(r["n_seeds"] for r in ds_rows),
            "subset_sizes": sorted(
                {
                    int(k.split("/")[1])
                    for r in ds_rows
                    for k in r["metrics"]
                    if k.startswith("coherence/")
                }
            ),
            "protocols": {v: protocols[v] for v in sorted(versions)},
            "extractors": {e: extractors[e] for e in sorted(used_ext)},
            "rows": ds_rows,
            "figures": {},
            "skipped": [
                {"path": s.path, "reason": s.reason} for s in skipped if s.dataset in (ds, None)
            ],
        }
        if figures:
            _figures(board, runs_dir, out_dir)
        json_path = atomic_write_json(leaderboard_path(out_dir, ds), board)
        md = render_markdown(board).encode()
        md_path = atomic_write(out_dir / f"{ds}.md", lambda f, data=md: f.write(data))
        written[ds] = [json_path, md_path]
        log.info("leaderboard %s: %d rows, %d skipped", ds, len(ds_rows), len(board["skipped"]))
    return BuildReport(written=written, used=len(runs) - len(dupes), skipped=skipped)
