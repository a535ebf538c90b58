"""The run record: ``runs/<run-id>/results.json``, one typed and versioned schema.

This module is the only reader and writer of run records. :class:`RunRecord` is the schema;
:meth:`RunRecord.load` reads one record strictly (a clear :class:`BenchError` naming the file
and the field), :func:`scan` reads every record under a folder leniently (bad records are
listed with their reason, never abort a leaderboard), :meth:`RunRecord.save` writes atomically.
Records written by older versions are migrated on read (:func:`migrate`); a record from a newer
version is refused rather than misread.

The run folder itself (claiming a run id, overwriting, resuming) is :mod:`mmvae_bench.rundir`.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import importlib.metadata
import json
import os
import platform
import subprocess
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from mmvae_bench.errors import BenchError
from mmvae_bench.io import atomic_write_json
from mmvae_bench.names import check_name

if TYPE_CHECKING:
    import torch

__all__ = [
    "COND_GRID",
    "PRIOR_GRID",
    "RECORD_FILE",
    "REQUIRED_KEYS",
    "SCHEMA_VERSION",
    "ImportRecord",
    "PluginFile",
    "RunRecord",
    "RunStatus",
    "ScanResult",
    "Skipped",
    "StageRecord",
    "check_name",
    "cpu_name",
    "environment",
    "file_sha256",
    "git_revision",
    "jsonable",
    "migrate",
    "now",
    "scan",
]

#: Version of the record schema this code writes. 1: the untyped record of mmvae-bench <= 0.1
#: (no ``epochs``, ``plugins``, ``command``, ``uid``); 2: without ``preset``, ``imported`` and
#: the stages' ``validation_loss``/``best_epoch``; 3: without the stages' ``thread_steps``;
#: 4: without the stages' ``memory_format``; 5: this schema.
SCHEMA_VERSION = 5
RECORD_FILE = "results.json"
# The sample grids in a run folder (written by `run` and `evaluate`, linked by leaderboards).
COND_GRID = "samples.png"
PRIOR_GRID = "prior_samples.png"  # unconditional: the run's latent sampler (record: figures)

#: ``running``: the folder is claimed and training has not finished (a killed run stays so);
#: ``trained``: every stage finished, evaluation pending; ``ok``: trained and evaluated (or
#: trained with ``--no-evaluate``); ``failed``: stopped by an error (``error`` says which).
RunStatus = Literal["running", "trained", "ok", "failed"]

# Keys every record has from the moment its run folder is claimed (after migration).
REQUIRED_KEYS = (
    "schema",
    "run_id",
    "status",
    "model",
    "dataset",
    "seed",
    "config",
    "run",
    "protocol",
    "environment",
    "created",
    "epochs",
    "stages",
    "metrics",
    "timings",
)
_PACKAGES = ("mmvae-bench", "torch", "zuko", "accelerate", "ray", "torch-fidelity", "numpy")


# -- the schema ------------------------------------------------------------------------------
@dataclass
class StageRecord:
    """What one training stage did (the trainer's ``StageReport``)."""

    name: str
    epochs: int
    steps: int
    samples: int
    wall_s: float
    samples_per_s: float
    loss: dict[str, float]
    precompute_s: float = 0.0
    validation_loss: float | None = None  # the kept parameters' held-out loss (if any)
    best_epoch: int | None = None  # the kept epoch (1-based) under keep_best
    # ``--threads auto``: training steps run at each torch thread count, ``{"1": n, "2": m}``
    thread_steps: dict[str, int] = field(default_factory=dict)
    # ``--memory-format``: the nets' format in this stage; under ``auto`` each format's median
    # probe step, ms (:mod:`mmvae_bench.memory_format`)
    memory_format: str = "contiguous"
    memory_format_probe_ms: dict[str, float] = field(default_factory=dict)


@dataclass
class ImportRecord:
    """Where an imported model's weights came from (``mmvae-bench import``).

    Attributes:
        source: the library that trained it (``multivae``).
        path: the folder it was imported from, absolute.
        model_class: the source library's model class (``JNF``, ``MoPoE``, ...).
        files: ``{file name: sha256}`` of the files read.
        version: the source library's version that saved it, when the folder says.
    """

    source: str
    path: str
    model_class: str
    files: dict[str, str]
    version: str | None = None


@dataclass
class PluginFile:
    """A ``--plugin`` file the run loaded: where it was and what it held."""

    path: str
    sha256: str


@dataclass
class RunRecord:
    """One run: what ran (config, epochs, plugins, command), where, and what it measured.

    Attributes:
        schema: :data:`SCHEMA_VERSION` of the writer (older records are migrated on read).
        run_id: the run folder's name.
        status: see :data:`RunStatus`.
        model, dataset: registry names.
        seed: the run's seed.
        config: the model config that ran (``dataclasses.asdict``), registry defaults included.
        run: the run settings as given (:class:`~mmvae_bench.config.RunConfig`, JSON).
        epochs: the epochs each stage was set to run, in stage order, after ``--epochs``
            overrides: the effective plan, not the defaults.
        protocol: the evaluation protocol's settings (version included).
        environment: package versions, git revision, device, threads, platform.
        stages: the finished stages, in order.
        metrics: the evaluation's metrics, keyed by the constants of ``eval/protocol.py``.
        timings: seconds per phase (``train_s``, ``sampler_s``, ``eval_s``).
        created, finished: UTC timestamps.
        uid: a random token shared with the run's checkpoint, so a checkpoint is never read
            as another record's.
        plugins: the ``--plugin`` files loaded (path and sha256).
        command: the command line that started the run (None: not started from the CLI).
        dataset_info: sizes and provenance of the dataset.
        sampler: the fitted latent sampler's description (kind, settings, fit).
        figures: the run folder's pictures and what they show.
        evaluations: one entry per ``mmvae-bench evaluate``.
        resumed: one entry per ``run --resume`` (when, the stages already done, environment).
        error, traceback: why a failed run failed (a traceback only for bugs).
        preset: the ``--preset`` the run's model config and training settings came from
            (None: the plugin's defaults); part of a leaderboard row's identity.
        imported: set when the weights were imported, not trained here (``stages`` then
            holds no stage and ``epochs`` the source's plan as far as its config says).
    """

    schema: int
    run_id: str
    status: RunStatus
    model: str
    dataset: str
    seed: int
    config: dict[str, Any]
    run: dict[str, Any]
    protocol: dict[str, Any]
    environment: dict[str, Any]
    created: str
    epochs: dict[str, int] = field(default_factory=dict)
    stages: dict[str, StageRecord] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    finished: str | None = None
    uid: str | None = None
    plugins: list[PluginFile] = field(default_factory=list)
    command: list[str] | None = None
    dataset_info: dict[str, Any] = field(default_factory=dict)
    sampler: dict[str, Any] | None = None
    figures: dict[str, dict[str, Any]] = field(default_factory=dict)
    evaluations: list[dict[str, Any]] = field(default_factory=list)
    resumed: list[dict[str, Any]] = field(default_factory=list)
    error: str | None = None
    traceback: str | None = None
    preset: str | None = None
    imported: ImportRecord | None = None

    # -- reading and writing -----------------------------------------------------------------
    @classmethod
    def load(cls, path: Path) -> RunRecord:
        """Read a record strictly (a run folder or its ``results.json``).

        Raises:
            BenchError: the file is missing, not JSON, from a newer schema, or a field is
                missing or of the wrong type; the message names the file and the field.
        """
        path = _record_path(path)
        try:
            text = path.read_text()
        except FileNotFoundError:
            raise BenchError(f"no run record at {path}") from None
        except (OSError, UnicodeDecodeError) as e:
            raise BenchError(f"run record {path} is unreadable: {e}") from None
        try:
            raw = json.loads(text)
        except json.JSONDecodeError as e:
            raise BenchError(f"run record {path} is corrupt (not JSON: {e})") from None
        try:
            return cls.from_json(raw)
        except _FieldError as e:
            raise BenchError(f"run record {path} is invalid: {e}") from None

    @classmethod
    def from_json(cls, raw: Any) -> RunRecord:
        """Build a record from parsed JSON (migrated first); raises ``_FieldError``."""
        data = migrate(raw)
        missing = [k for k in REQUIRED_KEYS if k not in data]
        if missing:
            raise _FieldError(f"partial record: missing keys {missing}")
        record = _parse(cls, data, "")
        check_fields(record)
        return record

    def to_json(self) -> dict[str, Any]:
        """The record as JSON-able data (what :meth:`save` writes)."""
        return jsonable(dataclasses.asdict(self))

    def save(self, run_dir: Path) -> Path:
        """Atomically write ``run_dir/results.json`` (temp file + rename); returns its path."""
        self.schema = SCHEMA_VERSION
        return atomic_write_json(Path(run_dir) / RECORD_FILE, self.to_json())

    # -- derived -----------------------------------------------------------------------------
    @property
    def sampler_kind(self) -> str:
        """The latent sampler's kind; records without one drew from the prior."""
        return str((self.sampler or {}).get("kind", "prior"))

    @property
    def trained(self) -> bool:
        """Every planned stage finished (``epochs`` names the plan)."""
        return bool(self.epochs) and all(s in self.stages for s in self.epochs)


class _FieldError(Exception):
    """A field of a record is missing or of the wrong type (message: ``field: problem``)."""


def check_fields(record: RunRecord) -> None:
    """Checks beyond types: names that become paths are safe; the schema is not newer."""
    for what, value in (
        ("run_id", record.run_id),
        ("model", record.model),
        ("dataset", record.dataset),
    ):
        try:
            check_name(value, what)
        except BenchError as e:
            raise _FieldError(f"{what}: {e}") from None
    for name, stage in record.stages.items():
        if stage.name != name:
            raise _FieldError(f"stages.{name}: names stage {stage.name!r}")


def _record_path(path: Path) -> Path:
    path = Path(path)
    return path / RECORD_FILE if path.is_dir() else path


# -- migration -------------------------------------------------------------------------------
def migrate(raw: Any) -> dict[str, Any]:
    """Bring parsed record JSON to :data:`SCHEMA_VERSION` (a copy; the input is untouched).

    Schema 1 (mmvae-bench <= 0.1) had no ``epochs`` (taken from its finished stages, the only
    trace of what ran), ``plugins`` (none recorded), ``command``, ``uid`` and ``stages`` keyed
    consistently; nothing else changed meaning. Schema 2 lacked only optional fields.
    """
    if not isinstance(raw, dict):
        raise _FieldError(f"the record is {type(raw).__name__}, not a JSON object")
    data = dict(raw)
    version = data.get("schema")
    if isinstance(version, bool) or not isinstance(version, int):
        raise _FieldError(f"schema: expected a version number, got {version!r}")
    if version > SCHEMA_VERSION:
        raise _FieldError(
            f"schema: version {version} was written by a newer mmvae-bench (this one reads up "
            f"to {SCHEMA_VERSION}); upgrade to read it"
        )
    if version < 1:
        raise _FieldError(f"schema: unknown version {version}")
    if version == 1:
        stages = data.get("stages")
        data["epochs"] = (
            {n: s["epochs"] for n, s in stages.items() if isinstance(s, dict) and "epochs" in s}
            if isinstance(stages, dict)
            else {}
        )
        data.setdefault("plugins", [])
        data.setdefault("command", None)
        data.setdefault("uid", None)
        data.setdefault("resumed", [])
        data["schema"] = 2
    if data["schema"] == 2:
        # Schema 3 added optional fields only (preset, imported, per-stage validation): a
        # schema-2 record ran no preset, was trained here and held nothing out.
        data["schema"] = 3
    if data["schema"] == 3:
        # Schema 4 added the stages' optional ``thread_steps`` (``--threads auto``).
        data["schema"] = 4
    if data["schema"] == 4:
        # Schema 5 added the stages' optional ``memory_format`` (``--memory-format``): every
        # earlier run trained in the contiguous format, the field's default.
        data["schema"] = 5
    return data


# -- a small typed parser (dataclass fields from JSON) ---------------------------------------
def _parse(typ: Any, value: Any, where: str) -> Any:
    origin = typing.get_origin(typ)
    args = typing.get_args(typ)
    if dataclasses.is_dataclass(typ):
        if not isinstance(value, dict):
            raise _FieldError(f"{where or 'record'}: expected an object, got {_kind(value)}")
        hints = typing.get_type_hints(typ)
        known = {f.name for f in dataclasses.fields(typ)}
        out = {}
        for f in dataclasses.fields(typ):
            sub = f"{where}.{f.name}" if where else f.name
            if f.name not in value:
                no_default = (
                    f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
                )
                if no_default:
                    raise _FieldError(f"{sub}: missing")
                continue
            out[f.name] = _parse(hints[f.name], value[f.name], sub)
        extra = sorted(set(value) - known)
        if extra:
            raise _FieldError(f"{where or 'record'}: unknown field(s) {extra}")
        return typ(**out)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _parse(a, value, where)
            except _FieldError as e:
                errors.append(str(e))
        raise _FieldError(errors[0] if errors else f"{where}: unexpected {_kind(value)}")
    if origin is Literal:
        if value not in args:
            raise _FieldError(f"{where}: expected one of {list(args)}, got {value!r}")
        return value
    if origin is dict:
        if not isinstance(value, dict):
            raise _FieldError(f"{where}: expected an object, got {_kind(value)}")
        vt = args[1] if args else Any
        return {str(k): _parse(vt, v, f"{where}.{k}") for k, v in value.items()}
    if origin is list:
        if not isinstance(value, list):
            raise _FieldError(f"{where}: expected a list, got {_kind(value)}")
        it = args[0] if args else Any
        return [_parse(it, v, f"{where}[{i}]") for i, v in enumerate(value)]
    if typ is Any:
        return value
    if typ is bool:
        if not isinstance(value, bool):
            raise _FieldError(f"{where}: expected true/false, got {_kind(value)}")
        return value
    if typ is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise _FieldError(f"{where}: expected an integer, got {_kind(value)}")
        return value
    if typ is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise _FieldError(f"{where}: expected a number, got {_kind(value)}")
        return float(value)
    if typ is str:
        if not isinstance(value, str):
            raise _FieldError(f"{where}: expected a string, got {_kind(value)}")
        return value
    raise TypeError(f"record field type {typ!r} is not supported")  # a bug in the schema


def _kind(value: Any) -> str:
    return "null" if value is None else f"{type(value).__name__} {value!r}"[:80]


def jsonable(x: Any) -> Any:
    """``x`` as JSON data (tuples as lists, paths and other objects as strings)."""
    return json.loads(json.dumps(x, default=str))


# -- scanning a folder of records (leaderboards, sweeps) -------------------------------------
@dataclass(frozen=True)
class Skipped:
    """A record left out, and why; ``dataset`` when the record names a safe one."""

    path: str
    reason: str
    dataset: str | None = None


@dataclass
class ScanResult:
    """The records under a folder: usable ones with their paths, and the skipped ones."""

    records: list[tuple[Path, RunRecord]]
    skipped: list[Skipped]


def scan(runs_dir: Path) -> ScanResult:
    """Every ``results.json`` under ``runs_dir`` (recursively), read leniently.

    A record that is unreadable, corrupt, from a newer schema or malformed is listed in
    ``skipped`` with the reason (and its dataset when it names a safe one); it never stops the
    scan. Symbolic links are not followed out of ``runs_dir``.
    """
    runs_dir = Path(runs_dir)
    if not runs_dir.is_dir():
        raise BenchError(f"no runs folder at {runs_dir}; train with `mmvae-bench run` first")
    root = runs_dir.resolve()
    records: list[tuple[Path, RunRecord]] = []
    skipped: list[Skipped] = []
    for path in sorted(runs_dir.rglob(RECORD_FILE)):
        rel = str(path.relative_to(runs_dir))
        if not path.resolve().is_relative_to(root):
            skipped.append(Skipped(rel, "links outside the runs folder"))
            continue
        try:
            raw = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            skipped.append(Skipped(rel, f"corrupt: {type(e).__name__}: {e}"))
            continue
        dataset = raw.get("dataset") if isinstance(raw, dict) else None
        try:
            check_name(dataset, "dataset")
        except BenchError:
            dataset = None
        try:
            records.append((path, RunRecord.from_json(raw)))
        except _FieldError as e:
            skipped.append(Skipped(rel, f"malformed: {e}", dataset))
    return ScanResult(records, skipped)


# -- provenance ------------------------------------------------------------------------------
def git_revision(path: Path | None = None) -> str | None:
    """The git commit of the source tree (with ``-dirty`` when modified), or None.

    A copy without ``.git`` (a container image, a machine the tree was synced to) can name its
    commit in ``MMVAE_BENCH_GIT_REVISION``; it is used only where git finds no repository.
    """
    root = Path(path or Path(__file__).resolve().parent.parent)
    declared = os.environ.get("MMVAE_BENCH_GIT_REVISION") or None
    try:
        rev = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return declared
    return f"{rev}-dirty" if dirty else rev


def environment(device: torch.device, threads: int) -> dict[str, Any]:
    """Package versions, git revision, device and threads, for the record."""
    versions = {}
    for name in _PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    import torch

    dev = str(device)
    if device.type == "cuda":
        dev = f"cuda ({torch.cuda.get_device_name(device)})"
    return {
        "versions": versions,
        "python": platform.python_version(),
        "git_revision": git_revision(),
        "device": dev,
        "threads": threads,
        "platform": platform.platform(),
        "cpu": cpu_name(),
        "cpu_count": os.cpu_count(),
    }


def cpu_name() -> str:
    """The CPU's model name (``/proc/cpuinfo``; else the platform's processor string)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def file_sha256(path: Path) -> str:
    """The sha256 of a file's bytes (plugin files in the record)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def now() -> str:
    """UTC timestamp for records."""
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
