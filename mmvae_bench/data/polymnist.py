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
tensors next to the data (``MMNIST/.mmvae_bench_cache_{split}.pt``) with a fingerprint of the
folder (every file's name, size and modification time, hashed); a changed folder is re-read.
Values are given to models as float32 in [0, 1].

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

from mmvae_bench.data.download import (
    RemoteFile,
    extract_archive,
    fetch_command,
    fetch_remote,
    move_into,
    require_data_dir,
)
from mmvae_bench.data.spec import DataOptions, ModalitySpec, MultimodalDataset, Split
from mmvae_bench.errors import BenchError
from mmvae_bench.io import atomic_torch_save

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

# Bump when the cache's content or layout changes, so old caches are re-read.
_CACHE_VERSION = 1
_PNG_NAME = re.compile(r"^(\d+)\.(\d)\.png$")

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
        A dataset with modalities ``m0``..``m4``, each (N, 3, 28, 28) float32 in [0, 1], labels
        0-9; latent size 512, coherence-classifier floor 0.9.

    Raises:
        BenchError: no data dir, a missing folder or file (named), or an unreadable PNG.
    """
    data_dir = require_data_dir(
        options.data_dir, NAME, ["MMNIST/train/m0..m4/*.png", "MMNIST/test/m0..m4/*.png"]
    )
    train = read_split(data_dir, "train")
    test = read_split(data_dir, "test")
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
        },
    )


def cache_path(data_dir: Path, split: str) -> Path:
    """Where the decoded tensors of ``split`` are cached."""
    return Path(data_dir) / "MMNIST" / f".mmvae_bench_cache_{split}.pt"


def read_split(data_dir: Path, split: str) -> Split:
    """One split: from the cache when its fingerprint matches the folder, else decoded and cached.

    Returns:
        x: ``m0``..``m4`` (N, 3, 28, 28) float32 in [0, 1]; y: (N,) long; tuples ordered by
        (label, i).

    Raises:
        BenchError: a missing modality folder, a file name present in one modality and missing
            in another, a badly named PNG, or a PNG that is unreadable or not 28x28 RGB.
    """
    data_dir = Path(data_dir)
    names, fingerprint = _scan(data_dir, split)
    cache = cache_path(data_dir, split)
    cached = _read_cache(cache, fingerprint, len(names))
    if cached is None:
        images = _decode(data_dir / "MMNIST" / split, names)
        labels = torch.tensor([int(_PNG_NAME.match(n).group(2)) for n in names], dtype=torch.long)
        try:
            atomic_torch_save(
                cache,
                {
                    "version": _CACHE_VERSION,
                    "fingerprint": fingerprint,
                    "images": images,
                    "labels": labels,
                },
            )
        except OSError as e:
            # A read-only data dir still loads; it only decodes again next time.
            logger.warning("could not write the PolyMNIST cache %s (%s)", cache, e)
    else:
        images, labels = cached
    x = {m: images[k].to(torch.float32).div_(255.0) for k, m in enumerate(MODALITIES)}
    return Split(x, labels)


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
    28x28 RGB (through the cache when it is current) and the published tuple counts. The
    archive has no published sha256 (logged as information).
    """
    data_dir = Path(data_dir).expanduser()
    fix = fetch_command(NAME, data_dir)
    logger.info("PolyMNIST: no published sha256 for %s; checking the files", ARCHIVE.name)
    problems = []
    for split, expected in EXPECTED_TUPLES.items():
        try:
            n = len(read_split(data_dir, split))
        except BenchError as e:
            problems.append(f"{e}")
            continue
        if n != expected:
            problems.append(
                f"{data_dir / 'MMNIST' / split}: {n} tuples, the published data has "
                f"{expected}; run `{fix}`"
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
    for m in MODALITIES:
        lacking = every.difference(listings[m])
        if lacking:
            shown = sorted(lacking, key=_order)[:5]
            more = f" and {len(lacking) - len(shown)} more" if len(lacking) > len(shown) else ""
            raise BenchError(
                f"PolyMNIST {root / m} lacks {', '.join(shown)}{more}, which the other "
                f"modalities have (e.g. {root / m / shown[0]} is missing); run `{fix}`"
            )
    names = sorted(every, key=_order)
    h = hashlib.sha256()
    for m in MODALITIES:
        for name in names:
            size, mtime = listings[m][name]
            h.update(f"{m}/{name}:{size}:{mtime}\n".encode())
    return names, h.hexdigest()


def _order(name: str) -> tuple[int, int]:
    i, label = _PNG_NAME.match(name).groups()
    return int(label), int(i)


def _read_cache(path: Path, fingerprint: str, n: int) -> tuple[Tensor, Tensor] | None:
    if not path.is_file():
        return None
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        logger.warning("PolyMNIST cache %s is unreadable (%s); decoding again", path, e)
        return None
    if not isinstance(obj, dict) or obj.get("version") != _CACHE_VERSION:
        return None
    if obj.get("fingerprint") != fingerprint:
        logger.info("PolyMNIST folder changed since %s was written; decoding again", path)
        return None
    images, labels = obj.get("images"), obj.get("labels")
    if (
        not isinstance(images, Tensor)
        or not isinstance(labels, Tensor)
        or tuple(images.shape) != (len(MODALITIES), n, 3, 28, 28)
        or images.dtype != torch.uint8
        or tuple(labels.shape) != (n,)
    ):
        logger.warning("PolyMNIST cache %s does not match the folder; decoding again", path)
        return None
    return images, labels


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
    try:
        with zipfile.ZipFile(path) as zf:
            names = zf.namelist()
    except (zipfile.BadZipFile, OSError) as e:
        raise BenchError(f"{path} is not a readable zip archive ({e})") from None
    if not any("MMNIST/" in n for n in names):
        raise BenchError(f"{path} holds no MMNIST folder")
