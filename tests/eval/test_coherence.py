"""Coherence: class-balanced accuracy and the joint-coherence label histogram."""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

from mmvae_bench.api import HMCSettings
from mmvae_bench.eval.classifiers import Classifier, balanced_accuracy
from mmvae_bench.eval.coherence import conditional_coherence, joint_coherence
from mmvae_bench.eval.protocol import PROTOCOLS
from tests.plugins.test_jnf import make, tiny_dataset


def test_balanced_accuracy_weights_classes_equally() -> None:
    target = torch.tensor([0] * 8 + [1] * 2)
    pred = torch.zeros(10, dtype=torch.long)  # always class 0: 80% plain accuracy
    assert balanced_accuracy(pred, target, 3) == 0.5  # classes 0: 1.0, 1: 0.0; 2 absent
    assert balanced_accuracy(target, target, 3) == 1.0


class _Constant(nn.Module):
    """A 'classifier' that always answers one class: featureless but 'coherent'."""

    def __init__(self, k: int, n_classes: int) -> None:
        super().__init__()
        self.k, self.n = k, n_classes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.zeros(len(x), self.n)
        out[:, self.k] = 1.0
        return out


def test_joint_coherence_reports_label_histogram_of_degenerate_samples() -> None:
    ds = tiny_dataset()
    model = make(ds).eval()
    clfs = {m: Classifier(m, _Constant(1, 3), 1.0, "test") for m in model.modalities}
    out = joint_coherence(model, clfs, 50, 3, batch_size=20)
    assert out["joint_coherence"] == 1.0
    # ... but the histogram shows every sample is called class 1.
    assert all(h == [0, 50, 0] for h in out["joint_label_histogram"].values())


def test_conditional_coherence_covers_every_proper_subset_and_target() -> None:
    ds = tiny_dataset(n=12)
    model = make(ds).eval()
    clfs = {m: Classifier(m, _Constant(0, 3), 1.0, "test") for m in model.modalities}
    proto = dataclasses.replace(PROTOCOLS["quick"], hmc=HMCSettings(steps=2, n_leapfrog=2))
    out = conditional_coherence(model, ds.test, clfs, proto, 3)
    per = out["conditional_coherence"]
    assert set(per) == {"m0", "m1", "v", "m0+m1", "m0+v", "m1+v"}
    assert set(per["m0+v"]) == {"m1", "mean"}
    expected = balanced_accuracy(torch.zeros(12, dtype=torch.long), ds.test.y, 3)
    assert all(abs(v - expected) < 1e-9 for s in per.values() for v in s.values())
    assert out["conditional_coherence_by_size"]["2"]["n"] == 3
    assert set(out["hmc_acceptance"]) == {"m0+m1", "m0+v", "m1+v"}
