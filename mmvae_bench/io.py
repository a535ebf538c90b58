"""Atomic file writes (temp file in the same folder + rename) and safe tensor loading."""

from __future__ import annotations

import json
import os
import re
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import torch

from mmvae_bench.errors import BenchError

__all__ = [
    "atomic_torch_save",
    "atomic_write",
    "atomic_write_json",
    "check_output_folder",
    "load_tensors",
    "make_output_folder",
    "torch_load_error",
]


def atomic_write(path: Path, write: Callable[[IO[bytes]], None]) -> Path:
    """Write ``path`` through ``write(fileobj)`` so that readers see the old or the new file.

    The data goes to a temp file in the same folder, is flushed and fsynced, then renamed over
    ``path``; on any error the temp file is removed and ``path`` is untouched. The file gets
    the permissions of any new file (``0o666`` less the umask), not ``mkstemp``'s private
    ``0o600``: colleagues on a shared filesystem read each other's records.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    return path


def check_output_folder(path: Path, what: str = "--out") -> Path:
    """``path`` if it is a writable folder or can be created as one; nothing is created.

    Raises:
        BenchError: ``path`` is a file, lies under a file, or is (or would be created in) a
            folder this process cannot write.
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise BenchError(f"{what} {path} is a file, not a folder")
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise BenchError(f"cannot create the output folder {path}: {existing} is not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        if existing == path:
            raise BenchError(f"the output folder {path} is not writable")
        raise BenchError(f"cannot create the output folder {path}: {existing} is not writable")
    return path


def make_output_folder(path: Path, what: str = "--out") -> Path:
    """``path`` as a writable folder, created if missing (:func:`check_output_folder` first)."""
    path = check_output_folder(path, what)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise BenchError(f"cannot create the output folder {path}: {e.strerror or e}") from None
    return path


def _umask() -> int:
    # The umask can only be read by setting it; set it straight back.
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write_json(path: Path, obj: Any) -> Path:
    """Atomically write ``obj`` as indented JSON (NaN written as null is the caller's choice)."""
    data = json.dumps(obj, indent=2, sort_keys=False, default=str).encode()
    return atomic_write(path, lambda f: f.write(data + b"\n"))


def atomic_torch_save(path: Path, obj: Any) -> Path:
    """Atomically ``torch.save`` ``obj`` (tensors, dicts, lists, numbers, strings only)."""
    return atomic_write(path, lambda f: torch.save(obj, f))


def torch_load_error(e: BaseException) -> str:
    """What went wrong in a ``torch.load(weights_only=True)``, without torch's own advice.

    torch's message for any file it cannot unpickle safely suggests loading with
    ``weights_only=False``, which would run arbitrary code from an untrusted file (README.md,
    "What the suite trusts"); only the first sentence of the unpickler's own diagnosis is kept
    (the next one advises allowlisting the type it refused).
    """
    msg = str(e)
    found = re.search(
        r"WeightsUnpickler error:\s*(.*?)\s*(?:\n\s*\n|Check the documentation|$)", msg, re.S
    )
    if found and found.group(1):
        msg = re.split(r"\.\s", found.group(1), maxsplit=1)[0]
    elif "weights_only" in msg:
        msg = "not a file torch can load safely"
    return f"{type(e).__name__}: {' '.join(msg.split())}"


def load_tensors(path: Path, *, what: str = "file", fix: str = "") -> Any:
    """``torch.load(path, weights_only=True)``; missing or corrupt files raise ``BenchError``.

    Args:
        path: file to read.
        what: what the file is, for the message (``"checkpoint"``, ``"MHD train split"``).
        fix: the command that recreates the file, appended to the message.
    """
    path = Path(path)
    hint = f"; {fix}" if fix else ""
    if not path.is_file():
        raise BenchError(f"{what} not found: {path}{hint}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise BenchError(
            f"{what} {path} is corrupt or unreadable ({torch_load_error(e)}){hint}"
        ) from None
