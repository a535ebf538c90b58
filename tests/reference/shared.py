"""Shared helpers of the cross-checks against MultiVae: one set of nets seen by both models.

Each cross-check builds one of our models, then the MultiVae model of the same name whose
encoders, decoders (and JNF's joint encoder and flows) are thin MultiVae/pythae wrappers around
*our model's own modules*: the weights are shared, so any difference in an output, a loss or a
gradient comes from the model logic (posteriors, PoE, mixtures, KL conventions, likelihood
scaling, reductions, subsampling). Noise is taken from a tape (:func:`fixed_noise`) that hands
both implementations the same numbers in call order.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence

import torch
from multivae.data import MultimodalBaseDataset
from multivae.models.nn.base_architectures import BaseJointEncoder
from pythae.models.base.base_utils import ModelOutput
from pythae.models.nn.base_architectures import BaseDecoder, BaseEncoder
from pythae.models.normalizing_flows.base import BaseNF, BaseNFConfig
from torch import Tensor, nn
from zuko.transforms import ComposedTransform

from mmvae_bench.api import MultimodalDataset, MultimodalVAE
from mmvae_bench.flows import FlowPosterior
from mmvae_bench.testing import tiny_dataset

# Four modalities of three likelihoods (Gaussian sigma 0.15 image, Gaussian sigma 0.5 vectors
# with lambda = 2, Bernoulli image), so subsets of size 3 and likelihood weights are exercised.
KINDS = ("image28", "vector", "vector", "image32")
BATCH = 32  # >= 2^4 - 1: every MoPoE subset gets datapoints in MultiVae's batch slicing
TINY = {"latent_dim": 4, "width": 4, "features": 16}
# Both models run in float64, so what differs is the logic, not float32 rounding (which, with
# losses ~1e4 nats, moves single gradient entries of MMVAE by up to ~1e-3 relative).
DTYPE = torch.float64

_FAMILY = {"gaussian": "normal", "bernoulli": "bernoulli", "laplace": "laplace"}

# model -> quantity -> max relative difference measured (printed after the run by conftest).
MEASURED: dict[str, dict[str, float]] = {}


def dataset() -> MultimodalDataset:
    """The tiny four-modality dataset every cross-check uses."""
    return tiny_dataset(KINDS, n=BATCH)


def batch_of(ds: MultimodalDataset) -> dict[str, Tensor]:
    """The whole train split as one batch, in float64 (see ``DTYPE``)."""
    return {m: x.to(DTYPE) for m, x in ds.train.x.items()}


def ref_inputs(batch: Mapping[str, Tensor], labels: Tensor | None = None) -> MultimodalBaseDataset:
    """The same batch as MultiVae's dataset type."""
    return MultimodalBaseDataset(data=dict(batch), labels=labels)


def ref_config_fields(model: MultimodalVAE) -> dict:
    """MultiVae config fields that give our likelihoods and weights lambda_m."""
    return {
        "n_modalities": len(model.specs),
        "latent_dim": model.latent_dim,
        "uses_likelihood_rescaling": True,
        "rescale_factors": dict(model.weights),
        "decoders_dist": {m: _FAMILY[s.likelihood] for m, s in model.specs.items()},
        "decoder_dist_params": {
            m: {"scale": s.scale} for m, s in model.specs.items() if s.likelihood != "bernoulli"
        },
    }


# -- wrappers: MultiVae's interfaces around our modules ---------------------------------------
class RefEncoder(BaseEncoder):
    """x -> ModelOutput(embedding, log_covariance) from a module returning (mu, logvar)."""

    def __init__(self, net: nn.Module, latent_dim: int) -> None:
        super().__init__()
        self.net, self.latent_dim = net, latent_dim

    def forward(self, x: Tensor) -> ModelOutput:
        mu, logvar = self.net(x)
        return ModelOutput(embedding=mu, log_covariance=logvar)


class RefDecoder(BaseDecoder):
    """z -> ModelOutput(reconstruction) from one of our decoders (its raw parameter)."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, z: Tensor) -> ModelOutput:
        return ModelOutput(reconstruction=self.net(z))


class RefJointEncoder(BaseJointEncoder):
    """X -> ModelOutput(embedding, log_covariance) from JNF's joint encoders and merge."""

    def __init__(self, encoders: nn.ModuleDict, merge: nn.Module, latent_dim: int) -> None:
        super().__init__()
        self.encoders, self.merge, self.latent_dim = encoders, merge, latent_dim

    def forward(self, x: dict) -> ModelOutput:
        h = torch.cat([self.encoders[m](x[m]) for m in self.encoders], dim=-1)
        mu, logvar = self.merge(h)
        return ModelOutput(embedding=mu, log_covariance=logvar)


class RefFlow(BaseNF):
    """pythae's flow interface on our zuko MADE blocks: forward maps z to the base space."""

    def __init__(self, posterior: FlowPosterior) -> None:
        super().__init__(BaseNFConfig(input_dim=(posterior.latent_dim,)))
        self.posterior = posterior
        self.input_dim = (posterior.latent_dim,)  # what MultiVae's JNF checks

    def _transform(self) -> ComposedTransform:
        return ComposedTransform(*(t(None) for t in self.posterior.transforms))

    def forward(self, z: Tensor, **kwargs) -> ModelOutput:
        out, ladj = self._transform().call_and_ladj(z)
        return ModelOutput(out=out, log_abs_det_jac=ladj)

    def inverse(self, y: Tensor, **kwargs) -> ModelOutput:
        return ModelOutput(out=self._transform().inv(y))


def ref_encoders(nets: Mapping[str, nn.Module], latent_dim: int) -> dict[str, RefEncoder]:
    return {m: RefEncoder(net, latent_dim) for m, net in nets.items()}


def ref_decoders(nets: Mapping[str, nn.Module]) -> dict[str, RefDecoder]:
    return {m: RefDecoder(net) for m, net in nets.items()}


# -- fixed noise ---------------------------------------------------------------------------------
class NoiseTape:
    """The k-th noise request of a run gets numbers seeded by (seed, k), whatever its shape.

    ``split_laplace``: a Laplace sample over stacked experts ``(K, M, B, D)`` (ours) is served
    as M consecutive ``(K, B, D)`` requests, as MultiVae draws one expert at a time.
    """

    def __init__(self, seed: int, *, split_laplace: bool = False) -> None:
        self.seed, self.calls, self.split_laplace = seed, 0, split_laplace

    def _gen(self) -> torch.Generator:
        self.calls += 1
        return torch.Generator().manual_seed(self.seed * 100_003 + self.calls)

    def normal(self, shape: Sequence[int], dtype=None, device=None) -> Tensor:
        return _RANDN(tuple(shape), generator=self._gen(), dtype=dtype or torch.float32).to(device)

    def uniform(self, shape: Sequence[int], low: float, dtype, device) -> Tensor:
        def draw(s: Sequence[int]) -> Tensor:
            u = torch.rand(tuple(s), generator=self._gen(), dtype=dtype)
            return (low + (1 - low) * u).to(device)

        if self.split_laplace and len(shape) == 4:
            return torch.stack([draw((shape[0], *shape[2:])) for _ in range(shape[1])], dim=1)
        return draw(shape)


_RANDN = torch.randn
_RANDN_LIKE = torch.randn_like


@contextlib.contextmanager
def fixed_noise(seed: int = 0, *, split_laplace: bool = False) -> Iterator[NoiseTape]:
    """Serve every N(0, 1) and Laplace draw of both codes from a :class:`NoiseTape`.

    Ours draws with ``torch.randn``/``randn_like`` (``reparameterize``, the flows), MultiVae
    through ``torch.distributions`` (``Normal.rsample``, ``Laplace.rsample``); the Laplace
    transform of the uniform draw is torch's own formula, patched identically for both.
    """
    tape = NoiseTape(seed, split_laplace=split_laplace)
    normal_mod = torch.distributions.normal
    laplace_cls = torch.distributions.Laplace
    saved = (torch.randn, torch.randn_like, normal_mod._standard_normal, laplace_cls.rsample)

    def randn(*size, generator=None, dtype=None, device=None, **kw) -> Tensor:
        shape = size[0] if len(size) == 1 and not isinstance(size[0], int) else size
        return tape.normal(shape, dtype, device)

    def randn_like(t: Tensor, **kw) -> Tensor:
        return tape.normal(t.shape, kw.get("dtype") or t.dtype, kw.get("device") or t.device)

    def laplace_rsample(self, sample_shape=()) -> Tensor:
        shape = self._extended_shape(torch.Size(sample_shape))
        eps = torch.finfo(self.loc.dtype).eps
        u = tape.uniform(shape, eps - 1, self.loc.dtype, self.loc.device)
        return self.loc - self.scale * u.sign() * torch.log1p(-u.abs())

    torch.randn, torch.randn_like = randn, randn_like
    normal_mod._standard_normal = lambda shape, dtype, device: tape.normal(shape, dtype, device)
    laplace_cls.rsample = laplace_rsample
    try:
        yield tape
    finally:
        torch.randn, torch.randn_like, normal_mod._standard_normal, laplace_cls.rsample = saved


# -- comparisons ---------------------------------------------------------------------------------
def rel_diff(ours: Tensor | Sequence[Tensor], ref: Tensor | Sequence[Tensor]) -> float:
    """max |ours - ref| / max |ref| (0 when both are 0); for lists (gradients per parameter
    tensor), the worst tensor's."""
    if not isinstance(ours, Tensor):
        return max(rel_diff(a, b.view_as(a)) for a, b in zip(ours, ref, strict=True))
    ours, ref = ours.detach().double(), ref.detach().double()
    assert ours.shape == ref.shape, (ours.shape, ref.shape)
    scale = ref.abs().max().item()
    diff = (ours - ref).abs().max().item()
    return diff / scale if scale > 0 else diff


def grads(loss: Tensor, params: Sequence[nn.Parameter]) -> list[Tensor]:
    """The gradient of ``loss`` in each of ``params`` (zeros where unused)."""
    gs = torch.autograd.grad(loss, params, allow_unused=True)
    return [torch.zeros_like(p) if g is None else g for p, g in zip(params, gs, strict=True)]


def record(model: str, quantity: str, value: float) -> float:
    """Keep a measured figure for the summary table; returns it."""
    MEASURED.setdefault(model, {})
    MEASURED[model][quantity] = max(value, MEASURED[model].get(quantity, 0.0))
    return value
