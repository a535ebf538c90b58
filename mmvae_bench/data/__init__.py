"""Datasets: specs, the tensor batcher, built-in and published dataset families."""

from mmvae_bench.data.spec import (
    DataOptions,
    DatasetEntry,
    ModalitySpec,
    MultimodalDataset,
    Split,
    iter_batches,
)

__all__ = [
    "DataOptions",
    "DatasetEntry",
    "ModalitySpec",
    "MultimodalDataset",
    "Split",
    "iter_batches",
]
