"""Batched Hamiltonian Monte Carlo for product-of-experts posteriors.

Hand-written rather than taken from a library: the samplers we could use (Pyro, BlackJAX,
TFP) either run one chain per call or pull in another framework; here every datapoint x every
sample is one chain in one tensor, with per-chain Metropolis acceptance and, for the adaptive
sampler, a per-chain step size adapted in the same tensor.

Two samplers (``HMCSettings.kind``):

- ``paper``: the JNF paper's fixed step size (100 iterations x 10 leapfrog steps at 0.01).
- ``adaptive``: ``warmup`` iterations of dual averaging (Hoffman & Gelman, 2014, "The No-U-Turn
  Sampler", arXiv:1111.4246, Sec. 3.2) move each chain's log step size toward a target mean
  acceptance; the averaged step is then frozen for the ``steps`` sampling iterations (frozen,
  so the sampling iterations are a valid Markov chain). An optional per-chain diagonal
  ``scale`` preconditions the dynamics (inverse mass matrix ``diag(scale^2)``), e.g. the
  standard deviations of a Gaussian approximation of the target.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from mmvae_bench.errors import BenchError
from mmvae_bench.threads import loop_start, loop_step

__all__ = ["HMCKind", "HMCResult", "HMCSettings", "hmc_sample"]

HMCKind = Literal["paper", "adaptive"]  # fixed step size / dual-averaged per-chain step size

# Dual averaging's constants (Hoffman & Gelman 2014, Sec. 3.2: "gamma = 0.05, t0 = 10,
# kappa = 0.75"); the shrinkage point is log(10 * initial step).
_DA_GAMMA, _DA_T0, _DA_KAPPA = 0.05, 10.0, 0.75


@dataclass(frozen=True, kw_only=True)
class HMCSettings:
    """HMC settings (defaults: the JNF paper's 100 iterations x 10 leapfrog steps at 0.01).

    Attributes:
        steps: sampling iterations, each with fresh N(0, I) momentum and an accept/reject.
        n_leapfrog: leapfrog steps per iteration.
        step_size: the step size (``paper``), or each chain's initial step (``adaptive``).
        kind: ``paper`` (fixed step) or ``adaptive`` (dual averaging during ``warmup``).
        warmup: ``adaptive`` only: iterations adapting the step before the ``steps``.
        target_accept: ``adaptive`` only: the mean acceptance probability adapted toward.
        adapt: ``adaptive`` only: ``chain`` adapts each chain's step from its own acceptance;
            ``pooled`` adapts one step from the acceptance averaged over all chains of the call
            (each chain's moves still scaled by its own ``scale``). One acceptance draw per
            chain and iteration is noisy: per-chain steps scatter over a factor of several and
            their frozen average lands above the target acceptance (tests/test_hmc.py).
        precondition: ``adaptive`` only: the model passes a diagonal preconditioner (JNF: the
            deviations of its Gaussian-product start) as ``hmc_sample``'s ``scale``.
    """

    steps: int = 100
    n_leapfrog: int = 10
    step_size: float = 0.01
    kind: HMCKind = "paper"
    warmup: int = 0
    target_accept: float = 0.8
    adapt: Literal["chain", "pooled"] = "chain"
    precondition: bool = False

    def __post_init__(self) -> None:
        if self.steps < 0 or self.n_leapfrog < 1:
            raise BenchError(
                f"HMC needs steps >= 0 and n_leapfrog >= 1, got {self.steps}, {self.n_leapfrog}"
            )
        if not self.step_size > 0:
            raise BenchError(f"HMC step_size must be > 0, got {self.step_size}")
        if self.kind not in ("paper", "adaptive"):
            raise BenchError(f"HMC kind must be 'paper' or 'adaptive', got {self.kind!r}")
        if self.warmup < 0 or (self.kind == "paper" and self.warmup):
            raise BenchError(
                f"HMC warmup must be >= 0, and 0 for kind 'paper' (fixed step), got {self.warmup}"
            )
        if self.kind == "paper" and self.precondition:
            raise BenchError("HMC precondition needs kind 'adaptive' (the paper's has none)")
        if self.adapt not in ("chain", "pooled"):
            raise BenchError(f"HMC adapt must be 'chain' or 'pooled', got {self.adapt!r}")
        if not 0.0 < self.target_accept < 1.0:
            raise BenchError(f"HMC target_accept must be in (0, 1), got {self.target_accept}")

    @property
    def label(self) -> str:
        """Short description for tables: ``HMC 30x10`` or ``adaptive HMC (20+10)x5``."""
        if self.kind == "paper":
            return f"HMC {self.steps}x{self.n_leapfrog}"
        pre = ", preconditioned" if self.precondition else ""
        return f"adaptive HMC ({self.warmup}+{self.steps})x{self.n_leapfrog}{pre}"

    @property
    def gradient_evaluations(self) -> int:
        """Target gradients per chain: one at the start, ``n_leapfrog`` per iteration."""
        return (self.warmup + self.steps) * self.n_leapfrog + 1


@dataclass
class HMCResult:
    """Final positions ``z`` (same shape as the start) and the mean acceptance rate.

    ``step_size`` is the mean step the sampling iterations used (the adapted one for
    ``adaptive``); ``acceptance`` counts the sampling iterations only, not the warm-up.
    """

    z: Tensor
    acceptance: float
    step_size: float | None = None
    chain_acceptance: Tensor | None = None  # (*chains,) each chain's share of accepted moves


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
    *,
    scale: Tensor | None = None,
    groups: Tensor | None = None,
) -> HMCResult:
    """Run HMC chains from ``z0`` on the unnormalised density ``log_prob``.

    Args:
        log_prob: maps positions ``(*chains, D)`` to log-densities ``(*chains)``; every chain
            independent of the others (so one backward pass gives every chain's gradient).
            Precompute anything that does not depend on z (encoder outputs) before the call.
            If it has a ``value_and_grad(z) -> (log_prob, gradient)`` method (e.g.
            :class:`mmvae_bench.flows.ProductOfFlows`), that is used instead of autograd.
        z0: starting positions ``(*chains, D)``.
        settings: the sampler (``kind``), iterations, leapfrog steps and step size.
        generator: optional RNG for momenta and acceptance draws.
        scale: optional per-chain diagonal preconditioner, broadcastable to ``z0``: the
            momentum's inverse mass matrix is ``diag(scale^2)``, so a step moves coordinate i
            by about ``step_size * scale_i`` (None: the identity, as in the paper).
        groups: optional integer group of each chain, broadcastable to ``z0.shape[:-1]``
            (e.g. one per subset when one call samples several subsets' posteriors):
            ``adapt="pooled"`` then pools the acceptance within each group, never across.

    Returns:
        :class:`HMCResult` with the final positions and the mean acceptance over chains and
        sampling iterations. Proposals with a non-finite energy are rejected, so an absurd
        step size shows up as a low acceptance rate rather than as NaN samples.
    """
    if settings.kind == "paper" and scale is None:
        return _paper(log_prob, z0, settings, generator)
    return _adaptive(log_prob, z0, settings, generator, scale, groups)


def _paper(
    log_prob: Callable[[Tensor], Tensor],
    z0: Tensor,
    settings: HMCSettings,
    generator: torch.Generator | None,
) -> HMCResult:
    # The paper's sampler, operation for operation as it always ran (tests/test_hmc.py holds
    # a copy of the original loop and checks equality bit for bit at one seed).
    eps = settings.step_size
    z = z0.detach().clone()
    loop_start()
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
        loop_step()
    rate = (accepted.mean() / max(settings.steps, 1)).item() if settings.steps else 1.0
    per_chain = accepted / settings.steps if settings.steps else torch.ones_like(accepted)
    return HMCResult(
        z=z.detach(), acceptance=float(rate), step_size=eps, chain_acceptance=per_chain
    )


def _adaptive(
    log_prob: Callable[[Tensor], Tensor],
    z0: Tensor,
    settings: HMCSettings,
    generator: torch.Generator | None,
    scale: Tensor | None,
    groups: Tensor | None = None,
) -> HMCResult:
    z = z0.detach().clone()
    loop_start()
    if groups is not None:
        groups = groups.to(z.device).expand(z.shape[:-1]).flatten()
        counts = torch.bincount(groups).clamp_min(1).to(z.dtype)
    lp, grad = _value_and_grad(log_prob, z)
    chains = z.shape[:-1]
    s = torch.ones_like(z) if scale is None else scale.detach().to(z).expand_as(z)
    # Per chain, all in tensors: the log step now, its running average, the averaged
    # acceptance deficit (dual averaging's H-bar).
    log_eps = torch.full((*chains, 1), math.log(settings.step_size), dtype=z.dtype, device=z.device)
    log_eps_bar = log_eps.clone()
    h_bar = torch.zeros_like(log_eps)
    shrink_to = math.log(10.0 * settings.step_size)
    accepted = torch.zeros(chains, device=z.device, dtype=z.dtype)

    for it in range(settings.warmup + settings.steps):
        adapting = it < settings.warmup
        eps = log_eps.exp() if adapting else log_eps_bar.exp()
        # Momentum in the preconditioned coordinates: p ~ N(0, I), dz = eps * s * p,
        # dp = eps * s * grad; the kinetic energy stays |p|^2 / 2.
        p0 = torch.randn(z.shape, generator=generator, device=z.device, dtype=z.dtype)
        zn, pn, gn = z, p0 + 0.5 * eps * s * grad, grad
        for k in range(settings.n_leapfrog):
            zn = zn + eps * s * pn
            lpn, gn = _value_and_grad(log_prob, zn)
            if k < settings.n_leapfrog - 1:
                pn = pn + eps * s * gn
        pn = pn + 0.5 * eps * s * gn
        h0 = -lp + 0.5 * (p0 * p0).sum(-1)
        h1 = -lpn + 0.5 * (pn * pn).sum(-1)
        log_alpha = torch.nan_to_num(h0 - h1, nan=-math.inf).clamp(max=0.0)
        log_alpha = torch.where(torch.isfinite(h1), log_alpha, -math.inf)
        u = torch.rand(h0.shape, generator=generator, device=z.device, dtype=z.dtype)
        accept = torch.log(u) < log_alpha
        z = torch.where(accept.unsqueeze(-1), zn, z)
        lp = torch.where(accept, lpn, lp)
        grad = torch.where(accept.unsqueeze(-1), gn, grad)
        if adapting:
            m = it + 1
            w = 1.0 / (m + _DA_T0)
            alpha = log_alpha.exp()[..., None]
            if settings.adapt == "pooled" and groups is None:
                alpha = alpha.mean().expand_as(alpha)
            elif settings.adapt == "pooled":  # the mean within each chain's group
                sums = torch.zeros_like(counts).index_add_(0, groups, alpha.flatten())
                alpha = (sums / counts)[groups].view_as(alpha)
            h_bar = (1.0 - w) * h_bar + w * (settings.target_accept - alpha)
            log_eps = shrink_to - math.sqrt(m) / _DA_GAMMA * h_bar
            eta = m**-_DA_KAPPA
            log_eps_bar = eta * log_eps + (1.0 - eta) * log_eps_bar
        else:
            accepted += accept
        loop_step()
    eps_final = log_eps_bar.exp() if settings.warmup else log_eps.exp()
    rate = (accepted.mean() / settings.steps).item() if settings.steps else 1.0
    per_chain = accepted / settings.steps if settings.steps else torch.ones_like(accepted)
    return HMCResult(
        z=z.detach(),
        acceptance=float(rate),
        step_size=float(eps_final.mean()),
        chain_acceptance=per_chain,
    )
