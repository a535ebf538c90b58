"""Subset-posterior sampling: HMC samples/s per subset size, ours beside two slower variants.

Measured on a model with JNF's inference interface (``unimodal_posterior(batch, m)`` returning
the flow posterior q_m(z | x_m)); the variants share the model, data, settings and chain count:

- ``ours``: ``model.encode`` (experts encoded once, the flows batched with a closed-form
  gradient, chains started from one expert's sample with the short inverse);
- ``encode-once``: this repository before the performance work: experts encoded once, autograd
  through zuko's flows, start samples from zuko's inverse (one pass per latent feature);
- ``naive``: the reference code: the experts re-encoded at every one of the
  1 + steps x leapfrog gradient evaluations, autograd through zuko, chains started from one
  expert's base Gaussian (cheaper than its flow sample, so the ratio is conservative).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor
from zuko.distributions import NormalizingFlow

from mmvae_bench import flows
from mmvae_bench.distributions import log_std_normal
from mmvae_bench.hmc import HMCSettings, hmc_sample
from mmvae_bench.model import LatentSample, MultimodalVAE
from mmvae_bench.perf.timing import measure, peak_memory_mib, reset_peak_memory

__all__ = ["VARIANTS", "hmc_throughput", "unimodal_throughput"]


def _ours(model: MultimodalVAE, batch: dict[str, Tensor], subset: tuple, hmc: HMCSettings):
    return model.encode(batch, subset, 1, hmc=hmc)


def _encode_once(model: MultimodalVAE, batch: dict[str, Tensor], subset: tuple, hmc: HMCSettings):
    experts = [model.unimodal_posterior(batch, m) for m in subset]  # type: ignore[attr-defined]
    k = len(experts)

    def log_target(z: Tensor) -> Tensor:
        return sum(q.log_prob(z) for q in experts) - (k - 1) * log_std_normal(z)

    starts = torch.stack([NormalizingFlow.rsample(q, (1,)) for q in experts])
    pick = torch.randint(k, starts.shape[1:3], device=starts.device)
    z0 = starts.gather(0, pick[None, :, :, None].expand(1, *starts.shape[1:]))[0]
    result = hmc_sample(log_target, z0, hmc)
    return LatentSample(result.z, {"hmc_acceptance": result.acceptance})


def _naive(model: MultimodalVAE, batch: dict[str, Tensor], subset: tuple, hmc: HMCSettings):
    k = len(subset)

    def log_target(z: Tensor) -> Tensor:
        # Re-encode x_S at every gradient evaluation, as the reference code does.
        experts = [model.unimodal_posterior(batch, m) for m in subset]  # type: ignore[attr-defined]
        return sum(q.log_prob(z) for q in experts) - (k - 1) * log_std_normal(z)

    with torch.no_grad():
        experts = [model.unimodal_posterior(batch, m) for m in subset]  # type: ignore[attr-defined]
        starts = torch.stack([q.base.sample((1,)) for q in experts])
    pick = torch.randint(k, starts.shape[1:3], device=starts.device)
    z0 = starts.gather(0, pick[None, :, :, None].expand(1, *starts.shape[1:]))[0]
    result = hmc_sample(log_target, z0, hmc)
    return LatentSample(result.z, {"hmc_acceptance": result.acceptance})


VARIANTS: dict[str, Callable[..., LatentSample]] = {
    "ours": _ours,
    "encode-once": _encode_once,
    "naive": _naive,
}


def hmc_throughput(
    model: MultimodalVAE,
    batch: dict[str, Tensor],
    subset: tuple[str, ...],
    hmc: HMCSettings,
    variant: str,
    device: torch.device,
    *,
    repeats: int,
    warmup: int = 1,
    compiled: bool = False,
) -> dict[str, Any]:
    """Seconds per call of one variant: ``len(batch)`` chains, one sample per datapoint.

    ``compiled`` runs ours with :func:`mmvae_bench.flows.compile_kernels`; its compilation
    happens in the warm-up (timed separately as ``first_call_s``).
    """
    fn = VARIANTS[variant]
    chains = len(next(iter(batch.values())))
    flows.compile_kernels(compiled)
    reset_peak_memory(device)
    try:
        with torch.no_grad():
            first = measure(lambda: fn(model, batch, subset, hmc), device, warmup=0, repeats=1)[0]
            timing, out = measure(
                lambda: fn(model, batch, subset, hmc),
                device,
                warmup=max(warmup - 1, 0),
                repeats=repeats,
            )
    finally:
        flows.compile_kernels(False)
    return {
        "subset_size": len(subset),
        "variant": variant + (" (compiled)" if compiled else ""),
        "chains": chains,
        "hmc": {"steps": hmc.steps, "n_leapfrog": hmc.n_leapfrog, "step_size": hmc.step_size},
        "gradient_evaluations": hmc.steps * (hmc.n_leapfrog) + 1,
        "s_per_call": timing.as_dict(),
        "first_call_s": first.median_s,
        "s_per_128_samples": timing.median_s * 128 / chains,
        "samples_per_s": timing.rate(chains),
        "acceptance": out.info.get("hmc_acceptance"),
        **peak_memory_mib(device),
    }


def unimodal_throughput(
    model: MultimodalVAE,
    batch: dict[str, Tensor],
    modality: str,
    device: torch.device,
    *,
    repeats: int,
    zuko_inverse: bool = False,
) -> dict[str, Any]:
    """Seconds per one-modality conditional encode (flow inverse) of ``len(batch)`` samples."""
    chains = len(next(iter(batch.values())))

    def fn() -> Tensor:
        if zuko_inverse:  # one pass per latent feature
            q = model.unimodal_posterior(batch, modality)  # type: ignore[attr-defined]
            return NormalizingFlow.rsample(q, (1,))
        return model.encode(batch, (modality,), 1).z

    with torch.no_grad():
        timing, _ = measure(fn, device, warmup=1, repeats=repeats)
    return {
        "subset_size": 1,
        "variant": "encode-once" if zuko_inverse else "ours",
        "chains": chains,
        "s_per_call": timing.as_dict(),
        "s_per_128_samples": timing.median_s * 128 / chains,
        "samples_per_s": timing.rate(chains),
    }
