"""Typed run configs: parsing ``--set key=value`` against config dataclasses, TOML loading."""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import tomllib

from mmvae_bench.errors import BenchError

__all__ = [
    "DEFAULT_CACHE_DIR",
    "HMCName",
    "MAX_SEED",
    "ProtocolName",
    "RunConfig",
    "TrackerKind",
    "coerce_value",
    "config_fields",
    "fid_extractor",
    "load_toml",
    "make_config",
    "parse_assignments",
]

Device = Literal["cpu", "cuda", "auto"]
Precision = Literal["no", "bf16", "fp16"]
# The nets' memory format while a stage trains, see mmvae_bench.memory_format
MemoryFormat = Literal["contiguous", "channels-last", "auto"]
SamplerKind = Literal["prior", "gmm", "flow"]  # latent samplers, see mmvae_bench.samplers
FIDKind = Literal["classifier", "inception"]  # FID feature extractors, see eval/fid.py
ProtocolName = Literal["full", "quick"]  # evaluation protocols, see eval/protocol.py
HMCName = Literal["paper", "adaptive"]  # subset-posterior samplers, see hmc.HMCKind
TrackerKind = Literal["mlflow", "tensorboard"]  # experiment trackers, see tracking.py
LRSchedule = Literal["constant", "cosine"]  # learning-rate schedules, see train.TrainSettings
DEFAULT_CACHE_DIR = Path(".cache/mmvae-bench")  # built-in datasets, classifiers, FID statistics
# Seeds reach torch, NumPy and scikit-learn; the last two take 0 <= seed < 2**32.
MAX_SEED = 2**32 - 1


@dataclass(frozen=True, kw_only=True)
class RunConfig:
    """Everything about a run that is not the model's hyperparameters.

    Attributes:
        model: registry name of the model.
        dataset: registry name of the dataset.
        seed: seed of model init, batching and sampling.
        device: ``cpu``, ``cuda`` or ``auto`` (cuda when available).
        threads: torch intra-op threads (see the CLI's ``--threads`` for the default's reason);
            ``"auto"``: training keeps the faster of 1 thread and every core, re-measured while
            it runs (:class:`mmvae_bench.threads.ThreadGovernor`).
        out: folder that receives ``<run-id>/``.
        protocol: evaluation protocol name (``full`` or ``quick``).
        hmc: the protocol's subset-posterior sampler (``paper`` or ``adaptive``); None: the
            protocol's default (:data:`mmvae_bench.eval.protocol.DEFAULT_HMC`).
        data_dir: where published datasets live.
        cache_dir: where built-in datasets and classifiers are cached.
        epochs: per-stage epoch overrides, ``{stage: epochs}``; key ``"*"`` sets every stage.
        overrides: model config fields set by the user (``--set``), already typed.
        precision: mixed precision through accelerate (``no``, ``bf16``, ``fp16``).
        compile: wrap the model's hot modules with ``torch.compile``.
        memory_format: the nets' memory format while a stage trains: ``contiguous``,
            ``channels-last``, or ``auto`` (each stage keeps the faster, measured at its start;
            :mod:`mmvae_bench.memory_format`). Checkpoints are contiguous either way.
        evaluate: run the evaluation protocol after training.
        classifier_weights: folder of coherence-classifier weights ``<modality>.pt`` (published
            or the user's) used instead of the cached/trained ones.
        sampler: where joint coherence and unconditional FID draw z from: ``prior``, or a
            ``gmm``/``flow`` fitted to the training set's joint embeddings after training
            (:mod:`mmvae_bench.samplers`).
        fid: FID feature extractor for the evaluation after training (``classifier`` or
            ``inception``); None: no FID (``mmvae-bench evaluate --fid`` adds it later).
        inception_weights: the Inception v3 weights file, for ``fid="inception"``.
        run_id: fixed run id (default: model-dataset-seed-timestamp), a single safe path
            component (letters, digits, ``. _ + = -``).
        plugins: ``--plugin`` files the run loads (recorded with their sha256).
        tracker: the experiment tracker the run reports to (``mlflow``, ``tensorboard``;
            :mod:`mmvae_bench.tracking`), None: none. Recorded; the tracking URI is not.
        preset: a named preset (``paper``: the published runs' architecture and training,
            :mod:`mmvae_bench.presets`); None: the plugin's defaults for the dataset.
        validation: fraction of the training split held out for validation (0 <= v < 1);
            None: the preset's, else 0 (none).
        validation_seed: seed of the held-out draw (independent of ``seed``).
        lr_patience: ReduceLROnPlateau patience on the validation loss (the training loss
            without a split); None: the preset's, else no schedule.
        keep_best: end each stage with its lowest-validation-loss parameters; None: the
            preset's, else off. Needs a validation split.
        lr_schedule: ``cosine``: each stage's learning rate decays to 0 along a half cosine
            over its steps; None: constant (or the preset's ReduceLROnPlateau).
    """

    model: str
    dataset: str = "polymnist-lite"
    seed: int = 0
    device: Device = "auto"
    threads: int | Literal["auto"] = 1
    out: Path = Path("runs")
    protocol: ProtocolName = "full"
    hmc: HMCName | None = None
    data_dir: Path | None = None
    cache_dir: Path = DEFAULT_CACHE_DIR
    epochs: Mapping[str, int] = field(default_factory=dict)
    overrides: Mapping[str, Any] = field(default_factory=dict)
    precision: Precision = "no"
    compile: bool = False
    memory_format: MemoryFormat = "contiguous"
    evaluate: bool = True
    classifier_weights: Path | None = None
    sampler: SamplerKind = "prior"
    fid: FIDKind | None = None
    inception_weights: Path | None = None
    run_id: str | None = None
    plugins: tuple[Path, ...] = ()
    tracker: TrackerKind | None = None
    preset: str | None = None
    validation: float | None = None
    validation_seed: int = 42
    lr_patience: int | None = None
    keep_best: bool | None = None
    lr_schedule: LRSchedule | None = None

    def __post_init__(self) -> None:
        for name in ("model", "dataset", "device", "protocol", "precision", "memory_format"):
            value = getattr(self, name)
            if not isinstance(value, str):
                raise BenchError(f"{name} must be a string, got {value!r}")
        for name, typ in (
            ("device", Device),
            ("protocol", ProtocolName),
            ("precision", Precision),
            ("memory_format", MemoryFormat),
        ):
            coerce_value(name, getattr(self, name), typ)
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise BenchError(f"seed must be an integer, got {self.seed!r}")
        if not 0 <= self.seed <= MAX_SEED:
            raise BenchError(f"seed must be in 0..{MAX_SEED} (2**32 - 1), got {self.seed}")
        if self.run_id is not None:
            from mmvae_bench.names import check_name

            check_name(self.run_id, "run id")
        if self.threads != "auto" and (
            isinstance(self.threads, bool) or not isinstance(self.threads, int) or self.threads < 1
        ):
            raise BenchError(f"threads must be >= 1 or 'auto', got {self.threads!r}")
        if self.sampler not in typing.get_args(SamplerKind):
            raise BenchError(
                f"sampler must be one of {list(typing.get_args(SamplerKind))}, got {self.sampler!r}"
            )
        if self.fid is not None and self.fid not in typing.get_args(FIDKind):
            raise BenchError(
                f"fid must be one of {list(typing.get_args(FIDKind))} or None, got {self.fid!r}"
            )
        if self.tracker is not None:
            coerce_value("tracker", self.tracker, TrackerKind)
        if self.hmc is not None:
            coerce_value("hmc", self.hmc, HMCName)
        if self.inception_weights is not None and self.fid != "inception":
            raise BenchError("inception_weights is only used with fid='inception'")
        for stage, n in self.epochs.items():
            if n < 0:
                raise BenchError(f"epochs for stage '{stage}' must be >= 0, got {n}")
        if self.validation is not None and not 0.0 <= self.validation < 1.0:
            raise BenchError(f"validation must be in [0, 1), got {self.validation}")
        if self.lr_patience is not None and self.lr_patience < 0:
            raise BenchError(f"lr_patience must be >= 0, got {self.lr_patience}")
        if self.lr_schedule is not None:
            coerce_value("lr_schedule", self.lr_schedule, LRSchedule)
            if self.lr_patience is not None:
                raise BenchError("lr_schedule and lr_patience exclude each other: pick one")


def fid_extractor(
    requested: Any, inception_weights: Any = None, *, what: str = "fid"
) -> FIDKind | None:
    """The FID extractor a request names: None/False -> no FID, True -> the default, else a kind.

    The default is ``inception`` when Inception weights are given, else ``classifier`` (offline).
    Strings from the CLI or a sweep file (``"true"``, ``"classifier"``, ...) are accepted; a
    bad value is a :class:`BenchError` naming ``what``.
    """
    if isinstance(requested, str) and requested.lower() not in ("true", "false", "none"):
        return coerce_value(what, requested, FIDKind)
    if requested is None or not coerce_value(what, requested, bool):
        return None
    return "inception" if inception_weights else "classifier"


def config_fields(cls: type) -> dict[str, Any]:
    """``{field_name: resolved type}`` of a config dataclass (init fields only)."""
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls) if f.init}


def _is_none_type(t: Any) -> bool:
    return t is type(None)


def coerce_value(name: str, raw: Any, typ: Any) -> Any:
    """Convert ``raw`` (a string from the CLI or a TOML value) to ``typ``; errors name the field."""
    origin = typing.get_origin(typ)
    args = typing.get_args(typ)
    if origin in (typing.Union, types.UnionType):
        if type(None) in args and (
            raw is None or (isinstance(raw, str) and raw.lower() in ("none", "null"))
        ):
            return None
        errors = []
        for a in args:
            if _is_none_type(a):
                continue
            try:
                return coerce_value(name, raw, a)
            except BenchError as e:
                errors.append(str(e))
        raise BenchError(errors[0] if errors else f"{name}: cannot parse {raw!r}")
    if origin is Literal:
        for a in args:
            if raw == a or (isinstance(raw, str) and str(a) == raw):
                return a
        raise BenchError(f"{name} must be one of {list(args)}, got {raw!r}")
    if origin in (tuple, list):
        items = raw.split(",") if isinstance(raw, str) else list(raw)
        inner = args[0] if args else str
        vals = [coerce_value(name, i.strip() if isinstance(i, str) else i, inner) for i in items]
        return tuple(vals) if origin is tuple else vals
    if typ is bool:
        if isinstance(raw, bool):
            return raw
        s = str(raw).lower()
        if s in ("1", "true", "yes", "on"):
            return True
        if s in ("0", "false", "no", "off"):
            return False
        raise BenchError(f"{name} must be true or false, got {raw!r}")
    if typ is int:
        if isinstance(raw, bool):
            raise BenchError(f"{name} must be an integer, got {raw!r}")
        if isinstance(raw, int):
            return raw
        try:
            return int(str(raw))
        except ValueError:
            raise BenchError(f"{name} must be an integer, got {raw!r}") from None
    if typ is float:
        if isinstance(raw, bool):
            raise BenchError(f"{name} must be a number, got {raw!r}")
        try:
            value = float(raw) if isinstance(raw, int | float) else float(str(raw))
        except (ValueError, OverflowError):
            raise BenchError(f"{name} must be a number, got {raw!r}") from None
        if not math.isfinite(value):
            raise BenchError(f"{name} must be a finite number, got {raw!r}")
        return value
    if typ is str:
        return str(raw)
    if typ is Path:
        return Path(str(raw))
    raise BenchError(f"{name}: unsupported field type {typ!r}")


def parse_assignments(items: list[str], cls: type) -> dict[str, Any]:
    """Parse ``key=value`` strings into typed values for the fields of ``cls``.

    Unknown keys raise :class:`BenchError` listing the valid ones.
    """
    fields = config_fields(cls)
    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or not key:
            raise BenchError(f"--set expects key=value, got {item!r}")
        if key not in fields:
            raise BenchError(
                f"unknown config field '{key}' for {cls.__name__}; valid: {', '.join(fields)}"
            )
        out[key] = coerce_value(key, raw.strip(), fields[key])
    return out


def make_config(cls: type, values: Mapping[str, Any]) -> Any:
    """Build config ``cls`` from ``values`` (typed or raw); unknown keys are an error."""
    fields = config_fields(cls)
    unknown = [k for k in values if k not in fields]
    if unknown:
        raise BenchError(
            f"unknown config field(s) {unknown} for {cls.__name__}; valid: {', '.join(fields)}"
        )
    typed = {k: coerce_value(k, v, fields[k]) for k, v in values.items()}
    try:
        return cls(**typed)
    except TypeError as e:  # a required field missing
        raise BenchError(f"{cls.__name__}: {e}") from None


def load_toml(path: Path) -> dict[str, Any]:
    """Read a TOML file; a missing or malformed file is a :class:`BenchError` naming it."""
    if Path(path).is_dir():
        raise BenchError(f"config file {path} is a folder, not a TOML file")
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        raise BenchError(f"config file not found: {path}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise BenchError(f"config file {path} is unreadable: {e}") from None
    except tomllib.TOMLDecodeError as e:
        raise BenchError(f"{path}: invalid TOML: {e}") from None
