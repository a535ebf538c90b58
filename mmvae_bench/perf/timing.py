"""Timing and memory helpers of the performance suite: warm-up, repeats, median and spread."""

from __future__ import annotations

import resource
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import torch

__all__ = ["Timing", "measure", "peak_memory_mib", "reset_peak_memory", "sync"]


@dataclass(frozen=True)
class Timing:
    """Wall times of repeated runs of one thing, in seconds: median, quartiles, extremes."""

    median_s: float
    q1_s: float
    q3_s: float
    min_s: float
    max_s: float
    repeats: int

    @classmethod
    def of(cls, times: list[float]) -> Timing:
        """Summarise ``times`` (at least one)."""
        ts = sorted(times)
        if len(ts) >= 2:
            q1, _, q3 = statistics.quantiles(ts, n=4, method="inclusive")
        else:
            q1 = q3 = ts[0]
        return cls(statistics.median(ts), q1, q3, ts[0], ts[-1], len(ts))

    def rate(self, units: float) -> dict[str, float]:
        """``units`` per second at the median, quartiles and extremes (slowest run = min rate)."""
        return {
            "median": units / self.median_s,
            "q1": units / self.q3_s,
            "q3": units / self.q1_s,
            "min": units / self.max_s,
            "max": units / self.min_s,
        }

    def as_dict(self) -> dict[str, Any]:
        """JSON-able fields."""
        return asdict(self)


def sync(device: torch.device) -> None:
    """Wait for queued GPU work, so a wall-clock reading covers it (no-op on CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(
    fn: Callable[[], Any], device: torch.device, *, warmup: int = 1, repeats: int = 3
) -> tuple[Timing, Any]:
    """Run ``fn`` ``warmup`` times untimed, then ``repeats`` times timed; the last result too."""
    out = None
    for _ in range(warmup):
        out = fn()
    sync(device)
    times = []
    for _ in range(max(repeats, 1)):
        t0 = time.perf_counter()
        out = fn()
        sync(device)
        times.append(time.perf_counter() - t0)
    return Timing.of(times), out


def reset_peak_memory(device: torch.device) -> None:
    """Start a new GPU peak-memory window (the CPU's RSS peak cannot be reset)."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory_mib(device: torch.device) -> dict[str, float]:
    """Peak resident set size of this process so far; on a GPU also the window's peak allocation."""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    rss_mib = rss / (1024 * 1024) if sys.platform == "darwin" else rss / 1024  # bytes vs KiB
    out = {"peak_rss_mib": round(rss_mib, 1)}
    if device.type == "cuda":
        out["peak_gpu_mib"] = round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
    return out
