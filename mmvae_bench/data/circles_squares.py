"""circles-squares: the JNF paper's toy problem, a disc and a diamond that are filled or rings.

Two modalities, ``"circle"`` and ``"square"``, each a 1x32x32 binary image (0/1 floats) drawn on
a 32x32 grid over [-1, 1]^2:

* circle: the disc ``x^2 + y^2 <= r^2``;
* square: the diamond ``|x| + |y| <= r`` (a square turned by 45 degrees).

Label 1 means both shapes are filled; label 0 means both are rings of thickness
:data:`RING_THICKNESS` (``r - 0.25 < dist <= r``). Each modality draws its own radius uniformly in
:data:`RADIUS_RANGE`, independently of the other, so the only information the two modalities
share is filled-vs-ring. Sizes: :data:`N_TRAIN` = 4,000 train and :data:`N_TEST` = 1,000 test
samples, labels exactly balanced and shuffled.

The data depend only on :data:`DATASET_SEED`, never on the run seed, so every run of a benchmark
sees the same samples. Generation is vectorised and takes milliseconds, so nothing is cached.
"""

from __future__ import annotations

import torch
from torch import Tensor

from mmvae_bench.data.spec import DataOptions, ModalitySpec, MultimodalDataset, Split

__all__ = [
    "DATASET_SEED",
    "GRID_SIZE",
    "MODALITIES",
    "N_TEST",
    "N_TRAIN",
    "RADIUS_RANGE",
    "RING_THICKNESS",
    "build",
    "load",
    "render",
]

DATASET_SEED = 20230601  # fixed: the data must not change with the run seed
N_TRAIN = 4_000
N_TEST = 1_000
GRID_SIZE = 32
RADIUS_RANGE = (0.3, 0.9)
RING_THICKNESS = 0.25
MODALITIES = ("circle", "square")


def _distances() -> dict[str, Tensor]:
    """Per-modality distance of every grid point to the centre, each (32, 32)."""
    axis = torch.linspace(-1.0, 1.0, GRID_SIZE)
    y, x = torch.meshgrid(axis, axis, indexing="ij")
    # The disc uses the Euclidean norm, the diamond the L1 norm: both shapes are "dist <= r".
    return {"circle": torch.sqrt(x**2 + y**2), "square": x.abs() + y.abs()}


def render(radius: Tensor, filled: Tensor) -> dict[str, Tensor]:
    """Draw both shapes for a batch of radii.

    Args:
        radius: (n, 2) radii, column 0 for the circle and column 1 for the square.
        filled: (n,) bool, True for filled shapes and False for rings.

    Returns:
        ``{"circle": (n, 1, 32, 32), "square": (n, 1, 32, 32)}`` float32 tensors of 0/1.
    """
    out = {}
    filled = filled.view(-1, 1, 1)
    for j, (name, dist) in enumerate(_distances().items()):
        # Broadcast the (32, 32) grid against the (n, 1, 1) radii: one comparison per pixel.
        r = radius[:, j].view(-1, 1, 1)
        inside = dist <= r
        ring = inside & (dist > r - RING_THICKNESS)
        out[name] = torch.where(filled, inside, ring).unsqueeze(1).float()
    return out


def _split(n: int, generator: torch.Generator) -> tuple[Split, Tensor]:
    """One split of ``n`` samples (``n`` even) and its (n, 2) radii."""
    # Exactly n/2 of each label, in random order: balanced without sampling noise.
    y = (torch.arange(n) % 2)[torch.randperm(n, generator=generator)]
    low, high = RADIUS_RANGE
    radius = low + (high - low) * torch.rand(n, 2, generator=generator)
    # Stored as uint8 0/1 (divisor 1): batches are the float32 0/1 images render() draws.
    images = {m: t.to(torch.uint8) for m, t in render(radius, y.bool()).items()}
    return Split(images, y, divisor=dict.fromkeys(MODALITIES, 1.0)), radius


def build(seed: int = DATASET_SEED) -> tuple[dict[str, Split], dict[str, Tensor]]:
    """Generate both splits from ``seed``.

    Returns:
        ``({"train": Split, "test": Split}, {"train": radii, "test": radii})`` where radii are
        (n, 2) float tensors (circle, square) that the images were drawn with.
    """
    g = torch.Generator().manual_seed(seed)
    train, r_train = _split(N_TRAIN, g)
    test, r_test = _split(N_TEST, g)
    return {"train": train, "test": test}, {"train": r_train, "test": r_test}


def load(options: DataOptions) -> MultimodalDataset:
    """The circles-squares dataset (``options`` is unused: the data depend on no run setting)."""
    splits, _ = build(DATASET_SEED)
    specs = {
        name: ModalitySpec(
            name=name,
            shape=(1, GRID_SIZE, GRID_SIZE),
            kind="image",
            likelihood="bernoulli",
            encoder="conv32",
            decoder="conv32",
            classifier="cnn32",
            fid=True,
            value_range=(0.0, 1.0),
        )
        for name in MODALITIES
    }
    return MultimodalDataset(
        name="circles-squares",
        specs=specs,
        train=splits["train"],
        test=splits["test"],
        n_classes=2,
        latent_dim=16,
        classifier_floor=0.9,
        info={
            "train_size": N_TRAIN,
            "test_size": N_TEST,
            "seed": DATASET_SEED,
            "radius_range": list(RADIUS_RANGE),
            "ring_thickness": RING_THICKNESS,
            "grid": f"{GRID_SIZE}x{GRID_SIZE} over [-1, 1]^2",
            "source": "generated",
        },
    )
