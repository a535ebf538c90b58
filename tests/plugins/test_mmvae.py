"""What is specific to MMVAE: the stratified IWAE bound and the DReG estimator."""

from __future__ import annotations

import math

import pytest
import torch
from torch.distributions import Laplace

from mmvae_bench.api import BenchError, log_likelihood
from mmvae_bench.testing import tiny_dataset
from plugins.mmvae import MMVAE, MMVAEConfig, elbo_estimate, iwae_bound


def make(estimator: str = "iwae", k: int = 1, **kw) -> tuple[MMVAE, dict]:
    ds = tiny_dataset(("vector", "image32"), n=4)
    cfg = MMVAEConfig(latent_dim=3, width=4, features=8, k=k, estimator=estimator, **kw)
    return MMVAE(ds, cfg), dict(ds.train.x)


def test_iwae_with_one_sample_equals_the_elbo_on_the_same_sample() -> None:
    model, batch = make(k=1)
    with torch.no_grad():
        locs, scales = model.experts_params(batch, model.modalities)
        zs = Laplace(locs, scales).sample((1,)).movedim(0, 1)  # (M, 1, B, D)
        lw, _ = model.log_weights(batch, locs, scales, zs)
        # The ELBO written out independently: 1/M sum_m [log p(z_m) + sum_d lambda_d log
        # p(x_d|z_m) - log 1/M sum_m' q_m'(z_m|x_m')], one z_m ~ q_m per datapoint.
        prior = Laplace(torch.zeros(3), torch.ones(3))
        terms = []
        for m in range(2):
            z = zs[m, 0]
            lq = torch.stack([Laplace(locs[j], scales[j]).log_prob(z).sum(-1) for j in range(2)])
            lq = torch.logsumexp(lq, 0) - math.log(2)
            lpx = sum(
                model.weights[d] * log_likelihood(model.specs[d], model.decoders[d](z), batch[d])
                for d in model.modalities
            )
            terms.append(prior.log_prob(z).sum(-1) + lpx - lq)
        elbo = torch.stack(terms).mean(0)
    assert torch.allclose(iwae_bound(lw), elbo, rtol=1e-5, atol=1e-4)
    assert torch.allclose(iwae_bound(lw), elbo_estimate(lw))


def test_iwae_bound_is_above_the_elbo_on_the_same_samples() -> None:
    lw = torch.randn(2, 5, 7) * 3
    assert bool((iwae_bound(lw) >= elbo_estimate(lw) - 1e-6).all())
    assert bool((iwae_bound(lw) > elbo_estimate(lw) + 1e-3).any())


def _grads(model: MMVAE, batch: dict) -> tuple[float, dict[str, torch.Tensor]]:
    torch.manual_seed(7)  # the same z for both estimators
    model.zero_grad()
    out = model.loss(batch, "train", {})
    out["loss"].backward()
    return float(out["loss"].detach()), {k: p.grad.clone() for k, p in model.named_parameters()}


def _rel_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / a.abs().max().clamp_min(1e-12))


def test_dreg_has_the_iwae_value_and_decoder_gradient_but_not_its_encoder_gradient() -> None:
    iwae, batch = make("iwae", k=5)
    dreg, _ = make("dreg", k=5)
    dreg.load_state_dict(iwae.state_dict())
    v_iwae, g_iwae = _grads(iwae, batch)
    v_dreg, g_dreg = _grads(dreg, batch)
    assert v_iwae == pytest.approx(v_dreg, rel=1e-6)
    dec = [k for k in g_iwae if k.startswith("decoders.")]
    enc = [k for k in g_iwae if k.startswith("experts.")]
    assert dec and enc
    # Relative to each tensor's largest entry: float32 sums in a different order differ ~1e-6.
    assert all(_rel_diff(g_iwae[k], g_dreg[k]) < 1e-4 for k in dec)
    assert all(_rel_diff(g_iwae[k], g_dreg[k]) > 1e-2 for k in enc if g_iwae[k].abs().max() > 0)


def test_laplace_prior_and_posterior_scales() -> None:
    model, batch = make(learn_prior=True)
    loc, scale = model.prior()
    assert torch.equal(loc, torch.zeros(3)) and torch.allclose(scale, torch.ones(3))
    assert any(n.startswith("prior.") for n, _ in model.named_parameters())
    with torch.no_grad():
        _, scales = model.experts_params(batch, model.modalities)
    # softmax * D + eps: each posterior's scales sum to D (+ D * eps).
    assert torch.allclose(scales.sum(-1), torch.full(scales.shape[:-1], 3.0), atol=1e-4)
    fixed, _ = make()
    assert not any(n.startswith("prior.") for n, _ in fixed.named_parameters())
    assert fixed.prior_sample(5).shape == (5, 3)


def test_beta_other_than_one_is_refused() -> None:
    with pytest.raises(BenchError, match="beta"):
        MMVAEConfig(latent_dim=2, beta=2.0)
