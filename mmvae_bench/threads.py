"""Thread counts: torch's (``--threads``), and the pools outside torch held to it.

``torch.set_num_threads`` (``--threads``) does not reach the BLAS and OpenMP pools that NumPy,
SciPy and scikit-learn bring: each starts one thread per core and busy-waits between calls.
Next to torch or a second job that is oversubscription. On the 2-core development machine a
Gaussian-mixture fit took 3.3-3.5x longer with one other job running (A/B in BENCHMARKS.md:
47-64 ms per EM iteration limited, 165-210 ms not), and one leaderboard run under heavier load
recorded 667 s (17 s per iteration). Code that calls into those libraries wraps the call in
:func:`native_threads`.
"""

from __future__ import annotations

import logging
import math
import os
import statistics
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar

import torch

from mmvae_bench.errors import BenchError

__all__ = [
    "ThreadGovernor",
    "governed",
    "loop_start",
    "loop_step",
    "native_threads",
    "set_torch_threads",
    "start_threads",
    "usable_cores",
]

log = logging.getLogger(__name__)


@contextmanager
def native_threads(n: int | None = None) -> Iterator[None]:
    """Limit NumPy/SciPy/scikit-learn thread pools to ``n`` (default: torch's thread count)."""
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=n if n is not None else torch.get_num_threads()):
        yield


def usable_cores() -> int:
    """The cores this process may run on (its affinity where the OS says, else all)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def start_threads(threads: int | str) -> int:
    """torch's thread count at the start of a run: ``threads``, or for ``"auto"`` the usable
    cores (at most 8), the most a :class:`ThreadGovernor` will try."""
    return min(8, usable_cores()) if threads == "auto" else int(threads)


def set_torch_threads(n: int) -> None:
    """``torch.set_num_threads(n)`` for ``--threads``; ``n`` < 1 is a user error, not torch's."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise BenchError(f"threads must be >= 1, got {n!r}")
    torch.set_num_threads(n)


class ThreadGovernor:
    """Keeps torch at whichever of 1 and ``most`` threads runs the training steps faster now.

    Intra-op threads pay on an idle machine and cost far more than they give as soon as another
    job holds a core: every parallel region waits for its slowest thread (BENCHMARKS.md,
    "Threads": 1.58x idle, 0.44x beside one other job on 2 cores). The load changes while a run
    lasts, so the choice is measured, not guessed once: at each :meth:`start` (a stage) and
    then every ``every_s`` seconds, the loop runs ``window`` steps at the current count and
    then at the other, and keeps the count with the lower median step time (a median, so an
    epoch boundary's extra work in one step does not decide); a count whose step takes twice
    the current count's median loses at once. It starts at 1 thread. Steps must cost the same
    at either count, as a stage's equal-size batches do. On the 2-core machines here, training
    gave bit-identical parameters at 1 and 2 threads (oneDNN, AMD EPYC), so switching does not
    change a run's numbers there; other CPUs' kernels may round differently.

    :meth:`step` is called once after each training step; it only reads the clock and, at a
    switch, calls ``torch.set_num_threads``. Which counts ran how many steps is kept in
    :attr:`steps` for the run record.
    """

    def __init__(
        self,
        most: int,
        *,
        window: int = 6,
        every_s: float = 30.0,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        if most < 1:
            raise BenchError(f"threads must be >= 1, got {most}")
        self.choices = (1, most) if most > 1 else (1,)
        self.window = window
        self.every_s = every_s
        self._clock = clock
        self.steps: dict[int, int] = {}
        self.current = 1
        torch.set_num_threads(1)
        self._times: dict[int, list[float]] = {}  # this probe's step times per count
        self._probing = False
        self._last = self._settled_at = self._clock()

    def start(self) -> None:
        """A new loop (a stage: another step cost) starts: restart the clock and probe anew."""
        self._probe()

    def loop(self) -> None:
        """A new loop of steps begins (an HMC call of the evaluation): the time since the last
        step is not a step, and a probe in progress starts over, since this loop's steps may
        cost more or less than the last one's. Probes still come every ``every_s`` seconds."""
        if self._probing:
            self._probe()
        self._last = self._clock()

    def step(self) -> None:
        """Record one finished training step; switch counts when a probe asks for it."""
        now = self._clock()
        elapsed, self._last = now - self._last, now
        self.steps[self.current] = self.steps.get(self.current, 0) + 1
        if not self._probing:
            if now - self._settled_at >= self.every_s:
                self._probe()
            return
        times = self._times.setdefault(self.current, [])
        times.append(elapsed)
        ref = next(iter(self._times))  # the count the probe started at, timed first
        # A count twice as slow as the reference loses at once: beside another job, more
        # threads can be many times slower, and waiting out the window would cost more.
        slow = self.current != ref and elapsed > 2 * _median(self._times[ref])
        if len(times) <= self.window and not slow:
            return
        if slow:
            self._times[self.current] = [math.inf]
        untimed = [n for n in self.choices if n not in self._times]
        if untimed:
            self._switch(untimed[0])
            return
        self._probing = False
        self._settled_at = now
        self._switch(min(self._times, key=lambda n: _median(self._times[n])))

    def _probe(self) -> None:
        self._times = {}
        self._probing = len(self.choices) > 1
        self._last = self._clock()

    def _switch(self, n: int) -> None:
        if n != self.current:
            torch.set_num_threads(n)
            self.current = n
            log.debug("threads: %d", n)
        self._last = self._clock()


def _median(times: list[float]) -> float:
    # The first step after a switch runs with a cold thread pool: timed, not counted.
    return statistics.median(times[1:] or times)


# The governor that library loops (HMC) report to: set by the runner around an evaluation
# under ``--threads auto``; None (no governing) everywhere else.
_ACTIVE: ContextVar[ThreadGovernor | None] = ContextVar("mmvae_bench_governor", default=None)


@contextmanager
def governed(governor: ThreadGovernor | None) -> Iterator[ThreadGovernor | None]:
    """Within the block, :func:`loop_start` and :func:`loop_step` report to ``governor``
    (None: to nobody), which is started (a probe) on entry."""
    if governor is not None:
        governor.start()
    token = _ACTIVE.set(governor)
    try:
        yield governor
    finally:
        _ACTIVE.reset(token)


def loop_start() -> None:
    """A loop whose steps cost the same starts (one HMC call); see :meth:`ThreadGovernor.loop`.

    A no-op outside :func:`governed`, so sampling code calls it unconditionally.
    """
    governor = _ACTIVE.get()
    if governor is not None:
        governor.loop()


def loop_step() -> None:
    """One step of that loop finished (an HMC iteration): :meth:`ThreadGovernor.step`."""
    governor = _ACTIVE.get()
    if governor is not None:
        governor.step()
