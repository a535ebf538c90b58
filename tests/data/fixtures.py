"""Tiny files in each published dataset format, and a local HTTP server for the fetch tests.

Every writer produces a handful of samples in exactly the layout the real files use (MHD's
``torch.save`` 6-tuple, PolyMNIST's PNG folders, MNIST idx files, SVHN ``.mat`` files), with
values chosen so that tests can tell where each one ended up.
"""

from __future__ import annotations

import contextlib
import gzip
import http.server
import io
import os
import re
import struct
import threading
import zipfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

import numpy as np
import scipy.io
import torch
from PIL import Image
from torch import Tensor

torch.set_num_threads(1)

__all__ = [
    "FileServer",
    "idx_bytes",
    "mhd_tuple",
    "serve_directory",
    "write_mhd",
    "write_mnist",
    "write_polymnist",
    "write_html_page",
    "write_svhn",
    "zip_tree",
]


# ---------------------------------------------------------------------------------------------
# A failed download: the host's web page saved under the data file's name


def write_html_page(path: Path, *, doctype: bool = True) -> Path:
    """Overwrite ``path`` with a web page like Google Drive's quota answer (leading whitespace
    included, as such pages often have); ``doctype=False`` starts it with ``<HTML>`` instead."""
    path.parent.mkdir(parents=True, exist_ok=True)
    head = "<!DOCTYPE html>\n<html lang=en>" if doctype else "<HTML>"
    body = "<head><title>Google Drive - Quota exceeded</title></head><body>Too many users</body>"
    path.write_text(f"\n  \t{head}{body}</html>\n")
    return path


# ---------------------------------------------------------------------------------------------
# MHD: torch.save((labels, images, trajectories, sounds, traj_norm, sound_norm))


def mhd_tuple(
    n_per_class: int = 3,
    *,
    one_hot: bool = False,
    numpy_norm: bool = False,
    seed: int = 0,
) -> tuple[Any, ...]:
    """An MHD tuple of ``10 * n_per_class`` samples.

    Sounds (N, 4, 32, 32) hold distinct values ``arange / N*4096`` (in [0, 1)), so the position
    of every element after the reshape can be checked.
    """
    g = torch.Generator().manual_seed(seed)
    n = 10 * n_per_class
    labels = torch.arange(10).repeat_interleave(n_per_class)
    labels = labels[torch.randperm(n, generator=g)]
    images = torch.rand(n, 1, 28, 28, generator=g)
    trajectories = torch.rand(n, 200, generator=g)
    sounds = torch.arange(n * 4 * 32 * 32, dtype=torch.float32).reshape(n, 4, 32, 32)
    sounds /= n * 4 * 32 * 32
    if numpy_norm:
        traj_norm = {"min": np.float64(-3.5), "max": np.float32(7.25)}
        sound_norm = {"min": np.array([-80.0], dtype=np.float32), "max": np.float64(0.0)}
    else:
        traj_norm = {"min": torch.tensor(-3.5), "max": torch.tensor(7.25)}
        sound_norm = {"min": torch.tensor(-80.0), "max": torch.tensor(0.0)}
    stored_labels = torch.nn.functional.one_hot(labels, 10) if one_hot else labels
    return (stored_labels, images, trajectories, sounds, traj_norm, sound_norm)


def write_mhd(
    data_dir: Path,
    *,
    n_per_class: int = 3,
    splits: Sequence[str] = ("train", "test"),
    legacy: bool = False,
    **kwargs: Any,
) -> dict[str, tuple[Any, ...]]:
    """Write ``mhd_{split}.pt`` files; ``legacy`` uses torch's pre-1.6 (non-zip) format."""
    data_dir.mkdir(parents=True, exist_ok=True)
    out = {}
    for i, split in enumerate(splits):
        t = mhd_tuple(n_per_class, seed=i, **kwargs)
        torch.save(t, data_dir / f"mhd_{split}.pt", _use_new_zipfile_serialization=not legacy)
        out[split] = t
    return out


# ---------------------------------------------------------------------------------------------
# PolyMNIST: MMNIST/{split}/m{k}/{i}.{label}.png, 28x28 RGB


def write_polymnist(
    data_dir: Path,
    *,
    n_per_class: int = 3,
    splits: Sequence[str] = ("train", "test"),
    seed: int = 0,
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Write PolyMNIST PNGs.

    Returns:
        Per split: images (5, N, 3, 28, 28) uint8 and labels (N,), tuples in (label, i) order.
        Pixel [0, 0] of every image holds (k, label, i mod 256) so a tuple's members are
        recognisable.
    """
    rng = np.random.default_rng(seed)
    out = {}
    for split in splits:
        n = 10 * n_per_class
        images = rng.integers(0, 256, size=(5, n, 3, 28, 28), dtype=np.uint8)
        labels = np.repeat(np.arange(10), n_per_class)
        for k in range(5):
            folder = data_dir / "MMNIST" / split / f"m{k}"
            folder.mkdir(parents=True, exist_ok=True)
            for j in range(n):
                label, i = int(labels[j]), j % n_per_class
                images[k, j, :, 0, 0] = (k, label, i % 256)  # wraps at published sizes
                Image.fromarray(images[k, j].transpose(1, 2, 0), "RGB").save(
                    folder / f"{i}.{label}.png"
                )
        out[split] = (images, labels)
    return out


def zip_tree(src: Path, zip_path: Path, *, prefix: str = "") -> Path:
    """Zip every file under ``src`` as ``prefix/<relative path>`` (folders included)."""
    with zipfile.ZipFile(zip_path, "w", zipfile.ZIP_STORED) as zf:
        for path in sorted(src.rglob("*")):
            rel = path.relative_to(src).as_posix()
            zf.write(path, f"{prefix}{rel}" + ("/" if path.is_dir() else ""))
    return zip_path


# ---------------------------------------------------------------------------------------------
# MNIST idx files and SVHN .mat files, as torchvision downloads them


def idx_bytes(arr: np.ndarray) -> bytes:
    """``arr`` (uint8) in the idx format: 0, 0, 0x08, ndim, big-endian dims, data."""
    arr = np.ascontiguousarray(arr, dtype=np.uint8)
    head = bytes([0, 0, 0x08, arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape)
    return head + arr.tobytes()


def write_mnist(
    data_dir: Path, split: str, labels: Sequence[int], *, gz: bool = False, raw: bool = True
) -> np.ndarray:
    """Write MNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte (and/or .gz).

    Returns:
        The images (N, 28, 28) uint8; image j has pixel [0, 0] = j (mod 256) and [0, 1] = label.
    """
    prefix = {"train": "train", "test": "t10k"}[split]
    labels_arr = np.asarray(labels, dtype=np.uint8)
    n = len(labels_arr)
    rng = np.random.default_rng(len(prefix) + n)
    images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
    images[:, 0, 0] = np.arange(n) % 256
    images[:, 0, 1] = labels_arr
    folder = data_dir / "MNIST" / "raw"
    folder.mkdir(parents=True, exist_ok=True)
    for stem, arr in (
        (f"{prefix}-images-idx3-ubyte", images),
        (f"{prefix}-labels-idx1-ubyte", labels_arr),
    ):
        data = idx_bytes(arr)
        if raw:
            (folder / stem).write_bytes(data)
        if gz:
            # mtime=0: the same content gives the same bytes, hence the same sha256
            buf = io.BytesIO()
            with gzip.GzipFile(fileobj=buf, mode="wb", mtime=0) as f:
                f.write(data)
            (folder / f"{stem}.gz").write_bytes(buf.getvalue())
    return images


def write_svhn(data_dir: Path, split: str, labels: Sequence[int]) -> np.ndarray:
    """Write ``{split}_32x32.mat`` with X (32, 32, 3, N) uint8 and y (N, 1) (digit 0 as 10).

    Returns:
        The images as (N, 3, 32, 32) uint8; image j has X[0, 0, 0, j] = j (mod 256).
    """
    labels_arr = np.asarray(labels, dtype=np.uint8)
    n = len(labels_arr)
    rng = np.random.default_rng(100 + n)
    x = rng.integers(0, 256, size=(32, 32, 3, n), dtype=np.uint8)
    x[0, 0, 0, :] = np.arange(n) % 256
    y = np.where(labels_arr == 0, 10, labels_arr).astype(np.uint8).reshape(n, 1)
    data_dir.mkdir(parents=True, exist_ok=True)
    scipy.io.savemat(data_dir / f"{split}_32x32.mat", {"X": x, "y": y})
    return np.ascontiguousarray(x.transpose(3, 2, 0, 1))


# ---------------------------------------------------------------------------------------------
# A local file server with optional Range support, for the download tests


@dataclass
class FileServer:
    """State of a running :func:`serve_directory` server; attributes may be changed live.

    Attributes:
        root: folder served.
        base: base URL (``http://127.0.0.1:PORT/``).
        ranges: honour ``Range: bytes=N-`` requests (206) instead of ignoring them (200).
        content_type: Content-Type of every answer.
        cut_after: when set, the next answer stops after this many body bytes (then resets).
        requests: (path, Range header or None) of every request so far.
    """

    root: Path
    base: str = ""
    ranges: bool = True
    content_type: str = "application/octet-stream"
    cut_after: int | None = None
    requests: list[tuple[str, str | None]] = field(default_factory=list)

    def url(self, name: str) -> str:
        """URL of ``root / name``."""
        return self.base + name


class _Handler(http.server.BaseHTTPRequestHandler):
    state: FileServer

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        st = self.server.state  # type: ignore[attr-defined]
        rng = self.headers.get("Range")
        st.requests.append((self.path, rng))
        path = st.root / unquote(urlparse(self.path).path.lstrip("/"))
        if not path.is_file():
            self.send_error(404)
            return
        data = path.read_bytes()
        start = 0
        m = re.fullmatch(r"bytes=(\d+)-", rng or "")
        if m and st.ranges:
            start = int(m.group(1))
            if start >= len(data):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        body = data[start:]
        self.send_header("Content-Type", st.content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if st.cut_after is not None:
            body, st.cut_after = body[: st.cut_after], None
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        pass


@contextlib.contextmanager
def serve_directory(root: Path, **options: Any) -> Iterator[FileServer]:
    """Serve ``root`` over HTTP on 127.0.0.1 in a thread for the duration of the block."""
    state = FileServer(root=root, **options)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    server.state = state  # type: ignore[attr-defined]
    state.base = f"http://127.0.0.1:{server.server_address[1]}/"
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    # A proxy in the environment must not intercept requests to this local server.
    saved = {k: os.environ.get(k) for k in ("no_proxy", "NO_PROXY")}
    for k in saved:
        os.environ[k] = "127.0.0.1,localhost"
    try:
        yield state
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def as_tensor(arr: np.ndarray) -> Tensor:
    """numpy -> torch, for comparisons in tests."""
    return torch.from_numpy(np.ascontiguousarray(arr))
