"""Batched Hamiltonian Monte Carlo for product-of-experts posteriors.

Hand-written rather than taken from a library: the samplers we could use (Pyro, BlackJAX,
TFP) either run one chain per call or pull in another framework; here every datapoint x every
sample is one chain in one tensor, with per-chain Metropolis acceptance.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from mmvae_bench.errors import BenchError

__all__ = ["HMCResult", "HMCSettings", "hmc_sample"]


@dataclass(frozen=True, kw_only=True)
class HMCSettings:
    """HMC settings (defaults: the JNF paper's 100 iterations x 10 leapfrog steps at 0.01)."""

    steps: int = 100  # iterations, each with fresh N(0, I) momentum and an accept/reject
    n_leapfrog: int = 10  # leapfrog steps per iteration
    step_size: float = 0.01

    def __post_init__(self) -> None:
        if self.steps < 0 or self.n_leapfrog < 1:
            raise BenchError(
                f"HMC needs steps >= 0 and n_leapfrog >= 1, got {self.steps}, {self.n_leapfrog}"
            )
        if not self.step_size > 0:
            raise BenchError(f"HMC step_size must be > 0, got {self.step_size}")


@dataclass
class HMCResult:
    """Final positions ``z`` (same shape as the start) and the mean acceptance rate."""

    z: Tensor
    acceptance: float


def _value_and_grad(log_prob: Callable[[Tensor], Tensor], z: Tensor) -> tuple[Tensor, Tensor]:
    closed_form = getattr(log_prob, "value_and_grad", None)
    if closed_form is not None:
        return closed_form(z)
    with torch.enable_grad():
        z = z.detach().requires_grad_(True)
        lp = log_prob(z)
        (grad,) = torch.autograd.grad(lp.sum(), z)
    return lp.detach(), grad


def hmc_sample(
    log_prob: Callable[[Tensor], Tensor],
    z0: Tensor,
    settings: HMCSettings,
    generator: torch.Generator | None = None,
) -> HMCResult:
    """Run HMC chains from ``z0`` on the unnormalised density ``log_prob``.

    Args:
        log_prob: maps positions ``(*chains, D)`` to log-densities ``(*chains)``; every chain
            independent of the others (so one backward pass gives every chain's gradient).
            Precompute anything that does not depend on z (encoder outputs) before the call.
            If it has a ``value_and_grad(z) -> (log_prob, gradient)`` method (e.g.
            :class:`mmvae_bench.flows.ProductOfFlows`), that is used instead of autograd.
        z0: starting positions ``(*chains, D)``.
        settings: iterations, leapfrog steps and step size.
        generator: optional RNG for momenta and acceptance draws.

    Returns:
        :class:`HMCResult` with the final positions and the mean acceptance over chains and
        iterations. Proposals with a non-finite energy are rejected, so an absurd step size
        shows up as a low acceptance rate rather than as NaN samples.
    """
    eps = settings.step_size
    z = z0.detach().clone()
    lp, grad = _value_and_grad(log_prob, z)
    accepted = torch.zeros(z.shape[:-1], device=z.device)

    def randn() -> Tensor:
        return torch.randn(z.shape, generator=generator, device=z.device, dtype=z.dtype)

    for _ in range(settings.steps):
        p0 = randn()
        zn, pn, gn = z, p0 + 0.5 * eps * grad, grad
        for k in range(settings.n_leapfrog):
            zn = zn + eps * pn
            lpn, gn = _value_and_grad(log_prob, zn)
            if k < settings.n_leapfrog - 1:
                pn = pn + eps * gn
        pn = pn + 0.5 * eps * gn
        # H = -log pi(z) + |p|^2 / 2; accept with probability min(1, exp(H0 - H1)).
        h0 = -lp + 0.5 * (p0 * p0).sum(-1)
        h1 = -lpn + 0.5 * (pn * pn).sum(-1)
        u = torch.rand(h0.shape, generator=generator, device=z.device, dtype=z.dtype)
        accept = torch.isfinite(h1) & (torch.log(u) < (h0 - h1))
        z = torch.where(accept.unsqueeze(-1), zn, z)
        lp = torch.where(accept, lpn, lp)
        grad = torch.where(accept.unsqueeze(-1), gn, grad)
        accepted += accept
    rate = (accepted.mean() / max(settings.steps, 1)).item() if settings.steps else 1.0
    return HMCResult(z=z.detach(), acceptance=float(rate))
