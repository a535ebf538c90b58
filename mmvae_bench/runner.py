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

from mmvae_bench.config import RunConfig, make_config
from mmvae_bench.data.spec import DataOptions, MultimodalDataset
from mmvae_bench.errors import BenchError
from mmvae_bench.eval.evaluate import evaluate_model
from mmvae_bench.eval.protocol import FID, get_protocol
from mmvae_bench.flows import compile_kernels
from mmvae_bench.io import atomic_torch_save, load_tensors
from mmvae_bench.model import ModelConfig, ModelEntry, MultimodalVAE
from mmvae_bench.plots import prior_grid, sample_grid
from mmvae_bench.plugins import Registry
from mmvae_bench.results import (
    COND_GRID,
    PRIOR_GRID,
    SCHEMA_VERSION,
    environment,
    now,
    read_record,
    write_record,
)
from mmvae_bench.samplers import (
    SAMPLER_FILE,
    LatentSampler,
    fit_sampler,
    load_or_fit_sampler,
    save_sampler,
)
from mmvae_bench.train import TrainSettings, compile_submodules, train

if TYPE_CHECKING:  # fid.py's torch-fidelity import costs ~2 s: only when FID is asked for
    from mmvae_bench.eval.fid import FIDSettings

__all__ = [
    "evaluate_run",
    "fid_settings",
    "load_dataset",
    "load_run",
    "resolve_device",
    "resolve_model_config",
    "run",
]

log = logging.getLogger(__name__)
Status = Callable[[str], None]


def resolve_device(device: str) -> torch.device:
    """``auto`` -> cuda when available, else cpu; asking for cuda without one is an error."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise BenchError("--device cuda requested but no CUDA device is available")
    return torch.device(device)


def resolve_model_config(
    entry: ModelEntry, dataset: MultimodalDataset, overrides: dict[str, Any]
) -> ModelConfig:
    """Model config = class defaults < the plugin's per-dataset defaults < user overrides.

    ``latent_dim`` left at None takes the dataset's, so the record holds the value that ran.
    """
    values = {**dict(entry.defaults.get(dataset.name, {})), **overrides}
    if values.get("latent_dim") is None:
        values["latent_dim"] = dataset.latent_dim
    return make_config(entry.config, values)


def load_dataset(registry: Registry, cfg: RunConfig) -> MultimodalDataset:
    """Load the run's dataset through the registry."""
    entry = registry.dataset(cfg.dataset)
    opts = DataOptions(
        data_dir=Path(cfg.data_dir).expanduser().resolve() if cfg.data_dir else None,
        cache_dir=Path(cfg.cache_dir).expanduser(),
        seed=cfg.seed,
    )
    return entry.load(opts)


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


def _run_record(cfg: RunConfig) -> dict[str, Any]:
    d = dataclasses.asdict(cfg)
    return {k: (str(v) if isinstance(v, Path) else v) for k, v in d.items()}


def _seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)


def run(
    cfg: RunConfig,
    registry: Registry,
    *,
    progress: bool = True,
    status: Status | None = None,
    on_epoch: Callable[[str, int, dict[str, float]], None] | None = None,
) -> dict[str, Any]:
    """Train and evaluate one model on one dataset; returns the written record.

    The record (``<out>/<run-id>/results.json``) is written atomically at the end; a run that
    fails after its folder exists leaves a record with ``status: "failed"`` and the error.
    """
    say = status or (lambda msg: None)
    torch.set_num_threads(cfg.threads)
    entry = registry.model(cfg.model)
    protocol = get_protocol(cfg.protocol)
    device = resolve_device(cfg.device)
    fid = run_fid_settings(cfg)
    dataset = load_dataset(registry, cfg)
    config = resolve_model_config(entry, dataset, dict(cfg.overrides))
    run_id = cfg.run_id or (
        f"{cfg.model}-{cfg.dataset}-s{cfg.seed}-{time.strftime('%Y%m%d-%H%M%S')}"
        f"-{uuid.uuid4().hex[:4]}"
    )
    run_dir = Path(cfg.out) / run_id
    run_dir.mkdir(parents=True, exist_ok=True)
    record: dict[str, Any] = {
        "schema": SCHEMA_VERSION,
        "run_id": run_id,
        "status": "running",
        "model": cfg.model,
        "dataset": cfg.dataset,
        "seed": cfg.seed,
        "config": dataclasses.asdict(config),
        "run": _run_record(cfg),
        "protocol": protocol.as_record(),
        "environment": environment(device, cfg.threads),
        "dataset_info": {
            "train": len(dataset.train),
            "test": len(dataset.test),
            **{k: v for k, v in dataset.info.items()},
        },
        "stages": {},
        "metrics": {},
        "timings": {},
        "created": now(),
    }
    try:
        _seed_everything(cfg.seed)
        model = entry.cls(dataset, config)
        accelerator = Accelerator(cpu=device.type == "cpu", mixed_precision=cfg.precision)
        model.to(accelerator.device)
        # RunConfig.compile: the nets through torch.compile, and HMC's flow kernels (DESIGN §8).
        compile_kernels(cfg.compile)
        if cfg.compile:
            compile_submodules(model)

        def checkpoint(stage: str) -> None:
            save_checkpoint(run_dir / "checkpoint.pt", model, cfg, stage)

        say(f"training {cfg.model} on {cfg.dataset} ({len(dataset.train)} samples) on {device}")
        t0 = time.perf_counter()
        reports = train(
            model,
            dataset,
            accelerator,
            TrainSettings(
                epochs=cfg.epochs, precision=cfg.precision, progress=progress, seed=cfg.seed
            ),
            checkpoint=checkpoint,
            on_epoch=on_epoch,
        )
        record["stages"] = {r.name: dataclasses.asdict(r) for r in reports}
        record["timings"]["train_s"] = time.perf_counter() - t0
        # The latent sampler is part of the trained run: fitted once, saved beside the weights.
        t1 = time.perf_counter()
        if cfg.sampler != "prior":
            say(f"fitting the {cfg.sampler} latent sampler on the training set's embeddings")
        sampler = fit_sampler(
            cfg.sampler, model, dataset.train, device=accelerator.device, seed=cfg.seed
        )
        save_sampler(run_dir / SAMPLER_FILE, sampler)
        record["sampler"] = {**sampler.info, "file": SAMPLER_FILE}
        record["timings"]["sampler_s"] = time.perf_counter() - t1
        if cfg.evaluate:
            t1 = time.perf_counter()
            say(f"evaluating ({protocol.name} protocol)")
            record["metrics"] = evaluate_model(
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
            )
            record["timings"]["eval_s"] = time.perf_counter() - t1
            record["figures"] = _sample_grids(model, dataset, run_dir, sampler, device)
        else:
            sample_grid(model, dataset.test, run_dir / COND_GRID, device=str(device))
        record["status"] = "ok"
    except BaseException as e:
        record["status"] = "failed"
        record["error"] = f"{type(e).__name__}: {e}"
        if not isinstance(e, BenchError):
            record["traceback"] = traceback.format_exc()
        record["finished"] = now()
        write_record(run_dir, record)
        raise
    record["finished"] = now()
    write_record(run_dir, record)
    return record


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


def save_checkpoint(path: Path, model: MultimodalVAE, cfg: RunConfig, stage: str) -> Path:
    """Atomically save weights, config and registry names (loadable with weights_only)."""
    return atomic_torch_save(
        path,
        {
            "model": cfg.model,
            "dataset": cfg.dataset,
            "config": dataclasses.asdict(model.config),
            "stage": stage,
            "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        },
    )


def load_run(
    run_dir: Path, registry: Registry, *, device: torch.device | None = None
) -> tuple[MultimodalVAE, MultimodalDataset, dict[str, Any]]:
    """Rebuild a trained model from ``run_dir`` through the registry (weights_only load)."""
    run_dir = Path(run_dir)
    record = read_record(run_dir)
    blob = load_tensors(run_dir / "checkpoint.pt", what="checkpoint")
    entry = registry.model(blob["model"])
    rc = record["run"]
    cfg = RunConfig(
        model=blob["model"],
        dataset=blob["dataset"],
        seed=record["seed"],
        data_dir=Path(rc["data_dir"]) if rc.get("data_dir") else None,
        cache_dir=Path(rc["cache_dir"]),
    )
    dataset = load_dataset(registry, cfg)
    config = make_config(entry.config, blob["config"])
    model = entry.cls(dataset, config)
    model.load_state_dict(blob["state_dict"])
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
    device: torch.device | None = None,
    threads: int = 1,
    status: Status | None = None,
) -> dict[str, Any]:
    """Re-evaluate a finished run from its checkpoint; update its record atomically.

    The metrics are replaced, the protocol updated (default: the run's), an entry appended to
    ``evaluations``, and the sample grids redrawn. The latent sampler is loaded from
    ``sampler.pt`` when it is of the requested kind (default: the run's), else fitted with the
    run's seed and saved. Sampling is seeded by the run's seed: evaluating twice gives the same
    numbers. Returns the updated record.
    """
    say = status or (lambda msg: None)
    dev = device or torch.device("cpu")
    state = read_record(run_dir)["status"]
    if state != "ok":  # a failed run's checkpoint may be from an unfinished stage
        raise BenchError(f"run {run_dir} has status {state!r}; only completed runs are evaluated")
    model, dataset, record = load_run(run_dir, registry, device=dev)
    proto = get_protocol(protocol or record["protocol"]["name"])
    sampler_kind = sampler or (record.get("sampler") or {}).get("kind", "prior")
    latent, refitted = load_or_fit_sampler(
        Path(run_dir) / SAMPLER_FILE,
        sampler_kind,
        model,
        dataset.train,
        device=dev,
        seed=record["seed"],
        refit=refit_sampler,
    )
    # Seeded by the run's seed: evaluating a checkpoint twice gives the same numbers.
    torch.manual_seed(record["seed"])
    if dev.type == "cuda":
        torch.cuda.manual_seed_all(record["seed"])
    say(f"evaluating {record['run_id']} ({proto.name} protocol) on {dev}")
    t0 = time.perf_counter()
    metrics = evaluate_model(
        model,
        dataset,
        proto,
        cache_dir=Path(record["run"]["cache_dir"]),
        device=dev,
        progress=say,
        registry=registry,
        classifier_weights=classifier_weights,
        fid=fid,
        seed=record["seed"],
        latent_sampler=latent.sample,
    )
    wall_s = time.perf_counter() - t0
    figures = _sample_grids(model, dataset, Path(run_dir), latent, dev)
    previous = record["protocol"].get("version")
    previous_sampler = (record.get("sampler") or {}).get("kind", "prior")
    record["metrics"] = metrics
    record["sampler"] = {**latent.info, "file": SAMPLER_FILE}
    record["figures"] = figures
    record["protocol"] = proto.as_record()
    record.setdefault("timings", {})["eval_s"] = wall_s
    record.setdefault("evaluations", []).append(
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
    write_record(run_dir, record)
    return record
