"""What a multimodal dataset is: modality specs, splits, and the tensor-resident batcher."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
from torch import Tensor

from mmvae_bench.errors import BenchError

__all__ = [
    "DataOptions",
    "DatasetEntry",
    "ModalitySpec",
    "MultimodalDataset",
    "Split",
    "iter_batches",
]

Kind = Literal["image", "sequence", "spectrogram", "vector"]
Likelihood = Literal["gaussian", "laplace", "bernoulli"]


@dataclass(frozen=True, kw_only=True)
class ModalitySpec:
    """One modality: its tensor shape and how models and the evaluation treat it.

    Attributes:
        name: key of the modality in every batch (``"m0"``, ``"image"``, ...).
        shape: shape of one sample, e.g. ``(3, 28, 28)``.
        kind: what the data is; decides plotting and whether FID can apply.
        likelihood: decoder distribution family p(x|z).
        scale: fixed scale of the likelihood (Gaussian sigma, Laplace b); unused for Bernoulli.
        encoder: name of the encoder net in :mod:`mmvae_bench.nets` for this shape.
        decoder: name of the decoder net.
        classifier: name of the coherence classifier net.
        fid: whether FID is computed for this modality (image modalities).
        value_range: (low, high) of the data values, used to clamp and plot samples.
    """

    name: str
    shape: tuple[int, ...]
    kind: Kind
    likelihood: Likelihood = "gaussian"
    scale: float = 1.0
    encoder: str = "mlp"
    decoder: str = "mlp"
    classifier: str = "mlp"
    fid: bool = False
    value_range: tuple[float, float] = (0.0, 1.0)

    @property
    def size(self) -> int:
        """Number of scalar values in one sample."""
        n = 1
        for s in self.shape:
            n *= s
        return n


@dataclass
class Split:
    """One split: modality tensors (first dim = sample) and integer class labels."""

    x: dict[str, Tensor]
    y: Tensor

    def __post_init__(self) -> None:
        n = len(self.y)
        for name, t in self.x.items():
            if len(t) != n:
                raise BenchError(f"modality '{name}' has {len(t)} samples, labels have {n}")

    def __len__(self) -> int:
        return len(self.y)

    def subset(self, index: Tensor) -> Split:
        """The samples at ``index`` (a 1-d long tensor), as a new split."""
        return Split({k: v[index] for k, v in self.x.items()}, self.y[index])

    def to(self, device: torch.device | str) -> Split:
        """The split with every tensor moved to ``device``."""
        return Split({k: v.to(device) for k, v in self.x.items()}, self.y.to(device))


@dataclass
class MultimodalDataset:
    """A dataset: per-modality specs, train and test splits, and dataset-level defaults.

    Attributes:
        name: registry name (lower-kebab).
        specs: modality specs keyed by modality name, in a fixed order.
        train, test: the splits.
        n_classes: number of label classes.
        latent_dim: default latent size for models on this dataset.
        classifier_floor: minimum test accuracy of a coherence classifier for evaluation.
        classifier_epochs: epochs to train each coherence classifier (enough to clear the
            floor with a margin on this dataset).
        rescale: optional per-modality likelihood weights lambda_j (empty = all 1).
        info: free-form provenance (sizes, seed, source files) recorded with results.
    """

    name: str
    specs: dict[str, ModalitySpec]
    train: Split
    test: Split
    n_classes: int
    latent_dim: int = 64
    classifier_floor: float = 0.8
    classifier_epochs: int = 5
    rescale: dict[str, float] = field(default_factory=dict)
    info: dict[str, object] = field(default_factory=dict)

    @property
    def modalities(self) -> tuple[str, ...]:
        """Modality names in their canonical order."""
        return tuple(self.specs)

    def likelihood_weights(self) -> dict[str, float]:
        """lambda_j for every modality (1.0 where not set)."""
        return {m: float(self.rescale.get(m, 1.0)) for m in self.specs}


@dataclass(frozen=True, kw_only=True)
class DataOptions:
    """What a dataset loader gets: where the data lives and where it may cache."""

    data_dir: Path | None = None
    cache_dir: Path = Path(".cache")
    seed: int = 0


@dataclass(frozen=True, kw_only=True)
class DatasetEntry:
    """A dataset as registered by a plugin (``mmvae_bench_datasets`` hook).

    Attributes:
        name: unique lower-kebab registry name.
        load: builds the dataset from :class:`DataOptions`; raises ``BenchError`` naming any
            missing file and the ``mmvae-bench data fetch`` command that provides it.
        description: one line for ``mmvae-bench datasets``.
        builtin: True when it needs no download (works offline).
        fetch: optional downloader ``fetch(data_dir)`` used by ``mmvae-bench data fetch``.
        check: optional verifier ``check(data_dir) -> list[str]`` of problems found.
    """

    name: str
    load: Callable[[DataOptions], MultimodalDataset]
    description: str = ""
    builtin: bool = False
    fetch: Callable[[Path], None] | None = None
    check: Callable[[Path], list[str]] | None = None


def iter_batches(
    x: Mapping[str, Tensor],
    batch_size: int,
    *,
    shuffle: bool,
    generator: torch.Generator | None = None,
    extras: Mapping[str, Tensor] | None = None,
    drop_last: bool = False,
) -> Iterator[tuple[dict[str, Tensor], dict[str, Tensor]]]:
    """Yield ``(batch, extras_batch)`` as index slices of resident tensors.

    No per-sample ``__getitem__`` or collate: one gather per tensor per batch. Tensors stay on
    whatever device they live on (put the dataset on the GPU once to keep data resident).
    """
    first = next(iter(x.values()))
    n = len(first)
    device = first.device
    if shuffle:
        order = torch.randperm(n, generator=generator).to(device)
    else:
        order = torch.arange(n, device=device)
    stop = n - (n % batch_size) if drop_last and n >= batch_size else n
    extras = extras or {}
    for start in range(0, stop, batch_size):
        idx = order[start : start + batch_size]
        yield {k: v[idx] for k, v in x.items()}, {k: v[idx] for k, v in extras.items()}
