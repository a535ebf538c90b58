"""Conditional normalizing-flow posteriors q(z|x): a Gaussian base from encoder features
under a zuko masked autoregressive flow (MAF).

References:
    Masked Autoregressive Flow for Density Estimation (Papamakarios et al., 2017,
    arXiv:1705.07057); zuko (probabilists/zuko) provides the transforms.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.distributions import Distribution
from zuko.distributions import DiagNormal, NormalizingFlow
from zuko.flows.autoregressive import MaskedAutoregressiveTransform
from zuko.transforms import ComposedTransform

__all__ = ["FlowPosterior", "GaussianHead"]

LOGVAR_MIN, LOGVAR_MAX = -12.0, 8.0  # keeps exp() finite early in training


class GaussianHead(nn.Module):
    """features -> (mu, logvar) of a diagonal Gaussian over ``latent_dim``."""

    def __init__(self, features: int, latent_dim: int) -> None:
        super().__init__()
        self.linear = nn.Linear(features, 2 * latent_dim)

    def forward(self, h: Tensor) -> tuple[Tensor, Tensor]:
        """``h``: (B, features) -> mu, logvar, each (B, latent_dim)."""
        mu, logvar = self.linear(h).chunk(2, dim=-1)
        return mu, logvar.clamp(LOGVAR_MIN, LOGVAR_MAX)


class FlowPosterior(nn.Module):
    """q(z | h) = MAF_K pushed forward from N(mu(h), diag sigma(h)^2).

    ``log_prob`` is one parallel pass per MADE block (zuko's transforms map z to the base);
    ``rsample`` inverts them sequentially. The flow is conditioned on ``h`` when ``context``
    is set (the JNF paper allows it; it costs ``features`` extra MADE inputs).

    Arguments:
        features: size of the encoder features ``h``.
        latent_dim: size of z.
        depth: K, the number of MADE blocks (0 gives the plain Gaussian).
        hidden: width of each MADE hidden layer.
        layers: number of MADE hidden layers.
        context: condition the MADE blocks on ``h``.

    Example:
        >>> q = FlowPosterior(features=8, latent_dim=4, depth=2)
        >>> d = q(torch.randn(3, 8))
        >>> d.log_prob(d.rsample((5,))).shape
        torch.Size([5, 3])
    """

    def __init__(
        self,
        features: int,
        latent_dim: int,
        depth: int = 2,
        hidden: int = 128,
        layers: int = 3,
        context: bool = False,
    ) -> None:
        super().__init__()
        self.base = GaussianHead(features, latent_dim)
        self.context = context
        orders = [torch.arange(latent_dim), torch.arange(latent_dim).flip(0)]
        self.transforms = nn.ModuleList(
            MaskedAutoregressiveTransform(
                features=latent_dim,
                context=features if context else 0,
                order=orders[i % 2],
                hidden_features=[hidden] * layers,
            )
            for i in range(depth)
        )

    def forward(self, h: Tensor) -> Distribution:
        """The posterior for features ``h`` (B, features): batch shape (B,), event (latent,)."""
        mu, logvar = self.base(h)
        base = DiagNormal(mu, torch.exp(0.5 * logvar))
        if len(self.transforms) == 0:
            return base
        c = h if self.context else None
        transform = ComposedTransform(*(t(c) for t in self.transforms))
        return NormalizingFlow(transform, base)
