"""One run: load data, build the model, train its stages, evaluate, write the record.

``run`` is the single code path behind ``mmvae-bench run`` and every sweep trial.
"""

from __future__ import annotations

import dataclasses
import logging
import time
import traceback
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from accelerate import Accelerator

from mmvae_bench.config import DEFAULT_CACHE_DIR, Device, RunConfig, coerce_value, make_config
from mmvae_bench.data.memory import RESIDENT_SPLIT_HINT, require_device_memory
from mmvae_bench.data.spec import DataOptions, MultimodalDataset
from mmvae_bench.errors import BenchError
from mmvae_bench.eval.classifiers import get_classifiers
from mmvae_bench.eval.evaluate import evaluate_model
from mmvae_bench.eval.protocol import FID, Protocol, get_protocol
from mmvae_bench.flows import compile_kernels
from mmvae_bench.io import atomic_torch_save, load_tensors
from mmvae_bench.model import ModelConfig, ModelEntry, MultimodalVAE
from mmvae_bench.plots import prior_grid, sample_grid
from mmvae_bench.plugins import Registry
from mmvae_bench.presets import TRAINING, preset_values
from mmvae_bench.results import (
    COND_GRID,
    PRIOR_GRID,
    SCHEMA_VERSION,
    PluginFile,
    RunRecord,
    StageRecord,
    environment,
    file_sha256,
    jsonable,
    now,
)
from mmvae_bench.rundir import CHECKPOINT_FILE, SAMPLER_FILE, Mode, claim_run_dir, locked
from mmvae_bench.samplers import LatentSampler, load_or_fit_sampler
from mmvae_bench.threads import ThreadGovernor, governed, start_threads
from mmvae_bench.train import StageReport, TrainSettings, compile_submodules, epoch_plan, train

if TYPE_CHECKING:  # fid.py's torch-fidelity import costs ~2 s: only when FID is asked for
    from mmvae_bench.eval.fid import FIDSettings

__all__ = [
    "default_run_id",
    "evaluate_run",
    "load_checkpoint",
    "fid_settings",
    "load_dataset",
    "load_run",
    "resolve_device",
    "resolve_model_config",
    "run",
    "run_dataset",
    "save_checkpoint",
]

log = logging.getLogger(__name__)
Status = Callable[[str], None]


def resolve_device(device: str) -> torch.device:
    """``auto`` -> cuda when available, else cpu; asking for cuda without one is an error."""
    device = coerce_value("--device", device, Device)  # torch's own error for "tpu" is a bug's
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise BenchError("--device cuda requested but no CUDA device is available")
    return torch.device(device)


def resolve_model_config(
    entry: ModelEntry,
    dataset: MultimodalDataset,
    overrides: dict[str, Any],
    preset: dict[str, Any] | None = None,
) -> ModelConfig:
    """Model config = class defaults < the plugin's per-dataset defaults < user overrides.

    A ``preset``'s values (:func:`mmvae_bench.presets.preset_values`) take the place of the
    per-dataset defaults. ``latent_dim`` left at None takes the dataset's, so the record holds
    the value that ran.
    """
    base = preset if preset is not None else dict(entry.defaults.get(dataset.name, {}))
    values = {**base, **overrides}
    if values.get("latent_dim") is None:
        values["latent_dim"] = dataset.latent_dim
    return make_config(entry.config, values)


def load_dataset(
    registry: Registry,
    name: str,
    *,
    data_dir: Path | str | None = None,
    cache_dir: Path | str = DEFAULT_CACHE_DIR,
    seed: int = 0,
) -> MultimodalDataset:
    """Load dataset ``name`` through the registry (published ones from ``data_dir``)."""
    entry = registry.dataset(name)
    opts = DataOptions(
        data_dir=Path(data_dir).expanduser().resolve() if data_dir else None,
        cache_dir=Path(cache_dir).expanduser(),
        seed=seed,
    )
    return entry.load(opts)


def run_dataset(registry: Registry, cfg: RunConfig) -> MultimodalDataset:
    """The dataset a run config names."""
    return load_dataset(
        registry, cfg.dataset, data_dir=cfg.data_dir, cache_dir=cfg.cache_dir, seed=cfg.seed
    )


def fid_settings(kind: str | None, inception_weights: Path | None = None) -> FIDSettings | None:
    """FID settings for an extractor ``kind`` (None: no FID); Inception weights checked now."""
    if kind is None:
        return None
    from mmvae_bench.eval.fid import FIDSettings, inception_weights_path

    settings = FIDSettings(extractor=kind, inception_weights=inception_weights)
    if settings.extractor == "inception":
        inception_weights_path(settings)  # fail now, not after training or minutes of coherence
    return settings


def run_fid_settings(cfg: RunConfig) -> FIDSettings | None:
    """The FID settings ``cfg`` asks for, checked before anything is trained."""
    return fid_settings(cfg.fid, cfg.inception_weights)


def resolve_training(cfg: RunConfig) -> RunConfig:
    """``cfg`` with its training options filled from its preset (or switched off without one).

    Raises:
        BenchError: ``keep_best`` without a validation split.
    """
    preset = TRAINING.get(cfg.preset or "", {}).get(cfg.dataset)
    validation = (
        cfg.validation if cfg.validation is not None else (preset.validation if preset else 0.0)
    )
    resolved = dataclasses.replace(
        cfg,
        validation=validation,
        validation_seed=preset.validation_seed if preset else cfg.validation_seed,
        # A schedule asked for replaces the preset's ReduceLROnPlateau.
        lr_patience=cfg.lr_patience
        if cfg.lr_patience is not None
        else (preset.lr_patience if preset and cfg.lr_schedule is None else None),
        keep_best=cfg.keep_best if cfg.keep_best is not None else bool(preset and preset.keep_best),
    )
    if resolved.keep_best and not resolved.validation:
        raise BenchError("--keep-best needs a validation split (--validation > 0)")
    return resolved


def train_settings(cfg: RunConfig, plan: dict[str, int], progress: bool) -> TrainSettings:
    """The trainer's settings for a resolved run config (:func:`resolve_training`)."""
    return TrainSettings(
        epochs=plan,
        precision=cfg.precision,
        progress=progress,
        seed=cfg.seed,
        validation=float(cfg.validation or 0.0),
        validation_seed=cfg.validation_seed,
        lr_patience=cfg.lr_patience,
        keep_best=bool(cfg.keep_best),
        lr_schedule=cfg.lr_schedule or "constant",
        adapt_threads=start_threads(cfg.threads) if cfg.threads == "auto" else 0,
        memory_format=cfg.memory_format,
    )


def _evaluate_governed(
    threads: int | str, device: torch.device, evaluate: Callable[[], dict[str, Any]]
) -> dict[str, Any]:
    """``evaluate()``'s metrics. Under ``--threads auto`` on the CPU its HMC iterations report
    to a :class:`ThreadGovernor`, and how many ran at each count goes into
    ``eval_timings.hmc_thread_steps``."""
    auto = threads == "auto" and device.type == "cpu"
    governor = ThreadGovernor(start_threads(threads)) if auto else None
    with governed(governor):
        metrics = evaluate()
    if governor is not None:  # evaluate_model always writes eval_timings
        steps = {str(n): k for n, k in sorted(governor.steps.items())}
        metrics["eval_timings"]["hmc_thread_steps"] = steps
    return metrics


def _run_settings(cfg: RunConfig) -> dict[str, Any]:
    """The run config as given, JSON-able (the record's ``run``)."""
    return jsonable(dataclasses.asdict(cfg))


def _seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)


def default_run_id(cfg: RunConfig) -> str:
    """``<model>-<dataset>-s<seed>-<timestamp>-<4 hex>``: unique without coordination."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return f"{cfg.model}-{cfg.dataset}-s{cfg.seed}-{stamp}-{uuid.uuid4().hex[:4]}"


def run(
    cfg: RunConfig,
    registry: Registry,
    *,
    mode: Mode = "new",
    progress: bool = True,
    status: Status | None = None,
    on_epoch: Callable[[str, int, dict[str, float]], None] | None = None,
    command: list[str] | None = None,
) -> RunRecord:
    """Train and evaluate one model on one dataset; returns the written record.

    Everything that can be checked is checked before the run folder is claimed (names,
    protocol, device, FID weights, classifier weights, the dataset, the model config, the
    ``--epochs`` stage names), so a bad option leaves nothing behind. Then the folder
    ``<out>/<run-id>/`` is claimed (:func:`mmvae_bench.rundir.claim_run_dir`: an existing run
    id is an error unless ``mode`` is ``overwrite`` or ``resume``) and the record is written at
    once (``running``), after every stage (with the checkpoint), after training (``trained``)
    and at the end (``ok``), each time atomically. A run that fails leaves ``failed`` with the
    error; ``mode="resume"`` continues it from its last finished stage, or only evaluates it
    when training had finished.
    """
    say = status or (lambda msg: None)
    torch.set_num_threads(start_threads(cfg.threads))
    entry = registry.model(cfg.model)
    preset = (
        preset_values(entry, cfg.dataset, cfg.preset, registry.models)
        if cfg.preset is not None
        else None
    )
    cfg = resolve_training(cfg)
    protocol = get_protocol(cfg.protocol, cfg.hmc)
    device = resolve_device(cfg.device)
    fid = run_fid_settings(cfg)
    plugins = [_plugin_file(p) for p in cfg.plugins]
    dataset = run_dataset(registry, cfg)
    config = resolve_model_config(entry, dataset, dict(cfg.overrides), preset)
    _seed_everything(cfg.seed)
    model = entry.cls(dataset, config)
    plan = epoch_plan(model.stages, cfg.epochs)
    if cfg.evaluate and cfg.classifier_weights is not None:
        # Published or user weights: present and above the floor now, not after training.
        get_classifiers(
            dataset, Path(cfg.cache_dir), device=device, weights_dir=cfg.classifier_weights
        )
    # The training split goes on the device whole, FID's reference set is the test split as
    # uint8 RGB: too big is an error now, before anything is written.
    require_device_memory(dataset.name, dataset.train.nbytes, RESIDENT_SPLIT_HINT, device)
    if fid is not None and cfg.evaluate:
        from mmvae_bench.eval.fid import require_reference_memory

        require_reference_memory(dataset)
    run_id = cfg.run_id or default_run_id(cfg)
    claimed = claim_run_dir(Path(cfg.out), run_id, mode)
    try:
        return _run_claimed(
            cfg,
            claimed.path,
            mode=mode,
            entry=entry,
            model=model,
            dataset=dataset,
            plan=plan,
            protocol=protocol,
            device=device,
            fid=fid,
            plugins=plugins,
            command=command,
            registry=registry,
            say=say,
            progress=progress,
            on_epoch=on_epoch,
        )
    finally:
        claimed.release()


def _plugin_file(path: Path) -> PluginFile:
    path = Path(path).expanduser().resolve()
    try:
        return PluginFile(path=str(path), sha256=file_sha256(path))
    except OSError as e:
        raise BenchError(f"plugin file {path} is unreadable: {e.strerror or e}") from None


def _run_claimed(
    cfg: RunConfig,
    run_dir: Path,
    *,
    mode: Mode,
    entry: ModelEntry,
    model: MultimodalVAE,
    dataset: MultimodalDataset,
    plan: dict[str, int],
    protocol: Protocol,
    device: torch.device,
    fid: FIDSettings | None,
    plugins: list[PluginFile],
    command: list[str] | None,
    registry: Registry,
    say: Status,
    progress: bool,
    on_epoch: Callable[[str, int, dict[str, float]], None] | None,
) -> RunRecord:
    fresh = RunRecord(
        schema=SCHEMA_VERSION,
        run_id=run_dir.name,
        status="running",
        model=cfg.model,
        dataset=cfg.dataset,
        seed=cfg.seed,
        config=jsonable(dataclasses.asdict(model.config)),
        run=_run_settings(cfg),
        protocol=protocol.as_record(),
        environment=environment(device, cfg.threads),
        created=now(),
        epochs=plan,
        uid=uuid.uuid4().hex,
        plugins=plugins,
        command=command,
        dataset_info={"train": len(dataset.train), "test": len(dataset.test), **dataset.info},
        preset=cfg.preset,
    )
    done: list[str] = []
    rng_state = None
    record = fresh
    if mode == "resume":
        record, done, rng_state = _resume_point(run_dir, fresh, model)
        if record.status == "ok":
            say(f"run {record.run_id} is already complete; nothing to resume")
            return record
        record.status = "running"
        record.error = record.traceback = None
        record.resumed.append(
            {"at": now(), "stages_done": list(done), "environment": fresh.environment}
        )
        say(f"resuming {record.run_id} after stage(s) {', '.join(done) or '(none)'}")
    record.save(run_dir)
    try:
        accelerator = Accelerator(cpu=device.type == "cpu", mixed_precision=cfg.precision)
        model.to(accelerator.device)
        # RunConfig.compile: the nets through torch.compile, and HMC's flow kernels.
        compile_kernels(cfg.compile)
        if cfg.compile:
            compile_submodules(model)

        def stage_done(report: StageReport, rng: dict[str, Any]) -> None:
            # Record first, checkpoint second: a resume trusts the checkpoint's stage list.
            record.stages[report.name] = StageRecord(**dataclasses.asdict(report))
            record.timings["train_s"] = sum(s.wall_s for s in record.stages.values())
            record.save(run_dir)
            done.append(report.name)
            save_checkpoint(run_dir / CHECKPOINT_FILE, model, record, done, rng)

        if not record.trained:
            say(f"training {cfg.model} on {cfg.dataset} ({len(dataset.train)} samples) on {device}")
            train(
                model,
                dataset,
                accelerator,
                train_settings(cfg, plan, progress),
                checkpoint=stage_done,
                on_epoch=on_epoch,
                done=tuple(done),
                rng_state=rng_state,
            )
            record.timings["train_s"] = sum(s.wall_s for s in record.stages.values())
        model.eval().requires_grad_(False)
        record.status = "trained"
        record.save(run_dir)
        # The latent sampler is part of the trained run: fitted once, saved beside the weights.
        t1 = time.perf_counter()
        if cfg.sampler != "prior":
            say(f"fitting the {cfg.sampler} latent sampler on the training set's embeddings")
        sampler, _ = load_or_fit_sampler(
            run_dir / SAMPLER_FILE,
            cfg.sampler,
            model,
            dataset.train,
            device=accelerator.device,
            seed=cfg.seed,
        )
        record.sampler = {**sampler.info, "file": SAMPLER_FILE}
        record.timings["sampler_s"] = time.perf_counter() - t1
        if cfg.evaluate:
            t1 = time.perf_counter()
            say(f"evaluating ({protocol.name} protocol)")
            record.metrics = _evaluate_governed(
                cfg.threads,
                device,
                lambda: evaluate_model(
                    model,
                    dataset,
                    protocol,
                    cache_dir=Path(cfg.cache_dir),
                    device=device,
                    progress=say,
                    registry=registry,
                    classifier_weights=cfg.classifier_weights,
                    fid=fid,
                    seed=cfg.seed,
                    latent_sampler=sampler.sample,
                ),
            )
            record.timings["eval_s"] = time.perf_counter() - t1
            record.figures = _sample_grids(model, dataset, run_dir, sampler, device)
        else:
            sample_grid(model, dataset.test, run_dir / COND_GRID, device=str(device))
        record.status = "ok"
    except BaseException as e:
        record.status = "failed"
        record.error = f"{type(e).__name__}: {e}"
        if not isinstance(e, BenchError):
            record.traceback = traceback.format_exc()
        record.finished = now()
        record.save(run_dir)
        raise
    record.finished = now()
    record.save(run_dir)
    return record


def _resume_point(
    run_dir: Path, fresh: RunRecord, model: MultimodalVAE
) -> tuple[RunRecord, list[str], dict[str, Any] | None]:
    """The record to continue, its finished stages (weights loaded into ``model``), RNG states.

    The run must have been started with the same model, dataset, seed, config and epochs; the
    checkpoint must be this record's (its ``uid``). Stages are taken as finished when the
    checkpoint lists them (the record is saved before the checkpoint, so it may list one more).
    """
    old = RunRecord.load(run_dir)
    differ = [
        name
        for name, a, b in (
            ("model", old.model, fresh.model),
            ("dataset", old.dataset, fresh.dataset),
            ("seed", old.seed, fresh.seed),
            ("config", old.config, fresh.config),
            ("epochs", old.epochs, fresh.epochs),
            ("precision", old.run.get("precision"), fresh.run.get("precision")),
            ("lr_schedule", old.run.get("lr_schedule"), fresh.run.get("lr_schedule")),
        )
        if a != b
    ]
    if differ:
        raise BenchError(
            f"run '{old.run_id}' was started with another {', '.join(differ)}; resume it with "
            "the same settings, or replace it with --overwrite"
        )
    if old.status == "ok":
        return old, list(old.stages), None
    path = run_dir / CHECKPOINT_FILE
    if not path.is_file():
        old.stages = {}
        return old, [], None
    blob = load_checkpoint(path, old)
    done = [s for s in blob["stages"] if s in old.epochs]
    old.stages = {k: v for k, v in old.stages.items() if k in done}
    _load_weights(model, blob, path)
    return old, done, blob.get("rng")


def _sample_grids(
    model: MultimodalVAE,
    dataset: MultimodalDataset,
    run_dir: Path,
    latent: LatentSampler,
    device: torch.device,
) -> dict[str, dict[str, str]]:
    """Draw the conditional and unconditional grids; return the record's ``figures`` entry."""
    sample_grid(model, dataset.test, run_dir / COND_GRID, device=str(device))
    source = "the prior" if latent.kind == "prior" else f"the {latent.kind} sampler"
    prior_grid(model, run_dir / PRIOR_GRID, draw=latent.sample, source=source)
    return {
        COND_GRID: {"what": "conditional samples from each modality"},
        PRIOR_GRID: {"what": "unconditional samples", "source": latent.kind},
    }


CHECKPOINT_FORMAT = 2  # 1: mmvae-bench <= 0.1 (no uid, stages or random states)


def save_checkpoint(
    path: Path,
    model: MultimodalVAE,
    record: RunRecord,
    stages: list[str],
    rng: dict[str, Any] | None = None,
) -> Path:
    """Atomically save weights, config, registry names, finished stages and random states.

    Everything in it is a tensor, a number, a string or a container of those, so it loads with
    ``weights_only=True``; ``uid`` ties it to its record.
    """
    return atomic_torch_save(
        path,
        {
            "format": CHECKPOINT_FORMAT,
            "model": record.model,
            "dataset": record.dataset,
            "run_id": record.run_id,
            "uid": record.uid,
            "config": record.config,
            "stage": stages[-1] if stages else None,
            "stages": list(stages),
            "rng": rng,
            "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        },
    )


def load_checkpoint(path: Path, record: RunRecord) -> dict[str, Any]:
    """Read ``path`` (``weights_only``) and check it is ``record``'s checkpoint.

    Raises:
        BenchError: not a checkpoint of mmvae-bench (a bare tensor, another layout), or one of
            another model, config or run than ``record``.
    """
    blob = load_tensors(path, what="checkpoint")
    if not isinstance(blob, dict) or not isinstance(blob.get("state_dict"), dict):
        raise BenchError(
            f"checkpoint {path} is not an mmvae-bench checkpoint (expected a dict with "
            f"'model', 'config' and 'state_dict'; got {type(blob).__name__})"
        )
    if blob.get("model") != record.model:
        raise BenchError(
            f"checkpoint {path} holds model {blob.get('model')!r}, its record says {record.model!r}"
        )
    if blob.get("config") != record.config:
        raise BenchError(f"checkpoint {path} was saved with another config than its record's")
    if record.uid is not None and blob.get("uid") != record.uid:
        raise BenchError(
            f"checkpoint {path} belongs to another run than its record (a rerun with the same "
            "run id?); evaluate refuses to mix them: rerun with --overwrite"
        )
    if "stages" not in blob:  # format 1 named only the last finished stage
        names = list(record.stages)
        last = blob.get("stage")
        blob["stages"] = names[: names.index(last) + 1] if last in names else []
    return blob


def _load_weights(model: MultimodalVAE, blob: dict[str, Any], path: Path) -> None:
    try:
        model.load_state_dict(blob["state_dict"])
    except (RuntimeError, KeyError, TypeError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise BenchError(
            f"checkpoint {path} does not fit the model its config builds: {first}"
        ) from None


def load_run(
    run_dir: Path, registry: Registry, *, device: torch.device | None = None
) -> tuple[MultimodalVAE, MultimodalDataset, RunRecord]:
    """Rebuild a trained model from ``run_dir`` through the registry (weights_only load).

    Raises:
        BenchError: the record is invalid, training had not finished, or the checkpoint is
            not this record's or does not fit its config.
    """
    run_dir = Path(run_dir)
    record = RunRecord.load(run_dir)
    if not record.trained:
        raise BenchError(
            f"run {run_dir} has not finished training (status {record.status!r}); continue "
            f"it with `mmvae-bench run {record.model} --run-id {record.run_id} --resume ...`"
        )
    path = run_dir / CHECKPOINT_FILE
    blob = load_checkpoint(path, record)
    missing = [s for s in record.epochs if s not in blob["stages"]]
    if missing:
        raise BenchError(
            f"checkpoint {path} lacks stage(s) {missing}: it is from an unfinished run; "
            f"continue it with `mmvae-bench run {record.model} --run-id {record.run_id} --resume`"
        )
    if record.model not in registry.models and record.plugins:
        # Plugin code is never loaded from a path a record names: the user passes it.
        files = " ".join(f"--plugin {p.path}" for p in record.plugins)
        raise BenchError(
            f"model '{record.model}' of run {run_dir} comes from a plugin file; pass {files} "
            "(the record holds its sha256)"
        )
    entry = registry.model(record.model)
    dataset = load_dataset(
        registry,
        record.dataset,
        data_dir=record.run.get("data_dir"),
        cache_dir=record.run.get("cache_dir") or DEFAULT_CACHE_DIR,
        seed=record.seed,
    )
    config = make_config(entry.config, record.config)
    model = entry.cls(dataset, config)
    _load_weights(model, blob, path)
    model.to(device or torch.device("cpu")).eval().requires_grad_(False)
    return model, dataset, record


def evaluate_run(
    run_dir: Path,
    registry: Registry,
    *,
    protocol: str | None = None,
    fid: FIDSettings | None = None,
    classifier_weights: Path | None = None,
    sampler: str | None = None,
    refit_sampler: bool = False,
    hmc: str | None = None,
    device: torch.device | None = None,
    threads: int | str = 1,
    status: Status | None = None,
) -> RunRecord:
    """Re-evaluate a trained run from its checkpoint; update its record atomically.

    The run folder is locked for the evaluation (a run still writing it is an error). A run
    whose training finished but whose evaluation did not (killed, or failed while evaluating)
    is evaluated too and becomes ``ok``. The metrics are replaced, the protocol updated
    (default: the run's), an entry appended to ``evaluations``, and the sample grids redrawn.
    The latent sampler is loaded from ``sampler.pt`` when it is of the requested kind
    (default: the run's), else fitted with the run's seed and saved. Sampling is seeded by the
    run's seed: evaluating twice gives the same numbers. The HMC sampler is ``hmc``
    (default: the run's; records from before samplers were named ran the paper's).
    ``threads="auto"`` on the CPU lets a :class:`ThreadGovernor` pick the HMC iterations'
    thread count. Returns the updated record.
    """
    say = status or (lambda msg: None)
    dev = device or torch.device("cpu")
    with locked(Path(run_dir)):
        model, dataset, record = load_run(run_dir, registry, device=dev)
        ran = record.protocol.get("hmc")
        proto = get_protocol(
            protocol or record.protocol.get("name", "full"),
            hmc or (ran.get("kind", "paper") if isinstance(ran, dict) else None),
        )
        if classifier_weights is not None:
            get_classifiers(
                dataset,
                Path(record.run.get("cache_dir") or DEFAULT_CACHE_DIR),
                device=dev,
                weights_dir=classifier_weights,
            )
        sampler_kind = sampler or record.sampler_kind
        latent, refitted = load_or_fit_sampler(
            Path(run_dir) / SAMPLER_FILE,
            sampler_kind,
            model,
            dataset.train,
            device=dev,
            seed=record.seed,
            refit=refit_sampler,
        )
        # Seeded by the run's seed: evaluating a checkpoint twice gives the same numbers.
        torch.manual_seed(record.seed)
        if dev.type == "cuda":
            torch.cuda.manual_seed_all(record.seed)
        say(f"evaluating {record.run_id} ({proto.name} protocol) on {dev}")
        t0 = time.perf_counter()
        metrics = _evaluate_governed(
            threads,
            dev,
            lambda: evaluate_model(
                model,
                dataset,
                proto,
                cache_dir=Path(record.run.get("cache_dir") or DEFAULT_CACHE_DIR),
                device=dev,
                progress=say,
                registry=registry,
                classifier_weights=classifier_weights,
                fid=fid,
                seed=record.seed,
                latent_sampler=latent.sample,
            ),
        )
        wall_s = time.perf_counter() - t0
        figures = _sample_grids(model, dataset, Path(run_dir), latent, dev)
        previous = record.protocol.get("version")
        previous_sampler = record.sampler_kind
        record.metrics = metrics
        record.sampler = {**latent.info, "file": SAMPLER_FILE}
        record.figures = figures
        record.protocol = proto.as_record()
        record.timings["eval_s"] = wall_s
        if record.status != "ok":
            record.status, record.error, record.traceback = "ok", None, None
            record.finished = now()
        record.evaluations.append(
            {
                "at": now(),
                "protocol": proto.version,
                "previous_protocol": previous,
                "classifier_weights": str(classifier_weights) if classifier_weights else None,
                "sampler": {"kind": latent.kind, "previous": previous_sampler, "fitted": refitted},
                "fid": None
                if fid is None
                else {"kind": fid.extractor, "extractors": sorted(metrics.get(FID, {}))},
                "wall_s": wall_s,
                "environment": environment(dev, threads),
            }
        )
        record.save(run_dir)
    return record
