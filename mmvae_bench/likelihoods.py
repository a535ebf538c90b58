"""Decoder likelihoods p(x|z): log-densities from decoder outputs, and their means."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from mmvae_bench.data.spec import ModalitySpec
from mmvae_bench.errors import BenchError

__all__ = ["log_likelihood", "likelihood_mean"]

_LOG_2PI = math.log(2 * math.pi)


def log_likelihood(spec: ModalitySpec, param: Tensor, x: Tensor) -> Tensor:
    """log p(x | z) summed over the modality's dims.

    Args:
        spec: the modality (family and fixed scale).
        param: decoder output ``(..., *shape)``: the mean (Gaussian, Laplace) or logits
            (Bernoulli).
        x: data ``(B, *shape)``, broadcast against ``param``'s leading dims.

    Returns:
        ``(...)``: one log-likelihood per sample.
    """
    dims = tuple(range(-len(spec.shape), 0))
    if spec.likelihood == "gaussian":
        s = spec.scale
        lp = -0.5 * ((x - param) / s) ** 2 - math.log(s) - 0.5 * _LOG_2PI
    elif spec.likelihood == "laplace":
        b = spec.scale
        lp = -(x - param).abs() / b - math.log(2 * b)
    elif spec.likelihood == "bernoulli":
        lp = -F.binary_cross_entropy_with_logits(param, x.expand_as(param), reduction="none")
    else:
        raise BenchError(f"{spec.name}: unknown likelihood '{spec.likelihood}'")
    return lp.sum(dims)


def likelihood_mean(spec: ModalitySpec, param: Tensor) -> Tensor:
    """The mean of p(x|z) from the decoder output, clamped to the modality's value range."""
    if spec.likelihood == "bernoulli":
        return torch.sigmoid(param)
    lo, hi = spec.value_range
    return param.clamp(lo, hi)
