"""Run the whole evaluation protocol on a trained model."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from mmvae_bench.data.spec import MultimodalDataset
from mmvae_bench.eval.classifiers import get_classifiers
from mmvae_bench.eval.coherence import conditional_coherence, joint_coherence, test_subsample
from mmvae_bench.eval.metric import MetricContext
from mmvae_bench.eval.protocol import CLASSIFIER_ACCURACY, Protocol
from mmvae_bench.model import MultimodalVAE

if TYPE_CHECKING:  # fid.py imports torch-fidelity (~2 s): only when FID is asked for
    from mmvae_bench.eval.fid import FIDSettings

__all__ = ["evaluate_model"]


def evaluate_model(
    model: MultimodalVAE,
    dataset: MultimodalDataset,
    protocol: Protocol,
    *,
    cache_dir: Path,
    device: torch.device,
    progress: Callable[[str], None] | None = None,
    registry: Any = None,
    classifier_weights: Path | None = None,
    fid: FIDSettings | None = None,
    seed: int | None = None,
    latent_sampler: Callable[[int], Tensor] | None = None,
) -> dict[str, Any]:
    """Every metric of ``protocol``: coherence (conditional, joint) and plugins' metrics.

    FID (per image modality, :mod:`mmvae_bench.eval.fid`) is computed when ``fid`` is given.
    Joint coherence and unconditional FID decode ``latent_sampler(n)`` draws ``(n, latent_dim)``
    (a fitted :class:`~mmvae_bench.samplers.LatentSampler`'s ``sample``); default: the prior.
    With ``seed``, sampling is seeded after the classifiers are ready, so the numbers do not
    depend on whether the classifiers were trained in this process or read from the cache.

    Returns the ``metrics`` dict of the run record, with per-metric wall times.
    """
    say = progress or (lambda msg: None)
    model.eval()
    timings: dict[str, float] = {}
    t = time.perf_counter()
    classifiers = get_classifiers(dataset, cache_dir, device=device, weights_dir=classifier_weights)
    timings["classifiers_s"] = time.perf_counter() - t
    if seed is not None:
        torch.manual_seed(seed)
        if torch.cuda.is_available():
            torch.cuda.manual_seed_all(seed)
    test = test_subsample(dataset.test, protocol)
    metrics: dict[str, Any] = {
        CLASSIFIER_ACCURACY: {m: c.accuracy for m, c in classifiers.items()},
        "test_samples": len(test),
    }
    t = time.perf_counter()
    metrics.update(
        conditional_coherence(
            model, test, classifiers, protocol, dataset.n_classes, device=device, progress=say
        )
    )
    timings["conditional_coherence_s"] = time.perf_counter() - t
    t = time.perf_counter()
    metrics.update(
        joint_coherence(
            model,
            classifiers,
            protocol.joint_samples,
            dataset.n_classes,
            latent_sampler=latent_sampler,
        )
    )
    timings["joint_coherence_s"] = time.perf_counter() - t
    if fid is not None:
        from mmvae_bench.eval.fid import fid_metrics

        t = time.perf_counter()
        metrics.update(
            fid_metrics(
                model,
                dataset,
                test,
                classifiers,
                protocol,
                fid,
                cache_dir=cache_dir,
                device=device,
                progress=say,
                latent_sampler=latent_sampler,
            )
        )
        timings["fid_s"] = time.perf_counter() - t
    if registry is not None:
        ctx = MetricContext(model, dataset, test, protocol, classifiers, device)
        for name, entry in registry.metrics.items():
            t = time.perf_counter()
            metrics[name] = entry.compute(ctx)
            timings[f"{name}_s"] = time.perf_counter() - t
    metrics["eval_timings"] = timings
    return metrics
