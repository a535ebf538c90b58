"""Thread pools outside torch: held to the run's torch thread count.

``torch.set_num_threads`` (``--threads``) does not reach the BLAS and OpenMP pools that NumPy,
SciPy and scikit-learn bring: each starts one thread per core and busy-waits between calls.
Next to torch or a second job that is oversubscription, and on the 2-core development machine
it made a Gaussian-mixture fit 5-20x slower (17 s per EM iteration with a second job running,
instead of ~0.1 s). Code that calls into those libraries wraps the call in
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
