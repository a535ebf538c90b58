"""Thread pools outside torch: held to the run's torch thread count.

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

__all__ = ["native_threads"]


@contextmanager
def native_threads(n: int | None = None) -> Iterator[None]:
    """Limit NumPy/SciPy/scikit-learn thread pools to ``n`` (default: torch's thread count)."""
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=n if n is not None else torch.get_num_threads()):
        yield
