"""Time of the evaluation protocols (coherence) on a PolyMNIST-sized test set.

The full protocol on 10,000 test tuples runs HMC for 25 of PolyMNIST's 30 subsets at 100 x 10
steps: hours on a CPU. So it is timed by slices and extrapolated, and the result says so: one
protocol batch (``protocol.batch_size`` datapoints: encode, decode, classify every target
modality, exactly the body of :func:`~mmvae_bench.eval.coherence.conditional_coherence`) for
one subset of each size, scaled by the number of subsets of that size and of batches, plus a
warm-up call per size at one HMC iteration (where compilation, if any, happens); joint
coherence runs in full. With ``real_quick``, the quick protocol also runs for real through
``conditional_coherence``, which checks the extrapolation.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Mapping
from typing import Any

import torch

from mmvae_bench.data.spec import MultimodalDataset
from mmvae_bench.eval.classifiers import Classifier
from mmvae_bench.eval.coherence import conditional_coherence, joint_coherence
from mmvae_bench.eval.protocol import Protocol
from mmvae_bench.hmc import HMCSettings
from mmvae_bench.model import MultimodalVAE
from mmvae_bench.nets import build_classifier
from mmvae_bench.perf.timing import measure, sync

__all__ = ["protocol_time", "random_classifiers"]


def random_classifiers(dataset: MultimodalDataset, device: torch.device) -> dict[str, Classifier]:
    """Untrained coherence classifiers of the dataset's architectures (timing only)."""
    out = {}
    for m, spec in dataset.specs.items():
        net = build_classifier(spec, dataset.n_classes).to(device).eval().requires_grad_(False)
        out[m] = Classifier(modality=m, net=net, accuracy=float("nan"), source="random (timing)")
    return out


def protocol_time(
    model: MultimodalVAE,
    dataset: MultimodalDataset,
    classifiers: Mapping[str, Classifier],
    protocol: Protocol,
    n_test: int,
    device: torch.device,
    *,
    real: bool = False,
) -> dict[str, Any]:
    """Seconds the coherence part of ``protocol`` takes on ``n_test`` test tuples.

    Args:
        model: the model (eval mode), on ``device``.
        dataset: its test split holds at least one protocol batch.
        classifiers: one per modality.
        protocol: the settings (HMC, batch size, sample counts).
        n_test: test-set size the protocol would see before its subsample (10,000).
        device: where the model lives.
        real: also run ``conditional_coherence`` for real on the protocol's test samples
            (``dataset.test`` must hold that many).
    """
    mods = model.modalities
    n_eval = n_test if protocol.test_samples is None else min(protocol.test_samples, n_test)
    batches = math.ceil(n_eval / protocol.batch_size)
    x = dataset.test.batch(slice(0, protocol.batch_size), device)
    per_size: dict[str, Any] = {}
    cond_s = warmup_s = 0.0
    short = dataclasses.replace(protocol.hmc, steps=min(protocol.hmc.steps, 1))
    with torch.no_grad():
        for k in range(1, len(mods)):
            subset = tuple(mods[:k])
            targets = [m for m in mods if m not in subset]

            def one_batch(
                hmc: HMCSettings, subset: tuple = subset, targets: list = targets
            ) -> object:
                sample = model.encode({m: x[m] for m in subset}, subset, 1, hmc=hmc)
                gen = model.decode(sample.z[0])
                preds = [classifiers[m].net(gen[m]).argmax(-1) for m in targets]
                return sample, preds

            # Warm-up at one HMC iteration: the shapes are those of the timed call, so any
            # compilation happens here (and is counted once, as a process would pay it).
            warm, _ = measure(lambda: one_batch(short), device, warmup=0, repeats=1)
            warmup_s += warm.median_s
            timing, (sample, _) = measure(
                lambda: one_batch(protocol.hmc), device, warmup=0, repeats=1
            )
            n_subsets = math.comb(len(mods), k)
            cond_s += timing.median_s * n_subsets * batches
            per_size[str(k)] = {
                "subsets": n_subsets,
                "s_per_batch": timing.median_s,
                "acceptance": sample.info.get("hmc_acceptance"),
            }
    t0 = time.perf_counter()
    joint_coherence(model, classifiers, protocol.joint_samples, dataset.n_classes)
    sync(device)
    joint_s = time.perf_counter() - t0
    out: dict[str, Any] = {
        "protocol": protocol.name,
        "hmc": {
            "steps": protocol.hmc.steps,
            "n_leapfrog": protocol.hmc.n_leapfrog,
            "step_size": protocol.hmc.step_size,
        },
        "test_tuples": n_test,
        "evaluated_tuples": n_eval,
        "batch_size": protocol.batch_size,
        "batches": batches,
        "per_subset_size": per_size,
        "conditional_s": cond_s,
        "joint_s": joint_s,
        "warmup_s": warmup_s,
        "total_s": cond_s + joint_s + warmup_s,
        "extrapolated": True,
        "method": "one batch per subset size x subsets x batches; joint coherence measured",
    }
    if real:
        split = dataset.test
        if len(split) > n_eval:
            split = split.subset(torch.arange(n_eval))
        t0 = time.perf_counter()
        conditional_coherence(model, split, classifiers, protocol, dataset.n_classes, device=device)
        sync(device)
        out["measured_conditional_s"] = time.perf_counter() - t0
        out["measured_total_s"] = out["measured_conditional_s"] + joint_s
    return out
