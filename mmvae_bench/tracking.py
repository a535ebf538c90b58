"""Experiment tracking (``--tracker mlflow|tensorboard``): runs and sweeps seen in a tracker.

A tracked run logs, from its run record and the runner's ``on_epoch`` callback:

- params: ``model``, ``dataset``, ``seed``, ``config.<field>`` (the model config that ran),
  ``run.<field>`` (the run settings), ``epochs.<stage>`` (the epoch plan);
- per epoch: ``train/<stage>/<part>`` (the epoch means of ``loss()``'s parts), step = the
  epochs the stage has done (1, 2, ...);
- at the end: ``time/<stage>_s``, ``time/<stage>_samples_per_s`` and ``time/<phase>``
  (``train_s``, ``sampler_s``, ``eval_s``), and ``eval/<metric>`` for every number of the
  record's metrics (nested keys joined by ``/``), at step = the record's evaluation count
  (0 for ``run``, n for the n-th ``evaluate``);
- artifacts: ``config.json`` and the run's figures (``figures/samples.png``, ...).

MLflow: a run per ``run``/``evaluate``/sweep trial, named by the run id and tagged with it
(:data:`TAG_RUN_ID`); a sweep is a parent run (its grid, best configurations, heat map) whose
children are its trials (tag ``mlflow.parentRunId``). Without ``--tracking-uri`` the store is
a SQLite database ``<out>/mlflow.db`` with artifacts in ``<out>/mlartifacts/``: MLflow 3 no
longer accepts its file store by default, and nothing is written outside ``--out``. The
client API is used rather than ``mlflow.start_run``: no process-global active run, which
Ray's reused trial actors would carry from one trial to the next.

TensorBoard: event files written by ``torch.utils.tensorboard.SummaryWriter`` into
``<run-dir>/tensorboard/`` (a sweep's own into ``<sweep>/tensorboard/``): scalars as above,
figures as images, the params and ``config.json`` as text.

Sweep trials log from the trial function, through the same :class:`RunTracking` as ``run``,
rather than through Ray Tune's ``MLflowLoggerCallback``: that callback sees only what trials
report to Tune (not stage times, the run's config or its figures, which live in the run
folder), and ``setup_mlflow`` sets MLflow's global active run in the worker. Ray Tune's own
TensorBoard logger still writes what trials report into the sweep's trial folders when
``tensorboardX`` is installed.

``mlflow`` and ``tensorboard`` are the ``tracking`` extra; they are imported only here, and
only when a tracker is asked for.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import logging
import math
import re
from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mmvae_bench.config import TrackerKind, coerce_value
from mmvae_bench.errors import BenchError
from mmvae_bench.io import atomic_write_json, make_output_folder
from mmvae_bench.results import RunRecord, jsonable

if TYPE_CHECKING:
    from mmvae_bench.sweep import SweepConfig, SweepSummary

__all__ = [
    "INSTALL_HINT",
    "MLFLOW_ARTIFACTS",
    "MLFLOW_DB",
    "SWEEP_TRACKING_FILE",
    "TAG_KIND",
    "TAG_RUN_ID",
    "TENSORBOARD_DIR",
    "MlflowTracker",
    "RunTracking",
    "SweepTracking",
    "TensorBoardTracker",
    "Tracker",
    "TrackingConfig",
    "check_installed",
    "experiment_name",
    "flatten_metrics",
    "tracking_config",
]

log = logging.getLogger(__name__)

INSTALL_HINT = "pip install 'mmvae-bench[tracking]'"
MLFLOW_DB = "mlflow.db"  # the default store: <out>/mlflow.db ...
MLFLOW_ARTIFACTS = "mlartifacts"  # ... and <out>/mlartifacts/
TENSORBOARD_DIR = "tensorboard"  # event files: <run-dir>/tensorboard/, <sweep>/tensorboard/
TAG_RUN_ID = "mmvae_bench.run_id"
TAG_KIND = "mmvae_bench.kind"  # run | evaluate | trial | sweep
_PARENT_TAG = "mlflow.parentRunId"  # MLflow's own tag for nested runs
SWEEP_TRACKING_FILE = "tracking.json"  # the sweep's parent run, for --resume
# MLflow's rule for metric and param names: slashes, word characters, . - and space (it
# allows colons too, except on Windows).
_UNSAFE = re.compile(r"[^/\w.\- ]")
# What each tracker imports, and the package (of the tracking extra) that provides it; torch's
# SummaryWriter imports only with tensorboard installed.
_IMPORTS = {
    "mlflow": ("mlflow", "mlflow"),
    "tensorboard": ("torch.utils.tensorboard", "tensorboard"),
}


@dataclass(frozen=True, kw_only=True)
class TrackingConfig:
    """Where runs are tracked.

    Attributes:
        kind: ``mlflow`` or ``tensorboard``.
        uri: MLflow tracking URI (``http://host:port``, ``sqlite:///path``, ...); None: the
            SQLite store in the output folder. Not recorded (a URI may carry credentials).
    """

    kind: TrackerKind
    uri: str | None = None

    def __post_init__(self) -> None:
        coerce_value("--tracker", self.kind, TrackerKind)
        if self.uri is not None:
            if self.kind != "mlflow":
                raise BenchError(
                    f"--tracking-uri is an MLflow tracking URI; --tracker {self.kind} writes "
                    "event files into the run folder (drop --tracking-uri)"
                )
            if not self.uri.strip():
                raise BenchError("--tracking-uri is empty; give a URI such as http://host:5000")


def check_installed(kind: str) -> None:
    """Import the tracker's package now, so a missing one fails before any training.

    Raises:
        BenchError: the package is not installed; the message names the install command.
    """
    module, package = _IMPORTS[kind]
    try:
        importlib.import_module(module)
    except ImportError as e:
        raise BenchError(
            f"--tracker {kind} needs the {package} package, which is not installed "
            f"({e}); install it with: {INSTALL_HINT}"
        ) from None


def tracking_config(tracker: str | None, uri: str | None) -> TrackingConfig | None:
    """The command line's ``--tracker``/``--tracking-uri``, checked (package installed)."""
    if tracker is None:
        if uri is not None:
            raise BenchError("--tracking-uri needs --tracker mlflow")
        return None
    cfg = TrackingConfig(kind=coerce_value("--tracker", tracker, TrackerKind), uri=uri)
    check_installed(cfg.kind)
    return cfg


def experiment_name(dataset: str) -> str:
    """The MLflow experiment of runs and sweeps on ``dataset``."""
    return f"mmvae-bench/{dataset}"


def flatten_metrics(metrics: Mapping[str, Any], prefix: str = "") -> dict[str, float]:
    """The finite numbers of a nested metrics dict, keys joined by ``/`` and made safe.

    Lists (label histograms) and strings are left out; ``+`` in subset names and any other
    character MLflow refuses in a metric name become ``_``.
    """
    out: dict[str, float] = {}
    for key, value in metrics.items():
        name = f"{prefix}/{_safe(str(key))}" if prefix else _safe(str(key))
        if isinstance(value, Mapping):
            out.update(flatten_metrics(value, name))
        elif isinstance(value, int | float) and not isinstance(value, bool):
            if math.isfinite(value):
                out[name] = float(value)
    return out


def _safe(name: str) -> str:
    return _UNSAFE.sub("_", name)


# ---------------------------------------------------------------------------------------------
# The tracker interface and its two implementations
# ---------------------------------------------------------------------------------------------


class Tracker(ABC):
    """One tracked run: start it, log params, metrics per step and artifacts, end it."""

    @abstractmethod
    def start(
        self, name: str, *, group: str, tags: Mapping[str, str], parent: str | None = None
    ) -> str:
        """Begin the tracked run ``name`` in ``group`` (MLflow's experiment) under ``parent``;
        returns its id (the MLflow run id, or the log dir)."""

    @abstractmethod
    def log_params(self, params: Mapping[str, Any]) -> None:
        """Record settings (once per run; values are shown as text)."""

    @abstractmethod
    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        """Record numbers at ``step``."""

    @abstractmethod
    def log_artifact(self, path: Path, folder: str = "") -> None:
        """Attach the file ``path`` (PNG figures are shown as images) under ``folder``."""

    @abstractmethod
    def end(self, ok: bool, error: str | None = None) -> None:
        """Finish the tracked run as finished (``ok``) or failed with ``error``."""


class MlflowTracker(Tracker):
    """Logs to an MLflow tracking server or store through ``MlflowClient``.

    The store is opened here (a new SQLite store is created, which takes seconds), so that
    it is not paid inside a training stage's time.

    Args:
        uri: the tracking URI.
        artifact_root: where a newly created experiment keeps its artifacts (the default
            store's ``<out>/mlartifacts``); None: the store's default (a server's own).
    """

    def __init__(self, uri: str, artifact_root: Path | None = None) -> None:
        from mlflow.exceptions import MlflowException
        from mlflow.tracking import MlflowClient

        self.client = MlflowClient(tracking_uri=uri)
        self.uri = uri
        self.artifact_root = artifact_root
        self.run_id: str | None = None
        try:
            self.client.search_experiments(max_results=1)  # opens (creates) the store now
        except MlflowException as e:
            raise BenchError(f"MLflow tracking URI {uri} does not answer: {e}") from None

    def _experiment_id(self, name: str) -> str:
        from mlflow.exceptions import MlflowException

        found = self.client.get_experiment_by_name(name)
        if found is not None:
            return found.experiment_id
        location = self.artifact_root.resolve().as_uri() if self.artifact_root else None
        try:
            return self.client.create_experiment(name, artifact_location=location)
        except MlflowException:  # another trial created it meanwhile
            found = self.client.get_experiment_by_name(name)
            if found is None:
                raise
            return found.experiment_id

    def start(
        self, name: str, *, group: str, tags: Mapping[str, str], parent: str | None = None
    ) -> str:
        all_tags = {**tags, **({_PARENT_TAG: parent} if parent else {})}
        run = self.client.create_run(self._experiment_id(group), run_name=name, tags=all_tags)
        self.run_id = run.info.run_id
        return self.run_id

    def resume(self, run_id: str) -> str:
        """Log into the existing run ``run_id`` (a resumed sweep's parent)."""
        self.client.update_run(run_id, status="RUNNING")
        self.run_id = run_id
        return run_id

    def log_params(self, params: Mapping[str, Any]) -> None:
        from mlflow.entities import Param

        items = [Param(_safe(k), _text(v)) for k, v in params.items()]
        for i in range(0, len(items), 100):  # MLflow takes at most 100 params per batch
            self.client.log_batch(self._id, params=items[i : i + 100])

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        import time

        from mlflow.entities import Metric

        stamp = int(time.time() * 1000)
        items = [Metric(_safe(k), float(v), stamp, step) for k, v in metrics.items()]
        for i in range(0, len(items), 1000):
            self.client.log_batch(self._id, metrics=items[i : i + 1000])

    def log_artifact(self, path: Path, folder: str = "") -> None:
        self.client.log_artifact(self._id, str(path), folder or None)

    def set_tag(self, key: str, value: str) -> None:
        self.client.set_tag(self._id, key, value)

    def end(self, ok: bool, error: str | None = None) -> None:
        if error:
            self.client.set_tag(self._id, "mmvae_bench.error", error[:5000])
        self.client.set_terminated(self._id, status="FINISHED" if ok else "FAILED")

    @property
    def _id(self) -> str:
        if self.run_id is None:
            raise RuntimeError("MlflowTracker used before start()")  # a bug, not a user error
        return self.run_id


class TensorBoardTracker(Tracker):
    """Writes TensorBoard event files into ``log_dir`` (``SummaryWriter``)."""

    def __init__(self, log_dir: Path) -> None:
        from torch.utils.tensorboard import SummaryWriter  # imported now, not in a stage

        self.log_dir = Path(log_dir)
        self._writer_class = SummaryWriter
        self.writer: Any = None
        self.step = 0  # where artifacts land: the step of the last metrics

    def start(
        self, name: str, *, group: str, tags: Mapping[str, str], parent: str | None = None
    ) -> str:
        self.writer = self._writer_class(log_dir=str(self.log_dir))
        lines = [f"run: {name}", *(f"{k}: {v}" for k, v in tags.items())]
        self.writer.add_text("run", "  \n".join(lines), 0)
        return str(self.log_dir)

    def log_params(self, params: Mapping[str, Any]) -> None:
        rows = ["| param | value |", "|---|---|"]
        rows += [f"| {k} | {_text(v).replace('|', '/')} |" for k, v in params.items()]
        self.writer.add_text("params", "\n".join(rows), 0)

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        for key, value in metrics.items():
            self.writer.add_scalar(key, float(value), step)
        self.step = step

    def log_artifact(self, path: Path, folder: str = "") -> None:
        path = Path(path)
        tag = f"{folder}/{path.name}" if folder else path.name
        if path.suffix.lower() == ".png":
            import numpy as np
            from PIL import Image

            with Image.open(path) as im:
                pixels = np.asarray(im.convert("RGB"))
            self.writer.add_image(tag, pixels, self.step, dataformats="HWC")
        else:
            self.writer.add_text(tag, f"```\n{path.read_text()}\n```", self.step)

    def end(self, ok: bool, error: str | None = None) -> None:
        self.writer.add_text("status", "ok" if ok else f"failed: {error}", self.step)
        self.writer.close()


def _text(value: Any) -> str:
    if isinstance(value, str):
        return value
    return json.dumps(jsonable(value), sort_keys=True)


def open_tracker(cfg: TrackingConfig, *, out: Path, log_dir: Path) -> Tracker:
    """The tracker ``cfg`` names, ready to start: MLflow (``cfg.uri``, or the SQLite store
    ``<out>/mlflow.db``, created here) or TensorBoard (event files in ``log_dir``)."""
    if cfg.kind == "tensorboard":
        return TensorBoardTracker(log_dir)
    if cfg.uri is not None:
        return MlflowTracker(cfg.uri)
    out = make_output_folder(Path(out), "--out").resolve()
    return MlflowTracker(f"sqlite:///{out / MLFLOW_DB}", out / MLFLOW_ARTIFACTS)


# ---------------------------------------------------------------------------------------------
# A run, reported through the runner's callbacks
# ---------------------------------------------------------------------------------------------


class RunTracking:
    """One ``run``, ``evaluate`` or sweep trial reported to a tracker.

    Use it as a context manager around the run: entering opens the tracker (the MLflow store,
    created if new, or TensorBoard's writer class), so that this is not paid inside a stage's
    time; an exception ends the tracked run as failed. Pass :meth:`epoch` as the runner's
    ``on_epoch`` and the finished record to :meth:`finished`. The tracked run starts at the
    first epoch, from the record the runner has written by then (so a run refused before it
    claimed its folder is not tracked), or at :meth:`finished`. With ``cfg=None`` every
    method does nothing.

    Args:
        cfg: the tracker, or None.
        run_dir: the run folder (``<out>/<run-id>``).
        kind: ``run``, ``evaluate`` or ``trial`` (tag :data:`TAG_KIND`).
        parent: the MLflow run id of the sweep a trial belongs to.
    """

    def __init__(
        self,
        cfg: TrackingConfig | None,
        run_dir: Path,
        *,
        kind: str = "run",
        parent: str | None = None,
    ) -> None:
        self.cfg = cfg
        self.run_dir = Path(run_dir)
        self.kind = kind
        self.parent = parent
        self.tracker: Tracker | None = None
        self.started = False

    def __enter__(self) -> RunTracking:
        # An evaluation's time is taken before anything is logged: its tracker opens at the
        # end, once the run folder has proven to be a run's.
        if self.cfg is not None and self.kind != "evaluate":
            self._open()
        return self

    def _open(self) -> Tracker:
        if self.tracker is None:
            assert self.cfg is not None
            self.tracker = open_tracker(
                self.cfg, out=self.run_dir.parent, log_dir=self.run_dir / TENSORBOARD_DIR
            )
        return self.tracker

    def __exit__(self, typ: Any, exc: BaseException | None, tb: Any) -> None:
        if exc is not None and self.tracker is not None and self.started:
            try:
                self.tracker.end(False, f"{type(exc).__name__}: {exc}")
            except Exception as e:  # the run's own error is the one to report
                log.warning("could not end the tracked run: %s", e)
        self.tracker = None

    def epoch(self, stage: str, epoch: int, metrics: dict[str, float]) -> None:
        """The runner's ``on_epoch``: the epoch's mean loss parts as ``train/<stage>/<part>``."""
        if self.cfg is None:
            return
        tracker = self._started(None if self.started else RunRecord.load(self.run_dir))
        tracker.log_metrics({f"train/{stage}/{k}": v for k, v in metrics.items()}, epoch + 1)

    def finished(self, record: RunRecord) -> None:
        """Log stage times, timings, final metrics, config and figures; end the tracked run."""
        if self.cfg is None:
            return
        tracker = self._started(record)
        step = len(record.evaluations)
        numbers = {f"time/{k}": v for k, v in record.timings.items()}
        for name, s in record.stages.items():
            numbers[f"time/{name}_s"] = s.wall_s
            numbers[f"time/{name}_samples_per_s"] = s.samples_per_s
        numbers.update(flatten_metrics(record.metrics, "eval"))
        tracker.log_metrics(numbers, step)
        for name in record.figures:
            path = self.run_dir / name
            if path.is_file():
                tracker.log_artifact(path, "figures")
        tracker.end(record.status == "ok", record.error)
        self.started = False
        self.tracker = None

    def _started(self, record: RunRecord | None) -> Tracker:
        tracker = self._open()
        if self.started:
            return tracker
        if record is None:
            raise RuntimeError("RunTracking started without a record")  # a bug
        name = record.run_id if self.kind != "evaluate" else f"{record.run_id} evaluate"
        tracker.start(
            name,
            group=experiment_name(record.dataset),
            tags={TAG_RUN_ID: record.run_id, TAG_KIND: self.kind},
            parent=self.parent,
        )
        self.started = True
        tracker.log_params(_params(record))
        with _temp_json(_config(record)) as path:
            tracker.log_artifact(path)
        return tracker


def _params(record: RunRecord) -> dict[str, Any]:
    params: dict[str, Any] = {
        "model": record.model,
        "dataset": record.dataset,
        "seed": record.seed,
        "protocol": record.protocol.get("name"),
    }
    params.update({f"config.{k}": v for k, v in record.config.items()})
    params.update({f"run.{k}": v for k, v in record.run.items() if k not in params})
    params.update({f"epochs.{k}": v for k, v in record.epochs.items()})
    return params


def _config(record: RunRecord) -> dict[str, Any]:
    return {
        "run_id": record.run_id,
        "model": record.model,
        "dataset": record.dataset,
        "seed": record.seed,
        "config": record.config,
        "run": record.run,
        "epochs": record.epochs,
        "protocol": record.protocol,
    }


@contextlib.contextmanager
def _temp_json(data: Any, name: str = "config.json") -> Iterator[Path]:
    """``data`` as a JSON file named ``name`` (artifacts keep their file name) for the block."""
    import tempfile

    with tempfile.TemporaryDirectory(prefix="mmvae-bench-track-") as d:
        yield atomic_write_json(Path(d) / name, data)


# ---------------------------------------------------------------------------------------------
# A sweep: the parent of its trials
# ---------------------------------------------------------------------------------------------


class SweepTracking:
    """A sweep's own tracked run: the parent of its trials' runs (MLflow) and its summary.

    :meth:`start` (before the trials; its MLflow run id is what each trial's
    :class:`RunTracking` takes as ``parent``) logs the sweep's settings; :meth:`finished`
    logs per trial status, the best configuration per metric and the heat map. The parent's
    id is kept in ``<sweep>/tracking.json``, so ``--resume`` continues the same parent.
    """

    def __init__(self, cfg: TrackingConfig, sweep: SweepConfig) -> None:
        self.cfg = cfg
        self.sweep = sweep
        self.tracker = open_tracker(cfg, out=sweep.run.out, log_dir=sweep.path / TENSORBOARD_DIR)
        self.parent: str | None = None

    def start(self) -> str | None:
        """Start (or, on resume, reopen) the parent; returns its MLflow run id (None: TB)."""
        sweep = self.sweep
        saved = self._saved()
        if isinstance(self.tracker, MlflowTracker) and saved:
            try:
                self.parent = self.tracker.resume(saved)
            except Exception as e:  # another store, or the run was deleted: a new parent
                log.warning("sweep parent run %s not found (%s); starting a new one", saved, e)
        if self.parent is None:
            tracked = self.tracker.start(
                sweep.name,
                group=experiment_name(sweep.run.dataset),
                tags={TAG_KIND: "sweep", "mmvae_bench.sweep": sweep.name},
            )
            self.tracker.log_params(
                {
                    "model": sweep.run.model,
                    "dataset": sweep.run.dataset,
                    "seeds": list(sweep.seeds),
                    "trials": len(sweep.trials()),
                    **{f"grid.{k}": list(v) for k, v in sweep.grid.items()},
                    **{f"config.{k}": v for k, v in sweep.run.overrides.items()},
                    "epochs": dict(sweep.run.epochs),
                    "protocol": sweep.run.protocol,
                }
            )
            if isinstance(self.tracker, MlflowTracker):
                self.parent = tracked
                atomic_write_json(
                    sweep.path / SWEEP_TRACKING_FILE, {"kind": "mlflow", "parent_run_id": tracked}
                )
        return self.parent

    def finished(self, summary: SweepSummary) -> None:
        """Log the trials' outcome, the best configuration per metric and the heat maps."""
        counts = {s: sum(t.status == s for t in summary.trials) for s in ("ok", "failed")}
        numbers: dict[str, float] = {f"trials_{k}": v for k, v in counts.items()}
        numbers["wall_s"] = summary.wall_s
        for metric, best in summary.best.items():
            numbers[f"best/{metric}/mean"] = best["mean"]
            numbers[f"best/{metric}/std"] = best["std"]
        for t in summary.trials:
            numbers.update({f"trial/{t.run_id}/{k}": v for k, v in t.metrics.items()})
        self.tracker.log_metrics(numbers, 0)
        maps = {Path(p) for p in (summary.heatmap, *summary.heatmaps.values()) if p is not None}
        for path in sorted(p for p in maps if p.is_file()):
            self.tracker.log_artifact(path, "figures")
        with _temp_json(summary.as_record(), "sweep.json") as path:
            self.tracker.log_artifact(path)
        self.tracker.end(counts["failed"] == 0)

    def failed(self, error: BaseException) -> None:
        """End the parent as failed (the sweep itself stopped)."""
        self.tracker.end(False, f"{type(error).__name__}: {error}")

    def _saved(self) -> str | None:
        if not self.sweep.resume:
            return None
        try:
            saved = json.loads((self.sweep.path / SWEEP_TRACKING_FILE).read_text())
        except (OSError, ValueError):
            return None
        run_id = saved.get("parent_run_id") if isinstance(saved, dict) else None
        return run_id if isinstance(run_id, str) else None
