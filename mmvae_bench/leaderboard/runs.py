"""Leaderboard input: run records read through :mod:`mmvae_bench.results`, checked and
flattened to the numbers a leaderboard aggregates (one :class:`RunSummary` per usable record).

A record that is corrupt, partial, unfinished or not ``ok`` is reported with its reason and
skipped, never averaged. The latent sampler is part of a row's identity; records written before
samplers existed drew from the prior and count as ``prior``.
"""

from __future__ import annotations

import hashlib
import json
import math
import statistics
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mmvae_bench.eval.protocol import (
    COND_COHERENCE,
    COND_COHERENCE_BY_SIZE,
    FID,
    FID_EXTRACTORS,
    JOINT_COHERENCE,
)
from mmvae_bench.results import PRIOR_GRID, RunRecord, Skipped, scan

__all__ = [
    "PRIOR_SAMPLER",
    "RunSummary",
    "Skipped",
    "collect_runs",
    "config_id",
    "config_identity",
    "sampler_identity",
    "summarize",
]

# Run settings besides the model config that change results; the seed, run id, device, threads
# and paths do not, so runs that differ only in those share a row.
_RUN_KEYS_IN_CONFIG = ("precision",)
_TRAINING_KEYS = ("validation", "lr_patience", "keep_best", "lr_schedule")
PRIOR_SAMPLER: dict[str, Any] = {"kind": "prior", "settings": {}}


class _Invalid(Exception):
    """A record that cannot be used, with the reason (reported, never raised to the user)."""


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
    epochs: dict[str, int]
    plugins: list[str]
    finished: str
    values: dict[str, float]
    extractors: dict[str, dict[str, Any]] = field(default_factory=dict)
    sampler: dict[str, Any] = field(default_factory=lambda: dict(PRIOR_SAMPLER))
    # Where the unconditional grid's codes came from; records older than the field drew them
    # from the prior whatever their sampler.
    unconditional_source: str = "prior"
    # Coherence from one modality to another, ``cross_coherence/<source>/<target>``: added to
    # ``values`` only where a published reference reports it (a 5-modality dataset has 20).
    cross: dict[str, float] = field(default_factory=dict)

    @property
    def sampler_id(self) -> str:
        """The latent sampler's part of a row's identity: ``prior`` or ``<kind>-<settings id>``."""
        if self.sampler == PRIOR_SAMPLER:
            return "prior"
        return f"{self.sampler['kind']}-{config_id(self.sampler)}"

    @property
    def protocol_version(self) -> str:
        """The protocol version string (part of a row's identity)."""
        return str(self.protocol["version"])

    @property
    def coherence(self) -> float:
        """Mean over |S| of conditional coherence: picks the best seed's sample grids."""
        vals = [v for k, v in self.values.items() if k.startswith("coherence/")]
        return statistics.fmean(vals) if vals else 0.0


def _number(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _Invalid(f"malformed: {what} is {value!r}, not a number")
    if not math.isfinite(value):
        raise _Invalid(f"non-finite {what}: {value}")
    return float(value)


def config_identity(record: RunRecord) -> dict[str, Any]:
    """What makes two runs the same configuration: model config, epochs run, precision.

    Also, only where set (so older records keep their ids): the preset, the training options
    that change what is kept (validation split, LR schedule, best-model selection) and, for an
    imported model, where it was trained.
    """
    config = {k: v for k, v in record.config.items() if k != "seed"}
    epochs = {name: s.epochs for name, s in record.stages.items()}
    identity = {
        "config": config,
        "epochs": epochs,
        **{k: record.run.get(k) for k in _RUN_KEYS_IN_CONFIG},
    }
    if record.preset is not None:
        identity["preset"] = record.preset
    for key in _TRAINING_KEYS:
        # "constant" is what a run without a schedule did: the id older records had.
        if record.run.get(key) and record.run[key] != "constant":
            identity[key] = record.run[key]
    if record.run.get("validation"):
        identity["validation_seed"] = record.run.get("validation_seed")
    if record.imported is not None:
        identity["imported"] = {
            "source": record.imported.source,
            "model_class": record.imported.model_class,
        }
    return identity


def sampler_identity(record: RunRecord) -> dict[str, Any]:
    """Which latent sampler produced joint coherence and unconditional FID: kind and settings.

    Records from before samplers existed (no ``sampler`` entry) drew from the prior.
    """
    sampler = record.sampler
    if sampler is None:
        return dict(PRIOR_SAMPLER)
    if not isinstance(sampler.get("kind"), str):
        raise _Invalid("malformed: sampler has no kind")
    settings = sampler.get("settings") or {}
    if not isinstance(settings, dict):
        raise _Invalid("malformed: sampler.settings is not an object")
    return {"kind": sampler["kind"], "settings": settings}


def config_id(identity: Mapping[str, Any]) -> str:
    """An 8-hex id of a configuration (or sampler) identity."""
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


def _cross_values(metrics: Mapping[str, Any]) -> dict[str, float]:
    """``cross_coherence/<source>/<target>`` of single-modality subsets; malformed entries are
    reasons to skip the record (as for the other metrics)."""
    per_subset = metrics.get(COND_COHERENCE) or {}
    if not isinstance(per_subset, dict):
        raise _Invalid(f"malformed: metrics.{COND_COHERENCE} is not an object")
    out: dict[str, float] = {}
    for subset, accs in per_subset.items():
        if "+" in subset:
            continue
        if not isinstance(accs, dict):
            raise _Invalid(f"malformed: metrics.{COND_COHERENCE}.{subset} is not an object")
        for target, acc in accs.items():
            if target != "mean":
                key = f"cross_coherence/{subset}/{target}"
                out[key] = _number(acc, f"coherence {subset} -> {target}")
    return out


def summarize(path: Path, record: RunRecord, root: Path | None = None) -> RunSummary:
    """Check one record and flatten its numbers; raises ``_Invalid`` with the reason."""
    if record.status != "ok":
        if record.status in ("running", "trained"):
            raise _Invalid(
                f"unfinished (status {record.status!r}): still running, or stopped; continue it "
                f"with `mmvae-bench run {record.model} --run-id {record.run_id} --resume ...` "
                "(the run's options)"
            )
        err = f" ({record.error})" if record.error else ""
        raise _Invalid(f"status is {record.status!r}, not 'ok'{err}")
    metrics = record.metrics
    absent = [k for k in (COND_COHERENCE_BY_SIZE, JOINT_COHERENCE) if k not in metrics]
    if absent:
        raise _Invalid(f"partial record: missing metrics {absent} (run `mmvae-bench evaluate`)")
    train_s = record.timings.get("train_s")
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
        cross = _cross_values(metrics)
        fid_values, extractors = _fid_values(metrics)
        values.update(fid_values)
        protocol = dict(record.protocol)
        if "version" not in protocol:
            raise _Invalid("partial record: protocol has no version")
        identity = config_identity(record)
        sampler = sampler_identity(record)
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise _Invalid(f"malformed: {type(e).__name__}: {e}") from None
    rel = path.relative_to(root) if root and path.is_relative_to(root) else path
    return RunSummary(
        path=rel,
        run_id=record.run_id,
        dataset=record.dataset,
        model=record.model,
        seed=record.seed,
        config=identity,
        config_id=config_id(identity),
        protocol=protocol,
        run=dict(record.run),
        epochs=dict(record.epochs),
        plugins=[p.path for p in record.plugins],
        finished=str(record.finished or record.created),
        values=values,
        extractors=extractors,
        sampler=sampler,
        unconditional_source=str((record.figures.get(PRIOR_GRID) or {}).get("source", "prior")),
        cross=cross,
    )


def collect_runs(runs_dir: Path) -> tuple[list[RunSummary], list[Skipped]]:
    """Every ``results.json`` under ``runs_dir`` (recursively): usable runs and skipped ones."""
    runs_dir = Path(runs_dir)
    found = scan(runs_dir)
    used: list[RunSummary] = []
    skipped = list(found.skipped)
    for path, record in found.records:
        try:
            used.append(summarize(path, record, runs_dir))
        except _Invalid as e:
            rel = str(path.relative_to(runs_dir))
            skipped.append(Skipped(rel, str(e), record.dataset))
    skipped.sort(key=lambda s: s.path)
    return used, skipped
