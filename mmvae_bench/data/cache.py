"""One decoded copy per node: named arrays in a cache file that every process maps.

A loader decodes its published files once into named arrays (uint8 images, labels, ...) and
:func:`cached_arrays` writes them to one cache file; every later process on the node maps that
file instead of decoding again, so concurrent runs and sweep trials share the same pages of the
page cache (a process's resident memory counts them once per node, not once per process).

File layout (no pickle anywhere; the header is JSON, the arrays raw little-endian bytes)::

    bytes 0-7     MAGIC
    bytes 8-15    header length H, unsigned 64-bit little-endian
    bytes 16-..   header: UTF-8 JSON {"format_version", "fingerprint", "meta", "file_bytes",
                  "arrays": {name: {"dtype", "shape", "offset", "nbytes"}}}
    then          each array's bytes at its offset (page-aligned), C order

The header records the format version, the fingerprint the loader computed from its source
files (sizes, modification times, checksums: whatever identifies them), and every array's dtype,
shape, offset and byte size. On opening, a file that is truncated or padded (its size differs
from the header's), whose header is damaged or inconsistent (overlapping or out-of-file arrays,
byte sizes that do not match shape x dtype, a dtype that is not plain numbers) or whose
fingerprint differs from the source files' is rebuilt from the sources with a warning: nothing
in it is trusted, and nothing is unpickled. A file written by a newer format version is refused
with a ``BenchError`` naming it (an older mmvae-bench must not overwrite a newer one's cache).

The first process builds the file under an exclusive ``flock`` on the file's folder and writes
it atomically (temp file + rename); the others wait on the lock and then map the finished file
instead of decoding twice. Readers of a valid file take no lock: a rebuilt file replaces the
old one by rename, so a mapped old file stays intact for the processes that hold it.

The arrays are mapped copy-on-write (``MAP_PRIVATE``) from a read-only file descriptor: the
file is never modified, reading shares the page cache, and a process that writes into a tensor
in place gets a private copy of only the pages it wrote (rather than a crash, which a read-only
mapping would give torch).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import math
import mmap
import os
import struct
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from mmvae_bench.errors import BenchError
from mmvae_bench.io import atomic_write

__all__ = [
    "FORMAT_VERSION",
    "MAGIC",
    "CacheStale",
    "cached_arrays",
    "file_fingerprint",
    "open_cache",
    "write_cache",
]

logger = logging.getLogger(__name__)

MAGIC = b"MMVBARR\n"
#: Bump when the layout changes; older files are rebuilt, newer ones refused.
FORMAT_VERSION = 1
_PREFIX = struct.Struct("<8sQ")
_ALIGN = 4096  # arrays start on page boundaries: each maps onto whole pages
_MAX_HEADER = 1 << 20
# Plain numbers only: a dtype string naming objects or records is a damaged header.
_KINDS = "biuf"

Arrays = Mapping[str, "np.ndarray | Tensor"]


class CacheStale(Exception):
    """A cache file that cannot be used as it is (missing, damaged, or for other sources).

    Attributes:
        why: what is wrong, for the log line.
        damaged: True for a damaged file (warned about), False for a missing file or one
            built from other sources (rebuilt quietly).
    """

    def __init__(self, why: str, *, damaged: bool = True) -> None:
        super().__init__(why)
        self.why = why
        self.damaged = damaged


def file_fingerprint(paths: list[Path]) -> list[dict[str, Any]]:
    """Name, size and modification time (ns) of each source file, as JSON-able entries."""
    out = []
    for p in paths:
        st = Path(p).stat()
        out.append({"file": Path(p).name, "bytes": st.st_size, "mtime_ns": st.st_mtime_ns})
    return out


def cached_arrays(
    path: Path,
    fingerprint: Any,
    build: Callable[[], tuple[Arrays, dict[str, Any]]],
    *,
    what: str,
    validate: Callable[[dict[str, Tensor], dict[str, Any]], str | None] | None = None,
) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """The arrays cached at ``path`` for ``fingerprint``, built and written first if needed.

    Args:
        path: the cache file.
        fingerprint: JSON-able identity of the source files and settings; a cache recorded
            with another one is rebuilt.
        build: decodes the sources: returns the named arrays and a JSON-able ``meta`` dict.
        what: what the cache holds, for messages (``"PolyMNIST train cache"``).
        validate: optional check of a mapped cache against what the loader expects
            (shapes, dtypes); returns a problem (the cache is rebuilt) or None.

    Returns:
        The arrays as CPU tensors mapped from the file (sharing its pages with every process
        that maps it), and ``meta``. Where the file cannot be written (a read-only folder, a
        full disk) the freshly built arrays are returned in memory, with a warning.

    Raises:
        BenchError: the file was written by a newer format version.
    """
    path = Path(path)
    fp = _jsonable(fingerprint)
    try:
        return _open_valid(path, fp, what, validate)
    except CacheStale:
        pass  # decided again under the lock: another process may be writing it now
    with _exclusive(path):
        try:
            return _open_valid(path, fp, what, validate)
        except CacheStale as stale:
            if stale.damaged:
                logger.warning("%s %s: %s; rebuilding it", what, path, stale.why)
            else:
                logger.info("%s %s: %s; building it", what, path, stale.why)
        arrays, meta = build()
        try:
            write_cache(path, arrays, fingerprint=fp, meta=meta)
        except OSError as e:
            logger.warning(
                "could not write the %s %s (%s); using this process's copy (not shared)",
                what,
                path,
                e.strerror or e,
            )
            return {k: _as_tensor(v) for k, v in arrays.items()}, meta
        del arrays
    # What this process just built is what the loader makes: no validation of it.
    return _open_valid(path, fp, what, None)


def write_cache(path: Path, arrays: Arrays, *, fingerprint: Any, meta: dict[str, Any]) -> Path:
    """Write ``arrays`` to ``path`` in the cache format, atomically (temp file + rename)."""
    prepared = {name: _as_array(a) for name, a in arrays.items()}
    entries: dict[str, dict[str, Any]] = {}
    data_start = _ALIGN
    while True:
        offset = data_start
        for name, a in prepared.items():
            entries[name] = {
                "dtype": a.dtype.str,
                "shape": list(a.shape),
                "offset": offset,
                "nbytes": int(a.nbytes),
            }
            offset = _align(offset + a.nbytes)
        header = {
            "format_version": FORMAT_VERSION,
            "fingerprint": _jsonable(fingerprint),
            "meta": _jsonable(meta),
            "file_bytes": offset,
            "arrays": entries,
        }
        blob = json.dumps(header, sort_keys=True).encode()
        if _PREFIX.size + len(blob) <= data_start:
            break
        data_start = _align(_PREFIX.size + len(blob))

    def write(f: Any) -> None:
        f.write(_PREFIX.pack(MAGIC, len(blob)))
        f.write(blob)
        for name, a in prepared.items():
            f.seek(entries[name]["offset"])
            f.write(memoryview(a.reshape(-1)).cast("B"))
        f.truncate(header["file_bytes"])

    return atomic_write(path, write)


def open_cache(path: Path) -> tuple[dict[str, Any], dict[str, Tensor]]:
    """The header and the mapped arrays of the cache file at ``path``, checked for consistency.

    Raises:
        CacheStale: the file is missing, truncated, or its header is damaged or inconsistent.
        BenchError: the file was written by a newer format version.
    """
    path = Path(path)
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        raise CacheStale("no cache file yet", damaged=False) from None
    except OSError as e:
        raise CacheStale(f"unreadable ({e.strerror or e})") from None
    try:
        size = os.fstat(fd).st_size
        header = _read_header(fd, size, path)
        entries = header["arrays"]
        if not entries:
            return header, {}
        mm = mmap.mmap(fd, size, flags=mmap.MAP_PRIVATE, prot=mmap.PROT_READ | mmap.PROT_WRITE)
    finally:
        os.close(fd)  # the mapping keeps the file open
    arrays = {}
    for name, e in entries.items():
        count = math.prod(e["shape"])
        a = np.frombuffer(mm, dtype=np.dtype(e["dtype"]), count=count, offset=e["offset"])
        arrays[name] = torch.from_numpy(a.reshape(e["shape"]))
    return header, arrays


# -- private ---------------------------------------------------------------------------------------
def _open_valid(
    path: Path,
    fingerprint: Any,
    what: str,
    validate: Callable[[dict[str, Tensor], dict[str, Any]], str | None] | None,
) -> tuple[dict[str, Tensor], dict[str, Any]]:
    header, arrays = open_cache(path)
    if header["fingerprint"] != fingerprint:
        raise CacheStale("built from other source files or settings", damaged=False)
    meta = header["meta"] if isinstance(header["meta"], dict) else {}
    problem = validate(arrays, meta) if validate is not None else None
    if problem:
        raise CacheStale(problem)
    logger.debug("%s: mapped %s", what, path)
    return arrays, meta


def _read_header(fd: int, size: int, path: Path) -> dict[str, Any]:
    head = os.pread(fd, _PREFIX.size, 0)
    if len(head) < _PREFIX.size:
        raise CacheStale(f"truncated ({size} bytes, no header)")
    magic, length = _PREFIX.unpack(head)
    if magic != MAGIC:
        raise CacheStale("not a cache file (wrong magic bytes)")
    if length > _MAX_HEADER or _PREFIX.size + length > size:
        raise CacheStale(f"truncated or damaged header (length {length}, file {size} bytes)")
    try:
        header = json.loads(os.pread(fd, length, _PREFIX.size))
    except (UnicodeDecodeError, ValueError) as e:
        raise CacheStale(f"damaged header ({type(e).__name__})") from None
    if not isinstance(header, dict):
        raise CacheStale("damaged header (not a JSON object)")
    version = header.get("format_version")
    if not isinstance(version, int) or isinstance(version, bool):
        raise CacheStale("damaged header (no format version)")
    if version > FORMAT_VERSION:
        raise BenchError(
            f"cache file {path} was written by a newer mmvae-bench (cache format {version}; "
            f"this one reads up to {FORMAT_VERSION}): upgrade mmvae-bench, or delete the file "
            "to rebuild it with this version"
        )
    if version < FORMAT_VERSION:
        raise CacheStale(f"older cache format {version}", damaged=False)
    expected = header.get("file_bytes")
    if not isinstance(expected, int) or expected != size:
        raise CacheStale(f"the file has {size} bytes, its header says {expected} (truncated?)")
    _check_entries(header.get("arrays"), _PREFIX.size + length, size)
    if "fingerprint" not in header or "meta" not in header:
        raise CacheStale("damaged header (no fingerprint)")
    return header


def _check_entries(entries: Any, data_start: int, size: int) -> None:
    if not isinstance(entries, dict):
        raise CacheStale("damaged header (no array table)")
    spans = []
    for name, e in entries.items():
        bad = f"damaged header (array '{name}')"
        if not isinstance(e, dict):
            raise CacheStale(bad)
        try:
            dtype = np.dtype(e["dtype"])
        except (KeyError, TypeError, ValueError):
            raise CacheStale(bad) from None
        shape, offset, nbytes = e.get("shape"), e.get("offset"), e.get("nbytes")
        ints = [offset, nbytes, *(shape if isinstance(shape, list) else [None])]
        if dtype.kind not in _KINDS or dtype.hasobject or dtype.fields is not None:
            raise CacheStale(f"{bad}: dtype {e['dtype']!r} is not plain numbers")
        if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in ints):
            raise CacheStale(bad)
        if nbytes != math.prod(shape) * dtype.itemsize:
            raise CacheStale(f"{bad}: {nbytes} bytes for shape {shape} of {dtype}")
        if offset < data_start or offset % dtype.alignment or offset + nbytes > size:
            raise CacheStale(f"{bad}: bytes {offset}..{offset + nbytes} outside the data")
        spans.append((offset, offset + nbytes))
    spans.sort()
    for (_, end), (start, _) in zip(spans, spans[1:], strict=False):
        if start < end:
            raise CacheStale("damaged header (arrays overlap)")


@contextlib.contextmanager
def _exclusive(path: Path) -> Iterator[None]:
    """Hold an exclusive ``flock`` on the folder of ``path`` (its nearest existing ancestor),
    waiting for it. Locking the folder creates no file, so a load that fails leaves nothing
    behind; builds of other caches in the same folder wait too (they are rare and one-off)."""
    folder = Path(path).parent
    while not folder.is_dir() and folder != folder.parent:
        folder = folder.parent
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError as e:
        logger.debug("no lock on %s (%s)", folder, e)
        yield
        return
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise
            logger.info("waiting for another process building a cache in %s", folder)
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # drops the lock


def _align(n: int) -> int:
    return -(-n // _ALIGN) * _ALIGN


def _as_array(a: np.ndarray | Tensor) -> np.ndarray:
    arr = a.detach().cpu().contiguous().numpy() if isinstance(a, Tensor) else np.asarray(a)
    arr = np.ascontiguousarray(arr)
    if arr.dtype.byteorder == ">":
        arr = arr.astype(arr.dtype.newbyteorder("<"))
    if arr.dtype.kind not in _KINDS:
        raise TypeError(f"cache arrays hold plain numbers, not {arr.dtype}")
    return arr


def _as_tensor(a: np.ndarray | Tensor) -> Tensor:
    return a if isinstance(a, Tensor) else torch.from_numpy(np.ascontiguousarray(a))


def _jsonable(obj: Any) -> Any:
    """``obj`` as it reads back from JSON (tuples become lists), for comparisons."""
    return json.loads(json.dumps(obj, sort_keys=True))
