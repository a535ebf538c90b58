"""Joint and conditional coherence, batched over the test set (settings: ``eval/protocol.py``)."""

from __future__ import annotations

import logging
import statistics
from collections.abc import Callable, Mapping

import torch
from torch import Tensor

from mmvae_bench.data.spec import Split, iter_batches
from mmvae_bench.eval.classifiers import Classifier, balanced_accuracy
from mmvae_bench.eval.protocol import (
    COND_COHERENCE,
    COND_COHERENCE_BY_SIZE,
    HMC_ACCEPTANCE,
    JOINT_COHERENCE,
    JOINT_LABEL_HIST,
    Protocol,
)
from mmvae_bench.model import MultimodalVAE, all_subsets, subset_key

__all__ = ["conditional_coherence", "joint_coherence", "test_subsample"]

log = logging.getLogger(__name__)
Progress = Callable[[str], None]


def test_subsample(test: Split, protocol: Protocol) -> Split:
    """The protocol's fixed-seed subsample of the test split (all of it when None)."""
    n = len(test)
    if protocol.test_samples is None or protocol.test_samples >= n:
        return test
    gen = torch.Generator().manual_seed(protocol.subsample_seed)
    idx = torch.randperm(n, generator=gen)[: protocol.test_samples].sort().values
    return test.subset(idx)


@torch.no_grad()
def conditional_coherence(
    model: MultimodalVAE,
    test: Split,
    classifiers: Mapping[str, Classifier],
    protocol: Protocol,
    n_classes: int,
    *,
    device: torch.device | str = "cpu",
    progress: Progress | None = None,
) -> dict[str, object]:
    """Generate every modality m not in S from every non-empty proper subset S; classify.

    Returns:
        ``{COND_COHERENCE: {S: {m: acc, "mean": acc}}, COND_COHERENCE_BY_SIZE: {k: {mean, std,
        n}}, HMC_ACCEPTANCE: {S: rate}}``; accuracies are class-balanced.
    """
    model.eval()
    mods = model.modalities
    per_subset: dict[str, dict[str, float]] = {}
    acceptance: dict[str, float] = {}
    # Stored at native precision on the device (uint8 images: 1/4 of float32); each batch is
    # converted to float32 there, so the split is never held as float.
    x = test.to(device)
    # One encode_subsets call per subset size and test batch: the model samples every subset
    # of that size together (JNF: one HMC call), and each decoder and classifier runs once on
    # the samples of all of them.
    for k in range(1, len(mods)):
        group = [s for s in all_subsets(mods, proper=True) if len(s) == k]
        preds: list[dict[str, list[Tensor]]] = [{m: [] for m in mods if m not in s} for s in group]
        rates: list[list[tuple[float, int]]] = [[] for _ in group]
        # The subsets each modality is generated from (those without it).
        targets = {m: [i for i, s in enumerate(group) if m not in s] for m in mods}
        for batch, _ in iter_batches(x, protocol.batch_size, shuffle=False):
            samples = model.encode_subsets(batch, group, 1, hmc=protocol.hmc)
            b = samples[0].z.shape[1]
            gen = model.decode(torch.cat([sample.z[0] for sample in samples]))  # (S * B, ...)
            for m, holders in targets.items():
                rows = torch.cat([gen[m][i * b : (i + 1) * b] for i in holders])
                labels = classifiers[m].net(rows).argmax(-1)
                for j, i in enumerate(holders):
                    preds[i][m].append(labels[j * b : (j + 1) * b])
            for i, sample in enumerate(samples):
                if "hmc_acceptance" in sample.info:
                    rates[i].append((sample.info["hmc_acceptance"], b))
        for i, subset in enumerate(group):
            key = subset_key(subset)
            accs = {
                m: balanced_accuracy(torch.cat(p), test.y, n_classes) for m, p in preds[i].items()
            }
            per_subset[key] = {**accs, "mean": sum(accs.values()) / len(accs)}
            if rates[i]:
                acceptance[key] = sum(r * n for r, n in rates[i]) / sum(n for _, n in rates[i])
            if progress:
                progress(f"{key}: {per_subset[key]['mean']:.3f}")
    by_size: dict[str, dict[str, float]] = {}
    for k in range(1, len(mods)):
        vals = [v["mean"] for s, v in per_subset.items() if len(s.split("+")) == k]
        by_size[str(k)] = {
            "mean": statistics.fmean(vals),
            "std": statistics.pstdev(vals) if len(vals) > 1 else 0.0,
            "n": len(vals),
        }
    return {COND_COHERENCE: per_subset, COND_COHERENCE_BY_SIZE: by_size, HMC_ACCEPTANCE: acceptance}


@torch.no_grad()
def joint_coherence(
    model: MultimodalVAE,
    classifiers: Mapping[str, Classifier],
    n_samples: int,
    n_classes: int,
    *,
    batch_size: int = 500,
    latent_sampler: Callable[[int], Tensor] | None = None,
) -> dict[str, object]:
    """Decode ``n_samples`` latent draws; coherent when every classifier predicts one label.

    Reported with each modality's predicted-label histogram: featureless samples that every
    classifier maps to one class look "coherent", and the histogram shows it. The draws come
    from ``latent_sampler(n)`` ``(n, latent_dim)`` (default ``model.prior_sample``).
    """
    model.eval()
    draw = latent_sampler or model.prior_sample
    agree = 0
    hist = {m: torch.zeros(n_classes, dtype=torch.long) for m in model.modalities}
    for start in range(0, n_samples, batch_size):
        n = min(batch_size, n_samples - start)
        out = model.decode(draw(n))
        preds = torch.stack([classifiers[m].net(out[m]).argmax(-1) for m in model.modalities])
        agree += int((preds == preds[:1]).all(0).sum())
        for i, m in enumerate(model.modalities):
            hist[m] += torch.bincount(preds[i].cpu(), minlength=n_classes)
    return {
        JOINT_COHERENCE: agree / max(n_samples, 1),
        JOINT_LABEL_HIST: {m: h.tolist() for m, h in hist.items()},
    }
