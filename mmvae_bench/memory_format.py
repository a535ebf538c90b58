"""The nets' memory format while a stage trains (``--memory-format``).

channels_last (NHWC) lets oneDNN and cuDNN run other convolution kernels than the default
(NCHW). Whether they are faster depends on the net and the machine: on an AMD EPYC (AVX2,
2 cores; BENCHMARKS.md, "Memory format") it gave the demo's image nets +4-11% and the
published PolyMNIST nets +10%, and MHD's sound encoder 17% fewer samples/s. It also changes the
rounding of a run's floats (the same seed then gives other last digits). Hence three choices:

- ``contiguous``: the default, what every run before this option did;
- ``channels-last``: the nets' 4-D parameters (convolution weights) in channels_last, so the
  convolutions run in it (an input follows its weight's format);
- ``auto``: at the start of each stage, :func:`probe` times the stage's forward and backward
  pass in both formats and keeps channels_last only when it is clearly faster.

Whatever a stage used, the nets go back to the contiguous format when it ends, so checkpoints
and the evaluation do not depend on the choice.
"""

from __future__ import annotations

import statistics
import time
import typing
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from mmvae_bench.config import MemoryFormat

__all__ = ["MEMORY_FORMATS", "MemoryFormat", "Probe", "probe", "set_memory_format", "supports"]

MEMORY_FORMATS: tuple[str, ...] = typing.get_args(MemoryFormat)
_TORCH = {"contiguous": torch.contiguous_format, "channels-last": torch.channels_last}

#: ``auto`` keeps channels_last only when its median step is this much shorter: a near tie
#: keeps the default (a run whose formats differ by about this much may choose either way).
MARGIN = 0.02


def supports(module: nn.Module) -> bool:
    """Whether ``module`` has 4-D parameters (convolutions), all of its tensors <= 4-D: the
    nets channels_last can change (5-D tensors would need channels_last_3d)."""
    dims = [t.dim() for t in (*module.parameters(), *module.buffers())]
    return 4 in dims and max(dims) <= 4


def set_memory_format(module: nn.Module, fmt: str) -> None:
    """Put ``module``'s 4-D parameters and buffers in ``fmt`` (``contiguous`` or
    ``channels-last``), in place: the ``Parameter`` objects stay (an optimizer keeps them)."""
    module.to(memory_format=_TORCH[fmt])


@dataclass(frozen=True)
class Probe:
    """What :func:`probe` measured: the format kept and each format's median step, ms."""

    chosen: str
    step_ms: dict[str, float]


def probe(
    module: nn.Module,
    step: Callable[[], None],
    *,
    rounds: int = 5,
    sync: Callable[[], None] = lambda: None,
) -> Probe:
    """Time ``step`` (one forward and backward pass) with ``module`` in each format and leave
    ``module`` in the faster one.

    Each format runs one warm-up step, then ``rounds`` timed steps, the formats alternating so
    that a change in the machine's speed hits both. channels_last is kept when its median is
    at least :data:`MARGIN` shorter. ``step`` must leave no trace the caller minds: the caller
    discards gradients, restores buffers and random state (the trainer does).
    ``sync`` waits for the device (CUDA) before a clock is read.
    """
    formats = ("contiguous", "channels-last")
    times: dict[str, list[float]] = {f: [] for f in formats}
    for fmt in formats:  # warm-up: kernel choice, allocator
        set_memory_format(module, fmt)
        step()
    for r in range(rounds):
        for fmt in formats if r % 2 == 0 else formats[::-1]:
            set_memory_format(module, fmt)
            sync()
            t = time.perf_counter()
            step()
            sync()
            times[fmt].append(time.perf_counter() - t)
    ms = {f: 1000 * statistics.median(ts) for f, ts in times.items()}
    chosen = (
        "channels-last" if ms["channels-last"] < (1 - MARGIN) * ms["contiguous"] else "contiguous"
    )
    set_memory_format(module, chosen)
    return Probe(chosen, ms)
