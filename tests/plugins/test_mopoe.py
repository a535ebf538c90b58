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


def test_subset_inference_mixes_the_subsets_of_s() -> None:
    model, batch = make(4)
    with torch.no_grad():
        subsets, _, _ = model.subset_posteriors(batch, ("m1", "m3"))
        z = model.encode({"m1": batch["m1"], "m3": batch["m3"]}, ("m3", "m1"), 7).z
    assert subsets == [("m1",), ("m3",), ("m1", "m3")]
    assert z.shape == (7, 5, 3)


def test_kl_is_the_mean_of_the_subset_kls() -> None:
    model, batch = make(3)
    with torch.no_grad():
        out = model.loss(batch, "train", {})
        _, mus, logvars = model.subset_posteriors(batch, model.modalities)
    assert torch.allclose(out["kl"], kl_std_normal(mus, logvars).mean(), rtol=1e-5)
