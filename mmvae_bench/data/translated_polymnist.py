"""TranslatedPolyMNIST (Daunhawer et al. 2022): PolyMNIST with small digits at random places.

The PolyMNIST recipe (Sutter et al. 2021) with the digit shrunk and moved: for each of the five
modalities, an MNIST digit is downscaled by :data:`SCALE` = 0.75 (bilinear, 28 -> 21 pixels),
pasted at a random offset into an empty 28x28 canvas, binarised (> 128), and the colours of a
random 28x28 crop of that modality's background image are inverted under it. As in PolyMNIST,
``i`` counts within each label and a tuple (i, label) shows in each modality its own digit image
of that label (one random permutation per modality and label), so the modalities share only the
label: 60,000 train tuples from MNIST's train digits and 10,000 test tuples from its test digits.

Built from files under ``--data-dir``::

    backgrounds/*.jpg                         the PolyMNIST background images (the first 5 in
                                              sorted order, one per modality, as the generator)
    MNIST/raw/{train,t10k}-*-idx?-ubyte       torchvision's MNIST files (or their .gz)

``mmvae-bench data fetch translated-polymnist`` downloads MNIST (sha256-checked); the background
images have no published checksummed download, so they are copied into ``backgrounds/`` by hand.

Faithful to the generation code (``make_polymnist_dataset.py --scale 0.75 --translate``, also in
MultiVae's ``TranslatedMMNIST``): the digit's offset is drawn from ``0 .. int(28 * 0.25) - 1``
(0-6: the generator's exclusive upper bound, so the digit never touches the bottom/right edge)
and the crop corner from ``0 .. size - 29``. Deliberate differences: all randomness comes from a
``torch.Generator`` seeded with :data:`DATASET_SEED` (the generator draws unseeded from
``np.random``), so every machine builds the same dataset; the images are built in tensors and
cached as uint8 (``<cache_dir>/datasets/translated-polymnist-v1-<fingerprint>.pt``, the
fingerprint covering the backgrounds' bytes, the MNIST digits and the recipe) instead of
written as 350,000 PNGs.

Memory: the splits hold the tuples as uint8 (11,760 bytes a tuple, ~0.82 GB for 70,000;
batches are converted to float32 on the device), computed from MNIST's labels and checked
against the available memory before anything is built or cached. Sample counts follow the rule
of :mod:`mmvae_bench.data.published` for the MNIST files (``check`` reports a count other than
the published one; ``load`` warns and records the counts in ``info["sample_counts"]``).

Reference: I. Daunhawer, T. M. Sutter, K. Chin-Cheong, E. Palumbo, J. E. Vogt, "On the
Limitations of Multimodal VAEs", ICLR 2022, arXiv 2110.04121.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from mmvae_bench.data import polymnist
from mmvae_bench.data.download import require_data_dir
from mmvae_bench.data.memory import is_out_of_memory, memory_guard, require_memory
from mmvae_bench.data.mnist_svhn import EXPECTED_SAMPLES, check_mnist, fetch_mnist, read_mnist
from mmvae_bench.data.published import (
    html_page_message,
    is_html_page,
    record_counts,
    torch_load_error,
)
from mmvae_bench.data.spec import DataOptions, ModalitySpec, MultimodalDataset, Split
from mmvae_bench.errors import BenchError
from mmvae_bench.io import atomic_torch_save

__all__ = [
    "BACKGROUND_DIR",
    "DATASET_SEED",
    "MODALITIES",
    "NAME",
    "SCALE",
    "SPECS",
    "build_split",
    "cache_path",
    "check",
    "fetch",
    "load",
    "read_backgrounds",
]

logger = logging.getLogger(__name__)

NAME = "translated-polymnist"
SCALE = 0.75  # digit size relative to the image, as in the paper
SIDE = 28
THRESHOLD = 128  # a digit pixel is "on" above this, as in the generator
MODALITIES = polymnist.MODALITIES
BACKGROUND_DIR = "backgrounds"
DATASET_SEED = 20220125  # fixed: the data must not change with the run seed
_SPLIT_SEED = {"train": 0, "test": 1}
_RECIPE_VERSION = 1  # bump when the recipe changes, so cached builds are not reused
_CHUNK = 10_000  # digits per interpolation: bounds the float32 temporaries (~30 MB)
_TUPLE_BYTES = len(MODALITIES) * 3 * SIDE * SIDE  # one tuple as uint8
_MEMORY_HINT = (
    "free memory or use a machine with more (no option builds part of TranslatedPolyMNIST)"
)

# The PolyMNIST specs: same images, same nets, Laplace likelihood with scale 0.75.
SPECS: dict[str, ModalitySpec] = dict(polymnist.SPECS)


def load(options: DataOptions) -> MultimodalDataset:
    """TranslatedPolyMNIST built from the backgrounds and MNIST under ``options.data_dir``.

    Returns:
        A dataset with modalities ``m0``..``m4``, each (N, 3, 28, 28) stored as uint8 and
        batched as float32 in [0, 1] (divisor 255), labels
        0-9, tuples ordered by (label, i); latent size 512 and classifier floor 0.9, as PolyMNIST.

    Raises:
        BenchError: no data dir, missing or unreadable backgrounds or MNIST files (named, with
            the fetch command), or not enough memory for the tuples.
    """
    data_dir = require_data_dir(
        options.data_dir,
        NAME,
        [f"{BACKGROUND_DIR}/*.jpg (5 images)", "MNIST/raw/*-idx?-ubyte"],
    )
    backgrounds, bg_files = read_backgrounds(data_dir)
    splits = {}
    info: dict[str, Any] = {
        "source": "Daunhawer et al. 2022 recipe on MNIST + the PolyMNIST backgrounds",
        "data_dir": str(data_dir),
        "backgrounds": [p.name for p in bg_files],
        "scale": SCALE,
        "seed": DATASET_SEED,
    }
    with memory_guard(NAME, _MEMORY_HINT):
        digits = {split: read_mnist(data_dir, split, dataset=NAME) for split in ("train", "test")}
        n = {split: len(labels) for split, (_, labels) in digits.items()}
        # Resident: both splits as uint8; transient: the larger split's float32 interpolation
        # chunks are bounded (_CHUNK), the build's uint8 tensor is the resident one.
        require_memory(NAME, sum(n.values()) * _TUPLE_BYTES, _MEMORY_HINT)
        for split, (images, labels) in digits.items():
            x, y = _cached_split(Path(options.cache_dir), split, images, labels, backgrounds)
            # uint8 as built; batches become float32 / 255 on the device (data/spec.py).
            splits[split] = Split(
                {m: x[k] for k, m in enumerate(MODALITIES)},
                y,
                divisor=dict.fromkeys(MODALITIES, 255.0),
            )
            info[f"n_{split}"] = len(y)
    info.update(record_counts(NAME, {f"mnist {s}": c for s, c in n.items()}, _published()))
    return MultimodalDataset(
        name=NAME,
        specs=dict(SPECS),
        train=splits["train"],
        test=splits["test"],
        n_classes=10,
        latent_dim=512,
        classifier_floor=0.9,
        info=info,
    )


def read_backgrounds(data_dir: Path) -> tuple[list[Tensor], list[Path]]:
    """The first five ``backgrounds/*.jpg`` (sorted by name) as (3, H, W) uint8 RGB tensors.

    Raises:
        BenchError: fewer than five images, an unreadable one, or one too small for a 28x28
            crop (each names the file and what to do).
    """
    from PIL import Image, UnidentifiedImageError

    folder = Path(data_dir) / BACKGROUND_DIR
    fix = (
        f"copy the five PolyMNIST background images (the .jpg files of its generation code) "
        f"into {folder}"
    )
    files = sorted(folder.glob("*.jpg"))
    if len(files) < len(MODALITIES):
        raise BenchError(
            f"{folder}: found {len(files)} background .jpg files, need {len(MODALITIES)}; {fix}"
        )
    out = []
    for path in files[: len(MODALITIES)]:
        try:
            with Image.open(path) as im:
                rgb = torch.from_numpy(np.array(im.convert("RGB")))  # (H, W, 3) uint8
        except (OSError, UnidentifiedImageError) as e:
            if is_html_page(path):
                raise BenchError(html_page_message(path, "a JPEG image", fix)) from None
            raise BenchError(f"background {path} is unreadable ({e}); {fix}") from None
        height, width = rgb.shape[:2]
        if width <= SIDE or height <= SIDE:
            raise BenchError(
                f"background {path} is {width}x{height}; a {SIDE}x{SIDE} crop needs more than "
                f"{SIDE} pixels each way; {fix}"
            )
        out.append(rgb.permute(2, 0, 1).contiguous())
    return out, files[: len(MODALITIES)]


def build_split(
    images: Tensor, labels: Tensor, backgrounds: list[Tensor], seed: int
) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
    """One split from MNIST digits and the five backgrounds (no cache).

    Args:
        images: MNIST digits (N, 28, 28) uint8; labels: (N,) long 0-9.
        backgrounds: five (3, H, W) uint8 images, one per modality.
        seed: seed of the split's generator.

    Returns:
        ``(x, y, provenance)``: x (5, N, 3, 28, 28) uint8, y (N,) long ordered by (label, i),
        and per modality (first dim 5) ``digit`` (N,) the MNIST index shown, ``offset`` (N, 2)
        the digit's (row, col) in the canvas, ``crop`` (N, 2) the background crop's (top, left).
    """
    g = torch.Generator().manual_seed(seed)
    pools = [(labels == d).nonzero().squeeze(1) for d in range(10)]  # in file order
    y = torch.cat([torch.full((len(p),), d, dtype=torch.long) for d, p in enumerate(pools)])
    size = int(SIDE * SCALE)  # 21: what interpolate gives for 28 * 0.75
    span = int(SIDE * (1 - SCALE))  # offsets 0 .. span - 1, as the generator draws them
    x = torch.empty(len(MODALITIES), len(y), 3, SIDE, SIDE, dtype=torch.uint8)
    prov: dict[str, list[Tensor]] = {"digit": [], "offset": [], "crop": []}
    for m, bg in enumerate(backgrounds):
        # One permutation per modality and label: tuples share only the label.
        digit = torch.cat([p[torch.randperm(len(p), generator=g)] for p in pools])
        offset = torch.randint(span, (len(y), 2), generator=g)
        _, height, width = bg.shape
        top = torch.randint(height - SIDE, (len(y),), generator=g)
        left = torch.randint(width - SIDE, (len(y),), generator=g)
        crop = torch.stack([top, left], dim=1)
        for start in range(0, len(y), _CHUNK):
            sl = slice(start, start + _CHUNK)
            on = _translated_digits(images[digit[sl]], offset[sl], size)  # (n, 28, 28) bool
            patch = _crops(bg, crop[sl])  # (n, 3, 28, 28)
            x[m, sl] = torch.where(on.unsqueeze(1), 255 - patch, patch)
        for key, value in (("digit", digit), ("offset", offset), ("crop", crop)):
            prov[key].append(value)
    return x, y, {k: torch.stack(v) for k, v in prov.items()}


def cache_path(cache_dir: Path, fingerprint: str) -> Path:
    """Where a built split with ``fingerprint`` is cached."""
    return Path(cache_dir) / "datasets" / f"{NAME}-v{_RECIPE_VERSION}-{fingerprint}.pt"


def fetch(data_dir: Path, *, progress: bool = True) -> None:
    """Download MNIST into ``data_dir``; the backgrounds must be copied in by hand.

    Raises:
        BenchError: after MNIST is in place, when the background images are missing.
    """
    data_dir = Path(data_dir).expanduser()
    fetch_mnist(data_dir, progress=progress)
    read_backgrounds(data_dir)
    logger.info("MNIST and the backgrounds are in %s", data_dir)


def check(data_dir: Path) -> list[str]:
    """Problems with the MNIST files and the background images in ``data_dir``."""
    data_dir = Path(data_dir).expanduser()
    problems = check_mnist(data_dir, dataset=NAME)
    try:
        read_backgrounds(data_dir)
    except BenchError as e:
        problems.append(str(e))
    return problems


def _published() -> dict[str, int]:
    return {f"mnist {split}": c for split, c in EXPECTED_SAMPLES["mnist"].items()}


def _translated_digits(digits: Tensor, offset: Tensor, size: int) -> Tensor:
    """Digits (n, 28, 28) uint8 shrunk to ``size`` and pasted at ``offset`` -> "on" mask."""
    n = len(digits)
    # As the generator: bilinear (align_corners=False) on the 0..255 values, pasted into a
    # uint8 canvas, which truncates them (128.7 -> 128, then not > 128), then binarised.
    small = F.interpolate(digits.unsqueeze(1).float(), scale_factor=SCALE, mode="bilinear")
    canvas = torch.zeros(n, SIDE, SIDE, dtype=torch.uint8)
    ar = torch.arange(size)
    rows = (offset[:, 0:1] + ar)[:, :, None]  # (n, size, 1)
    cols = (offset[:, 1:2] + ar)[:, None, :]  # (n, 1, size)
    canvas[torch.arange(n)[:, None, None], rows, cols] = small[:, 0].to(torch.uint8)
    return canvas > THRESHOLD


def _crops(bg: Tensor, corner: Tensor) -> Tensor:
    """28x28 crops of ``bg`` (3, H, W) at ``corner`` (n, 2) (top, left) -> (n, 3, 28, 28)."""
    ar = torch.arange(SIDE)
    rows = (corner[:, 0:1] + ar)[:, :, None]  # (n, 28, 1)
    cols = (corner[:, 1:2] + ar)[:, None, :]  # (n, 1, 28)
    return bg[:, rows, cols].permute(1, 0, 2, 3)


def _cached_split(
    cache_dir: Path, split: str, images: Tensor, labels: Tensor, backgrounds: list[Tensor]
) -> tuple[Tensor, Tensor]:
    """The split from the cache when built from these inputs, else built and cached."""
    h = hashlib.sha256(f"{_RECIPE_VERSION}:{SCALE}:{DATASET_SEED}:{split}".encode())
    for t in (images, labels, *backgrounds):
        h.update(str(tuple(t.shape)).encode())
        h.update(t.contiguous().numpy().tobytes())
    path = cache_path(cache_dir, f"{split}-{h.hexdigest()[:16]}")
    if path.is_file():
        try:
            blob = torch.load(path, map_location="cpu", weights_only=True)
            x, y = blob["x"], blob["y"]
            if x.shape == (len(MODALITIES), len(labels), 3, SIDE, SIDE) and len(y) == len(labels):
                return x, y
            logger.warning("rebuilding %s: %s has the wrong shapes", NAME, path)
        except Exception as e:
            if is_out_of_memory(e):
                raise  # for memory_guard: rebuilding would need the same memory
            # Only a cache: it can always be rebuilt, so a bad file is not an error.
            logger.warning(
                "rebuilding %s: cache %s is unreadable (%s)", NAME, path, torch_load_error(e)
            )
    logger.info("building %s %s (%d tuples)", NAME, split, len(labels))
    x, y, _ = build_split(images, labels, backgrounds, DATASET_SEED + _SPLIT_SEED[split])
    atomic_torch_save(path, {"x": x, "y": y})
    return x, y
