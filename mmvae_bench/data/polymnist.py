"""PolyMNIST (Sutter et al. 2021) from its published PNG files, decoded once and cached.

Published layout under ``--data-dir``::

    MMNIST/{train,test}/m{0..4}/{i}.{label}.png

Five modalities of 3x28x28 RGB images: an MNIST digit pasted, colours inverted, on a crop of one
background image per modality. ``i`` counts within each label, so a tuple is the five files with
the same name across ``m0..m4``; the members of a tuple share only the digit label (60,000 train
and 10,000 test tuples). The reference loader pairs files by their position in five unsorted
directory listings; here they are paired by name, which is what the generator wrote, and a name
missing from one modality is an error naming it.

The ~350,000 PNGs are decoded once with PIL (one pass, unavoidable per file) and cached as uint8
arrays next to the data (``MMNIST/.mmvae_bench_cache_{split}.mmvb``, the mapped format of
:mod:`mmvae_bench.data.cache`) with a fingerprint of the folder (every file's name, size and
modification time, hashed); a changed folder is re-read. Every process on the node maps the same
file, so concurrent runs and sweep trials share one copy of the decoded images.
The splits hold the tuples as uint8 (11,760 bytes a tuple, ~0.82 GB for the 60,000 train and
10,000 test tuples, checked against the available memory before decoding); batches are given
to models as float32 in [0, 1], converted on the device.

Sample counts follow the rule of :mod:`mmvae_bench.data.published`: a tuple count other than
:data:`EXPECTED_TUPLES` is a problem for ``check``; ``load`` warns, goes on and records the
counts in ``info["sample_counts"]``. A split without tuples is an error.

Reference: T. M. Sutter, I. Daunhawer, J. E. Vogt, "Generalized Multimodal ELBO", ICLR 2021,
arXiv 2105.02470. Files: https://zenodo.org/records/4899160 (``PolyMNIST.zip``).
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import shutil
import tempfile
import zipfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from mmvae_bench.data.cache import cached_arrays
from mmvae_bench.data.download import (
    RemoteFile,
    extract_archive,
    fetch_command,
    fetch_remote,
    move_into,
    require_data_dir,
)
from mmvae_bench.data.memory import memory_guard, require_memory
from mmvae_bench.data.published import (
    count_problems,
    html_page_message,
    is_html_page,
    record_counts,
)
from mmvae_bench.data.spec import DataOptions, ModalitySpec, MultimodalDataset, Split
from mmvae_bench.errors import BenchError

__all__ = [
    "ARCHIVE",
    "EXPECTED_TUPLES",
    "MODALITIES",
    "NAME",
    "SPECS",
    "cache_path",
    "check",
    "fetch",
    "load",
    "read_split",
]

logger = logging.getLogger(__name__)

NAME = "polymnist"
MODALITIES = tuple(f"m{k}" for k in range(5))
EXPECTED_TUPLES = {"train": 60_000, "test": 10_000}

ARCHIVE = RemoteFile(
    name="PolyMNIST.zip",
    urls=("https://zenodo.org/records/4899160/files/PolyMNIST.zip?download=1",),
    # Unknown: the record lists only an md5. Fill in the sha256 on the first verified download
    # (fetch logs it); until then the archive is checked for its MMNIST folder.
    sha256=None,
)

# Bump when the cache's content changes, so old caches are re-read (2: the mapped format).
_CACHE_VERSION = 2
_PNG_NAME = re.compile(r"^(\d+)\.(\d)\.png$")
_TUPLE_BYTES = len(MODALITIES) * 3 * 28 * 28  # one tuple as uint8
_MEMORY_HINT = "free memory or use a machine with more (no option loads part of PolyMNIST)"

SPECS: dict[str, ModalitySpec] = {
    m: ModalitySpec(
        name=m,
        shape=(3, 28, 28),
        kind="image",
        likelihood="laplace",
        scale=0.75,
        encoder="conv28",
        decoder="conv28",
        classifier="cnn28",
        fid=True,
    )
    for m in MODALITIES
}


def load(options: DataOptions) -> MultimodalDataset:
    """PolyMNIST from ``options.data_dir / "MMNIST"``.

    Returns:
        A dataset with modalities ``m0``..``m4``, each (N, 3, 28, 28) stored as uint8 and
        batched as float32 in [0, 1], labels 0-9; latent size 512, classifier floor 0.9.

    Raises:
        BenchError: no data dir, a missing folder or file (named), an unreadable PNG, or not
            enough memory for the decoded tuples.
    """
    data_dir = require_data_dir(
        options.data_dir, NAME, ["MMNIST/train/m0..m4/*.png", "MMNIST/test/m0..m4/*.png"]
    )
    scans = {split: _scan(data_dir, split) for split in ("train", "test")}
    n = {split: len(names) for split, (names, _) in scans.items()}
    # Resident: both splits as uint8. Transient, for the larger split: the decoded uint8
    # array and its channels-first copy (none when the cache is mapped).
    require_memory(
        NAME, sum(n.values()) * _TUPLE_BYTES + max(n.values()) * _TUPLE_BYTES * 2, _MEMORY_HINT
    )
    with memory_guard(NAME, _MEMORY_HINT):
        train = _read_split(data_dir, "train", *scans["train"])
        test = _read_split(data_dir, "test", *scans["test"])
    return MultimodalDataset(
        name=NAME,
        specs=dict(SPECS),
        train=train,
        test=test,
        n_classes=10,
        latent_dim=512,
        classifier_floor=0.9,
        info={
            "source": "Sutter et al. 2021, zenodo 4899160 PolyMNIST.zip (MMNIST)",
            "data_dir": str(data_dir),
            "n_train": len(train),
            "n_test": len(test),
            **record_counts(NAME, {"train": len(train), "test": len(test)}, EXPECTED_TUPLES),
        },
    )


def cache_path(data_dir: Path, split: str) -> Path:
    """Where the decoded tensors of ``split`` are cached."""
    return Path(data_dir) / "MMNIST" / f".mmvae_bench_cache_{split}.mmvb"


def read_split(data_dir: Path, split: str) -> Split:
    """One split: from the cache when its fingerprint matches the folder, else decoded and cached.

    Returns:
        x: ``m0``..``m4`` (N, 3, 28, 28) uint8 (divisor 255); y: (N,) long; tuples ordered by
        (label, i).

    Raises:
        BenchError: a missing modality folder, no PNGs, a file name present in some
            modalities and not in others, a badly named PNG, or a PNG that is unreadable (a web
            page, for one) or not 28x28 RGB.
    """
    data_dir = Path(data_dir)
    return _read_split(data_dir, split, *_scan(data_dir, split))


def _read_split(data_dir: Path, split: str, names: list[str], fingerprint: str) -> Split:
    n = len(names)

    def decode() -> tuple[dict[str, Tensor], dict[str, object]]:
        images = _decode(data_dir / "MMNIST" / split, names)
        labels = torch.tensor([int(_PNG_NAME.match(m).group(2)) for m in names], dtype=torch.long)
        return {"images": images, "labels": labels}, {}

    def validate(arrays: dict[str, Tensor], meta: dict[str, object]) -> str | None:
        images, labels = arrays.get("images"), arrays.get("labels")
        if (
            images is None
            or labels is None
            or tuple(images.shape) != (len(MODALITIES), n, 3, 28, 28)
            or images.dtype != torch.uint8
            or tuple(labels.shape) != (n,)
            or labels.dtype != torch.long
        ):
            return f"its arrays do not hold {n} tuples of 5 uint8 3x28x28 images and labels"
        return None

    # One decoded copy per node: every process maps the same cache file (data/cache.py).
    arrays, _ = cached_arrays(
        cache_path(data_dir, split),
        {"dataset": NAME, "version": _CACHE_VERSION, "split": split, "folder": fingerprint},
        decode,
        what=f"PolyMNIST {split} cache",
        validate=validate,
    )
    images, labels = arrays["images"], arrays["labels"]
    # uint8 as decoded (views of the mapped cache); batches are float32 / 255 (data/spec.py).
    x = {m: images[k] for k, m in enumerate(MODALITIES)}
    return Split(x, labels, divisor=dict.fromkeys(MODALITIES, 255.0))


def fetch(data_dir: Path, *, progress: bool = True) -> None:
    """Download ``PolyMNIST.zip`` from zenodo and unpack its ``MMNIST`` folder into ``data_dir``.

    Nothing is downloaded when ``check`` finds the data complete. Other entries of the archive
    (the authors' classifiers, for instance) are unpacked beside ``MMNIST`` unless present. The
    archive is deleted once unpacked.
    """
    data_dir = Path(data_dir).expanduser()
    data_dir.mkdir(parents=True, exist_ok=True)
    if not check(data_dir):
        logger.info("PolyMNIST is already complete in %s", data_dir)
        return
    archive = fetch_remote(ARCHIVE, data_dir, progress=progress, validate=_validate_archive)
    with tempfile.TemporaryDirectory(prefix=".polymnist-", dir=data_dir) as tmp:
        extract_archive(archive, Path(tmp))
        mmnist = _find_mmnist(Path(tmp))
        if mmnist is None:
            raise BenchError(
                f"{archive} has no MMNIST/train and MMNIST/test folders (the archive's layout "
                f"changed?); unpack it by hand so that {data_dir}/MMNIST/train/m0 exists"
            )
        for entry in mmnist.parent.iterdir():
            dest = data_dir / entry.name
            if entry.name == "MMNIST":
                move_into(entry, dest)
            elif not dest.exists():
                shutil.move(entry, dest)
    archive.unlink()
    _scan(data_dir, "train")
    _scan(data_dir, "test")
    logger.info("PolyMNIST is in %s", data_dir / "MMNIST")


def check(data_dir: Path) -> list[str]:
    """Problems with the PolyMNIST files in ``data_dir`` (empty when complete and readable).

    Checks the folders, that every name is in all five modalities, that every PNG decodes as
    28x28 RGB (through the cache when it is current) and the tuple counts against
    :data:`EXPECTED_TUPLES` (another count is a problem). The archive has no published sha256
    (logged as information).
    """
    data_dir = Path(data_dir).expanduser()
    fix = f"run `{fetch_command(NAME, data_dir)}`"
    logger.info("PolyMNIST: no published sha256 for %s; checking the files", ARCHIVE.name)
    problems = []
    for split in EXPECTED_TUPLES:
        try:
            with memory_guard(NAME, _MEMORY_HINT):
                n = len(read_split(data_dir, split))
        except BenchError as e:
            problems.append(f"{e}")
            continue
        problems += count_problems(
            {split: n}, EXPECTED_TUPLES, str(data_dir / "MMNIST" / split), fix
        )
    return problems


def _scan(data_dir: Path, split: str) -> tuple[list[str], str]:
    """Tuple names in (label, i) order, and the fingerprint of the five folders."""
    root = data_dir / "MMNIST" / split
    fix = fetch_command(NAME, data_dir)
    listings: dict[str, dict[str, tuple[int, int]]] = {}
    for m in MODALITIES:
        folder = root / m
        if not folder.is_dir():
            raise BenchError(f"PolyMNIST folder not found: {folder}; run `{fix}`")
        files = {}
        with os.scandir(folder) as it:
            for entry in it:
                if not entry.name.endswith(".png"):
                    continue
                if not _PNG_NAME.match(entry.name):
                    raise BenchError(
                        f"{folder / entry.name}: not a PolyMNIST file name ({{i}}.{{label}}.png)"
                    )
                st = entry.stat()
                files[entry.name] = (st.st_size, st.st_mtime_ns)
        listings[m] = files
    every = set().union(*(set(f) for f in listings.values()))
    if not every:
        raise BenchError(f"PolyMNIST {root} holds no PNG files in m0..m4; run `{fix}`")
    # Every folder holds the union only when all have its size: the detailed comparison is
    # for the error (it costs ~1 s of the warm load at 350,000 files).
    if any(len(f) != len(every) for f in listings.values()):
        mismatch = _mismatch(root, listings, every)
        raise BenchError(f"PolyMNIST file names differ between m0..m4: {mismatch}; run `{fix}`")
    names = sorted(every, key=_order)
    # One hash update for the whole listing (the same bytes as a line per file).
    lines = "".join(
        f"{m}/{name}:{size}:{mtime}\n"
        for m in MODALITIES
        for name, (size, mtime) in ((n, listings[m][n]) for n in names)
    )
    return names, hashlib.sha256(lines.encode()).hexdigest()


def _mismatch(root: Path, listings: dict[str, dict[str, tuple[int, int]]], every: set[str]) -> str:
    """Each folder whose names differ from the others', with what it lacks or has extra ("")."""
    lacks: dict[str, list[str]] = {m: [] for m in MODALITIES}
    extra: dict[str, list[str]] = {m: [] for m in MODALITIES}
    for name in every:
        have = [m for m in MODALITIES if name in listings[m]]
        if len(have) == len(MODALITIES):
            continue
        # The folders in the minority are the odd ones: a name most folders have is missing
        # where it is not; a name few folders have is extra (or misplaced) where it is.
        if 2 * len(have) > len(MODALITIES):
            for m in MODALITIES:
                if m not in have:
                    lacks[m].append(name)
        else:
            for m in have:
                extra[m].append(name)
    parts = []
    for m in MODALITIES:
        for names, what in ((lacks[m], "lacks"), (extra[m], "has")):
            if not names:
                continue
            ordered = sorted(names, key=_order)
            # the folders on the other side, for the first name shown
            others = [
                o for o in MODALITIES if o != m and (ordered[0] in listings[o]) == (what == "lacks")
            ]
            shown = ordered[:5]
            more = f" and {len(names) - len(shown)} more" if len(names) > len(shown) else ""
            parts.append(
                f"{root / m} {what} {', '.join(shown)}{more}, which {', '.join(others)} "
                f"{'have' if what == 'lacks' else 'lack'}"
            )
    return "; ".join(parts)


def _order(name: str) -> tuple[int, int]:
    i, label = _PNG_NAME.match(name).groups()
    return int(label), int(i)


def _decode(root: Path, names: list[str]) -> Tensor:
    """Decode every PNG once: (5, N, 3, 28, 28) uint8."""
    logger.info("decoding %d PolyMNIST PNGs under %s (once; cached)", 5 * len(names), root)
    out = np.empty((len(MODALITIES), len(names), 28, 28, 3), dtype=np.uint8)
    for k, m in enumerate(MODALITIES):
        for j, name in enumerate(names):
            path = root / m / name
            try:
                with Image.open(path) as im:
                    if im.mode != "RGB" or im.size != (28, 28):
                        raise BenchError(
                            f"{path}: {im.mode} image of {im.size[0]}x{im.size[1]}, "
                            "expected a 28x28 RGB PNG"
                        )
                    out[k, j] = np.asarray(im)
            except BenchError:
                raise
            except (OSError, SyntaxError, ValueError) as e:
                fix = f"run `{fetch_command(NAME, root.parent.parent)}`"
                if is_html_page(path):
                    raise BenchError(html_page_message(path, "a PNG image", fix)) from None
                raise BenchError(
                    f"{path} is unreadable or truncated ({type(e).__name__}: {e}); "
                    f"run `{fetch_command(NAME, root.parent.parent)}`"
                ) from None
    # HWC -> CHW once for the whole array, not per image.
    return torch.from_numpy(out).permute(0, 1, 4, 2, 3).contiguous()


def _find_mmnist(root: Path) -> Path | None:
    """The extracted ``MMNIST`` folder (holding train/ and test/), at most three levels down."""
    candidates = [root / "MMNIST"] + sorted(root.glob("*/MMNIST")) + sorted(root.glob("*/*/MMNIST"))
    for c in candidates:
        if (c / "train").is_dir() and (c / "test").is_dir():
            return c
    return None


def _validate_archive(path: Path) -> None:
    if is_html_page(path):
        raise BenchError(html_page_message(path, "a zip archive", ""))
    try:
        with zipfile.ZipFile(path) as zf:
            names = zf.namelist()
    except (zipfile.BadZipFile, OSError) as e:
        raise BenchError(f"{path} is not a readable zip archive ({e})") from None
    if not any("MMNIST/" in n for n in names):
        raise BenchError(f"{path} holds no MMNIST folder")
