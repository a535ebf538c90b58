"""Fetching published dataset files: resumable, checksummed, never half-written under their name.

Shared by the published-dataset modules (:mod:`mmvae_bench.data.mhd`,
:mod:`mmvae_bench.data.polymnist`, :mod:`mmvae_bench.data.mnist_svhn`): the download itself,
sha256 checks, safe archive extraction, and the wording of "file missing, run this" errors.

A download streams into ``<dest>.part`` next to the destination. A later call resumes a partial
``.part`` with an HTTP ``Range`` request when the host honours it and restarts it otherwise. Only
a complete file whose sha256 matches (or, where no checksum is published, that passes the
caller's structural check) is renamed to the final name, atomically.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import logging
import os
import shutil
import tarfile
import urllib.error
import urllib.request
import zipfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from mmvae_bench.data.published import html_page_message, is_html_page
from mmvae_bench.errors import BenchError

__all__ = [
    "RemoteFile",
    "download",
    "extract_archive",
    "fetch_command",
    "fetch_remote",
    "move_into",
    "part_path",
    "require_data_dir",
    "sha256_file",
    "verify_sha256",
]

logger = logging.getLogger(__name__)

_CHUNK = 1 << 20
_TIMEOUT_S = 60.0
_USER_AGENT = "mmvae-bench/0.1 (dataset fetch)"


@dataclass(frozen=True, kw_only=True)
class RemoteFile:
    """A file a dataset host publishes, and where it lives under ``--data-dir``.

    Attributes:
        name: path relative to the data dir (``"MNIST/raw/train-images-idx3-ubyte.gz"``).
        urls: where to get it, tried in order (mirrors of the same bytes).
        sha256: published or independently recorded sha256 of the file; ``None`` where none is
            known (the download then logs the hash it computed, to be recorded here).
        size: size in bytes where known (a download that ends short of it is incomplete).
    """

    name: str
    urls: tuple[str, ...]
    sha256: str | None = None
    size: int | None = None


def fetch_command(dataset: str, data_dir: Path | None) -> str:
    """The command that downloads ``dataset`` into ``data_dir`` (``DIR`` when unknown)."""
    return f"mmvae-bench data fetch {dataset} --data-dir {data_dir if data_dir else 'DIR'}"


def require_data_dir(data_dir: Path | None, dataset: str, expected: Sequence[str]) -> Path:
    """``data_dir`` as a Path, or a ``BenchError`` naming what is expected there and the fix.

    Args:
        data_dir: the ``--data-dir`` option (None when not given).
        dataset: registry name, for the fetch command.
        expected: the files or folders the dataset needs, relative to the data dir.
    """
    listing = ", ".join(expected)
    if data_dir is None:
        raise BenchError(
            f"dataset '{dataset}' needs --data-dir: a folder holding {listing}; "
            f"get them with `{fetch_command(dataset, None)}`"
        )
    data_dir = Path(data_dir).expanduser()
    if not data_dir.is_dir():
        raise BenchError(
            f"data dir {data_dir} does not exist (dataset '{dataset}' expects {listing} there); "
            f"run `{fetch_command(dataset, data_dir)}`"
        )
    return data_dir


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file's bytes, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def verify_sha256(path: Path, expected: str | None) -> str | None:
    """The problem with ``path``'s checksum as a sentence, or None when it matches.

    Where no checksum is known (``expected`` is None) there is nothing to compare: that is
    logged as information and is not a problem.
    """
    if expected is None:
        logger.info("%s: no published checksum to verify against (sha256 not recorded)", path)
        return None
    actual = sha256_file(path)
    if actual != expected:
        return f"{path}: sha256 is {actual}, expected {expected} (corrupt or a different file)"
    return None


def part_path(dest: Path) -> Path:
    """Where a download of ``dest`` is written until it is complete and verified."""
    return dest.with_name(dest.name + ".part")


def download(
    url: str,
    dest: Path,
    sha256: str | None,
    *,
    progress: bool = True,
    size: int | None = None,
    validate: Callable[[Path], None] | None = None,
) -> Path:
    """Download ``url`` to ``dest``, resuming a partial ``.part`` file, and verify it.

    Args:
        url: http(s) or file URL.
        dest: final path; its folder is created.
        sha256: expected hex sha256, or None when no checksum is known.
        progress: show a ``rich`` progress bar.
        size: expected size in bytes, used when the host sends no Content-Length.
        validate: optional structural check ``validate(path)`` raising ``BenchError``, run on
            the complete file before it gets its final name (the stand-in for a checksum where
            none is published) and on an existing ``dest`` that has no checksum to compare.

    Returns:
        ``dest``.

    Raises:
        BenchError: network failure or interrupted transfer (the ``.part`` stays, to resume),
            a web page instead of the file, or a checksum or validation failure (the ``.part``
            is deleted). ``dest`` is never left half-written: it is only ever replaced by a
            complete, verified file.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    if dest.exists() and _existing_ok(dest, sha256, validate):
        return dest
    part = part_path(dest)
    actual = _stream(url, dest, progress=progress, size=size)
    if sha256 is not None and actual != sha256:
        part.unlink(missing_ok=True)
        raise BenchError(
            f"checksum mismatch for {dest.name} from {url}: expected sha256 {sha256}, got "
            f"{actual}; the partial file was deleted, run the command again"
        )
    if validate is not None:
        try:
            validate(part)
        except BenchError as e:
            part.unlink(missing_ok=True)
            raise BenchError(f"{dest.name} downloaded from {url} is not usable: {e}") from None
    if sha256 is None:
        # No published checksum: record what this download produced so it can be pinned.
        logger.info("%s: no published checksum; downloaded file has sha256 %s", dest, actual)
    os.replace(part, dest)
    return dest


def fetch_remote(
    remote: RemoteFile,
    data_dir: Path,
    *,
    progress: bool = True,
    validate: Callable[[Path], None] | None = None,
) -> Path:
    """Download ``remote`` to ``data_dir / remote.name``, trying each mirror in turn.

    Raises:
        BenchError: when every mirror failed; the message lists each mirror's error.
    """
    dest = Path(data_dir) / remote.name
    errors = []
    for url in remote.urls:
        try:
            return download(
                url, dest, remote.sha256, progress=progress, size=remote.size, validate=validate
            )
        except BenchError as e:
            logger.warning("%s: %s", url, e)
            errors.append(str(e))
    raise BenchError(f"could not download {remote.name}: " + " | ".join(errors))


def extract_archive(archive: Path, target: Path) -> list[Path]:
    """Extract a zip or tar archive into ``target``, refusing anything that would escape it.

    Members with absolute paths, ``..`` components, links, or (for tar) device files are
    rejected before anything is written.

    Returns:
        The paths of the archive's top-level entries under ``target``.

    Raises:
        BenchError: not an archive, a corrupt archive, or an unsafe member.
    """
    archive, target = Path(archive), Path(target)
    target.mkdir(parents=True, exist_ok=True)
    root = target.resolve()
    try:
        if zipfile.is_zipfile(archive):
            with zipfile.ZipFile(archive) as zf:
                names = []
                for info in zf.infolist():
                    _check_member(info.filename, root, archive)
                    if (info.external_attr >> 16) & 0o170000 == 0o120000:
                        raise BenchError(f"{archive}: member {info.filename!r} is a link; refusing")
                    names.append(info.filename)
                zf.extractall(root)
        elif tarfile.is_tarfile(archive):
            with tarfile.open(archive) as tf:
                members = tf.getmembers()
                names = []
                for m in members:
                    _check_member(m.name, root, archive)
                    if not (m.isfile() or m.isdir()):
                        raise BenchError(
                            f"{archive}: member {m.name!r} is not a regular file or folder; "
                            "refusing"
                        )
                    names.append(m.name)
                if hasattr(tarfile, "data_filter"):
                    tf.extractall(root, members=members, filter="data")
                else:  # Python < 3.10.12: the checks above are the whole guard
                    tf.extractall(root, members=members)
        elif is_html_page(archive):
            raise BenchError(html_page_message(archive, "a zip or tar archive", ""))
        else:
            raise BenchError(
                f"{archive} is neither a zip nor a tar archive (truncated or wrong download?)"
            )
    except (zipfile.BadZipFile, tarfile.TarError, EOFError, OSError) as e:
        raise BenchError(f"{archive} is corrupt ({type(e).__name__}: {e})") from None
    tops = sorted({PurePosixPath(n).parts[0] for n in names if PurePosixPath(n).parts})
    return [target / t for t in tops]


def move_into(src: Path, dest: Path) -> None:
    """Move ``src`` to ``dest``, replacing an existing folder ``dest`` only after the move."""
    if dest.exists():
        old = dest.with_name(f".{dest.name}.old")
        if old.exists():
            shutil.rmtree(old)
        os.replace(dest, old)
        os.replace(src, dest)
        shutil.rmtree(old)
    else:
        os.replace(src, dest)


def _check_member(name: str, root: Path, archive: Path) -> None:
    p = PurePosixPath(name.replace("\\", "/"))
    bad = p.is_absolute() or ".." in p.parts or (p.parts and ":" in p.parts[0])
    if bad or not (root / p).resolve().is_relative_to(root):
        raise BenchError(f"{archive}: member {name!r} would be written outside {root}; refusing")


def _existing_ok(dest: Path, sha256: str | None, validate: Callable[[Path], None] | None) -> bool:
    """Whether an existing ``dest`` can be kept instead of downloading again."""
    if sha256 is not None:
        actual = sha256_file(dest)
        if actual == sha256:
            logger.info("%s: present, sha256 verified", dest)
            return True
        # The replacement is renamed over it only once verified, so it is kept until then.
        logger.warning("%s: sha256 %s, expected %s: downloading again", dest, actual, sha256)
        return False
    if validate is not None:
        try:
            validate(dest)
        except BenchError as e:
            logger.warning("%s is present but not usable (%s): downloading again", dest, e)
            return False
    logger.info("%s: present (no published checksum to verify)", dest)
    return True


def _open(url: str, offset: int) -> Any:  # HTTPResponse, or addinfourl for file: URLs
    headers = {"User-Agent": _USER_AGENT}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    return urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=_TIMEOUT_S)


def _stream(url: str, dest: Path, *, progress: bool, size: int | None) -> str:
    """Append or write ``url``'s bytes to ``dest``'s ``.part``; returns the sha256 of all of it."""
    part, label = part_path(dest), dest.name
    offset = part.stat().st_size if part.exists() else 0
    try:
        resp = _open(url, offset)
    except urllib.error.HTTPError as e:
        if e.code == 416 and offset:
            # The host has nothing past our offset: the .part is complete or longer than the
            # file. Restarting is the only safe reading of that.
            logger.info("%s: host refused to resume (HTTP 416); restarting", label)
            part.unlink()
            offset = 0
            try:
                resp = _open(url, 0)
            except (urllib.error.URLError, OSError, http.client.HTTPException) as e2:
                raise _network_error(url, e2) from None
        else:
            raise _network_error(url, e) from None
    except (urllib.error.URLError, OSError, http.client.HTTPException) as e:
        raise _network_error(url, e) from None

    with resp:
        status = resp.getcode() or 200  # file: URLs have no status
        content_range = resp.headers.get("Content-Range", "")
        if offset and not (status == 206 and content_range.startswith(f"bytes {offset}-")):
            logger.info("%s: host does not resume partial downloads; restarting", label)
            offset = 0
        content_type = resp.headers.get("Content-Type", "")
        if content_type.startswith("text/html"):
            # Hosts such as Google Drive answer with a confirmation or quota page instead of
            # the file; writing it would only produce a checksum failure later.
            raise BenchError(
                f"{url} returned a web page instead of {label} (the host may want a "
                "confirmation or its download quota is exhausted); try again later or "
                f"download it in a browser and put it at {dest}"
            )
        length = resp.headers.get("Content-Length")
        total = offset + int(length) if length is not None else size

        h = hashlib.sha256()
        if offset:
            with open(part, "rb") as f:
                while chunk := f.read(_CHUNK):
                    h.update(chunk)
        received = offset
        with (
            open(part, "ab" if offset else "wb") as out,
            _progress_bar(progress, label, total, offset) as advance,
        ):
            try:
                while chunk := resp.read(_CHUNK):
                    out.write(chunk)
                    h.update(chunk)
                    received += len(chunk)
                    advance(len(chunk))
            except (OSError, http.client.HTTPException) as e:
                out.flush()
                raise BenchError(
                    f"download of {url} interrupted after {received} bytes "
                    f"({type(e).__name__}: {e}); run the command again to resume"
                ) from None
            out.flush()
            os.fsync(out.fileno())
    if total is not None and received != total:
        raise BenchError(
            f"download of {url} ended after {received} of {total} bytes; "
            "run the command again to resume"
        )
    return h.hexdigest()


def _network_error(url: str, e: BaseException) -> BenchError:
    if isinstance(e, urllib.error.HTTPError):
        what = f"HTTP {e.code} {e.reason}"
    elif isinstance(e, urllib.error.URLError):
        what = str(e.reason)
    else:
        what = f"{type(e).__name__}: {e}"
    return BenchError(f"download of {url} failed ({what}); check the connection and run again")


@contextlib.contextmanager
def _progress_bar(
    show: bool, label: str, total: int | None, done: int
) -> Iterator[Callable[[int], None]]:
    if not show:
        yield lambda n: None
        return
    # Imported here: rich is only needed when a bar is shown.
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
    ) as bar:
        task = bar.add_task(label, total=total, completed=done)
        yield lambda n: bar.advance(task, n)
