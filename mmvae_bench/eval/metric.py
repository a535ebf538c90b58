"""Extra metrics contributed by plugins (``mmvae_bench_metrics`` hook)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch

from mmvae_bench.data.spec import MultimodalDataset, Split
from mmvae_bench.eval.protocol import Protocol
from mmvae_bench.model import MultimodalVAE

__all__ = ["MetricContext", "MetricEntry"]


@dataclass
class MetricContext:
    """What a metric sees: the trained model, the dataset, the protocol's test subsample."""

    model: MultimodalVAE
    dataset: MultimodalDataset
    test: Split
    protocol: Protocol
    classifiers: Mapping[str, Any]
    device: torch.device


@dataclass(frozen=True, kw_only=True)
class MetricEntry:
    """A registered metric: ``compute(ctx)`` returns a JSON-able dict stored under its name."""

    name: str
    compute: Callable[[MetricContext], dict[str, Any]]
    description: str = ""
