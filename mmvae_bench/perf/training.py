"""Training throughput per stage, through the real trainer, and the naive stage-2 baseline."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Mapping
from typing import Any

import torch
from accelerate import Accelerator
from torch import Tensor

from mmvae_bench.model import ModelEntry, MultimodalVAE
from mmvae_bench.perf.archs import Arch
from mmvae_bench.perf.timing import Timing, peak_memory_mib, reset_peak_memory
from mmvae_bench.train import TrainSettings, compile_submodules, train

__all__ = ["naive_variant", "stage_throughput"]

log = logging.getLogger(__name__)


def naive_variant(cls: type[MultimodalVAE]) -> type[MultimodalVAE]:
    """``cls`` trained the way the reference JNF code trains it: the baseline of stage 2.

    Every step also computes the loss of each earlier (frozen) stage, as the reference computes
    the joint ELBO with its decoder pass in stage 2, and nothing is precomputed, so the frozen
    joint encoder runs on every batch. The parts are returned (and so summed by the trainer,
    forcing the work on a GPU too) but add nothing to the gradient.
    """

    class Naive(cls):  # type: ignore[valid-type, misc]
        def precompute(self, batch: dict[str, Tensor], stage: str) -> dict[str, Tensor]:
            return {}

        def loss(
            self, batch: dict[str, Tensor], stage: str, cached: Mapping[str, Tensor]
        ) -> dict[str, Tensor]:
            out = dict(super().loss(batch, stage, {}))
            names = [s.name for s in self.stages]
            for earlier in names[: names.index(stage)]:
                out[f"naive_{earlier}"] = super().loss(batch, earlier, {})["loss"].detach()
            return out

    Naive.__name__ = Naive.__qualname__ = f"Naive{cls.__name__}"
    return Naive


def stage_throughput(
    entry: ModelEntry,
    arch: Arch,
    stage: str,
    accelerator: Accelerator,
    *,
    quick: bool,
    repeats: int,
    target_s: float,
    naive: bool = False,
    compiled: bool = False,
    seed: int = 0,
) -> dict[str, Any]:
    """Training samples/s of one stage of ``entry`` at ``arch``, measured by the trainer itself.

    A warm-up run of two steps sizes the measured epochs to about ``target_s`` each; then one
    more warm-up epoch and ``repeats`` timed epochs of the real :func:`~mmvae_bench.train.train`
    loop (the other stages get 0 epochs). Epochs end with the trainer's host sync, so on a GPU
    each epoch's time covers its work.
    """
    device = accelerator.device
    config = arch.config(entry, quick=quick)
    cls = naive_variant(entry.cls) if naive else entry.cls
    torch.manual_seed(seed)
    model = cls(arch.dataset(1), config).to(device)
    if compiled:  # compilation happens in the warm-up run
        compile_submodules(model)
    stages = {s.name: s for s in model.stages}
    batch = stages[stage].batch_size or config.batch_size
    only = {s: 0 for s in stages} | {stage: 1}
    settings = TrainSettings(epochs=only, progress=False, precision=accelerator.mixed_precision)

    t0 = time.perf_counter()
    train(model, arch.dataset(2 * batch, seed=seed), accelerator, settings)
    step_s = (time.perf_counter() - t0) / 2  # an upper bound: includes set-up
    steps = max(2, min(200, math.ceil(target_s / max(step_s, 1e-6))))

    ends: list[float] = []
    settings = TrainSettings(
        epochs=only | {stage: repeats + 1}, progress=False, precision=accelerator.mixed_precision
    )
    reset_peak_memory(device)
    reports = train(
        model,
        arch.dataset(steps * batch, seed=seed + 1),
        accelerator,
        settings,
        on_epoch=lambda s, e, m: ends.append(time.perf_counter()) if s == stage else None,
    )
    (report,) = [r for r in reports if r.name == stage]
    timing = Timing.of([b - a for a, b in zip(ends, ends[1:], strict=False)])
    samples = steps * batch
    return {
        "model": entry.name,
        "arch": arch.name,
        "stage": stage,
        "variant": ("naive" if naive else "ours") + (" (compiled)" if compiled else ""),
        "warmup_s": 2 * step_s,
        "batch_size": batch,
        "steps_per_repeat": steps,
        "samples_per_s": timing.rate(samples),
        "epoch": timing.as_dict(),
        "precompute_samples_per_s": (
            samples / report.precompute_s if report.precompute_s > 0 else None
        ),
        "final_loss": report.loss.get("loss"),
        **peak_memory_mib(device),
    }
