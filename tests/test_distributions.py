"""The closed-form Gaussian helpers against torch.distributions."""

from __future__ import annotations

import torch
from torch.distributions import Independent, Normal, kl_divergence

from mmvae_bench.api import kl_normal_diag, kl_std_normal


def _diag(mu: torch.Tensor, logvar: torch.Tensor) -> Independent:
    return Independent(Normal(mu, torch.exp(0.5 * logvar)), 1)


def test_kl_normal_diag_matches_torch() -> None:
    g = torch.Generator().manual_seed(0)
    mu_q, mu_p = torch.randn(2, 7, 5, generator=g, dtype=torch.float64)
    lv_q, lv_p = 2 * torch.randn(2, 7, 5, generator=g, dtype=torch.float64)
    kl = kl_normal_diag(mu_q, lv_q, mu_p, lv_p)
    assert kl.shape == (7,)
    want = kl_divergence(_diag(mu_q, lv_q), _diag(mu_p, lv_p))
    torch.testing.assert_close(kl, want, rtol=1e-12, atol=1e-12)
    assert bool((kl > 0).all())


def test_kl_normal_diag_broadcasts_and_reduces_to_the_standard_normal_case() -> None:
    g = torch.Generator().manual_seed(1)
    mu, logvar = torch.randn(2, 3, 4, 6, generator=g)  # (components, B, D) each
    zeros = torch.zeros(6)
    torch.testing.assert_close(kl_normal_diag(mu, logvar, zeros, zeros), kl_std_normal(mu, logvar))
    # Every component against one reference per datapoint: p broadcast over the first dim.
    kl = kl_normal_diag(mu, logvar, mu[0], logvar[0])
    assert kl.shape == (3, 4) and bool((kl[0] == 0).all()) and bool((kl[1:] > 0).all())
    torch.testing.assert_close(kl_normal_diag(mu, logvar, mu, logvar), torch.zeros(3, 4))
