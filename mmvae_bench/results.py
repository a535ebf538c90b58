"""The run record: ``runs/<run-id>/results.json`` with config, environment and metrics."""

from __future__ import annotations

import datetime as dt
import importlib.metadata
import json
import os
import platform
import subprocess
from pathlib import Path
from typing import Any

import torch

from mmvae_bench.errors import BenchError
from mmvae_bench.io import atomic_write_json

__all__ = [
    "COND_GRID",
    "PRIOR_GRID",
    "RECORD_KEYS",
    "SCHEMA_VERSION",
    "environment",
    "git_revision",
    "read_record",
    "write_record",
]

SCHEMA_VERSION = 1
# The sample grids in a run folder (written by `run` and `evaluate`, linked by leaderboards).
COND_GRID = "samples.png"
PRIOR_GRID = "prior_samples.png"  # unconditional: the run's latent sampler (record: figures)
# Keys every complete record has (tests and the leaderboard rely on them).
RECORD_KEYS = (
    "schema",
    "run_id",
    "status",
    "model",
    "dataset",
    "seed",
    "config",
    "run",
    "protocol",
    "environment",
    "stages",
    "metrics",
    "created",
)
_PACKAGES = ("mmvae-bench", "torch", "zuko", "accelerate", "ray", "torch-fidelity", "numpy")


def git_revision(path: Path | None = None) -> str | None:
    """The git commit of the source tree (with ``-dirty`` when modified), or None.

    A copy without ``.git`` (a container image, a machine the tree was synced to) can name its
    commit in ``MMVAE_BENCH_GIT_REVISION``; it is used only where git finds no repository.
    """
    root = Path(path or Path(__file__).resolve().parent.parent)
    declared = os.environ.get("MMVAE_BENCH_GIT_REVISION") or None
    try:
        rev = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return declared
    return f"{rev}-dirty" if dirty else rev


def environment(device: torch.device, threads: int) -> dict[str, Any]:
    """Package versions, git revision, device and threads, for the record."""
    versions = {}
    for name in _PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    dev = str(device)
    if device.type == "cuda":
        dev = f"cuda ({torch.cuda.get_device_name(device)})"
    return {
        "versions": versions,
        "python": platform.python_version(),
        "git_revision": git_revision(),
        "device": dev,
        "threads": threads,
        "platform": platform.platform(),
        "cpu_count": __import__("os").cpu_count(),
    }


def now() -> str:
    """UTC timestamp for records."""
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def write_record(run_dir: Path, record: dict[str, Any]) -> Path:
    """Atomically write ``run_dir/results.json`` (temp file + rename)."""
    return atomic_write_json(Path(run_dir) / "results.json", record)


def read_record(path: Path) -> dict[str, Any]:
    """Read a record (a run folder or its results.json); a corrupt one is a ``BenchError``."""
    path = Path(path)
    if path.is_dir():
        path = path / "results.json"
    try:
        record = json.loads(path.read_text())
    except FileNotFoundError:
        raise BenchError(f"no run record at {path}") from None
    except json.JSONDecodeError as e:
        raise BenchError(f"run record {path} is corrupt: {e}") from None
    missing = [k for k in RECORD_KEYS if k not in record]
    if missing:
        raise BenchError(f"run record {path} is incomplete: missing {missing}")
    return record
