"""Ray Tune sweeps: a grid over model config fields and seeds, each trial an ordinary run.

Every trial calls :func:`mmvae_bench.runner.run` (the code path behind ``mmvae-bench run``),
reports its per-epoch training metrics to Tune, hands the run's ``checkpoint.pt`` to Tune at
each stage end, and ends as a normal run record in ``--out`` under the run id
``<sweep>-<params>-s<seed>``, so ``leaderboard build`` reads sweep trials like any run.

A trial that raises (a :class:`~mmvae_bench.errors.NonFiniteLossError` included) is an errored
Tune trial (no retries); the others go on, and ``Tuner.fit`` returns it with its error. ``resume``
restores the Tune experiment (``Tuner.restore``), continues unfinished trials and leaves
finished and failed ones alone. Tune's state is pickled, so only a folder that a sweep of this
suite created (its :data:`MARKER`, whose token is also in the cache dir) is restored. Tune
saves its experiment state only every few seconds, so a trial whose ``ok`` record already
exists reports that record instead of training again: a killed driver never costs a finished
run. An unfinished trial continues its run from the last finished stage (``run --resume``);
its Tune checkpoints are the stage-end weights, kept with the experiment.

The sweep's definition (grid, trials, summary, heat map) is :mod:`mmvae_bench.sweep`, which
needs no Ray. This is the only module that imports ``ray`` (tests/test_layering.py).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import re
import secrets
import shutil
import socket
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import ray
from ray import tune

from mmvae_bench.errors import BenchError
from mmvae_bench.io import atomic_write_json
from mmvae_bench.plugins import load_registry
from mmvae_bench.results import RECORD_FILE, RunRecord
from mmvae_bench.sweep import (
    COND_1,
    STATE_FILE,
    SweepConfig,
    SweepSummary,
    TrialSummary,
    best_configs,
    finished_record,
    heatmap_metrics,
    main_metrics,
    sweep_definition,
    trial_record,
    trial_run_config,
    trial_slug,
    write_heatmap,
)
from mmvae_bench.tracking import RunTracking, SweepTracking, TrackingConfig

__all__ = ["LOOPBACK", "MARKER", "check_address", "init_ray", "ray_session", "run_sweep"]

log = logging.getLogger(__name__)

# The local Ray's node address. Ray's gRPC servers (GCS, raylet, core workers) bind only the
# loopback interface when the node address is exactly 127.0.0.1, and all interfaces (::) for
# any other address, 127.0.0.2 included (measured on Ray 2.60). Ray also rewrites 127.0.0.1 to
# the machine's external address unless it takes itself for a one-machine (macOS/Windows) Ray:
# see _keep_loopback.
LOOPBACK = "127.0.0.1"
# Written into a sweep's folder when the sweep starts; its token is also kept in the run cache
# (<cache_dir>/sweeps/<token>.json). Only a folder with both is restored: Tune's state is pickled.
MARKER = ".mmvae-bench-sweep.json"
_CREATOR = "mmvae-bench sweep"
_TOKEN = re.compile(r"[0-9a-f]{32}")
# HOST:PORT with a name or IPv4 host, or [IPv6]:PORT; no scheme (ray://), no path.
_ADDRESS = re.compile(r"(?P<host>\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._-]+):(?P<port>[0-9]{1,5})")
# An HTTP/2 client preface and an empty SETTINGS frame: a gRPC server (the GCS) answers at once
# with its own SETTINGS frame (type 0x4); an HTTP/1 server (the dashboard) does not.
_H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + bytes([0, 0, 0, 4, 0, 0, 0, 0, 0])
_PROBE_TIMEOUT_S = 5.0


# ---------------------------------------------------------------------------------------------
# Ray and the trials
# ---------------------------------------------------------------------------------------------


def check_address(address: str) -> str:
    """The GCS address (``HOST:PORT``) that ``address`` (``HOST:PORT`` or ``auto``) names.

    ``auto`` is looked up as Ray does (``RAY_ADDRESS``, the address file of the last
    ``ray start``, a running GCS process). The address is then probed: a TCP connect and an
    HTTP/2 handshake, each within 5 s, so a dead or wrong address fails here in seconds with a
    :class:`~mmvae_bench.errors.BenchError` naming it; ``ray.init`` would retry it for minutes,
    in native code that does not return to Python for SIGTERM.
    """
    given = address
    if address == "auto":
        from ray._private import services

        services.find_gcs_addresses.cache_clear()
        try:
            found = services.get_ray_address_from_environment("auto", None)
        except ConnectionError:
            found = None
        if not found or found == "auto":
            raise BenchError(
                "--address auto found no running Ray cluster on this machine (no RAY_ADDRESS, "
                "no `ray start` address file, no GCS process); start one with "
                "`ray start --head` or give HOST:PORT"
            )
        address = found
    m = _ADDRESS.fullmatch(address)
    if m is None or not 0 < int(m["port"]) < 65536:
        found_for = " (found for --address auto)" if given == "auto" else ""
        raise BenchError(
            "--address must be HOST:PORT (a Ray head's GCS address) or 'auto', "
            f"got {address!r}{found_for}"
        )
    _probe_gcs(m["host"].strip("[]"), int(m["port"]), address)
    return address


def _probe_gcs(host: str, port: int, address: str) -> None:
    try:
        with socket.create_connection((host, port), timeout=_PROBE_TIMEOUT_S) as s:
            if os.environ.get("RAY_USE_TLS", "0").lower() in ("1", "true"):
                return  # the GCS speaks TLS first: a plain HTTP/2 preface proves nothing
            s.sendall(_H2_PREFACE)
            head = s.recv(9)
    except OSError as e:
        timeout = isinstance(e, TimeoutError)
        why = f"no answer in {_PROBE_TIMEOUT_S:.0f} s" if timeout else e.strerror or str(e)
        raise BenchError(
            f"no Ray cluster at {address} ({why}); check the address `ray start --head` "
            "printed, or drop --address for a local Ray"
        ) from None
    if len(head) < 9 or head[3] != 4:
        raise BenchError(
            f"{address} answers but is not a Ray GCS (gRPC) port; give the GCS address "
            "`ray start --head` printed (port 6379 by default), not the dashboard's"
        )


@contextlib.contextmanager
def _keep_loopback() -> Iterator[None]:
    """Keep 127.0.0.1 as given during ``ray.init``.

    Ray rewrites a node or GCS address of 127.0.0.1 to the machine's external address unless
    ``ENABLE_RAY_CLUSTER`` is off (a one-machine Ray, its default on macOS and Windows); it is
    read at call time, so it is turned off for the call only. Ray's own env var for it is not
    set: it would reach every ``ray`` command started later from this process.
    """
    from ray._private import ray_constants

    saved = ray_constants.ENABLE_RAY_CLUSTER
    ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        yield
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = saved


@contextlib.contextmanager
def _env_default(name: str, value: str) -> Iterator[None]:
    """``name=value`` in the environment for the block, unless the user has set it."""
    if name in os.environ:
        yield
        return
    os.environ[name] = value
    try:
        yield
    finally:
        os.environ.pop(name, None)


def init_ray(address: str | None = None, *, cpus: int | None = None) -> bool:
    """Join ``address`` or start a local Ray on :data:`LOOPBACK`, unless one is running here.

    Returns True when this call started (so should shut down) Ray. ``address`` is checked by
    :func:`check_address` first. Every socket of the local Ray listens on loopback only
    (tests/test_tune.py lists them). The local Ray has no dashboard and no usage stats;
    workers' output is not streamed to the driver (errors reach the summary through the
    records and Tune).
    """
    if ray.is_initialized():
        return False
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    quiet: dict[str, Any] = {
        "configure_logging": True,
        "logging_level": logging.WARNING,
        "log_to_driver": False,
    }
    if address:
        gcs = check_address(address)
        # The GCS answered; two connection attempts (Ray's default: 20 of ~40 s each) bound
        # the rest should it still not be a GCS.
        try:
            with _keep_loopback(), _env_default("RAY_gcs_server_port_wait_time_s", "2"):
                ray.init(address=gcs, **quiet)
        except ConnectionError as e:
            raise BenchError(f"cannot join the Ray cluster at {address}: {e}") from None
        return True
    # "local": without it ray.init joins a cluster that `ray start` left on this machine.
    with _keep_loopback():
        ray.init(
            address="local",
            num_cpus=cpus,
            include_dashboard=False,
            _node_ip_address=LOOPBACK,
            **quiet,
        )
    return True


@contextlib.contextmanager
def ray_session(address: str | None = None, *, cpus: int | None = None) -> Iterator[str]:
    """:func:`init_ray` for the block, shut down after it if started here; yields the address."""
    started = init_ray(address, cpus=cpus)
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        if started:
            ray.shutdown()


class _Reporter:
    """Per-epoch metrics to Tune; the run's checkpoint.pt to Tune whenever a stage has ended."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir
        self.stage: str | None = None

    def epoch(self, stage: str, epoch: int, metrics: dict[str, float]) -> None:
        # The runner saves checkpoint.pt after a stage's last epoch: the first epoch of the
        # next stage is the first moment that stage's weights are on disk.
        ended = self.stage is not None and stage != self.stage
        self.stage = stage
        train = {f"train/{k}": v for k, v in metrics.items()}
        self.report({"stage": stage, "epoch": epoch, **train}, checkpoint=ended)

    def report(self, metrics: dict[str, Any], *, checkpoint: bool) -> None:
        src = self.run_dir / "checkpoint.pt"
        if not (checkpoint and src.is_file()):
            tune.report(metrics)
            return
        with tempfile.TemporaryDirectory(prefix="mmvae-bench-ckpt-") as d:
            shutil.copy2(src, Path(d) / src.name)
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(d))


def _trial(
    config: dict[str, Any],
    plan: dict[str, Any],
    tracking: TrackingConfig | None = None,
    parent: str | None = None,
) -> None:
    """One Tune trial: an ordinary :func:`mmvae_bench.runner.run`, reported to Tune.

    ``config`` holds the grid point (``params``) and ``seed``; ``plan`` is the sweep's
    :func:`sweep_definition`, passed once through Ray's object store (``tune.with_parameters``).
    With ``tracking``, the run is tracked as ``run`` tracks it, a child of the sweep's MLflow
    run ``parent`` (see :mod:`mmvae_bench.tracking` for why not Tune's MLflow callback).
    """
    from mmvae_bench.runner import run

    cfg = trial_run_config(config, plan)
    done = finished_record(cfg)
    if done is not None:
        final = {"run_status": "ok", "run_id": cfg.run_id, "reused": True}
        tune.report({**final, **main_metrics(done)})
        return
    run_dir = Path(cfg.out) / str(cfg.run_id)
    reporter = _Reporter(run_dir)
    registry = load_registry(tuple(Path(p) for p in plan["plugins"]))
    # A trial Tune restarts continues its run from the last finished stage (same settings, or
    # the trial fails naming what differs); a new trial claims a new folder.
    mode = "resume" if trial_record(cfg) is not None else "new"
    with RunTracking(tracking, run_dir, kind="trial", parent=parent) as track:

        def on_epoch(stage: str, epoch: int, metrics: dict[str, float]) -> None:
            track.epoch(stage, epoch, metrics)
            reporter.epoch(stage, epoch, metrics)

        record = run(cfg, registry, mode=mode, progress=False, on_epoch=on_epoch)
        track.finished(record)
    final = {"run_status": record.status, "run_id": cfg.run_id, "reused": False}
    reporter.report({**final, **main_metrics(record)}, checkpoint=True)


def _trial_name(trial: Any) -> str:
    return trial_slug(trial.config["params"], trial.config["seed"])


def _prepare_classifiers(cfg: SweepConfig, say: Callable[[str], None]) -> None:
    """Train missing coherence classifiers once, here, rather than in every trial at once."""
    import torch

    from mmvae_bench.eval.classifiers import get_classifiers
    from mmvae_bench.runner import resolve_device, run_dataset

    torch.set_num_threads(cfg.run.threads)
    registry = load_registry(cfg.plugins)
    dataset = run_dataset(registry, dataclasses.replace(cfg.run, seed=cfg.seeds[0]))
    device = resolve_device(cfg.run.device) if cfg.gpus_per_trial > 0 else torch.device("cpu")
    weights = cfg.run.classifier_weights
    say(f"coherence classifiers for {dataset.name}: " + (str(weights) if weights else "cache"))
    # Published weights are checked (present, above the floor) once here, not in every trial.
    get_classifiers(dataset, Path(cfg.run.cache_dir), device=device, weights_dir=weights)


def _claim_folder(cfg: SweepConfig) -> None:
    """Mark ``cfg.path`` as this suite's sweep: :data:`MARKER` there, its token in the cache."""
    token = secrets.token_hex(16)
    atomic_write_json(
        _ledger(cfg) / f"{token}.json", {"created_by": _CREATOR, "path": str(cfg.path.resolve())}
    )
    atomic_write_json(cfg.path / MARKER, {"created_by": _CREATOR, "token": token})


def _check_created_here(cfg: SweepConfig) -> None:
    """Refuse to resume a folder that :func:`_claim_folder` did not mark with this cache.

    ``Tuner.restore`` unpickles the folder's ``tuner.pkl``: a folder made by another tool, or
    copied from someone else, could run any code here.
    """
    refuse = (
        f"{cfg.path} was not created by mmvae-bench sweep; "
        "refusing to restore its pickled Tune state"
    )
    try:
        marker = json.loads((cfg.path / MARKER).read_text())
    except (OSError, ValueError):
        raise BenchError(f"{refuse} (no readable {MARKER})") from None
    if not isinstance(marker, dict):
        marker = {}
    token = str(marker.get("token"))
    if marker.get("created_by") != _CREATOR or not _TOKEN.fullmatch(token):
        raise BenchError(f"{refuse} ({MARKER} is not the suite's)")
    if not (_ledger(cfg) / f"{token}.json").is_file():
        raise BenchError(
            f"{refuse} (its token is not in {_ledger(cfg)}: it was started by another user, "
            "machine or --cache-dir)"
        )


def _ledger(cfg: SweepConfig) -> Path:
    return Path(cfg.run.cache_dir) / "sweeps"


def run_sweep(
    cfg: SweepConfig, *, status: Callable[[str], None] | None = None, verbose: int = 1
) -> SweepSummary:
    """Run (or resume) the sweep on Ray Tune; write ``sweep.json`` and the heat map.

    Args:
        cfg: the sweep.
        status: receives one-line progress messages.
        verbose: Tune's console verbosity (0 silent, 1 status updates, 2 every result).

    Returns:
        The :class:`SweepSummary` (also in ``<storage>/<name>/sweep.json``).
    """
    say = status or (lambda msg: None)
    t0 = time.perf_counter()
    path = cfg.path
    definition = sweep_definition(cfg)
    started_before = tune.Tuner.can_restore(str(path))
    if cfg.resume:
        if not started_before:
            raise BenchError(f"no sweep to resume at {path} (check --name and --storage)")
        _check_created_here(cfg)
        try:
            saved = json.loads((path / STATE_FILE).read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise BenchError(f"sweep {path} has no readable {STATE_FILE}: {e}") from None
        changed = sorted(k for k in definition if saved.get(k) != definition[k])
        if changed:
            raise BenchError(
                f"sweep '{cfg.name}' was started with other settings ({', '.join(changed)} "
                "differ); resume it with the same grid, seeds and run options"
            )
    elif started_before:
        raise BenchError(
            f"sweep '{cfg.name}' exists at {path}; continue it with --resume or pick a new --name"
        )
    if cfg.address:
        check_address(cfg.address)  # a dead address fails now, not after the classifiers
    if not cfg.resume:
        _claim_folder(cfg)
    if cfg.run.evaluate:
        _prepare_classifiers(cfg, say)
    # The sweep's tracked run, the parent of its trials', exists before any trial starts.
    tracking = SweepTracking(cfg.tracking, cfg) if cfg.tracking else None
    parent = tracking.start() if tracking else None
    try:
        results = _fit(cfg, definition, parent, say, verbose)
    except BaseException as e:
        if tracking:
            tracking.failed(e)
        raise
    summary = _summarize(cfg, results, time.perf_counter() - t0)
    atomic_write_json(path / "sweep.json", {**summary.as_record(), "definition": definition})
    if tracking:
        tracking.finished(summary)
    return summary


def _fit(
    cfg: SweepConfig,
    definition: dict[str, Any],
    parent: str | None,
    say: Callable[[str], None],
    verbose: int,
) -> Any:
    """Run the trials on Ray Tune (a new sweep, or the rest of a resumed one)."""
    path = cfg.path
    with ray_session(cfg.address, cpus=cfg.cpus):
        trainable = tune.with_resources(
            tune.with_parameters(_trial, plan=definition, tracking=cfg.tracking, parent=parent),
            {"cpu": cfg.cpus_per_trial, "gpu": cfg.gpus_per_trial},
        )
        if cfg.resume:
            say(f"resuming sweep {cfg.name} from {path}")
            # Errored trials stay failed: a NaN loss or a bad config fails again.
            tuner = tune.Tuner.restore(
                str(path),
                trainable=trainable,
                resume_unfinished=True,
                resume_errored=False,
                restart_errored=False,
            )
        else:
            atomic_write_json(path / STATE_FILE, definition)
            say(
                f"sweep {cfg.name}: {len(cfg.trials())} trials; "
                f"if interrupted, rerun the command with --resume --name {cfg.name}"
            )
            tuner = tune.Tuner(
                trainable,
                param_space={
                    "params": {k: tune.grid_search(list(v)) for k, v in cfg.grid.items()},
                    "seed": tune.grid_search(list(cfg.seeds)),
                },
                tune_config=tune.TuneConfig(
                    max_concurrent_trials=cfg.max_concurrent,
                    trial_name_creator=_trial_name,
                    trial_dirname_creator=_trial_name,
                    # One worker process runs trial after trial: a fresh one re-imports
                    # torch and the package each time (seconds per trial on small runs).
                    reuse_actors=True,
                ),
                run_config=tune.RunConfig(
                    name=cfg.name,
                    storage_path=str(cfg.storage),
                    verbose=verbose,
                    failure_config=tune.FailureConfig(max_failures=0, fail_fast=False),
                ),
            )
        return tuner.fit()


# ---------------------------------------------------------------------------------------------
# The end of a sweep: per-trial outcome, best config per metric, heat map
# ---------------------------------------------------------------------------------------------


def _error_text(err: BaseException) -> str:
    cause = getattr(err, "cause", None)
    if isinstance(cause, BaseException):
        return f"{type(cause).__name__}: {cause}"
    lines = [ln for ln in str(err).splitlines() if ln.strip()]
    return lines[-1] if lines else type(err).__name__


def _summarize(cfg: SweepConfig, results: Any, wall_s: float) -> SweepSummary:
    by_id: dict[str, Any] = {}
    for r in results:
        c = r.config or {}
        if "params" in c and "seed" in c:
            by_id[cfg.run_id({a: c["params"][a] for a in cfg.grid}, c["seed"])] = r
    trials: list[TrialSummary] = []
    for params, seed in cfg.trials():
        run_id = cfg.run_id(params, seed)
        path = Path(cfg.run.out) / run_id / RECORD_FILE
        try:
            record: RunRecord | None = RunRecord.load(path)
        except BenchError:
            record = None
        r = by_id.get(run_id)
        metrics = (r.metrics or {}) if r is not None else {}
        t = TrialSummary(
            run_id=run_id,
            params=params,
            seed=seed,
            status="unfinished",
            node_ip=metrics.get("node_ip"),
            reused=bool(metrics.get("reused", False)),
            record=str(path) if record else None,
        )
        if record and record.status == "ok":
            t.status, t.metrics = "ok", main_metrics(record)
        elif r is not None and r.error is not None:
            t.status = "failed"
            t.error = (record.error if record else None) or _error_text(r.error)
        elif record:
            t.error = record.error
        trials.append(t)
    summary = SweepSummary(
        name=cfg.name,
        path=cfg.path,
        trials=trials,
        best=best_configs(trials),
        axes=list(cfg.grid),
        heatmap=None,
        wall_s=wall_s,
    )
    axes = cfg.heatmap or tuple(a for a in cfg.grid if len(cfg.grid[a]) > 1)[:2]
    # heatmap.png: one-input coherence; heatmap-<metric>.png: joint coherence and each FID.
    for metric in heatmap_metrics(trials) if axes else []:
        name = "heatmap.png" if metric == COND_1 else f"heatmap-{metric}.png"
        summary.heatmaps[metric] = write_heatmap(
            trials,
            cfg.grid,
            tuple(axes),
            cfg.path / name,
            metric=metric,
            title=f"{cfg.run.model} on {cfg.run.dataset}",
        )
    summary.heatmap = summary.heatmaps.get(COND_1)
    return summary
