"""Closed-form Gaussian helpers shared by the models: KLs, log-densities, sampling, PoE.

Every Gaussian here is diagonal and given by its mean ``mu`` and log-variance ``logvar`` of the
same shape ``(..., D)``; densities and KLs sum over the last dim and return ``(...)``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = [
    "gaussian_poe",
    "kl_normal_diag",
    "kl_std_normal",
    "log_normal_diag",
    "log_std_normal",
    "reparameterize",
]

_LOG_2PI = math.log(2 * math.pi)


def reparameterize(mu: Tensor, logvar: Tensor, n: int | None = None) -> Tensor:
    """Differentiable samples ``z = mu + exp(logvar / 2) * eps``, ``eps ~ N(0, I)``.

    Args:
        mu: means ``(..., D)``.
        logvar: log-variances, the shape of ``mu``.
        n: samples per Gaussian; ``None`` draws one without adding a dim.

    Returns:
        ``mu.shape`` samples, or ``(n, *mu.shape)`` with ``n``.

    Example:
        >>> import torch
        >>> from mmvae_bench.api import reparameterize
        >>> mu, logvar = torch.zeros(5, 3), torch.zeros(5, 3)
        >>> reparameterize(mu, logvar).shape, reparameterize(mu, logvar, 2).shape
        (torch.Size([5, 3]), torch.Size([2, 5, 3]))
        >>> reparameterize(mu, torch.full((5, 3), -torch.inf))  # zero variance: the mean
        tensor([[0., 0., 0.],
                [0., 0., 0.],
                [0., 0., 0.],
                [0., 0., 0.],
                [0., 0., 0.]])
    """
    shape = mu.shape if n is None else (n, *mu.shape)
    eps = torch.randn(shape, device=mu.device, dtype=mu.dtype)
    return mu + torch.exp(0.5 * logvar) * eps


def kl_std_normal(mu: Tensor, logvar: Tensor) -> Tensor:
    """KL(N(mu, diag exp(logvar)) || N(0, I)), summed over the last dim.

    Args:
        mu: means ``(..., D)``.
        logvar: log-variances, the shape of ``mu``.

    Returns:
        ``(...)``: one KL per Gaussian, in nats.

    Example:
        >>> import torch
        >>> from mmvae_bench.api import kl_std_normal
        >>> kl_std_normal(torch.tensor([[0.0, 0.0], [1.0, 2.0]]), torch.zeros(2, 2))
        tensor([0.0000, 2.5000])
    """
    return 0.5 * (mu.pow(2) + logvar.exp() - 1.0 - logvar).sum(-1)


def kl_normal_diag(mu_q: Tensor, logvar_q: Tensor, mu_p: Tensor, logvar_p: Tensor) -> Tensor:
    """KL(q || p) between two diagonal Gaussians, summed over the last dim.

    ``KL = 1/2 sum_d [logvar_p - logvar_q + (exp(logvar_q) + (mu_q - mu_p)^2) / exp(logvar_p)
    - 1]``: what a model needs whose prior or reference is not N(0, I) (a mixture's components
    against each other, a learnt prior, MMJSD's dynamic prior). With ``mu_p = logvar_p = 0`` it
    equals :func:`kl_std_normal`.

    Args:
        mu_q, logvar_q: mean and log-variance of q, ``(..., D)``.
        mu_p, logvar_p: mean and log-variance of p, broadcastable against q's.

    Returns:
        ``(...)``: one KL per pair, in nats (>= 0, 0 iff q = p).

    Example:
        >>> import torch
        >>> from mmvae_bench.api import kl_normal_diag
        >>> mu, logvar = torch.zeros(2, 3), torch.zeros(2, 3)
        >>> kl_normal_diag(mu, logvar, mu, logvar)
        tensor([0., 0.])
        >>> one, zero = torch.ones(1, 2), torch.zeros(1, 2)
        >>> kl_normal_diag(one, zero, zero, zero)  # (1 - 0)^2 / 2 per dim
        tensor([1.])
    """
    return 0.5 * (
        logvar_p
        - logvar_q
        + torch.exp(logvar_q - logvar_p)
        + (mu_q - mu_p).pow(2) * torch.exp(-logvar_p)
        - 1.0
    ).sum(-1)


def log_std_normal(z: Tensor) -> Tensor:
    """log N(z; 0, I), summed over the last dim.

    Args:
        z: points ``(..., D)``.

    Returns:
        ``(...)``: one log-density per point.

    Example:
        >>> import torch
        >>> from mmvae_bench.api import log_std_normal
        >>> log_std_normal(torch.zeros(2, 1))  # -log(2 pi) / 2
        tensor([-0.9189, -0.9189])
    """
    return -0.5 * (z.pow(2) + _LOG_2PI).sum(-1)


def log_normal_diag(z: Tensor, mu: Tensor, logvar: Tensor) -> Tensor:
    """log N(z; mu, diag exp(logvar)), summed over the last dim.

    Args:
        z: points ``(..., D)``, broadcast against ``mu`` (e.g. ``(n, B, D)`` samples against a
            ``(B, D)`` posterior).
        mu: means.
        logvar: log-variances, the shape of ``mu``.

    Returns:
        The broadcast shape without its last dim: one log-density per point.

    Example:
        >>> import torch
        >>> from mmvae_bench.api import log_normal_diag
        >>> mu, logvar = torch.ones(4, 2), torch.zeros(4, 2)
        >>> log_normal_diag(torch.ones(3, 4, 2), mu, logvar).shape
        torch.Size([3, 4])
        >>> log_normal_diag(torch.ones(1, 2), mu[:1], logvar[:1])  # -log(2 pi)
        tensor([-1.8379])
    """
    return -0.5 * ((z - mu).pow(2) * torch.exp(-logvar) + logvar + _LOG_2PI).sum(-1)


def gaussian_poe(mus: Tensor, logvars: Tensor, *, prior: bool = True) -> tuple[Tensor, Tensor]:
    """Product of Gaussian experts, in precision space for stability.

    The product of ``N(mu_e, sigma_e^2)`` (and N(0, I) with ``prior``) is Gaussian with
    precision ``sum_e 1 / sigma_e^2`` (+ 1) and mean ``sum_e mu_e / sigma_e^2 / precision``.

    Args:
        mus, logvars: ``(experts, ..., D)``.
        prior: include the N(0, I) expert (precision 1, mean 0).

    Returns:
        mu, logvar of the product, ``(..., D)``.

    Example:
        >>> import torch
        >>> from mmvae_bench.api import gaussian_poe
        >>> mus = torch.tensor([[[2.0]], [[4.0]]])  # two experts, one datapoint, D = 1
        >>> gaussian_poe(mus, torch.zeros(2, 1, 1), prior=False)  # mean 3, variance 1/2
        (tensor([[3.]]), tensor([[-0.6931]]))
        >>> gaussian_poe(mus, torch.zeros(2, 1, 1))  # with N(0, 1): mean 2, variance 1/3
        (tensor([[2.]]), tensor([[-1.0986]]))
    """
    prec = torch.exp(-logvars)
    total = prec.sum(0) + (1.0 if prior else 0.0)
    mu = (mus * prec).sum(0) / total
    return mu, -torch.log(total)
