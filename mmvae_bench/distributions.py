"""Closed-form Gaussian helpers shared by the models: KL to N(0, I), log-densities, PoE."""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["gaussian_poe", "kl_std_normal", "log_normal_diag", "log_std_normal", "reparameterize"]

_LOG_2PI = math.log(2 * math.pi)


def reparameterize(mu: Tensor, logvar: Tensor, n: int | None = None) -> Tensor:
    """z = mu + sigma * eps; with ``n``, ``(n, *mu.shape)`` samples."""
    shape = mu.shape if n is None else (n, *mu.shape)
    eps = torch.randn(shape, device=mu.device, dtype=mu.dtype)
    return mu + torch.exp(0.5 * logvar) * eps


def kl_std_normal(mu: Tensor, logvar: Tensor) -> Tensor:
    """KL(N(mu, diag exp(logvar)) || N(0, I)), summed over the last dim."""
    return 0.5 * (mu.pow(2) + logvar.exp() - 1.0 - logvar).sum(-1)


def log_std_normal(z: Tensor) -> Tensor:
    """log N(z; 0, I), summed over the last dim."""
    return -0.5 * (z.pow(2) + _LOG_2PI).sum(-1)


def log_normal_diag(z: Tensor, mu: Tensor, logvar: Tensor) -> Tensor:
    """log N(z; mu, diag exp(logvar)), summed over the last dim."""
    return -0.5 * ((z - mu).pow(2) * torch.exp(-logvar) + logvar + _LOG_2PI).sum(-1)


def gaussian_poe(mus: Tensor, logvars: Tensor, *, prior: bool = True) -> tuple[Tensor, Tensor]:
    """Product of Gaussian experts, in precision space for stability.

    Args:
        mus, logvars: ``(experts, ..., D)``.
        prior: include the N(0, I) expert (precision 1, mean 0).

    Returns:
        mu, logvar of the product, ``(..., D)``.
    """
    prec = torch.exp(-logvars)
    total = prec.sum(0) + (1.0 if prior else 0.0)
    mu = (mus * prec).sum(0) / total
    return mu, -torch.log(total)
