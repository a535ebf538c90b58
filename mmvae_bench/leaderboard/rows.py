"""Leaderboard rows: run summaries grouped by (model, config, protocol version, sampler),
mean ± std over seeds, ranked, labelled, with the commands that reproduce them."""

from __future__ import annotations

import json
import re
import shlex
import statistics
from collections.abc import Iterable, Mapping
from typing import Any

from mmvae_bench.leaderboard.runs import RunSummary
from mmvae_bench.results import Skipped

__all__ = ["aggregate"]


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
    """The commands that regenerate a row's runs (one line per seed loop).

    Epochs are the plan the run followed (every stage's, so a changed default cannot change
    the run); ``--plugin`` names the plugin files the run loaded.
    """
    r = run.run
    args = [f"mmvae-bench run {run.model} --dataset {run.dataset}"]
    args.append(f"--protocol {r.get('protocol') or run.protocol.get('name')}")
    plan = run.epochs or {k: v for k, v in (r.get("epochs") or {}).items()}
    if plan and len(set(plan.values())) == 1:
        args.append(f"--epochs {next(iter(plan.values()))}")
    else:
        args += [f"--epochs {stage}={n}" for stage, n in plan.items()]
    for k, v in sorted(dict(r.get("overrides") or {}).items()):
        value = ",".join(map(str, v)) if isinstance(v, list | tuple) else v
        args.append(f"--set {k}={value}")
    if r.get("precision") not in (None, "no"):
        args.append(f"--precision {r['precision']}")
    if run.sampler["kind"] != "prior":
        args.append(f"--sampler {run.sampler['kind']}")
    args += [f"--plugin {shlex.quote(p)}" for p in run.plugins]
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
