"""What a multimodal dataset is: modality specs, splits, and the tensor-resident batcher."""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Iterator, Mapping
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
    "STORED_DTYPES",
    "Split",
    "iter_batches",
    "to_float",
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


# Stored dtypes and how each becomes float32 (see Split).
STORED_DTYPES = (torch.uint8, torch.float16, torch.float32)


@dataclass
class Split:
    """One split: modality tensors at their native precision, labels, and the batch contract.

    **Storage.** ``x[m]`` holds modality ``m`` as it was decoded, first dim = stored row:

    - ``torch.uint8`` for data read as 8-bit values (PolyMNIST, TranslatedPolyMNIST, MNIST,
      SVHN and polymnist-lite pixels; circles-squares' 0/1 pixels). ``divisor[m]`` is required
      and says what the model sees: ``float32(stored) / divisor[m]``, the division done in
      float32 as the loaders used to do on the CPU (``.to(torch.float32).div_(255.0)``).
    - ``torch.float16`` only where that is lossless for the data at hand (converted exactly).
    - ``torch.float32`` otherwise (MHD's trajectories and sounds): given to models as is.

    **Index pairs.** ``index[m]`` (optional, ``(N,)`` long) maps sample ``i`` to row
    ``index[m][i]`` of ``x[m]``: MNIST-SVHN stores each unique image once and its ``dm`` pairs
    per image as indices. Without an entry, row ``i`` is sample ``i``. ``len(split) == len(y)``.

    **Batches.** :meth:`batch` (and :func:`iter_batches` over a split) gathers the stored rows
    of a batch where the split lives (put it on the GPU once with :meth:`to`; 1/4 of the float32
    bytes for uint8), moves them to ``device`` if asked, and converts them to float32 there. A
    uint8 value is divided on the CPU or, on another device, looked up in a 256-entry table of
    the CPU's quotients, so a batch is bit-identical to the float32 tensor the loaders used to
    hold, on every device (CUDA divides by a scalar as a multiplication by its reciprocal,
    which differs in the last bit: :func:`to_float`).
    ``split.batch()`` of the whole split allocates all of it as float32: for small data only.

    Attributes:
        x: stored tensors per modality (uint8, float16 or float32).
        y: (N,) integer class labels, one per sample.
        divisor: per uint8 modality, the divisor of the float32 value (255.0 for [0, 1]).
        index: per paired modality, the (N,) long row of ``x[m]`` of each sample.
    """

    x: dict[str, Tensor]
    y: Tensor
    divisor: dict[str, float] = field(default_factory=dict)
    index: dict[str, Tensor] = field(default_factory=dict)

    def __post_init__(self) -> None:
        n = len(self.y)
        for name, t in self.x.items():
            if t.dtype not in STORED_DTYPES:
                raise BenchError(
                    f"modality '{name}' is stored as {t.dtype}; a split stores uint8, float16 "
                    "or float32 (convert other floats to float32)"
                )
            if t.dtype == torch.uint8 and name not in self.divisor:
                raise BenchError(
                    f"modality '{name}' is stored as uint8 without a divisor: give "
                    f"divisor={{'{name}': 255.0}} for values in [0, 1] (1.0 keeps 0..255)"
                )
            if name in self.index:
                idx = self.index[name]
                if idx.dtype != torch.long or idx.ndim != 1:
                    raise BenchError(f"index of modality '{name}' must be a 1-d long tensor")
                if len(idx) != n:
                    raise BenchError(
                        f"modality '{name}' has {len(idx)} indexed samples, labels have {n}"
                    )
            elif len(t) != n:
                raise BenchError(f"modality '{name}' has {len(t)} samples, labels have {n}")
        for name in (*self.divisor, *self.index):
            if name not in self.x:
                raise BenchError(f"divisor or index given for '{name}', which is no modality")

    def __len__(self) -> int:
        return len(self.y)

    @property
    def device(self) -> torch.device:
        """Where the split's tensors live."""
        return self.y.device

    @property
    def nbytes(self) -> int:
        """Bytes the split holds: stored tensors, indices and labels (no float copies)."""
        tensors = [*self.x.values(), *self.index.values(), self.y]
        return sum(t.numel() * t.element_size() for t in tensors)

    def rows(self, name: str, index: Tensor | slice | None = None) -> Tensor:
        """The stored rows (native dtype) of modality ``name`` for the samples at ``index``.

        ``index`` is a 1-d long tensor on the split's device, a slice, or None (all samples).
        """
        t = self.x[name]
        pairs = self.index.get(name)
        if pairs is not None:
            return t[pairs if index is None else pairs[index]]
        return t if index is None else t[index]

    def batch(
        self, index: Tensor | slice | None = None, device: torch.device | str | None = None
    ) -> dict[str, Tensor]:
        """The samples at ``index`` as float32 tensors on ``device`` (default: the split's).

        Args:
            index: 1-d long tensor of sample positions (on the split's device), a slice, or
                None for every sample (allocates the whole split as float32).
            device: where the batch goes; the gather happens where the split lives and only
                the stored bytes are copied.

        Returns:
            ``{modality: (B, *shape) float32}``, bit-identical to the loaders' former float
            tensors.
        """
        out = {}
        for name in self.x:
            stored = self.rows(name, index)
            if device is not None:
                stored = stored.to(device, non_blocking=True)
            out[name] = to_float(stored, self.divisor.get(name, 1.0))
        return out

    def select(self, names: Iterable[str]) -> Split:
        """The split with only the modalities ``names`` (no copy of any tensor)."""
        keep = tuple(names)
        return Split(
            {k: self.x[k] for k in keep},
            self.y,
            {k: v for k, v in self.divisor.items() if k in keep},
            {k: v for k, v in self.index.items() if k in keep},
        )

    def subset(self, index: Tensor) -> Split:
        """The samples at ``index`` (a 1-d long tensor), as a new split sharing the stored
        tensors: no row is copied (a mapped cache stays shared, a split on the GPU stays one
        copy); every modality addresses its rows through an index (8 bytes a sample).
        """
        index = index.to(self.y.device)
        rows = {k: self.index[k][index] if k in self.index else index for k in self.x}
        return Split(dict(self.x), self.y[index], dict(self.divisor), rows)

    def to(self, device: torch.device | str, *, non_blocking: bool = False) -> Split:
        """The split with every stored tensor, index and label moved to ``device``."""

        def move(t: Tensor) -> Tensor:
            return t.to(device, non_blocking=non_blocking)

        return Split(
            {k: move(v) for k, v in self.x.items()},
            move(self.y),
            dict(self.divisor),
            {k: move(v) for k, v in self.index.items()},
        )


def to_float(stored: Tensor, divisor: float = 1.0) -> Tensor:
    """A stored modality tensor as the float32 values models see (see :class:`Split`).

    uint8: ``float32(v) / divisor`` divided on the CPU; elsewhere through a 256-entry table of
    those CPU quotients (CUDA divides by a scalar as a multiplication by its reciprocal), so
    the result is the same bit for bit on every device; float16: exact; float32: unchanged.
    """
    if stored.dtype == torch.uint8:
        if stored.device.type == "cpu":
            # The loaders' former path itself; 2x faster than the table lookup on the CPU.
            return stored.to(torch.float32).div_(divisor)
        return _via_table(stored, divisor)
    if stored.dtype == torch.float16:
        return stored.to(torch.float32)
    return stored


def _via_table(stored: Tensor, divisor: float) -> Tensor:
    table = _uint8_table(float(divisor), stored.device)
    return table.index_select(0, stored.reshape(-1).to(torch.int32)).view(stored.shape)


@functools.lru_cache(maxsize=16)
def _uint8_table(divisor: float, device: torch.device) -> Tensor:
    # Division in float32 on the CPU: what loaders did with `.to(torch.float32).div_(255.0)`.
    values = torch.arange(256, dtype=torch.uint8).to(torch.float32).div_(divisor)
    return values.to(device)


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

    @property
    def nbytes(self) -> int:
        """Bytes both splits hold resident (stored tensors, indices, labels)."""
        return self.train.nbytes + self.test.nbytes

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
    x: Mapping[str, Tensor] | Split,
    batch_size: int,
    *,
    shuffle: bool,
    generator: torch.Generator | None = None,
    extras: Mapping[str, Tensor] | None = None,
    drop_last: bool = False,
    device: torch.device | str | None = None,
) -> Iterator[tuple[dict[str, Tensor], dict[str, Tensor]]]:
    """Yield ``(batch, extras_batch)`` as index slices of resident tensors.

    No per-sample ``__getitem__`` or collate: one gather per tensor per batch. Tensors stay on
    whatever device they live on (put the dataset on the GPU once to keep data resident).

    ``x`` is a mapping of tensors (batches are their rows, as they are) or a :class:`Split`
    (batches are :meth:`Split.batch`: stored rows gathered, index pairs followed, converted to
    float32 on ``device``, by default the split's). The order is the same for both: a
    ``torch.randperm`` of the sample count drawn from ``generator`` when ``shuffle``.
    ``extras`` are tensors with one row per sample, sliced alongside (on their own device).
    """
    if isinstance(x, Split):
        n, where = len(x), x.device
    else:
        first = next(iter(x.values()))
        n, where = len(first), first.device
    if shuffle:
        order = torch.randperm(n, generator=generator).to(where)
    else:
        order = torch.arange(n, device=where)
    stop = n - (n % batch_size) if drop_last and n >= batch_size else n
    extras = extras or {}
    for start in range(0, stop, batch_size):
        idx = order[start : start + batch_size]
        if isinstance(x, Split):
            batch = x.batch(idx, device)
        else:
            batch = {k: v[idx] for k, v in x.items()}
            if device is not None:
                batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
        yield batch, {k: v[idx.to(v.device)] for k, v in extras.items()}
