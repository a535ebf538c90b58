"""HMC on product-of-experts targets whose posterior is known in closed form."""

from __future__ import annotations

import pytest
import torch

from mmvae_bench.api import (
    BenchError,
    HMCSettings,
    gaussian_poe,
    hmc_sample,
    log_normal_diag,
    log_std_normal,
)

MUS = torch.tensor([[1.0, -0.5, 0.3], [0.2, 0.8, -1.0], [-0.6, 0.1, 0.9]])
LOGVARS = torch.log(torch.tensor([[0.3, 0.5, 0.4], [0.6, 0.2, 0.5], [0.4, 0.4, 0.3]]))


def _poe_target(mus: torch.Tensor, logvars: torch.Tensor):
    k = len(mus)

    def log_target(z: torch.Tensor) -> torch.Tensor:
        # Eq. 12 of the JNF paper: experts times the prior divided out k-1 times.
        experts = sum(log_normal_diag(z, mus[j], logvars[j]) for j in range(k))
        return experts - (k - 1) * log_std_normal(z)

    return log_target


@pytest.mark.parametrize("k", [2, 3])
def test_hmc_recovers_gaussian_poe(k: int) -> None:
    # Each expert q_j = N(mu_j, s_j^2) is a posterior that already contains the prior once:
    # prod_j q_j / p^(k-1) has precision sum_j 1/s_j^2 - (k-1) and the matching mean.
    d = 3
    mus, logvars = MUS[:k], LOGVARS[:k]
    prec = torch.exp(-logvars).sum(0) - (k - 1)
    mean = (mus * torch.exp(-logvars)).sum(0) / prec
    var = 1.0 / prec

    chains = 4000
    z0 = mus[0].expand(chains, d).clone()  # start at one expert's mean, as JNF does
    res = hmc_sample(
        _poe_target(mus, logvars), z0, HMCSettings(steps=60, n_leapfrog=10, step_size=0.1)
    )
    # Tolerances: 4,000 nearly independent chains give a standard error of ~0.01 on the mean
    # and ~2% on the variance; 0.05 / 10% leaves room for residual autocorrelation.
    assert torch.allclose(res.z.mean(0), mean, atol=0.05), (res.z.mean(0), mean)
    assert torch.allclose(res.z.var(0), var, rtol=0.10), (res.z.var(0), var)
    assert 0.5 < res.acceptance <= 1.0


def test_dividing_the_prior_once_is_detectably_wrong() -> None:
    # With three experts the target must divide the prior twice; the variance of a sampler
    # that divides once differs by more than the tolerance above, so the test above can fail.
    correct = 1.0 / (torch.exp(-LOGVARS).sum(0) - 2)
    once = 1.0 / (torch.exp(-LOGVARS).sum(0) - 1)
    assert ((correct - once).abs() / correct > 0.10).all()


def test_matches_closed_form_poe_helper() -> None:
    # gaussian_poe with the prior expert = product of experts in precision space.
    mus = torch.randn(2, 5, 4)
    logvars = torch.randn(2, 5, 4) * 0.3
    mu, logvar = gaussian_poe(mus, logvars, prior=True)
    prec = 1 + torch.exp(-logvars).sum(0)
    assert torch.allclose(logvar, -torch.log(prec))
    assert torch.allclose(mu, (mus * torch.exp(-logvars)).sum(0) / prec, atol=1e-6)


def test_absurd_step_size_gives_low_acceptance_not_nan() -> None:
    target = _poe_target(torch.zeros(2, 4), torch.zeros(2, 4) - 2.0)
    z0 = torch.zeros(500, 4)
    res = hmc_sample(target, z0, HMCSettings(steps=20, n_leapfrog=10, step_size=50.0))
    assert res.acceptance < 0.05
    assert torch.isfinite(res.z).all()


def test_batched_chains_shape_and_independence() -> None:
    # (n, B, D) chains: each datapoint has its own target mean.
    mus = torch.stack([torch.full((4, 2), 2.0), torch.full((4, 2), 2.0)])
    mus[:, 1] = -2.0
    target = _poe_target(mus, torch.zeros_like(mus) - 1.0)
    z0 = torch.zeros(300, 4, 2)
    res = hmc_sample(target, z0, HMCSettings(steps=40, n_leapfrog=10, step_size=0.1))
    assert res.z.shape == (300, 4, 2)
    m = res.z.mean(0)
    assert (m[0] > 1.0).all() and (m[1] < -1.0).all()


def test_invalid_settings_are_user_errors() -> None:
    with pytest.raises(BenchError, match="step_size"):
        HMCSettings(step_size=0.0)
    with pytest.raises(BenchError, match="n_leapfrog"):
        HMCSettings(n_leapfrog=0)
