"""The run folder ``<out>/<run-id>/``: claimed atomically, locked while in use, never replaced
silently.

A new run creates its folder with one ``mkdir`` (two concurrent starts cannot both succeed) and
holds an exclusive ``flock`` on ``<run-id>/.lock`` while it writes; the kernel drops the lock
when the process dies, so a killed run never leaves a stale lock. An existing run id is an
error unless the caller asks to ``overwrite`` it (its artefacts are deleted by name, never by
glob) or to ``resume`` it (its record and checkpoint are kept). ``evaluate`` takes the same lock.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from mmvae_bench.errors import BenchError
from mmvae_bench.io import make_output_folder
from mmvae_bench.names import check_name
from mmvae_bench.results import COND_GRID, PRIOR_GRID, RECORD_FILE

__all__ = [
    "ARTEFACTS",
    "CHECKPOINT_FILE",
    "LOCK_FILE",
    "SAMPLER_FILE",
    "Mode",
    "RunDir",
    "claim_run_dir",
    "locked",
]

CHECKPOINT_FILE = "checkpoint.pt"
LOCK_FILE = ".lock"
SAMPLER_FILE = "sampler.pt"  # the fitted latent sampler (mmvae_bench.samplers)
#: Every file a run writes into its folder: what ``--overwrite`` deletes, and nothing else.
ARTEFACTS = (RECORD_FILE, CHECKPOINT_FILE, SAMPLER_FILE, COND_GRID, PRIOR_GRID)

Mode = Literal["new", "overwrite", "resume"]


@dataclass
class RunDir:
    """A claimed run folder; ``existed`` tells whether a previous run had left files there."""

    path: Path
    existed: bool
    _fd: int

    def release(self) -> None:
        """Drop the lock (closing the descriptor releases the ``flock``)."""
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


def _lock(folder: Path, run_id: str) -> int:
    try:
        fd = os.open(folder / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o666)
    except OSError as e:
        raise BenchError(f"cannot lock run folder {folder}: {e.strerror or e}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        os.close(fd)
        if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            raise BenchError(
                f"run '{run_id}' is in use by another mmvae-bench process ({folder}); wait for "
                "it to finish or pick another --run-id"
            ) from None
        raise
    return fd


def _abandoned_claim(folder: Path) -> bool:
    """A folder holding nothing but the lock file: a run that died between claiming and its
    first write (e.g. a sweep driver killed as a trial started). Nothing in it can be lost, so a
    new run may take it; whether its owner still lives, the lock decides."""
    return {p.name for p in folder.iterdir()} <= {LOCK_FILE}


def claim_run_dir(out: Path, run_id: str, mode: Mode = "new") -> RunDir:
    """Claim ``out/run_id`` for a run and lock it; the caller must :meth:`RunDir.release` it.

    Args:
        out: the output folder (created if missing).
        run_id: the run's id, a single safe path component (:func:`results.check_name`).
        mode: ``new`` (an existing folder is an error), ``overwrite`` (an existing run's
            artefacts are deleted) or ``resume`` (the folder must hold a run to continue).

    Raises:
        BenchError: an unsafe id, an unusable ``out``, an existing run in ``new`` mode, no run
            to resume, or the folder locked by another process.
    """
    check_name(run_id, "run id")
    folder = make_output_folder(out) / run_id
    if mode == "resume" and not folder.exists():
        raise BenchError(f"nothing to resume: no run '{run_id}' in {out}")
    try:
        folder.mkdir()
        existed = False
    except FileExistsError:
        existed = True
    except OSError as e:
        raise BenchError(f"cannot create the run folder {folder}: {e.strerror or e}") from None
    if existed and not folder.is_dir():
        raise BenchError(f"{folder} exists and is not a run folder")
    if existed and mode == "new" and not _abandoned_claim(folder):
        hint = "--overwrite replaces it, --resume continues it"
        raise BenchError(f"run '{run_id}' already exists in {out}; {hint}")
    fd = _lock(folder, run_id)
    try:
        if existed and mode == "new" and not _abandoned_claim(folder):  # filled meanwhile
            hint = "--overwrite replaces it, --resume continues it"
            raise BenchError(f"run '{run_id}' already exists in {out}; {hint}")
        if mode == "resume" and not (folder / RECORD_FILE).is_file():
            raise BenchError(f"nothing to resume: {folder} holds no run record")
        if mode == "overwrite":
            for name in ARTEFACTS:
                with contextlib.suppress(FileNotFoundError):
                    (folder / name).unlink()
    except BaseException:
        os.close(fd)
        raise
    return RunDir(folder, existed, fd)


@contextlib.contextmanager
def locked(run_dir: Path) -> Iterator[Path]:
    """Hold the lock of an existing run folder for the block (``evaluate``)."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        why = "it is a file, not a run folder" if run_dir.exists() else "the folder does not exist"
        raise BenchError(f"no run record at {run_dir}: {why}")
    fd = _lock(run_dir, run_dir.name)
    try:
        yield run_dir
    finally:
        os.close(fd)
