"""Memory checks before a dataset is built: a ``BenchError`` instead of an out-of-memory crash.

Where a loader knows how many bytes it is about to allocate (from file sizes, file listings or
labels), :func:`require_memory` compares them with the memory available now and stops before
anything is allocated or cached. :func:`memory_guard` turns an allocation failure that still
happens (torch's "can't allocate memory", numpy's ``MemoryError``) into the same kind of error.
Both messages name the dataset, the bytes and the option that reduces them.
:func:`require_device_memory` does the same for a split put on an accelerator whole (the
trainer keeps the training split resident on the device, at its native precision).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from pathlib import Path

import torch

from mmvae_bench.errors import BenchError

__all__ = [
    "available_device_bytes",
    "available_memory_bytes",
    "format_bytes",
    "is_out_of_memory",
    "memory_guard",
    "require_device_memory",
    "require_memory",
    "RESIDENT_SPLIT_HINT",
]

# What reduces the device bytes of a training split held resident on an accelerator.
RESIDENT_SPLIT_HINT = (
    "the training split is held on the device at its native precision: free memory there "
    "(other processes; a smaller --gpus-per-trial share packs fewer trials per GPU in a sweep) "
    "or train with --device cpu"
)

logger = logging.getLogger(__name__)

_MEMINFO = Path("/proc/meminfo")
# RuntimeError texts of failed allocations: torch's CPU allocator ("DefaultCPUAllocator: can't
# allocate memory ... Error code 12 (Cannot allocate memory)") and "not enough memory" on Windows.
_OOM_TEXTS = ("can't allocate memory", "cannot allocate memory", "not enough memory")


def available_memory_bytes() -> int | None:
    """Memory available to a new allocation now, in bytes; None where it cannot be known.

    psutil's ``virtual_memory().available`` when psutil is installed, else ``MemAvailable``
    from ``/proc/meminfo`` (Linux).
    """
    try:
        import psutil
    except ImportError:
        psutil = None
    if psutil is not None:
        return int(psutil.virtual_memory().available)
    try:
        for line in _MEMINFO.read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024  # the value is in kB
    except (OSError, ValueError, IndexError):
        pass
    return None


def available_device_bytes(device: torch.device | str) -> int | None:
    """Free memory on an accelerator now (CUDA: ``torch.cuda.mem_get_info``), in bytes; None
    for the CPU (see :func:`available_memory_bytes`) or a device that cannot say."""
    device = torch.device(device)
    if device.type != "cuda" or not torch.cuda.is_available():
        return None
    free, _total = torch.cuda.mem_get_info(device)
    return int(free)


def format_bytes(n: float) -> str:
    """``n`` bytes in binary units, three significant figures or whole (``"17.9 GiB"``)."""
    units = ("B", "KiB", "MiB", "GiB")
    k = 0
    while abs(n) >= 1024 and k < len(units) - 1:
        n /= 1024
        k += 1
    return f"{n:.0f} {units[k]}" if k == 0 or abs(n) >= 100 else f"{n:.3g} {units[k]}"


def require_memory(dataset: str, nbytes: int, hint: str, *, purpose: str = "load") -> None:
    """Stop with a ``BenchError`` when ``nbytes`` exceed the memory available now.

    Args:
        dataset: registry name, for the message.
        nbytes: bytes the load is about to hold at its peak.
        hint: what reduces them (an option, a setting), as a clause for the message.
        purpose: what needs them, as the message's verb phrase before the dataset's name.
    """
    available = available_memory_bytes()
    if available is None:
        logger.debug("%s needs about %s; available memory unknown", dataset, format_bytes(nbytes))
        return
    if nbytes > available:
        raise BenchError(
            f"not enough memory to {purpose} {dataset}: it needs about {format_bytes(nbytes)} "
            f"({nbytes} bytes), {format_bytes(available)} ({available} bytes) is available; "
            f"{hint}"
        )
    logger.info(
        "%s needs about %s of the %s available",
        dataset,
        format_bytes(nbytes),
        format_bytes(available),
    )


def require_device_memory(dataset: str, nbytes: int, hint: str, device: torch.device | str) -> None:
    """Stop with a ``BenchError`` when ``nbytes`` will not fit in ``device``'s free memory.

    Nothing is checked for the CPU (the data already lives there) or when the device cannot
    say. Args as :func:`require_memory`, plus the device the bytes are about to be put on.
    """
    available = available_device_bytes(device)
    if available is None:
        return
    if nbytes > available:
        raise BenchError(
            f"not enough memory on {torch.device(device)} for {dataset}: it needs about "
            f"{format_bytes(nbytes)} ({nbytes} bytes), {format_bytes(available)} "
            f"({available} bytes) is free there; {hint}"
        )


def is_out_of_memory(e: BaseException) -> bool:
    """Whether ``e`` is a failed allocation: a ``MemoryError`` (numpy's included) or torch's
    ``RuntimeError`` saying so. Code that treats other errors as a bad file lets these through."""
    if isinstance(e, MemoryError):
        return True
    return isinstance(e, RuntimeError) and any(t in str(e).lower() for t in _OOM_TEXTS)


@contextlib.contextmanager
def memory_guard(dataset: str, hint: str) -> Iterator[None]:
    """Turn an allocation failure inside the block into a ``BenchError`` naming ``dataset``."""
    try:
        yield
    except (MemoryError, RuntimeError) as e:
        if not is_out_of_memory(e):
            raise
        raise _out_of_memory(dataset, e, hint) from None


def _out_of_memory(dataset: str, e: BaseException, hint: str) -> BenchError:
    detail = " ".join(str(e).split())
    # torch's text starts with its source location: keep the part that says how much
    detail = detail[detail.find("you tried") :] if "you tried" in detail else detail
    available = available_memory_bytes()
    avail = f"; {format_bytes(available)} is available" if available is not None else ""
    return BenchError(
        f"ran out of memory while loading {dataset} ({type(e).__name__}: {detail}){avail}; {hint}"
    )
