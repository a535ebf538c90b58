"""The staged trainer: runs a model's declared stages on accelerate, freezing the rest."""

from __future__ import annotations

import logging
import math
import time
import typing
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from accelerate import Accelerator
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from torch import Tensor

from mmvae_bench.config import LRSchedule
from mmvae_bench.data.memory import RESIDENT_SPLIT_HINT, require_device_memory
from mmvae_bench.data.spec import MultimodalDataset, Split, iter_batches
from mmvae_bench.errors import BenchError, NonFiniteLossError
from mmvae_bench.flows import FlowPosterior
from mmvae_bench.memory_format import MEMORY_FORMATS, probe, set_memory_format, supports
from mmvae_bench.model import MultimodalVAE, Stage
from mmvae_bench.threads import ThreadGovernor

__all__ = [
    "StageReport",
    "TrainSettings",
    "compile_submodules",
    "epoch_plan",
    "freeze_for_stage",
    "holdout",
    "make_adam",
    "rng_states",
    "stage_epochs",
    "train",
]

log = logging.getLogger(__name__)

LR_SCHEDULES = typing.get_args(LRSchedule)  # TrainSettings.lr_schedule (the CLI's choices)

EpochCallback = Callable[[str, int, dict[str, float]], None]
# After a stage: its report and the random states that make a resumed run continue exactly.
CheckpointCallback = Callable[["StageReport", dict[str, Any]], None]


@dataclass(frozen=True, kw_only=True)
class TrainSettings:
    """How to train (not what): epochs overrides, precision, progress display, checks."""

    epochs: Mapping[str, int] = field(default_factory=dict)  # {stage or "*": epochs}
    precision: str = "no"  # accelerate mixed precision: no, bf16, fp16
    progress: bool = True
    check_every: int = 25  # steps between host syncs (NaN check, progress); none per step
    seed: int = 0
    # Held-out validation (``--preset paper``: 0.1, seed 42, patience 30, keep the best):
    validation: float = 0.0  # fraction of the training split held out; 0: none
    validation_seed: int = 42  # seed of the held-out draw, independent of ``seed``
    lr_patience: int | None = None  # ReduceLROnPlateau patience (on the validation loss)
    keep_best: bool = False  # end each stage with its lowest-validation-loss parameters
    # "cosine": each stage's learning rate decays from the stage's lr to 0 along a half cosine
    # over its steps (one value per step); "constant": the stage's lr throughout.
    lr_schedule: str = "constant"
    # > 0: let a ThreadGovernor keep torch at the faster of 1 and this many threads, re-measured
    # every 30 s (``--threads auto``); 0: leave torch's thread count alone.
    adapt_threads: int = 0
    # The nets' memory format while a stage trains: contiguous, channels-last, or auto (each
    # stage keeps the faster, measured at its start; :mod:`mmvae_bench.memory_format`).
    memory_format: str = "contiguous"

    def __post_init__(self) -> None:
        if not 0.0 <= self.validation < 1.0:
            raise BenchError(f"validation must be in [0, 1), got {self.validation}")
        if self.lr_patience is not None and self.lr_patience < 0:
            raise BenchError(f"lr_patience must be >= 0, got {self.lr_patience}")
        if self.keep_best and self.validation == 0.0:
            raise BenchError("keep_best needs a validation split (validation > 0)")
        if self.memory_format not in MEMORY_FORMATS:
            raise BenchError(
                f"memory_format must be one of {list(MEMORY_FORMATS)}, got {self.memory_format!r}"
            )
        if self.lr_schedule not in LR_SCHEDULES:
            raise BenchError(
                f"lr_schedule must be one of {list(LR_SCHEDULES)}, got {self.lr_schedule!r}"
            )
        if self.lr_schedule != "constant" and self.lr_patience is not None:
            raise BenchError("lr_schedule and lr_patience exclude each other: pick one schedule")


@dataclass
class StageReport:
    """What one stage did: epochs, steps, wall time, throughput and final loss parts."""

    name: str
    epochs: int
    steps: int
    samples: int
    wall_s: float
    samples_per_s: float
    loss: dict[str, float]
    precompute_s: float = 0.0
    validation_loss: float | None = None  # the kept parameters' validation loss
    best_epoch: int | None = None  # the epoch (1-based) whose parameters were kept
    # Under ``adapt_threads``: steps run at each torch thread count, ``{"1": n, "2": m}``.
    thread_steps: dict[str, int] = field(default_factory=dict)
    # The nets' memory format in this stage, and under ``memory_format="auto"`` each format's
    # median probe step in ms (empty when nothing was probed).
    memory_format: str = "contiguous"
    memory_format_probe_ms: dict[str, float] = field(default_factory=dict)


def holdout(split: Split, fraction: float, seed: int) -> tuple[Split, Split | None]:
    """``(train, validation)``: ``round(fraction * n)`` samples drawn with ``seed`` held out.

    The draw is ``torch.randperm(n)`` from a generator seeded with ``seed``, the last part
    held out, so it depends only on ``n`` and ``seed`` (as ``random_split`` in the reference).
    """
    n_val = round(fraction * len(split))
    if n_val == 0:
        return split, None
    if n_val >= len(split):
        raise BenchError(f"validation={fraction} leaves no training samples (of {len(split)})")
    order = torch.randperm(len(split), generator=torch.Generator().manual_seed(seed))
    return split.subset(order[: len(split) - n_val]), split.subset(order[len(split) - n_val :])


def stage_epochs(stage: Stage, overrides: Mapping[str, int]) -> int:
    """Epochs for ``stage`` after ``--epochs`` overrides (by stage name, or ``*`` for all)."""
    if stage.name in overrides:
        return int(overrides[stage.name])
    return int(overrides.get("*", stage.epochs))


def epoch_plan(stages: Sequence[Stage], overrides: Mapping[str, int]) -> dict[str, int]:
    """``{stage: epochs}`` in stage order after ``--epochs`` overrides; checks the names.

    Raises:
        BenchError: an override names a stage the model does not have.
    """
    names = [s.name for s in stages]
    unknown = [k for k in overrides if k != "*" and k not in names]
    if unknown:
        raise BenchError(
            f"--epochs names unknown stage(s) {unknown}; this model's stages: {', '.join(names)}"
        )
    return {s.name: stage_epochs(s, overrides) for s in stages}


def freeze_for_stage(model: MultimodalVAE, stage: Stage) -> list[torch.nn.Parameter]:
    """Train the stage's modules; freeze every other child (no grad *and* ``eval()``).

    Returns the parameters to optimise. ``eval()`` matters: frozen BatchNorm layers must not
    update their running statistics while the next stage trains.
    """
    children = dict(model.named_children())
    unknown = [m for m in stage.modules if m not in children]
    if unknown:
        raise BenchError(
            f"stage '{stage.name}' names unknown modules {unknown}; "
            f"the model has: {', '.join(children)}"
        )
    params: list[torch.nn.Parameter] = []
    for name, child in children.items():
        trainable = name in stage.modules
        child.requires_grad_(trainable)
        child.train(trainable)
        if trainable:
            params.extend(p for p in child.parameters())
    return params


def make_adam(params: list[torch.nn.Parameter], lr: float) -> torch.optim.Adam:
    """Adam, fused into one kernel per step where torch has one (CPU and CUDA float params).

    Same update rule as the per-parameter loop; measured on a 2-core CPU (1 thread, JNF stage 2
    at the PolyMNIST architecture) about 10% more samples/s, since a step updates ~130 tensors.
    """
    fused = all(p.device.type in ("cpu", "cuda") and p.is_floating_point() for p in params)
    return torch.optim.Adam(params, lr=lr, fused=fused or None)


def compile_submodules(model: torch.nn.Module) -> list[str]:
    """``torch.compile`` the model's networks in place (``RunConfig.compile``).

    Each child network (an entry of a ``ModuleDict``/``ModuleList`` child, or a plain child) is
    compiled with ``nn.Module.compile``, which keeps parameter names, so checkpoints are
    unchanged. Flow posteriors return distributions, which do not compile: their hot path,
    the product of experts in HMC, is compiled by :func:`mmvae_bench.flows.compile_kernels`.

    Returns:
        The dotted names of the compiled modules.
    """
    names = []
    for name, child in model.named_children():
        if isinstance(child, torch.nn.ModuleDict):
            parts = [(f"{name}.{k}", m) for k, m in child.items()]
        elif isinstance(child, torch.nn.ModuleList):
            parts = [(f"{name}.{i}", m) for i, m in enumerate(child)]
        else:
            parts = [(name, child)]
        for full, m in parts:
            if isinstance(m, FlowPosterior):
                m.base.compile()
                names.append(f"{full}.base")
            else:
                m.compile()
                names.append(full)
    return names


def _precompute(model: MultimodalVAE, x: Split, stage: str, batch_size: int) -> dict[str, Tensor]:
    out: dict[str, list[Tensor]] = {}
    with torch.no_grad():
        for batch, _ in iter_batches(x, batch_size, shuffle=False):
            for k, v in model.precompute(batch, stage).items():
                out.setdefault(k, []).append(v)
    return {k: torch.cat(v) for k, v in out.items()}


def train(
    model: MultimodalVAE,
    dataset: MultimodalDataset,
    accelerator: Accelerator,
    settings: TrainSettings,
    *,
    checkpoint: CheckpointCallback | None = None,
    on_epoch: EpochCallback | None = None,
    done: Sequence[str] = (),
    rng_state: Mapping[str, Any] | None = None,
) -> list[StageReport]:
    """Train ``model`` stage by stage on ``dataset.train``.

    Args:
        model: the model, already on ``accelerator.device``.
        dataset: its training split is moved to the device once at its native precision
            (tensor-resident batches, converted to float32 there batch by batch).
        accelerator: device placement, mixed precision and backward.
        settings: epochs overrides, precision, progress, NaN-check interval, seed.
        checkpoint: called after each stage with its report and :func:`rng_states` (the
            runner saves the model, the record and these states).
        on_epoch: called with ``(stage, epoch, metrics)`` after every epoch (Tune reporting).
        done: stages finished before (a resumed run): skipped; the model holds their weights.
        rng_state: the random states saved after the last finished stage (a resumed run), so
            the remaining stages draw the same batches and noise as an uninterrupted run.

    Returns:
        One :class:`StageReport` per stage trained now.

    Raises:
        NonFiniteLossError: a loss became NaN/inf; names stage, epoch and step.
    """
    device = accelerator.device
    require_device_memory(dataset.name, dataset.train.nbytes, RESIDENT_SPLIT_HINT, device)
    # One copy on the device at native precision; the validation split indexes into it.
    x, x_val = holdout(
        dataset.train.to(device, non_blocking=True), settings.validation, settings.validation_seed
    )
    n_train = len(x)
    gen = torch.Generator().manual_seed(settings.seed)
    if rng_state is not None:
        _restore_rng(rng_state, gen)
    governor = ThreadGovernor(settings.adapt_threads) if settings.adapt_threads > 0 else None
    reports: list[StageReport] = []
    for stage in model.stages:
        if stage.name in done:
            continue
        epochs = stage_epochs(stage, settings.epochs)
        batch_size = stage.batch_size or model.config.batch_size
        params = freeze_for_stage(model, stage)
        if not params:
            raise BenchError(f"stage '{stage.name}' has no parameters to train")
        t0 = time.perf_counter()
        # Nothing to precompute for a stage that trains no epoch (a pass over the whole split).
        cached = _precompute(model, x, stage.name, max(batch_size, 512)) if epochs > 0 else {}
        t_pre = time.perf_counter() - t0
        # Before the optimizer: its state takes the format of the parameters.
        fmt, probe_ms = _stage_memory_format(
            model, stage, params, x, cached, batch_size, accelerator, settings.memory_format
        )
        opt = accelerator.prepare_optimizer(make_adam(params, stage.lr))
        steps_per_epoch = max(1, n_train // batch_size)
        report = _run_stage(
            model,
            stage,
            epochs,
            steps_per_epoch,
            x,
            cached,
            batch_size,
            opt,
            accelerator,
            settings,
            gen,
            on_epoch,
            x_val,
            governor,
        )
        if fmt != "contiguous":  # checkpoints and evaluation never depend on the choice
            set_memory_format(model, "contiguous")
        report.memory_format, report.memory_format_probe_ms = fmt, probe_ms
        report.wall_s += t_pre
        report.precompute_s = t_pre
        report.samples_per_s = report.samples / report.wall_s if report.wall_s > 0 else 0.0
        reports.append(report)
        log.info(
            "stage %s: %.1f s, %.0f samples/s", stage.name, report.wall_s, report.samples_per_s
        )
        if checkpoint is not None:
            checkpoint(report, rng_states(gen))
    model.eval()
    model.requires_grad_(False)
    return reports


def _stage_memory_format(
    model: MultimodalVAE,
    stage: Stage,
    params: list[torch.nn.Parameter],
    x: Split,
    cached: Mapping[str, Tensor],
    batch_size: int,
    accelerator: Accelerator,
    requested: str,
) -> tuple[str, dict[str, float]]:
    """Put ``model`` in the stage's memory format; returns it and the probe's step times.

    ``auto`` probes on the first batch of the split (not drawn from the batch generator):
    forward and backward only, inside a forked random state, with the buffers (BatchNorm
    statistics) restored and the gradients dropped afterwards, so the stage trains exactly as
    it would have in the chosen format without a probe. Nets without convolutions, a compiled
    model (a format change would recompile it) and a stage without steps stay contiguous.
    """
    if requested == "contiguous" or not supports(model):
        return "contiguous", {}
    if requested != "auto":
        set_memory_format(model, requested)
        return requested, {}
    compiled = any(getattr(m, "_compiled_call_impl", None) is not None for m in model.modules())
    if compiled or len(x) < batch_size:
        return "contiguous", {}
    batch, extra = next(iter_batches(x, batch_size, shuffle=False, extras=cached))
    kwargs = {"epoch": 0.0} if stage.pass_epoch else {}

    def step() -> None:
        with accelerator.autocast():
            out = model.loss(batch, stage.name, extra, **kwargs)
        accelerator.backward(out["loss"])

    device = accelerator.device
    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)
    buffers = {k: b.detach().clone() for k, b in model.named_buffers()}
    cuda = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=cuda):
        result = probe(model, step, sync=sync)
    with torch.no_grad():
        for k, b in model.named_buffers():
            b.copy_(buffers[k])
    for p in params:
        p.grad = None
    return result.chosen, {k: round(v, 3) for k, v in result.step_ms.items()}


def rng_states(gen: torch.Generator) -> dict[str, Any]:
    """The batch generator's and torch's global random states (tensors: weights_only-safe)."""
    states: dict[str, Any] = {"batches": gen.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def _restore_rng(states: Mapping[str, Any], gen: torch.Generator) -> None:
    gen.set_state(states["batches"])
    torch.set_rng_state(states["torch"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def _run_stage(
    model: MultimodalVAE,
    stage: Stage,
    epochs: int,
    steps_per_epoch: int,
    x: Split,
    cached: Mapping[str, Tensor],
    batch_size: int,
    opt: Any,
    accelerator: Accelerator,
    settings: TrainSettings,
    gen: torch.Generator,
    on_epoch: EpochCallback | None,
    x_val: Split | None = None,
    governor: ThreadGovernor | None = None,
) -> StageReport:
    columns = (
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total} steps"),
        TextColumn("{task.fields[status]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    )
    total = epochs * steps_per_epoch
    samples = steps = 0
    last: dict[str, float] = {}
    plateau = (
        torch.optim.lr_scheduler.ReduceLROnPlateau(_torch_optimizer(opt), patience=lr_patience)
        if (lr_patience := settings.lr_patience) is not None
        else None
    )
    cosine = (
        torch.optim.lr_scheduler.CosineAnnealingLR(_torch_optimizer(opt), T_max=max(total, 1))
        if settings.lr_schedule == "cosine"
        else None
    )
    best: tuple[float, int, dict[str, Tensor]] | None = None  # loss, epoch, parameters
    steps_before = dict(governor.steps) if governor is not None else {}
    if governor is not None:
        governor.start()
    t0 = time.perf_counter()
    with Progress(*columns, disable=not settings.progress, transient=False) as bar:
        task = bar.add_task(f"{stage.name}", total=total, status="")
        for epoch in range(epochs):
            sums: dict[str, Tensor] = {}
            pending: list[Tensor] = []  # step losses since the last host sync
            n_epoch = 0
            for batch, extra in iter_batches(
                x, batch_size, shuffle=True, generator=gen, extras=cached, drop_last=True
            ):
                kwargs = {"epoch": steps / steps_per_epoch} if stage.pass_epoch else {}
                with accelerator.autocast():
                    out = model.loss(batch, stage.name, extra, **kwargs)
                if steps == 0:
                    _check_loss_output(model, stage.name, out)
                loss = out["loss"]
                opt.zero_grad(set_to_none=True)
                accelerator.backward(loss)
                opt.step()
                if cosine is not None:
                    cosine.step()
                if governor is not None:
                    governor.step()
                for k, v in out.items():
                    sums[k] = sums.get(k, 0.0) + v.detach().float()
                pending.append(loss.detach().float())
                steps += 1
                n_epoch += 1
                samples += next(iter(batch.values())).shape[0]
                if len(pending) >= settings.check_every:
                    _check_finite(pending, stage.name, epoch, steps)
                    pending = []
                    bar.update(
                        task, completed=steps, status=f"loss {(sums['loss'] / n_epoch).item():.4g}"
                    )
            _check_finite(pending, stage.name, epoch, steps)
            last = {k: (v / max(n_epoch, 1)).item() for k, v in sums.items()}
            bar.update(
                task,
                completed=steps,
                status=f"epoch {epoch + 1}/{epochs} loss {last.get('loss', math.nan):.4g}",
            )
            if settings.progress and not bar.console.is_terminal:
                # Logs and CI see no live bar: one line per epoch instead.
                bar.console.print(
                    f"{stage.name} epoch {epoch + 1}/{epochs}: "
                    + ", ".join(f"{k} {v:.4g}" for k, v in last.items())
                )
            if x_val is not None:
                val = _validation_loss(model, stage, x_val, batch_size, epoch + 1)
                last["val_loss"] = val
                if settings.keep_best and (best is None or val < best[0]):
                    best = (val, epoch + 1, _stage_state(model, stage))
            if plateau is not None:
                plateau.step(last["val_loss"] if x_val is not None else last["loss"])
            if plateau is not None or cosine is not None:
                last["lr"] = float(_torch_optimizer(opt).param_groups[0]["lr"])  # next epoch's
            if on_epoch is not None:
                on_epoch(stage.name, epoch, last)
    if best is not None:
        _load_stage_state(model, best[2])
    wall = time.perf_counter() - t0
    return StageReport(
        name=stage.name,
        epochs=epochs,
        steps=steps,
        samples=samples,
        wall_s=wall,
        samples_per_s=samples / wall if wall > 0 else 0.0,
        loss=last,
        validation_loss=best[0] if best is not None else last.get("val_loss"),
        best_epoch=best[1] if best is not None else None,
        thread_steps={
            str(n): k - steps_before.get(n, 0)
            for n, k in sorted(governor.steps.items())
            if k > steps_before.get(n, 0)
        }
        if governor is not None
        else {},
    )


def _torch_optimizer(opt: Any) -> torch.optim.Optimizer:
    # accelerate wraps the optimizer; the LR scheduler needs the torch one underneath.
    return getattr(opt, "optimizer", opt)


def _validation_loss(
    model: MultimodalVAE, stage: Stage, x_val: Split, batch_size: int, epoch: float
) -> float:
    """Mean of the stage's loss over the held-out samples, every module in ``eval()``."""
    modes = {name: child.training for name, child in model.named_children()}
    model.eval()
    total, n = 0.0, 0
    kwargs = {"epoch": float(epoch)} if stage.pass_epoch else {}
    with torch.no_grad():
        for batch, _ in iter_batches(x_val, batch_size, shuffle=False):
            b = next(iter(batch.values())).shape[0]
            total += float(model.loss(batch, stage.name, {}, **kwargs)["loss"]) * b
            n += b
    for name, child in model.named_children():
        child.train(modes[name])
    return total / max(n, 1)


def _stage_state(model: MultimodalVAE, stage: Stage) -> dict[str, Tensor]:
    """A copy of the stage's modules' parameters and buffers (what keep_best restores)."""
    return {
        f"{name}.{k}": v.detach().clone()
        for name in stage.modules
        for k, v in getattr(model, name).state_dict().items()
    }


def _load_stage_state(model: MultimodalVAE, state: dict[str, Tensor]) -> None:
    with torch.no_grad():
        for key, value in state.items():
            name, _, rest = key.partition(".")
            getattr(model, name).state_dict()[rest].copy_(value)


def _check_loss_output(model: MultimodalVAE, stage: str, out: Any) -> None:
    """The first step's ``loss()`` result follows the contract: a dict with a scalar "loss"."""
    name = type(model).__name__
    if not isinstance(out, Mapping) or "loss" not in out:
        keys = sorted(out) if isinstance(out, Mapping) else type(out).__name__
        raise BenchError(
            f"{name}.loss(batch, {stage!r}) must return a dict with a scalar 'loss' (the "
            f"quantity to minimise) and named parts; got {keys}"
        )
    loss = out["loss"]
    if not isinstance(loss, Tensor) or loss.dim() != 0 or not loss.requires_grad:
        what = tuple(loss.shape) if isinstance(loss, Tensor) else type(loss).__name__
        raise BenchError(
            f"{name}.loss(batch, {stage!r})['loss'] must be a scalar tensor with gradients, "
            f"got {what}"
        )


def _check_finite(pending: list[Tensor], stage: str, epoch: int, step: int) -> None:
    if not pending:
        return
    values = torch.stack(pending)
    bad = ~torch.isfinite(values)
    if bool(bad.any()):
        first = int(bad.nonzero()[0, 0])
        at = step - len(pending) + first + 1
        raise NonFiniteLossError(stage, epoch, at, float(values[first]))
