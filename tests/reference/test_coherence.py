"""Our coherence evaluator against MultiVae's CoherenceEvaluator on the same generated samples.

One MVAE with shared nets on both sides (its generations equal MultiVae's, test_mvae.py), noise
set to zero so every generation is a fixed function of its inputs (the decoded posterior mean)
however the evaluators batch and order their work, and the same classifiers. Both coherences
are class-balanced: MultiVae averages torchmetrics' per-class accuracies over *all*
``num_classes`` classes, ours over the classes present in the test labels; they agree when
every class is present and otherwise MultiVae's is ours x present / num_classes.
"""

from __future__ import annotations

import contextlib
import logging

import pytest

pytest.importorskip("multivae", reason="multivae is not installed: pip install -e '.[reference]'")

import torch  # noqa: E402
from multivae.metrics import CoherenceEvaluator, CoherenceEvaluatorConfig  # noqa: E402
from multivae.models import MVAE as RefMVAE  # noqa: E402
from pythae.models.base.base_utils import ModelOutput  # noqa: E402
from torch import nn  # noqa: E402

from mmvae_bench.api import (  # noqa: E402
    HMCSettings,
    all_subsets,
    likelihood_mean,
    subset_key,
)
from mmvae_bench.data.spec import Split  # noqa: E402
from mmvae_bench.eval.classifiers import Classifier  # noqa: E402
from mmvae_bench.eval.coherence import conditional_coherence, joint_coherence  # noqa: E402
from mmvae_bench.eval.protocol import (  # noqa: E402
    COND_COHERENCE,
    COND_COHERENCE_BY_SIZE,
    JOINT_COHERENCE,
    Protocol,
)
from tests.reference import shared  # noqa: E402
from tests.reference.shared import record, rel_diff  # noqa: E402
from tests.reference.test_mvae import build  # noqa: E402

N_CLASSES = 3
BATCH = 8  # evaluation batches: several per split, and the two evaluators batch alike


@contextlib.contextmanager
def zero_noise():
    """Every N(0, 1) draw of both codes is 0: samples are posterior means."""
    normal_mod = torch.distributions.normal
    saved = (torch.randn, normal_mod._standard_normal)
    zeros = torch.zeros
    torch.randn = lambda *size, **kw: zeros(
        size[0] if len(size) == 1 and not isinstance(size[0], int) else size,
        dtype=kw.get("dtype"),
        device=kw.get("device"),
    )
    normal_mod._standard_normal = lambda shape, dtype, device: zeros(
        shape, dtype=dtype, device=device
    )
    try:
        yield
    finally:
        torch.randn, normal_mod._standard_normal = saved


class FixedSampler:
    """MultiVae's sampler interface over fixed latents, handed out in order."""

    name = "fixed"
    is_fitted = True

    def __init__(self, z: torch.Tensor) -> None:
        self.z, self.at = z, 0

    def sample(self, n: int) -> ModelOutput:
        out = self.z[self.at : self.at + n]
        self.at += n
        return ModelOutput(z=out, one_latent_space=True)


class MeanOf(nn.Module):
    """A decoder followed by our likelihood mean (sigmoid of logits; means clamped to range)."""

    def __init__(self, spec, decoder: nn.Module) -> None:
        super().__init__()
        self.spec, self.decoder = spec, decoder

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return likelihood_mean(self.spec, self.decoder(z))


class Standardise(nn.Module):
    def __init__(self, x: torch.Tensor) -> None:
        super().__init__()
        self.mean, self.std = x.mean(0), x.std(0) + 1e-6

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


def setup(labels: torch.Tensor):
    ours, ref, batch = build()
    ours, batch = ours.float(), {m: x.float() for m, x in batch.items()}  # as a Split stores
    # MultiVae's decode/predict return the raw decoder output (Bernoulli logits, unclamped
    # means); ours the likelihood mean. For the same samples, MultiVae's decoders here end
    # with our mean.
    decoders = {m: MeanOf(ours.specs[m], dec) for m, dec in ours.decoders.items()}
    ref = RefMVAE(ref.model_config, encoders=ref.encoders, decoders=shared.ref_decoders(decoders))
    ref = ref.eval().float()
    classifiers = {}
    with torch.no_grad():  # what the evaluators will classify: generations from every S
        means = [ours.posterior(batch, s)[0] for s in all_subsets(ours.modalities, proper=True)]
        typical = ours.decode(torch.cat(means))
    for m, spec in ours.specs.items():
        # A fixed random linear classifier on standardised generations: untrained conv nets,
        # or raw generations of an untrained model, give one class everywhere.
        x = typical[m].flatten(1)
        net = nn.Sequential(nn.Flatten(), Standardise(x), nn.Linear(spec.size, N_CLASSES)).eval()
        classifiers[m] = Classifier(modality=m, net=net, accuracy=1.0, source="test")
    protocol = Protocol(
        name="quick", version="test", test_samples=None, joint_samples=40,
        hmc=HMCSettings(), batch_size=BATCH,
    )  # fmt: skip
    test = Split(dict(batch), y=labels)
    config = CoherenceEvaluatorConfig(batch_size=BATCH, num_classes=N_CLASSES)
    for name in ("multivae", "pythae"):  # its evaluator logs every subset at INFO
        logging.getLogger(name).setLevel(logging.WARNING)
    evaluator = CoherenceEvaluator(
        ref, {m: c.net for m, c in classifiers.items()}, shared.ref_inputs(batch, labels),
        eval_config=config,
    )  # fmt: skip
    evaluator.logger.setLevel(logging.WARNING)
    return ours, evaluator, classifiers, protocol, test


def compare_conditional(labels: torch.Tensor) -> tuple[dict, dict, dict, list]:
    ours, evaluator, classifiers, protocol, test = setup(labels)
    with zero_noise():
        got = conditional_coherence(ours, test, classifiers, protocol, N_CLASSES)
        means, stds = evaluator.cross_coherences()
    return got, evaluator.metrics, {"means": means, "stds": stds}, list(ours.modalities)


def test_conditional_coherence_equals_multivaes_when_every_class_is_present() -> None:
    labels = torch.arange(shared.BATCH) % N_CLASSES
    got, metrics, by_size, mods = compare_conditional(labels)
    for s in all_subsets(mods, proper=True):
        for m in mods:
            if m in s:
                continue
            ours_acc = got[COND_COHERENCE][subset_key(s)][m]
            ref_acc = float(metrics[f"{'_'.join(s)}_to_{m}"])
            assert record("coherence", "conditional, per (S, m)", abs(ours_acc - ref_acc)) < 1e-6
    for k in range(1, len(mods)):
        ours_k = got[COND_COHERENCE_BY_SIZE][str(k)]
        err = max(
            abs(ours_k["mean"] - by_size["means"][k - 1]),
            abs(ours_k["std"] - by_size["stds"][k - 1]),
        )
        assert record("coherence", "conditional by |S|, mean and std", err) < 1e-6
    # The classifiers are random, yet the accuracies differ between subsets: a real comparison.
    assert len({round(v["mean"], 6) for v in got[COND_COHERENCE].values()}) > 1


def test_conditional_coherence_with_an_absent_class_is_scaled_as_predicted() -> None:
    # Class 2 never occurs: MultiVae counts its accuracy as 0 in a mean over 3 classes.
    labels = torch.arange(shared.BATCH) % 2
    got, metrics, _, mods = compare_conditional(labels)
    for s in all_subsets(mods, proper=True):
        for m in mods:
            if m in s:
                continue
            ours_acc = got[COND_COHERENCE][subset_key(s)][m]
            ref_acc = float(metrics[f"{'_'.join(s)}_to_{m}"])
            predicted = ours_acc * 2 / N_CLASSES
            err = abs(ref_acc - predicted)
            assert record("coherence", "absent class: |ref - ours x 2/3|", err) < 1e-6


def test_joint_coherence_equals_multivaes_on_the_same_latents() -> None:
    labels = torch.arange(shared.BATCH) % N_CLASSES
    ours, evaluator, classifiers, _, _ = setup(labels)
    z = torch.randn(40, ours.latent_dim)
    evaluator.sampler, evaluator.nb_samples_for_joint = FixedSampler(z), len(z)
    chunks = iter(z.split(BATCH))
    got = joint_coherence(
        ours,
        classifiers,
        len(z),
        N_CLASSES,
        batch_size=BATCH,
        latent_sampler=lambda n: next(chunks),
    )[JOINT_COHERENCE]
    ref = float(evaluator.joint_coherence())
    assert 0.0 < got < 1.0  # 0.05 here: neither evaluator can agree by being trivially 0 or 1
    assert record("coherence", "joint", rel_diff(torch.tensor(got), torch.tensor(ref))) < 1e-6
