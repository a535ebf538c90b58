"""What is specific to MVAE: the PoE with the prior expert, and which terms the loss holds."""

from __future__ import annotations

import pytest
import torch

from mmvae_bench.api import BenchError, log_normal_diag, log_std_normal
from mmvae_bench.testing import tiny_dataset
from plugins.mvae import MVAE, MVAEConfig


def make(modalities=("vector", "vector", "vector"), **kw) -> tuple[MVAE, dict]:
    ds = tiny_dataset(modalities, n=6)
    cfg = MVAEConfig(latent_dim=3, width=4, features=8, **kw)
    return MVAE(ds, cfg), {m: t for m, t in ds.train.x.items()}


def test_poe_is_the_closed_form_product_of_gaussians_with_the_prior() -> None:
    model, batch = make()
    subset = ("m0", "m2")
    with torch.no_grad():
        mu, logvar = model.posterior(batch, subset)
        experts = [model.experts[m](batch[m]) for m in subset]
    # Closed form: precision 1 + sum_j 1/var_j, mean var * sum_j mu_j / var_j (prior: 0, 1).
    prec = 1.0 + sum(torch.exp(-lv) for _, lv in experts)
    mean = sum(m * torch.exp(-lv) for m, lv in experts) / prec
    assert torch.allclose(logvar, -torch.log(prec), atol=1e-5)
    assert torch.allclose(mu, mean, atol=1e-5)
    # And as densities: log N(z; mu, var) - [log p(z) + sum_j log q_j(z)] is constant in z.
    z = torch.randn(50, *mu.shape)
    gap = log_normal_diag(z, mu, logvar) - (
        log_std_normal(z) + sum(log_normal_diag(z, m, lv) for m, lv in experts)
    )
    assert float((gap - gap[0]).abs().max()) < 1e-3


def test_each_subset_elbo_reconstructs_only_its_own_modalities() -> None:
    # M = 3, k = 1: joint (3 decoder calls) + 3 singles (1 each) + one pair (2) = 8 calls; the
    # pair's modalities are decoded 3 times, the third modality twice.
    model, batch = make(k_subsets=1)
    calls = dict.fromkeys(model.modalities, 0)
    for m, dec in model.decoders.items():
        dec.register_forward_hook(lambda *a, m=m: calls.__setitem__(m, calls[m] + 1))
    out = model.loss(batch, "train", {})
    assert sum(calls.values()) == 8
    assert sorted(calls.values()) == [2, 3, 3]
    assert {"nelbo_joint", "nelbo_unimodal", "nelbo_subsets", "kl_joint"} <= set(out)
    total = out["nelbo_joint"] + out["nelbo_unimodal"] + out["nelbo_subsets"]
    assert torch.allclose(out["loss"], total, atol=1e-4)


def test_two_modalities_have_no_extra_subsets() -> None:
    model, batch = make(("vector", "vector"), k_subsets=3)
    assert model.extra_subsets == []
    assert "nelbo_subsets" not in model.loss(batch, "train", {})


def test_config_errors_name_the_field() -> None:
    with pytest.raises(BenchError, match="k_subsets"):
        MVAEConfig(latent_dim=2, k_subsets=-1)
    with pytest.raises(BenchError, match="epochs"):
        MVAEConfig(latent_dim=2, epochs=-1)


def test_kl_annealing_ramps_the_kl_weight_with_the_trainers_epoch() -> None:
    from accelerate import Accelerator

    from mmvae_bench.train import TrainSettings, train

    ds = tiny_dataset(("vector", "vector", "vector"), n=6)
    model = MVAE(
        ds,
        MVAEConfig(
            latent_dim=3, width=4, features=8, beta=2.0, anneal_epochs=4, epochs=2, batch_size=3
        ),
    )
    batch = dict(ds.train.x)
    (stage,) = model.stages
    assert stage.pass_epoch
    assert [model.kl_weight(e) for e in (0, 1, 4, 9)] == [0.0, 0.5, 2.0, 2.0]
    # Same noise, varying weight: the loss is linear in the KL weight, which is 0 at the
    # start and beta (the default outside the trainer, no ``epoch``) once annealed.
    losses = []
    for epoch in (0.0, 2.0, 4.0, None):
        torch.manual_seed(0)
        kw = {} if epoch is None else {"epoch": epoch}
        losses.append(model.loss(batch, "train", {}, **kw)["loss"].detach())
    at0, at2, at4, final = losses
    assert at0 < at2 < at4 and torch.equal(at4, final)
    assert torch.allclose(at2, (at0 + at4) / 2, rtol=1e-5)
    # The trainer hands the loss the fractional epoch: 6 samples, batch 3 -> 2 steps/epoch.
    seen: list[float] = []
    real = model.loss
    model.loss = lambda b, s, c, **kw: seen.append(kw["epoch"]) or real(b, s, c, **kw)
    train(model, ds, Accelerator(cpu=True), TrainSettings(progress=False))
    assert seen == [0.0, 0.5, 1.0, 1.5]


def test_no_annealing_by_default() -> None:
    model, _ = make()
    assert not model.stages[0].pass_epoch
    assert model.kl_weight(0.0) == model.config.beta
