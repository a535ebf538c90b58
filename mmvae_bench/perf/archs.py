"""The architectures the performance suite measures: published datasets' shapes, synthetic data.

Timing needs shapes, not images: each architecture takes its modality specs from the dataset
module that loads the real data (so the two cannot drift apart) and fills them with uniform
noise. Model sizes follow the published JNF runs (conv nets 32/64/128, flows of 2 MADE blocks x
3 hidden layers x 128) and apply to whichever of these fields a model's config has.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from mmvae_bench.config import make_config
from mmvae_bench.data import mhd, mnist_svhn, polymnist
from mmvae_bench.data.spec import ModalitySpec, MultimodalDataset, Split
from mmvae_bench.errors import BenchError
from mmvae_bench.model import ModelConfig, ModelEntry

__all__ = ["ARCHS", "QUICK_SIZES", "Arch", "get_arch"]

# The published JNF sizes (the reference figures were measured at these).
PUBLISHED_SIZES: dict[str, Any] = {
    "batch_size": 128,
    "width": 32,
    "flow_depth": 2,
    "flow_hidden": 128,
    "flow_layers": 3,
}
# --quick: every code path, tiny nets (the shapes of the data stay).
QUICK_SIZES: dict[str, Any] = {
    "batch_size": 16,
    "latent_dim": 8,
    "width": 4,
    "features": 16,
    "flow_hidden": 16,
    "flow_layers": 1,
    "k": 2,
    "common_dim": 8,
    "shared_dim": 4,
    "dcca_dim": 4,
    "projector_batch_size": 32,
}


@dataclass(frozen=True, kw_only=True)
class Arch:
    """One dataset's architecture: modality specs, latent size, likelihood weights."""

    name: str  # the registry name of the real dataset (its per-model defaults apply)
    specs: Mapping[str, ModalitySpec]
    latent_dim: int
    rescale: Mapping[str, float] = field(default_factory=dict)

    def dataset(self, n: int, *, seed: int = 0, n_test: int | None = None) -> MultimodalDataset:
        """``n`` synthetic training tuples (uniform noise, 10 classes); test: ``n_test`` or n."""
        g = torch.Generator().manual_seed(seed)

        def split(k: int) -> Split:
            x = {m: torch.rand(k, *s.shape, generator=g) for m, s in self.specs.items()}
            return Split(x, torch.randint(0, 10, (k,), generator=g))

        train = split(n)
        return MultimodalDataset(
            name=self.name,
            specs=dict(self.specs),
            train=train,
            test=train if n_test is None else split(n_test),
            n_classes=10,
            latent_dim=self.latent_dim,
            rescale=dict(self.rescale),
            info={"source": "mmvae_bench.perf synthetic tensors"},
        )

    def config(self, entry: ModelEntry, *, quick: bool) -> ModelConfig:
        """``entry``'s config on this dataset: its defaults, then the suite's sizes."""
        fields = {f.name for f in dataclasses.fields(entry.config)}
        values = dict(entry.defaults.get(self.name, {}))
        sizes = {**PUBLISHED_SIZES, "latent_dim": self.latent_dim}
        if quick:
            sizes.update(QUICK_SIZES)
        values.update({k: v for k, v in sizes.items() if k in fields})
        return make_config(entry.config, values)


def _largest_ratio(specs: Mapping[str, ModalitySpec]) -> dict[str, float]:
    largest = max(s.size for s in specs.values())
    return {m: largest / s.size for m, s in specs.items()}


ARCHS: dict[str, Arch] = {
    "polymnist": Arch(name=polymnist.NAME, specs=polymnist.SPECS, latent_dim=512),
    "mhd": Arch(name=mhd.NAME, specs=mhd.SPECS, latent_dim=64, rescale=_largest_ratio(mhd.SPECS)),
    "mnist-svhn": Arch(
        name=mnist_svhn.NAME,
        specs=mnist_svhn.SPECS,
        latent_dim=20,
        rescale=_largest_ratio(mnist_svhn.SPECS),
    ),
}


def get_arch(name: str) -> Arch:
    """The architecture called ``name``; unknown names list the known ones."""
    try:
        return ARCHS[name]
    except KeyError:
        raise BenchError(f"unknown architecture '{name}'; available: {', '.join(ARCHS)}") from None
