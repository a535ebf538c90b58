"""What is specific to MoPoE: the 2^M - 1 subset posteriors and the mixture's KL."""

from __future__ import annotations

import pytest
import torch

from mmvae_bench.api import kl_std_normal
from mmvae_bench.testing import tiny_dataset
from plugins.mopoe import MoPoE, MoPoEConfig


def make(m: int) -> tuple[MoPoE, dict]:
    ds = tiny_dataset(("vector",) * m, n=5)
    model = MoPoE(ds, MoPoEConfig(latent_dim=3, width=4, features=8))
    return model, dict(ds.train.x)


@pytest.mark.parametrize("m", [2, 3, 4])
def test_enumerates_exactly_every_nonempty_subset(m: int) -> None:
    model, batch = make(m)
    subsets = model.subsets()
    assert len(subsets) == 2**m - 1
    assert len({frozenset(s) for s in subsets}) == len(subsets)
    assert all(s and set(s) <= set(model.modalities) for s in subsets)
    with torch.no_grad():
        got, mus, logvars = model.subset_posteriors(batch, model.modalities)
    assert got == subsets and mus.shape == logvars.shape == (2**m - 1, 5, 3)


def test_prior_expert_only_in_the_full_subset() -> None:
    model, batch = make(3)
    with torch.no_grad():
        subsets, _, logvars = model.subset_posteriors(batch, model.modalities)
        prec = {m: torch.exp(-model.experts[m](batch[m])[1]) for m in model.modalities}
    for s, lv in zip(subsets, logvars, strict=True):
        expected = sum(prec[m] for m in s) + (1.0 if len(s) == 3 else 0.0)
        assert torch.allclose(torch.exp(-lv), expected, rtol=1e-5), s


def test_subset_posteriors_of_s_are_its_subsets() -> None:
    model, batch = make(4)
    with torch.no_grad():
        subsets, _, _ = model.subset_posteriors(batch, ("m1", "m3"))
    assert subsets == [("m1",), ("m3",), ("m1", "m3")]


@pytest.mark.parametrize("subset", [("m1", "m3"), ("m0", "m1", "m3"), ("m0", "m1", "m2", "m3")])
def test_encode_samples_the_product_of_s_not_a_mixture(subset: tuple[str, ...]) -> None:
    # Conditional generation samples q_S = PoE of S's experts (the prior expert only when S is
    # every modality), as MultiVae's MoPoE.encode and the authors' evaluation do. A mixture of
    # the products of S's subsets (the pre-fix behaviour) has other moments: the experts are
    # pushed apart so its mean and variance miss q_S's by far more than the tolerance.
    model, batch = make(4)
    with torch.no_grad():
        for m in model.modalities:
            model.experts[m][1].linear.bias[:3] += 3.0 * (int(m[1]) - 1.5)  # distinct means
        mu, logvar = model.posterior(batch, subset)
        prec = sum(torch.exp(-model.experts[m](batch[m])[1]) for m in subset)
        assert torch.allclose(torch.exp(-logvar), prec + (1.0 if len(subset) == 4 else 0.0))
        z = model.encode({m: batch[m] for m in subset}, tuple(reversed(subset)), 4000).z
    assert z.shape == (4000, 5, 3)
    # 4000 draws: the standard error of a mean is sigma / 63, of a std about sigma / 90.
    sigma = torch.exp(0.5 * logvar)
    assert ((z.mean(0) - mu).abs() < 5 * sigma / 63).all()
    assert ((z.std(0) / sigma - 1).abs() < 0.1).all()


def test_kl_is_the_mean_of_the_subset_kls() -> None:
    model, batch = make(3)
    with torch.no_grad():
        out = model.loss(batch, "train", {})
        _, mus, logvars = model.subset_posteriors(batch, model.modalities)
    assert torch.allclose(out["kl"], kl_std_normal(mus, logvars).mean(), rtol=1e-5)
