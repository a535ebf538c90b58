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

from collections.abc import Iterator
from contextlib import contextmanager

import torch

from mmvae_bench.errors import BenchError

__all__ = ["native_threads", "set_torch_threads"]


@contextmanager
def native_threads(n: int | None = None) -> Iterator[None]:
    """Limit NumPy/SciPy/scikit-learn thread pools to ``n`` (default: torch's thread count)."""
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=n if n is not None else torch.get_num_threads()):
        yield


def set_torch_threads(n: int) -> None:
    """``torch.set_num_threads(n)`` for ``--threads``; ``n`` < 1 is a user error, not torch's."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise BenchError(f"threads must be >= 1, got {n!r}")
    torch.set_num_threads(n)
