"""Sweep definitions: a grid over model config fields and seeds, its trials, its results.

Everything about a sweep that does not need Ray: reading a sweep file and the command line into
a checked :class:`SweepConfig` (all errors before Ray starts), the run of each trial, the
summary types, the best configuration per metric and the heat map. Running the trials on Ray
Tune is :mod:`mmvae_bench.tune`.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
import re
import time
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mmvae_bench.config import (
    MAX_SEED,
    Device,
    MemoryFormat,
    Precision,
    RunConfig,
    SamplerKind,
    coerce_value,
    config_fields,
    fid_extractor,
    load_toml,
    make_config,
)
from mmvae_bench.errors import BenchError
from mmvae_bench.eval import protocol as P
from mmvae_bench.io import atomic_write, check_output_folder
from mmvae_bench.names import check_name
from mmvae_bench.plugins import Registry
from mmvae_bench.results import RunRecord, jsonable
from mmvae_bench.tracking import TrackingConfig, tracking_config

__all__ = [
    "COND_1",
    "GRID_ALIASES",
    "STATE_FILE",
    "SWEEP_KEYS",
    "SweepConfig",
    "SweepSummary",
    "TrialSummary",
    "best_configs",
    "check_sweep_inputs",
    "finished_record",
    "heatmap_metrics",
    "load_sweep_file",
    "lower_is_better",
    "main_metrics",
    "merge_sweep_values",
    "parse_pairs",
    "sweep_config",
    "sweep_definition",
    "trial_record",
    "trial_run_config",
    "trial_slug",
    "write_heatmap",
]

# Short names accepted for grid axes and --set keys, shown in the CLI's help.
GRID_ALIASES: Mapping[str, str] = {"flows": "flow_depth"}
# Keys of a sweep file (benchmarks/*.toml); "-" and "_" are interchangeable.
SWEEP_KEYS = (
    "model",
    "dataset",
    "grid",
    "seeds",
    "set",
    "epochs",
    "quick",
    "protocol",
    "threads",
    "out",
    "cache_dir",
    "data_dir",
    "device",
    "precision",
    "memory_format",
    "evaluate",
    "sampler",
    "fid",
    "inception_weights",
    "classifier_weights",
    "plugins",
    "cpus",
    "cpus_per_trial",
    "gpus_per_trial",
    "address",
    "storage",
    "name",
    "resume",
    "max_concurrent",
    "heatmap",
    "tracker",
    "tracking_uri",
)
COND_1 = "cond_coherence_1"  # the sweep's headline metric: mean one-input coherence
_LABELS = {COND_1: "conditional coherence from one modality", "joint_coherence": "joint coherence"}
FID_PREFIX = "fid_"  # fid_<extractor>_<modality>: unconditional FID of a trial (lower is better)
_SAFE = re.compile(r"[^A-Za-z0-9._=-]+")
STATE_FILE = "sweep_config.json"  # what defines the trials; a resume must match it


@dataclass(frozen=True, kw_only=True)
class SweepConfig:
    """A grid sweep: the trials it defines and where and how they run.

    Attributes:
        run: template of every trial's run (its ``seed`` and ``run_id`` are set per trial);
            paths are absolute because Tune changes the trials' working directory.
        grid: ``{model config field: values}``, typed, in grid order; may be empty.
        seeds: the seed axis of the grid.
        name: the sweep's name: Tune experiment ``<storage>/<name>`` and run-id prefix.
        storage: folder of Tune experiments (shared by all nodes on a real cluster).
        plugins: plugin files every trial loads (``--plugin``).
        address: an existing Ray cluster (``auto`` or ``HOST:PORT``); None starts a local one.
        cpus: CPUs of the local Ray (None: all of this machine's).
        cpus_per_trial: CPUs reserved per trial.
        gpus_per_trial: GPUs per trial; a fraction below 1 lets trials share a GPU.
        max_concurrent: at most this many trials at once (None: as resources allow).
        resume: continue the interrupted sweep ``<storage>/<name>``.
        heatmap: the two grid axes of the heat map (x, y); None picks the first two axes.
        tracking_uri: MLflow tracking URI for ``run.tracker == "mlflow"`` (None: the SQLite
            store in ``run.out``); see :mod:`mmvae_bench.tracking`.
    """

    run: RunConfig
    grid: Mapping[str, tuple[Any, ...]] = field(default_factory=dict)
    seeds: tuple[int, ...] = (0,)
    name: str
    storage: Path = Path("sweeps")
    plugins: tuple[Path, ...] = ()
    address: str | None = None
    cpus: int | None = None
    cpus_per_trial: float = 1.0
    gpus_per_trial: float = 0.0
    max_concurrent: int | None = None
    resume: bool = False
    heatmap: tuple[str, str] | None = None
    tracking_uri: str | None = None

    def __post_init__(self) -> None:
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise BenchError(f"seeds must be distinct and non-empty, got {list(self.seeds)}")
        for seed in self.seeds:  # each is a trial's RunConfig.seed: checked here, before Ray
            if not 0 <= seed <= MAX_SEED:
                raise BenchError(f"seed must be in 0..{MAX_SEED} (2**32 - 1), got {seed}")
        for k, values in self.grid.items():
            if not values:
                raise BenchError(f"grid axis '{k}' has no values")
            if len({repr(v) for v in values}) != len(values):
                raise BenchError(f"grid axis '{k}' repeats a value: {list(values)}")
        check_name(self.name, "sweep name")  # a folder under storage, the run-id prefix
        if not self.cpus_per_trial > 0:
            raise BenchError(f"cpus_per_trial must be > 0, got {self.cpus_per_trial}")
        g = self.gpus_per_trial
        if not g >= 0 or (g > 1 and g != int(g)):
            raise BenchError(f"gpus_per_trial must be a fraction <= 1 or a whole number, got {g}")
        if self.run.device == "cuda" and g == 0:
            raise BenchError("device cuda needs gpus_per_trial > 0 (Ray hides GPUs otherwise)")
        if self.cpus is not None and self.cpus < 1:
            raise BenchError(f"cpus must be >= 1, got {self.cpus}")
        if self.cpus is not None and self.address is not None:
            raise BenchError("cpus sizes a local Ray; a cluster's come from `ray start --num-cpus`")
        if self.max_concurrent is not None and self.max_concurrent < 1:
            raise BenchError(f"max_concurrent must be >= 1, got {self.max_concurrent}")
        if self.heatmap is not None:
            bad = [a for a in self.heatmap if a not in self.grid]
            if bad or len(set(self.heatmap)) != 2:
                raise BenchError(
                    f"heatmap takes two distinct grid axes ({', '.join(self.grid) or 'none'}), "
                    f"got {list(self.heatmap)}"
                )
        if self.tracking_uri is not None and self.run.tracker is None:
            raise BenchError("tracking_uri needs tracker = mlflow")
        if self.run.tracker is not None:  # the URI fits the tracker
            TrackingConfig(kind=self.run.tracker, uri=self.tracking_uri)

    @property
    def tracking(self) -> TrackingConfig | None:
        """Where the sweep and its trials are tracked (None: not tracked)."""
        if self.run.tracker is None:
            return None
        return TrackingConfig(kind=self.run.tracker, uri=self.tracking_uri)

    @property
    def path(self) -> Path:
        """The sweep folder: Tune's experiment, ``sweep.json`` and the heat map."""
        return self.storage / self.name

    def trials(self) -> list[tuple[dict[str, Any], int]]:
        """``(params, seed)`` of every trial, in grid order (seeds vary fastest)."""
        axes = list(self.grid)
        return [
            (dict(zip(axes, combo, strict=True)), seed)
            for combo in itertools.product(*self.grid.values())
            for seed in self.seeds
        ]

    def run_id(self, params: Mapping[str, Any], seed: int) -> str:
        """``<name>-<field><value>-...-s<seed>``: names the sweep and the trial."""
        return f"{self.name}-{trial_slug(params, seed)}"


@dataclass
class TrialSummary:
    """One trial at the end of a sweep: its grid point, outcome and headline metrics."""

    run_id: str
    params: dict[str, Any]
    seed: int
    status: str  # ok | failed | unfinished
    metrics: dict[str, float] = field(default_factory=dict)
    error: str | None = None
    node_ip: str | None = None
    reused: bool = False  # its record existed already (a resumed sweep)
    record: str | None = None


@dataclass
class SweepSummary:
    """The end of a sweep: every trial, the best config per metric and the files written."""

    name: str
    path: Path
    trials: list[TrialSummary]
    best: dict[str, dict[str, Any]]
    axes: list[str]
    heatmap: Path | None
    wall_s: float
    heatmaps: dict[str, Path] = field(default_factory=dict)  # metric -> heat map, COND_1's too

    def as_record(self) -> dict[str, Any]:
        """JSON-able form (``sweep.json``)."""
        d = dataclasses.asdict(self)
        d["path"] = str(self.path)
        d["heatmap"] = str(self.heatmap) if self.heatmap else None
        d["heatmaps"] = {k: str(v) for k, v in self.heatmaps.items()}
        return d


# ---------------------------------------------------------------------------------------------
# Building a SweepConfig from a sweep file and the command line (all checks before Ray starts)
# ---------------------------------------------------------------------------------------------


def parse_pairs(items: Sequence[str], what: str, *, lists: bool = False) -> dict[str, Any]:
    """``["k=v", ...]`` -> ``{k: v}``; with ``lists``, ``v`` is split at commas into a list."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key or not raw.strip():
            example = "beta=0.5,1,2.5" if lists else "key=value"
            raise BenchError(f"{what} expects {example}, got {item!r}")
        if key in out:
            raise BenchError(f"{what} {key} given twice")
        out[key] = [v.strip() for v in raw.split(",")] if lists else raw.strip()
    return out


def load_sweep_file(path: Path) -> dict[str, Any]:
    """Read a sweep TOML file; unknown keys are an error listing the valid ones."""
    raw = load_toml(Path(path))
    values = {k.replace("-", "_"): v for k, v in raw.items()}
    unknown = sorted(k for k in values if k not in SWEEP_KEYS)
    if unknown:
        raise BenchError(f"{path}: unknown key(s) {unknown}; valid: {', '.join(SWEEP_KEYS)}")
    for key in ("grid", "set"):
        if key in values and not isinstance(values[key], Mapping):
            raise BenchError(f"{path}: '{key}' must be a table ([{key}] with field = value)")
    return values


def merge_sweep_values(base: Mapping[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    """``over`` (the command line) wins over ``base`` (a sweep file); grid and set per field."""
    out = dict(base)
    for k, v in over.items():
        if k in ("grid", "set") and isinstance(out.get(k), Mapping):
            out[k] = {**out[k], **v}
        else:
            out[k] = v
    return out


def sweep_config(values: Mapping[str, Any], registry: Registry) -> SweepConfig:
    """Validate merged sweep values against the registry and build the :class:`SweepConfig`.

    Every grid point's model config is built once here, so a bad field or value fails before
    Ray starts, naming it.
    """
    values = {k.replace("-", "_"): v for k, v in values.items() if v is not None}
    unknown = sorted(k for k in values if k not in SWEEP_KEYS)
    if unknown:
        raise BenchError(f"unknown sweep key(s) {unknown}; valid: {', '.join(SWEEP_KEYS)}")
    if "model" not in values:
        raise BenchError("a sweep needs a model (the MODEL argument or `model` in the file)")
    model = str(values["model"])
    dataset = str(values.get("dataset", "polymnist-lite"))
    entry = registry.model(model)
    registry.dataset(dataset)
    fields = config_fields(entry.config)

    def field_name(key: str, what: str) -> str:
        name = GRID_ALIASES.get(key, key).replace("-", "_")
        if name not in fields:
            aliases = ", ".join(f"{a} = {f}" for a, f in GRID_ALIASES.items())
            raise BenchError(
                f"unknown config field '{key}' in {what} for {entry.config.__name__}; "
                f"valid: {', '.join(fields)} (aliases: {aliases})"
            )
        return name

    grid: dict[str, tuple[Any, ...]] = {}
    for key, raw in dict(values.get("grid", {})).items():
        name = field_name(key, "--grid")
        if name in grid:
            raise BenchError(f"--grid {name} given twice (once as an alias)")
        items = raw if isinstance(raw, list | tuple) else [raw]
        grid[name] = tuple(coerce_value(name, v, fields[name]) for v in items)
    overrides: dict[str, Any] = {}
    for key, raw in dict(values.get("set", {})).items():
        name = field_name(key, "--set")
        if name in grid:
            raise BenchError(f"'{name}' is both a grid axis and --set; keep one")
        overrides[name] = coerce_value(name, raw, fields[name])
    base = {**dict(entry.defaults.get(dataset, {})), **overrides}
    for combo in itertools.product(*grid.values()):
        point = dict(zip(grid, combo, strict=True))
        try:
            make_config(entry.config, {**base, **point})
        except BenchError as e:
            raise BenchError(f"grid point {point}: {e}") from None

    # The tracker's package is imported now: a missing one fails before Ray.
    tracking = tracking_config(values.get("tracker"), values.get("tracking_uri"))
    run = RunConfig(
        model=model,
        dataset=dataset,
        device=coerce_value("device", values.get("device", "auto"), Device),
        threads=coerce_value("threads", values.get("threads", 1), int),
        out=_abs(values.get("out", "runs")),
        protocol=_protocol(values),
        data_dir=_abs(values["data_dir"]) if values.get("data_dir") else None,
        cache_dir=_abs(values.get("cache_dir", ".cache/mmvae-bench")),
        epochs=_epochs(values.get("epochs")),
        overrides=overrides,
        precision=coerce_value("precision", values.get("precision", "no"), Precision),
        memory_format=coerce_value(
            "memory_format", values.get("memory_format", "contiguous"), MemoryFormat
        ),
        evaluate=_bool(values, "evaluate", True),
        sampler=coerce_value("sampler", values.get("sampler", "prior"), SamplerKind),
        fid=fid_extractor(values.get("fid"), values.get("inception_weights")),
        inception_weights=_path_or_none(values, "inception_weights"),
        classifier_weights=_path_or_none(values, "classifier_weights"),
        plugins=tuple(_abs(p) for p in values.get("plugins", ())),
        tracker=tracking.kind if tracking else None,
    )
    P.get_protocol(run.protocol)
    if run.fid == "inception":
        from mmvae_bench.runner import run_fid_settings

        run_fid_settings(run)  # the weights file exists: fail now, not in every trial
    if _bool(values, "resume") and not values.get("name"):
        raise BenchError("--resume needs the --name of the sweep to continue")
    check_output_folder(run.out, "--out")
    storage = check_output_folder(_abs(values.get("storage", "sweeps")), "--storage")
    if _bool(values, "resume") and not (storage / str(values["name"]) / STATE_FILE).is_file():
        raise BenchError(
            f"no sweep to resume at {storage / str(values['name'])} (check --name and --storage)"
        )
    heatmap = values.get("heatmap")
    if isinstance(heatmap, str):
        heatmap = heatmap.split(",")
    return SweepConfig(
        run=run,
        grid=grid,
        seeds=_seeds(values.get("seeds", 1)),
        name=str(values.get("name") or f"{model}-{dataset}-{time.strftime('%Y%m%d-%H%M%S')}"),
        storage=storage,
        plugins=tuple(_abs(p) for p in values.get("plugins", ())),
        address=values.get("address") or None,
        cpus=coerce_value("cpus", values["cpus"], int) if "cpus" in values else None,
        cpus_per_trial=coerce_value("cpus_per_trial", values.get("cpus_per_trial", 1), float),
        gpus_per_trial=coerce_value("gpus_per_trial", values.get("gpus_per_trial", 0), float),
        max_concurrent=(
            coerce_value("max_concurrent", values["max_concurrent"], int)
            if "max_concurrent" in values
            else None
        ),
        resume=_bool(values, "resume"),
        heatmap=(
            tuple(GRID_ALIASES.get(a.strip(), a.strip()) for a in heatmap) if heatmap else None
        ),
        tracking_uri=tracking.uri if tracking else None,
    )


def _protocol(values: Mapping[str, Any]) -> str:
    """``quick = true`` or ``protocol = NAME`` (default full); naming different ones is an error."""
    protocol = values.get("protocol")
    if _bool(values, "quick"):
        if protocol not in (None, "quick"):
            raise BenchError(f"--quick conflicts with --protocol {protocol}; give one of them")
        return "quick"
    return str(protocol or "full")


def check_sweep_inputs(cfg: SweepConfig, registry: Registry) -> None:
    """What every trial's run checks before it claims its folder, checked once before Ray.

    :func:`sweep_config` checks the settings; this checks them against the data, as each
    trial's ``run`` would: the dataset loads (a published one needs its files), each grid
    point's model builds and has the stages ``epochs`` names, and given classifier weights fit
    the dataset. Each would otherwise fail in every trial, after Ray started.
    """
    import torch

    from mmvae_bench.eval.classifiers import get_classifiers
    from mmvae_bench.runner import resolve_model_config, run_dataset
    from mmvae_bench.train import epoch_plan

    run = cfg.run
    dataset = run_dataset(registry, dataclasses.replace(run, seed=cfg.seeds[0]))
    entry = registry.model(run.model)
    with torch.random.fork_rng(devices=[]):  # building models draws from the global RNG
        for params, _ in cfg.trials()[:: len(cfg.seeds)]:  # each grid point once
            config = resolve_model_config(entry, dataset, {**run.overrides, **params})
            try:
                epoch_plan(entry.cls(dataset, config).stages, run.epochs)
            except BenchError as e:
                raise BenchError(f"grid point {params}: {e}" if params else str(e)) from None
    if run.evaluate and run.classifier_weights is not None:
        get_classifiers(
            dataset, Path(run.cache_dir), device="cpu", weights_dir=run.classifier_weights
        )


def _path_or_none(values: Mapping[str, Any], key: str) -> Path | None:
    return _abs(values[key]) if values.get(key) else None


def _abs(p: Any) -> Path:
    return Path(str(p)).expanduser().resolve()


def _bool(values: Mapping[str, Any], key: str, default: bool = False) -> bool:
    return coerce_value(key, values.get(key, default), bool)


def _seeds(raw: Any) -> tuple[int, ...]:
    """``3`` -> seeds 0, 1, 2; a list (or ``"0,5,7"``) -> those seeds."""
    if isinstance(raw, str) and "," in raw:
        raw = raw.split(",")
    if isinstance(raw, list | tuple):
        return tuple(coerce_value("seeds", s, int) for s in raw)
    n = coerce_value("seeds", raw, int)
    if n < 1:
        raise BenchError(f"seeds must be >= 1 (a count) or a list of seeds, got {n}")
    return tuple(range(n))


def _epochs(raw: Any) -> dict[str, int]:
    """A sweep file's ``epochs = 5`` (every stage) or ``[epochs] joint = 5``; the CLI's dict."""
    if raw is None:
        return {}
    items = raw.items() if isinstance(raw, Mapping) else [("*", raw)]
    out = {str(k): coerce_value(f"epochs {k}", v, int) for k, v in items}
    bad = {k: n for k, n in out.items() if n < 0}
    if bad:
        raise BenchError(f"epochs must be >= 0, got {bad}")
    return out


def _fmt(v: Any) -> str:
    if isinstance(v, bool):
        return str(v).lower()
    if v is None:
        return "none"
    return repr(v) if isinstance(v, float) else str(v)


def main_metrics(record: RunRecord) -> dict[str, float]:
    """A record's headline numbers: ``cond_coherence_<|S|>`` (mean over S), joint coherence and
    ``fid_<extractor>_<modality>``, each modality's unconditional FID."""
    m = record.metrics
    by_size = m.get(P.COND_COHERENCE_BY_SIZE, {})
    out = {f"cond_coherence_{k}": float(v["mean"]) for k, v in by_size.items() if "mean" in v}
    if P.JOINT_COHERENCE in m:
        out["joint_coherence"] = float(m[P.JOINT_COHERENCE])
    for extractor, per_modality in m.get(P.FID, {}).items():
        for modality, values in per_modality.items():
            if isinstance(values, Mapping) and values.get("unconditional") is not None:
                out[f"{FID_PREFIX}{extractor}_{modality}"] = float(values["unconditional"])
    return out


def lower_is_better(metric: str) -> bool:
    """Whether a smaller ``metric`` (a :func:`main_metrics` key) is the better one: FIDs."""
    return metric.startswith(FID_PREFIX)


def heatmap_metrics(trials: Sequence[TrialSummary]) -> list[str]:
    """The metrics a sweep draws as heat maps: one-input coherence, joint coherence, each FID
    (those some trial has)."""
    have = {k for t in trials for k in t.metrics}
    fids = sorted(k for k in have if lower_is_better(k))
    return [k for k in (COND_1, "joint_coherence", *fids) if k in have]


def trial_slug(params: Mapping[str, Any], seed: int) -> str:
    """``beta0.5-flow_depth2-s0``: the trial's grid point, safe in file names."""
    return _SAFE.sub("_", "-".join([*(f"{k}{_fmt(v)}" for k, v in params.items()), f"s{seed}"]))


def sweep_definition(cfg: SweepConfig) -> dict[str, Any]:
    """What defines the trials, JSON-able: every trial gets it, and a resume must match it."""
    run = {k: v for k, v in dataclasses.asdict(cfg.run).items() if k not in ("seed", "run_id")}
    return jsonable(
        {
            "name": cfg.name,
            "run": run,
            "grid": {k: list(v) for k, v in cfg.grid.items()},
            "seeds": list(cfg.seeds),
            "plugins": [str(p) for p in cfg.plugins],
        }
    )


def trial_run_config(config: Mapping[str, Any], plan: Mapping[str, Any]) -> RunConfig:
    """The run of one trial: the sweep's template at this grid point and seed."""
    # The plan is JSON: turn the path fields of RunConfig back into Paths.
    paths = {k for k, t in config_fields(RunConfig).items() if Path in (t, *typing.get_args(t))}
    base = {
        k: (tuple(Path(p) for p in v) if isinstance(v, list) else Path(v))
        if k in paths and v is not None
        else v
        for k, v in plan["run"].items()
    }
    params = {a: config["params"][a] for a in plan["grid"]}
    return RunConfig(
        **{
            **base,
            "overrides": {**base["overrides"], **params},
            "seed": config["seed"],
            "run_id": f"{plan['name']}-{trial_slug(params, config['seed'])}",
        }
    )


def trial_record(cfg: RunConfig) -> RunRecord | None:
    """The trial's run record, if its folder holds a readable one (else None)."""
    try:
        return RunRecord.load(Path(cfg.out) / str(cfg.run_id))
    except BenchError:
        return None


def finished_record(cfg: RunConfig) -> RunRecord | None:
    """The trial's ``ok`` record if this very run finished before (Tune's state can lag)."""
    record = trial_record(cfg)
    if record is None or record.status != "ok":
        return None
    keys = ("model", "dataset", "seed", "epochs", "overrides", "protocol", "evaluate", "sampler")
    keys += ("fid", "classifier_weights")
    ran = record.run
    same = all(jsonable(ran.get(k)) == jsonable(getattr(cfg, k)) for k in keys)
    return record if same else None


def best_configs(trials: Sequence[TrialSummary]) -> dict[str, dict[str, Any]]:
    """Per metric, the grid point with the best mean over its finished seeds (highest; lowest
    for FIDs, see :func:`lower_is_better`)."""
    groups: dict[str, list[TrialSummary]] = {}
    for t in trials:
        groups.setdefault(json.dumps(t.params, sort_keys=True, default=str), []).append(t)
    metrics = sorted({k for t in trials for k in t.metrics})
    best: dict[str, dict[str, Any]] = {}
    for m in metrics:
        for ts in groups.values():
            vals = [t.metrics[m] for t in ts if t.status == "ok" and m in t.metrics]
            if not vals:
                continue
            mean = sum(vals) / len(vals)
            better = mean < best[m]["mean"] if m in best and lower_is_better(m) else None
            if m not in best or (better if better is not None else mean > best[m]["mean"]):
                std = math.sqrt(sum((v - mean) ** 2 for v in vals) / len(vals))
                best[m] = {
                    "params": ts[0].params,
                    "mean": mean,
                    "std": std,
                    "seeds": len(vals),
                    "of": len(ts),
                }
    return best


def write_heatmap(
    trials: Sequence[TrialSummary],
    grid: Mapping[str, Sequence[Any]],
    axes: tuple[str, ...],
    path: Path,
    *,
    metric: str = COND_1,
    title: str = "",
) -> Path:
    """Heat map of ``metric`` over one or two grid axes, each cell the mean over its trials.

    A cell averages every finished trial at that point (all seeds, and the other axes when the
    grid has more than two); it shows the mean and, when some trials failed, how many counted.
    Coherences are drawn on [0, 1]; other metrics (FID) on the range of the cells, with the
    colour scale reversed where lower is better, so the brightest cell is always the best.
    Written atomically (temp file + rename) as a PNG.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    x_axis = axes[0]
    y_axis = axes[1] if len(axes) > 1 else None
    xs = list(grid[x_axis])
    ys = list(grid[y_axis]) if y_axis else [None]
    mean = np.full((len(ys), len(xs)), np.nan)
    counts = [[(0, 0) for _ in xs] for _ in ys]
    failed = [[False for _ in xs] for _ in ys]
    for i, y in enumerate(ys):
        for j, x in enumerate(xs):
            cell = [
                t
                for t in trials
                if t.params[x_axis] == x and (y_axis is None or t.params[y_axis] == y)
            ]
            vals = [t.metrics[metric] for t in cell if t.status == "ok" and metric in t.metrics]
            counts[i][j] = (len(vals), len(cell))
            failed[i][j] = any(t.status == "failed" for t in cell)
            if vals:
                mean[i, j] = sum(vals) / len(vals)
    fig, ax = plt.subplots(figsize=(1.2 * len(xs) + 2.5, 0.9 * len(ys) + 1.8))
    coherence = "coherence" in metric
    lo, hi = (0.0, 1.0)
    if not coherence and np.isfinite(mean).any():
        lo, hi = float(np.nanmin(mean)), float(np.nanmax(mean))
        hi = hi if hi > lo else lo + 1.0
    name = "viridis_r" if lower_is_better(metric) else "viridis"
    cmap = matplotlib.colormaps[name].with_extremes(bad="lightgrey")  # grey: no trial ok
    img = ax.imshow(np.ma.masked_invalid(mean), cmap=cmap, vmin=lo, vmax=hi)
    for i in range(len(ys)):
        for j in range(len(xs)):
            n, total = counts[i][j]
            value = f"{mean[i, j]:.3f}" if coherence else f"{mean[i, j]:.4g}"
            text = value if n else ("failed" if failed[i][j] else "n/a")
            if 0 < n < total:
                text += f"\n{n}/{total}"
            shade = (mean[i, j] - lo) / (hi - lo)  # where the cell sits on the colour scale
            light = n > 0 and (1 - shade if lower_is_better(metric) else shade) < 0.6
            ax.text(j, i, text, ha="center", va="center", fontsize=8, color="w" if light else "k")
    ax.set_xticks(range(len(xs)), [_fmt(x) for x in xs])
    ax.set_yticks(range(len(ys)) if y_axis else [], [_fmt(y) for y in ys] if y_axis else [])
    ax.set_xlabel(x_axis)
    if y_axis:
        ax.set_ylabel(y_axis)
    others = [a for a in grid if a not in axes]
    over = ", ".join(["seeds", *others])
    label = _LABELS.get(metric, metric)
    if lower_is_better(metric):
        label = f"unconditional FID {metric.removeprefix(FID_PREFIX)}, lower is better"
    ax.set_title(f"{title}\n{label} (mean over {over})".strip(), fontsize=9)
    fig.colorbar(img, ax=ax, fraction=0.046, pad=0.04)
    fig.tight_layout()
    try:
        atomic_write(Path(path), lambda f: fig.savefig(f, format="png", dpi=120))
    finally:
        plt.close(fig)
    return Path(path)
