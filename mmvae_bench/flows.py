"""Conditional normalizing-flow posteriors q(z|x): a Gaussian base from encoder features
under a zuko masked autoregressive flow (MAF), and fast paths for inference.

Training uses zuko's ``log_prob`` (autograd through the MADE blocks). Inference has two hot
paths that zuko computes generically and this module computes with the MADE structure in view:

- sampling inverts each MADE block. zuko runs one pass per feature (512 at latent 512); a MADE
  whose hidden layers are narrower than the latent reads only the first ``hidden`` features of
  its order, so the inverse converges after (longest dependency chain + 1) passes over those
  features (128 at latent 512, hidden 128) and one full pass. Same fixed point, same samples.
- HMC on a product of flow experts (:class:`ProductOfFlows`) evaluates every expert's MADE
  blocks as batched matrix products over stacked, pre-masked weights, and its gradient in z in
  closed form (no autograd graph), reading only the features each first layer can see.

References:
    Masked Autoregressive Flow for Density Estimation (Papamakarios et al., 2017,
    arXiv:1705.07057); MADE (Germain et al., 2015, arXiv:1502.03509); zuko (probabilists/zuko)
    provides the transforms.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal, NamedTuple

import torch
from torch import Tensor, nn
from torch.distributions import Distribution, Transform, constraints
from zuko.distributions import DiagNormal, NormalizingFlow
from zuko.flows.autoregressive import MaskedAutoregressiveTransform
from zuko.nn import MaskedLinear
from zuko.transforms import ComposedTransform, MonotonicAffineTransform

from mmvae_bench.distributions import log_std_normal

__all__ = [
    "FlowAffine",
    "FlowDistribution",
    "FlowPosterior",
    "GaussianHead",
    "ProductOfFlows",
    "ShiftLogScaleTransform",
    "compile_kernels",
]

FlowAffine = Literal["zuko", "multivae"]  # the MADE blocks' affine map, see FlowPosterior

LOGVAR_MIN, LOGVAR_MAX = -12.0, 8.0  # keeps exp() finite early in training
# zuko's MonotonicAffineTransform squashes the raw log-scale a to a / (1 + |a| / c), c = |log
# slope| with its default minimum slope 1e-3 (tests/test_flows.py checks against zuko).
_LOG_SCALE_BOUND = -math.log(1e-3)
_LOG_2PI = math.log(2 * math.pi)


class GaussianHead(nn.Module):
    """features -> (mu, logvar) of a diagonal Gaussian over ``latent_dim``."""

    def __init__(self, features: int, latent_dim: int) -> None:
        super().__init__()
        self.linear = nn.Linear(features, 2 * latent_dim)

    def forward(self, h: Tensor) -> tuple[Tensor, Tensor]:
        """``h``: (B, features) -> mu, logvar, each (B, latent_dim)."""
        mu, logvar = self.linear(h).chunk(2, dim=-1)
        return mu, logvar.clamp(LOGVAR_MIN, LOGVAR_MAX)

    def mean(self, h: Tensor) -> Tensor:
        """``h``: (B, features) -> mu (B, latent_dim) alone (the log-variance rows not run)."""
        d = self.linear.out_features // 2
        return nn.functional.linear(h, self.linear.weight[:d], self.linear.bias[:d])


class ShiftLogScaleTransform(Transform):
    """``u = (x - mu) * exp(-s)`` per feature, log|det| ``-s``: the MADE map of pythae's MAF.

    MultiVae's JNF flows (pythae's ``MAF``) use this map with ``(mu, s)`` from the MADE and no
    bound on ``s``; zuko's default (:class:`MonotonicAffineTransform`) is ``x * exp(a') + b``
    with a soft-bounded ``a'``. The two are different functions of the same MADE outputs, so
    weights trained with one are only meaningful under it.
    """

    domain = constraints.real
    codomain = constraints.real
    bijective = True
    sign = +1

    def __init__(self, mu: Tensor, log_scale: Tensor) -> None:
        super().__init__()
        self.mu, self.log_scale = mu, log_scale

    def _call(self, x: Tensor) -> Tensor:
        return (x - self.mu) * torch.exp(-self.log_scale)

    def _inverse(self, u: Tensor) -> Tensor:
        return u * torch.exp(self.log_scale) + self.mu

    def log_abs_det_jacobian(self, x: Tensor, u: Tensor) -> Tensor:
        return (-self.log_scale).expand(x.shape)


class FlowPosterior(nn.Module):
    """q(z | h) = MAF_K pushed forward from N(mu(h), diag sigma(h)^2).

    ``log_prob`` is one parallel pass per MADE block (zuko's transforms map z to the base);
    ``rsample`` inverts them (see the module docstring for the pass count). The flow is
    conditioned on ``h`` when ``context`` is set (the JNF paper allows it; it costs
    ``features`` extra MADE inputs).

    Arguments:
        features: size of the encoder features ``h``.
        latent_dim: size of z.
        depth: K, the number of MADE blocks (0 gives the plain Gaussian).
        hidden: width of each MADE hidden layer.
        layers: number of MADE hidden layers.
        context: condition the MADE blocks on ``h``.
        affine: the blocks' map from the MADE outputs: ``zuko`` (zuko's monotonic affine map,
            with the fast inference paths) or ``multivae`` (:class:`ShiftLogScaleTransform`,
            MultiVae's; zuko's generic sampling and autograd HMC).

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
        affine: FlowAffine = "zuko",
    ) -> None:
        super().__init__()
        self.base = GaussianHead(features, latent_dim)
        self.context = context
        self.latent_dim = latent_dim
        orders = [torch.arange(latent_dim), torch.arange(latent_dim).flip(0)]
        self.transforms = nn.ModuleList(
            MaskedAutoregressiveTransform(
                features=latent_dim,
                context=features if context else 0,
                order=orders[i % 2],
                hidden_features=[hidden] * layers,
                univariate=ShiftLogScaleTransform
                if affine == "multivae"
                else MonotonicAffineTransform,
            )
            for i in range(depth)
        )
        self._structure: list[_BlockStructure] | None = None

    def forward(self, h: Tensor) -> Distribution:
        """The posterior for features ``h`` (B, features): batch shape (B,), event (latent,)."""
        mu, logvar = self.base(h)
        base = DiagNormal(mu, torch.exp(0.5 * logvar))
        if len(self.transforms) == 0:
            return base
        c = h if self.context else None
        transform = ComposedTransform(*(t(c) for t in self.transforms))
        return FlowDistribution(transform, base, posterior=self, features=h)

    def structure(self) -> list[_BlockStructure] | None:
        """What the fast paths need to know about each MADE block (None: not a plain MADE)."""
        if self._structure is None and _is_plain_made(self):
            self._structure = [_block_structure(t, self.latent_dim) for t in self.transforms]
        return self._structure


class FlowDistribution(NormalizingFlow):
    """zuko's ``NormalizingFlow`` that remembers its :class:`FlowPosterior` and features ``h``.

    ``log_prob`` is zuko's; ``rsample`` inverts the MADE blocks with the pass count their
    masks need (differentiable like zuko's), and :class:`ProductOfFlows` reads the weights.
    """

    def __init__(
        self,
        transform: ComposedTransform,
        base: Distribution,
        *,
        posterior: FlowPosterior,
        features: Tensor,
    ) -> None:
        super().__init__(transform, base)
        self.posterior = posterior
        self.features = features

    def expand(
        self, batch_shape: torch.Size, _instance: Distribution | None = None
    ) -> Distribution:
        return NormalizingFlow(self.transform, self.base).expand(batch_shape, _instance)

    def rsample(self, shape: torch.Size | Sequence[int] = ()) -> Tensor:
        structure = self.posterior.structure()
        if structure is None:
            return super().rsample(torch.Size(shape))
        stack = _MadeStack.build([self])
        mu, sigma = stack.mu[0], stack.sigma[0]  # (B, D)
        eps = torch.randn((*shape, *mu.shape), dtype=mu.dtype, device=mu.device)
        u = (mu + sigma * eps).reshape(-1, mu.shape[-1])
        rows = torch.arange(u.shape[0], device=u.device) % mu.shape[0]  # datapoint of each row
        return stack.invert(0, u, rows).reshape(*shape, *mu.shape)


class ProductOfFlows:
    """The unnormalised log-density ``sum_j log q_j(z | h_j) - prior_power * log N(z; 0, I)``.

    Built once per subset posterior from the experts' distributions (the encoders have run);
    every evaluation then runs only the flows. With :class:`FlowDistribution` experts of one
    architecture (every JNF expert), the experts' MADE blocks run as one batched product over
    stacked weights and :meth:`value_and_grad` gives the z-gradient in closed form, which
    :func:`mmvae_bench.hmc.hmc_sample` uses instead of autograd. Other experts fall back to
    ``sum_j q_j.log_prob`` and autograd.

    Arguments:
        experts: the q_j, each with batch shape (B,) and event shape (D,).
        prior_power: how many times log N(z; 0, I) is subtracted (|S| - 1 in JNF's Eq. 12).

    Example:
        >>> qs = [FlowPosterior(8, 4)(torch.randn(3, 8)) for _ in range(2)]
        >>> target = ProductOfFlows(qs, prior_power=1)
        >>> z = target.sample_experts(5)  # (5, 3, 4): each chain from one random expert
        >>> value, grad = target.value_and_grad(z)
        >>> value.shape, grad.shape
        (torch.Size([5, 3]), torch.Size([5, 3, 4]))
    """

    def __init__(
        self,
        experts: Sequence[Distribution],
        prior_power: float = 0.0,
        *,
        subsets: Sequence[Sequence[int]] | None = None,
    ) -> None:
        self.experts = list(experts)
        self.prior_power = float(prior_power)
        self.subsets = _check_subsets(subsets, len(self.experts))
        with torch.no_grad():
            self._stack = _MadeStack.build(self.experts) if _stackable(self.experts) else None
        if self.subsets is not None:
            self._batch = int(self.experts[0].batch_shape[0])
            device = self._stack.mu.device if self._stack is not None else None
            self._members = _Members.build(self.subsets, len(self.experts), device)

    def __call__(self, z: Tensor) -> Tensor:
        """log pi(z) for ``z`` (*chains, rows, D): (*chains, rows)."""
        if self.subsets is not None:
            experts = self._subset_sums(z, grad=False)[0]
        elif self._stack is not None:
            experts = self._stack.log_prob(z).sum(0)
        else:
            experts = sum(q.log_prob(z) for q in self.experts)
        return experts - self.prior_power * log_std_normal(z)

    def value_and_grad(self, z: Tensor) -> tuple[Tensor, Tensor]:
        """log pi(z) and its gradient in z, without a graph: (*chains, rows), (*chains, rows, D)."""
        if self._stack is None:
            with torch.enable_grad():
                z = z.detach().requires_grad_(True)
                lp = self(z)
                (grad,) = torch.autograd.grad(lp.sum(), z)
            return lp.detach(), grad
        with torch.no_grad():
            if self.subsets is not None:
                lp, grad = self._subset_sums(z, grad=True)
            else:
                lp, grad = self._stack.log_prob_and_grad(z)
                lp = lp.sum(0)
            # d/dz of -prior_power * log N(z; 0, I) is +prior_power * z.
            return lp - self.prior_power * log_std_normal(z), grad + self.prior_power * z

    def _subset_sums(self, z: Tensor, *, grad: bool) -> tuple[Tensor, Tensor | None]:
        """Each subset's sum of its experts' log-densities (and its z-gradient) at its rows.

        Each expert runs once, on the rows of every subset holding it: with the experts
        stacked, one batched pass for all of them (subsets of one size give every expert the
        same number of subsets; otherwise shorter lists are padded and the padding discarded).
        """
        mem, n_s, b = self._members, len(self.subsets), self._batch
        zs = z.unflatten(-2, (n_s, b))  # (*chains, S, B, D)
        chains = zs.shape[:-3]
        if self._stack is None:
            parts = [
                sum(self.experts[e].log_prob(zs[..., s, :, :]) for e in sub)
                for s, sub in enumerate(self.subsets)
            ]
            return torch.stack(parts, dim=-2).flatten(-2), None
        e, c = mem.gather.shape
        x = zs.index_select(-3, mem.gather.flatten()).unflatten(-3, (e, c)).movedim(-4, 0)
        if grad:
            lp, g = self._stack.log_prob_and_grad_each(x)  # (E, *chains, C, B), (..., D)
        else:
            lp, g = self._stack.log_prob_each(x), None
        lp = lp.movedim(0, -3).flatten(-3, -2)  # (*chains, E*C, B)
        total = zs.new_zeros((*chains, n_s + 1, b)).index_add_(-2, mem.scatter, lp)
        out_g = None
        if g is not None:
            g = g.movedim(0, -4).flatten(-4, -3)  # (*chains, E*C, B, D)
            out_g = zs.new_zeros((*chains, n_s + 1, *zs.shape[-2:])).index_add_(-3, mem.scatter, g)
            out_g = out_g[..., :n_s, :, :].flatten(-3, -2)
        return total[..., :n_s, :].flatten(-2), out_g

    def gaussian_product(self, samples: int = 32) -> tuple[Tensor, Tensor]:
        """A Gaussian approximation of the target: mean and standard deviation, each (rows, D).

        Each expert q_j is summarised by a mean m_j and diagonal variance v_j, and the target's
        Gaussian analogue is their product with the prior divided out ``prior_power`` times:
        precision ``sum_j 1/v_j - prior_power``, mean ``sum_j m_j/v_j`` over it. Stacked JNF
        experts are linearised (no sampling): m_j is the base mean pushed through the inverse
        flow, v_j the base variance over the squared diagonal of the flow's Jacobian there
        (off-diagonal terms ignored). Other experts use ``samples`` draws each. Where the
        division leaves a precision below the widest expert's, that expert's precision and the
        experts' precision-weighted mean are used (the exact product is then near-improper).
        """
        with torch.no_grad():
            if self._stack is not None:
                m, v = self._stack.linearised_moments()  # (E, B, D)
            else:
                draws = torch.stack([q.sample((samples,)) for q in self.experts])  # (E, K, B, D)
                m, v = draws.mean(1), draws.var(1)
            prec_e = 1.0 / v.clamp_min(torch.finfo(v.dtype).tiny)
            if self.subsets is None:
                weighted, total = (m * prec_e).sum(0), prec_e.sum(0)
                floor = prec_e.min(0).values
            else:  # per subset over its experts, rows subset-major: (S * B, D)
                mask = self._members.mask.to(prec_e)  # (S, E)
                weighted = torch.einsum("se,ebd->sbd", mask, m * prec_e).flatten(0, 1)
                total = torch.einsum("se,ebd->sbd", mask, prec_e).flatten(0, 1)
                held = mask[:, :, None, None] > 0
                floor = torch.where(held, prec_e[None], math.inf).amin(1).flatten(0, 1)
            prec = total - self.prior_power
            ok = prec >= floor
            mean = torch.where(
                ok, weighted / prec.clamp_min(torch.finfo(v.dtype).tiny), weighted / total
            )
            return mean, torch.where(ok, prec, floor).rsqrt()

    def sample_experts(self, n: int, expert: int | None = None) -> Tensor:
        """``(n, rows, D)`` starting points: each chain a sample of one expert chosen at random
        (of its subset's experts with ``subsets``; of expert number ``expert`` for every chain
        when given, which needs a target of one subset)."""
        if self.subsets is not None:
            if expert is not None:
                raise ValueError("sample_experts(expert=...) needs a target of one subset")
            return self._sample_subset_experts(n)
        with torch.no_grad():
            if self._stack is None:
                starts = torch.stack([q.sample((n,)) for q in self.experts])  # (k, n, B, D)
                if expert is not None:
                    return starts[expert]
                pick = torch.randint(len(self.experts), starts.shape[1:3], device=starts.device)
                return starts.gather(0, pick[None, :, :, None].expand(1, *starts.shape[1:]))[0]
            s = self._stack
            b, d = s.mu.shape[1:]
            if expert is not None:
                pick = torch.full((n * b,), expert, device=s.mu.device)
            else:
                pick = torch.randint(s.n_experts, (n * b,), device=s.mu.device)
            rows = torch.arange(n * b, device=s.mu.device) % b
            return s.sample(pick, rows).view(n, b, d)

    def _sample_subset_experts(self, n: int) -> Tensor:
        mem, n_s, b = self._members, len(self.subsets), self._batch
        with torch.no_grad():
            if self._stack is None:
                draws = torch.stack([q.sample((n,)) for q in self.experts])  # (E, n, B, D)
                dev = draws.device
            else:
                dev = self._stack.mu.device
            # A uniform position in each chain's subset, then the expert at that position.
            sizes = mem.sizes.to(dev)[None, :, None]  # (1, S, 1)
            pos = (torch.rand((n, n_s, b), device=dev) * sizes).long().clamp_max(sizes - 1)
            pick = mem.table.to(dev)[torch.arange(n_s, device=dev)[None, :, None], pos]
            rows = torch.arange(b, device=dev).expand(n, n_s, b)
            if self._stack is None:
                z = draws[pick, torch.arange(n, device=dev)[:, None, None], rows]
                return z.flatten(1, 2)
            return self._stack.sample(pick.flatten(), rows.flatten()).view(n, n_s * b, -1)


def _check_subsets(subsets: Sequence[Sequence[int]] | None, n_experts: int) -> list | None:
    if subsets is None:
        return None
    out = [tuple(int(e) for e in sub) for sub in subsets]
    for sub in out:
        if not sub or len(set(sub)) != len(sub) or not all(0 <= e < n_experts for e in sub):
            raise ValueError(
                f"subsets must be non-empty lists of distinct expert indices < {n_experts}, "
                f"got {sub}"
            )
    if not out:
        raise ValueError("subsets must hold at least one subset")
    return out


@dataclass(frozen=True)
class _Members:
    """Index tables of a multi-subset target (S subsets of E experts)."""

    table: Tensor  # (S, k_max) experts of each subset, padded with its first expert
    sizes: Tensor  # (S,) experts per subset
    mask: Tensor  # (S, E) 1 where the subset holds the expert
    gather: Tensor  # (E, C) subsets holding each expert, padded with subset 0
    scatter: Tensor  # (E * C,) the same, padded with S (a discarded slot)

    @classmethod
    def build(cls, subsets: list, n_experts: int, device: torch.device | None) -> _Members:
        n_s = len(subsets)
        k_max = max(len(sub) for sub in subsets)
        table = torch.tensor([[*sub, *(sub[:1] * (k_max - len(sub)))] for sub in subsets])
        mask = torch.zeros(n_s, n_experts)
        holders: list[list[int]] = [[] for _ in range(n_experts)]
        for s, sub in enumerate(subsets):
            for e in sub:
                mask[s, e] = 1.0
                holders[e].append(s)
        c = max(len(h) for h in holders)
        gather = torch.tensor([[*h, *([0] * (c - len(h)))] for h in holders])
        scatter = torch.tensor([[*h, *([n_s] * (c - len(h)))] for h in holders]).flatten()
        return cls(
            table=table,
            sizes=torch.tensor([len(sub) for sub in subsets]),
            mask=mask,
            gather=gather.to(device),
            scatter=scatter.to(device),
        )


# -- MADE structure and the stacked fast path ---------------------------------------------------
@dataclass(frozen=True)
class _BlockStructure:
    """Index sets of one MADE block, read from its masks once."""

    inputs: Tensor  # (D_in,) features the first layer has any weight on (others never matter)
    influential: Tensor  # (D_r,) features some output depends on: the inverse iterates these
    passes: int  # longest dependency chain among them + 1: inverse passes to their fixed point
    out_order: Tensor  # (2D,) output rows de-interleaved: D shifts, then D raw log-scales


def _is_plain_made(q: FlowPosterior) -> bool:
    """Every block a MADE of MaskedLinear/ReLU with zuko's monotonic affine transform."""
    for t in q.transforms:
        if not isinstance(t, MaskedAutoregressiveTransform):
            return False  # latent_dim 1 gives zuko's ElementWiseTransform
        layers = list(t.hyper)
        if t.univariate is not MonotonicAffineTransform or t.total != 2 or len(layers) % 2 != 1:
            return False
        if not all(isinstance(m, MaskedLinear) for m in layers[0::2]):
            return False
        if not all(type(m) is nn.ReLU for m in layers[1::2]):
            return False
    return True


def _block_structure(t: MaskedAutoregressiveTransform, d: int) -> _BlockStructure:
    masks = [m.mask.detach().cpu() for m in list(t.hyper)[0::2]]
    first = masks[0][:, :d]  # the latent part; context columns are constant per datapoint
    path = first.float()
    for m in masks[1:]:
        path = (m.float() @ path).clamp_(max=1.0)  # reachability, kept 0/1
    depends = path.view(d, 2, d).amax(1) > 0  # (D, D): output feature i reads input j
    # depth[i] = 0 without dependencies, else 1 + the deepest feature it reads: after p inverse
    # passes every feature of depth < p sits at its fixed point.
    depth = torch.zeros(d, dtype=torch.long)
    for _ in range(d):
        new = torch.where(depends, depth[None, :] + 1, 0).amax(1)
        if torch.equal(new, depth):
            break
        depth = new
    influential = depends.any(0).nonzero().flatten()
    passes = int(depth[influential].max()) + 1 if len(influential) else 0
    return _BlockStructure(
        inputs=first.any(0).nonzero().flatten(),
        influential=influential,
        passes=passes,
        out_order=torch.cat([torch.arange(0, 2 * d, 2), torch.arange(1, 2 * d, 2)]),
    )


def _stackable(experts: Sequence[Distribution]) -> bool:
    if not experts or not all(isinstance(q, FlowDistribution) for q in experts):
        return False
    mods = [q.posterior for q in experts]
    if any(m.structure() is None for m in mods):
        return False
    shapes = {tuple((k, tuple(v.shape)) for k, v in m.state_dict().items()) for m in mods}
    batch = {tuple(q.batch_shape) for q in experts}
    return len(shapes) == 1 and len(batch) == 1 and len(experts[0].batch_shape) == 1


class _Block(NamedTuple):
    """One MADE block of every expert: masked weights stacked over experts, (in, out) layout."""

    inputs: Tensor  # _BlockStructure.inputs, on the weights' device
    w_in: Tensor  # (E, D_in, H) first layer on the latent features it reads
    b_in: Tensor  # (E, 1, H), or (E, B, H) with the context's (constant) contribution folded in
    hidden: tuple[tuple[Tensor, Tensor], ...]  # (E, H, H), (E, 1, H)
    w_out: Tensor  # (E, H, 2D) shift columns, then raw log-scale columns
    b_out: Tensor  # (E, 1, 2D)


_compile = {"enabled": False}


def compile_kernels(enabled: bool = True) -> None:
    """Run :class:`ProductOfFlows`' density and gradient through ``torch.compile`` (opt-in).

    Inductor fuses the elementwise work between the matrix products. Measured on a 2-core CPU
    (1 thread, latent 512, two experts, 256 chains): 2x faster per evaluation after ~25 s of
    compilation per shape, so it pays off over the evaluation protocol, not in tests. Runs
    with ``RunConfig.compile`` set turn it on.
    """
    _compile["enabled"] = enabled


@functools.cache
def _compiled(fn: Callable) -> Callable:
    return torch.compile(fn, dynamic=False)


def _kernel(fn: Callable) -> Callable:
    return _compiled(fn) if _compile["enabled"] else fn


class _MadeStack:
    """Several experts' flows (one architecture) as stacked tensors: base Gaussians and blocks."""

    def __init__(
        self, mu: Tensor, sigma: Tensor, blocks: list[_Block], structure: list[_BlockStructure]
    ) -> None:
        self.mu, self.sigma, self.blocks = mu, sigma, tuple(blocks)  # mu, sigma: (E, B, D)
        self.structure = structure
        self.n_experts = mu.shape[0]
        # log N(u; mu, sigma) = -0.5 |r|^2 - log_norm, r = (u - mu) / sigma
        self.log_norm = sigma.log().sum(-1) + 0.5 * mu.shape[-1] * _LOG_2PI  # (E, B)

    @classmethod
    def build(cls, experts: Sequence[FlowDistribution]) -> _MadeStack:
        mods = [q.posterior for q in experts]
        feats = [q.features for q in experts]
        d = mods[0].latent_dim
        bases = [m.base(h) for m, h in zip(mods, feats, strict=True)]
        mu = torch.stack([b[0] for b in bases])
        sigma = torch.stack([torch.exp(0.5 * b[1]) for b in bases])
        dev = mu.device
        blocks = []
        structure = mods[0].structure()
        for k, st in enumerate(structure):
            order, inputs = st.out_order.to(dev), st.inputs.to(dev)
            ws, bs, b_in = [], [], []  # per expert: masked weights (out, in) and biases
            for m, h in zip(mods, feats, strict=True):
                lins = list(m.transforms[k].hyper)[0::2]
                ws.append([lin.weight * lin.mask for lin in lins])
                bs.append([lin.bias for lin in lins])
                b_in.append(
                    bs[-1][0][None] if not m.context else bs[-1][0] + h @ ws[-1][0][:, d:].T
                )
            hidden = tuple(
                (torch.stack([w[i].T for w in ws]), torch.stack([b[i][None] for b in bs]))
                for i in range(1, len(ws[0]) - 1)
            )
            blocks.append(
                _Block(
                    inputs=inputs,
                    w_in=torch.stack([w[0][:, :d][:, inputs].T for w in ws]),
                    b_in=torch.stack(b_in),
                    hidden=hidden,
                    w_out=torch.stack([w[-1][order].T for w in ws]),
                    b_out=torch.stack([b[-1][order][None] for b in bs]),
                )
            )
        return cls(mu, sigma, blocks, structure)

    def log_prob(self, z: Tensor) -> Tensor:
        """log q_j(z) for every expert j: z (*chains, B, D) -> (E, *chains, B)."""
        return _kernel(_log_prob)(z, self.mu, self.sigma, self.log_norm, self.blocks)

    def log_prob_and_grad(self, z: Tensor) -> tuple[Tensor, Tensor]:
        """log q_j(z) per expert (E, *chains, B) and the gradient of their sum (*chains, B, D)."""
        return _kernel(_log_prob_and_grad)(z, self.mu, self.sigma, self.log_norm, self.blocks)

    def log_prob_each(self, x: Tensor) -> Tensor:
        """log q_j(x_j) for points of each expert's own: x (E, *chains, B, D) -> (E, *chains, B)."""
        return _kernel(_log_prob_each)(x, self.mu, self.sigma, self.log_norm, self.blocks)

    def log_prob_and_grad_each(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """log q_j(x_j) (E, *chains, B) and each one's gradient in x_j (E, *chains, B, D)."""
        return _kernel(_log_prob_and_grad_each)(x, self.mu, self.sigma, self.log_norm, self.blocks)

    def linearised_moments(self) -> tuple[Tensor, Tensor]:
        """Per expert: base mean pushed through the inverse flow, and the base variance over
        the squared Jacobian diagonal of the flow there; each (E, B, D)."""
        n_e, b = self.mu.shape[:2]
        rows = torch.arange(b, device=self.mu.device)
        points = torch.stack([self.invert(e, self.mu[e], rows) for e in range(n_e)])
        # Every expert's flow at every expert's point (E x E, cheap), then the diagonal pairs.
        saved = _forward(points, self.mu, self.sigma, self.log_norm, self.blocks, keep=True)[2]
        jac = torch.ones_like(saved[0][0])  # (E experts, E points, B, D)
        for s, *_ in saved:
            jac = jac * s
        idx = torch.arange(n_e, device=self.mu.device)
        return points, (self.sigma / jac[idx, idx]) ** 2

    def sample(self, pick: Tensor, rows: Tensor) -> Tensor:
        """(R, D): row i a draw of expert ``pick[i]`` at datapoint ``rows[i]`` (base sample,
        then the expert's inverse flow), one inversion per expert."""
        z = torch.empty(
            pick.shape[0], self.mu.shape[-1], dtype=self.mu.dtype, device=self.mu.device
        )
        for e in range(self.n_experts):
            (at,) = torch.nonzero(pick == e, as_tuple=True)
            if len(at) == 0:
                continue
            r = rows[at]
            u = self.mu[e, r] + self.sigma[e, r] * torch.randn_like(self.mu[e, r])
            z[at] = self.invert(e, u, r)
        return z

    def invert(self, e: int, u: Tensor, rows: Tensor) -> Tensor:
        """z with flow_e(z) = u, for base points u (R, D) of datapoints ``rows`` (R,)."""
        x = u
        for blk, st in zip(reversed(self.blocks), reversed(self.structure), strict=True):
            x = _invert_block(blk, st, e, x, rows)
        return x


def _bmm(x: Tensor, w: Tensor) -> Tensor:
    """(E, *rows, i) @ (E, i, o) -> (E, *rows, o); float32 out even under autocast."""
    out = torch.bmm(x.reshape(x.shape[0], -1, x.shape[-1]), w)
    return out.view(*x.shape[:-1], w.shape[-1]).to(x.dtype)


def _affine(x: Tensor, w: Tensor, b: Tensor) -> Tensor:
    """x (E, *chains, B, i) @ w (E, i, o) + b (E, B|1, o), the bias fused where it lines up."""
    rows = x.reshape(x.shape[0], -1, x.shape[-1])
    shape = (*x.shape[:-1], w.shape[-1])
    if b.shape[1] in (1, rows.shape[1]):  # one bias row, or one chain per datapoint
        return torch.baddbmm(b, rows, w).view(shape).to(x.dtype)
    return torch.bmm(rows, w).view(shape).to(x.dtype) + _bias(b, x.dim() - 3)


def _bias(b: Tensor, ndim: int) -> Tensor:
    """(E, B|1, *o) viewed to broadcast against (E, *chains, B, *o), ``ndim`` = len(chains)."""
    return b.view(b.shape[0], *([1] * ndim), *b.shape[1:])


def _relu_grad(g: Tensor, h: Tensor) -> Tensor:
    """g where the ReLU output h is positive, else 0 (autograd's own kernel for it)."""
    return torch.ops.aten.threshold_backward(g, h, 0)


def _made(blk: _Block, x: Tensor) -> tuple[Tensor, list[Tensor]]:
    """Raw MADE outputs (E, *chains, B, 2D) for x (E, *chains, B, D), and the hidden layers."""
    h = _affine(x[..., blk.inputs], blk.w_in, blk.b_in).relu_()
    hs = [h]
    for w, b in blk.hidden:
        h = _affine(h, w, b).relu_()
        hs.append(h)
    return _affine(h, blk.w_out, blk.b_out), hs


def _forward(
    z: Tensor, mu: Tensor, sigma: Tensor, log_norm: Tensor, blocks: tuple[_Block, ...], keep: bool
) -> tuple[Tensor, Tensor, list]:
    """Every expert at the same points z (*chains, B, D)."""
    x = z.unsqueeze(0).expand(mu.shape[0], *z.shape)
    return _forward_each(x, mu, sigma, log_norm, blocks, keep)


def _forward_each(
    x: Tensor, mu: Tensor, sigma: Tensor, log_norm: Tensor, blocks: tuple[_Block, ...], keep: bool
) -> tuple[Tensor, Tensor, list]:
    """Each expert at its own points x (E, *chains, B, D): log q, base residual, saved parts."""
    c, d = x.dim() - 3, x.shape[-1]
    ladj = torch.zeros((), dtype=x.dtype, device=x.device)
    saved = []
    for blk in blocks:
        out, hs = _made(blk, x)
        t, a = out[..., :d], out[..., d:]
        inv = a.abs().mul_(1.0 / _LOG_SCALE_BOUND).add_(1.0).reciprocal_()  # 1 / (1 + |a|/c)
        ls = a * inv
        s = ls.exp()
        xs = x * s
        ladj = ladj + ls.sum(-1)
        if keep:
            saved.append((s, xs, inv, hs))
        x = xs + t
    r = (x - _bias(mu, c)) / _bias(sigma, c)
    return ladj - 0.5 * (r * r).sum(-1) - _bias(log_norm, c), r, saved


def _log_prob(
    z: Tensor, mu: Tensor, sigma: Tensor, log_norm: Tensor, blocks: tuple[_Block, ...]
) -> Tensor:
    return _forward(z, mu, sigma, log_norm, blocks, keep=False)[0]


def _log_prob_each(
    x: Tensor, mu: Tensor, sigma: Tensor, log_norm: Tensor, blocks: tuple[_Block, ...]
) -> Tensor:
    return _forward_each(x, mu, sigma, log_norm, blocks, keep=False)[0]


def _log_prob_and_grad(
    z: Tensor, mu: Tensor, sigma: Tensor, log_norm: Tensor, blocks: tuple[_Block, ...]
) -> tuple[Tensor, Tensor]:
    x = z.unsqueeze(0).expand(mu.shape[0], *z.shape)
    lp, g = _log_prob_and_grad_each(x, mu, sigma, log_norm, blocks)
    return lp, g.sum(0)


def _log_prob_and_grad_each(
    x: Tensor, mu: Tensor, sigma: Tensor, log_norm: Tensor, blocks: tuple[_Block, ...]
) -> tuple[Tensor, Tensor]:
    lp, r, saved = _forward_each(x, mu, sigma, log_norm, blocks, keep=True)
    g = -r / _bias(sigma, x.dim() - 3)  # d/du log N(u; mu, sigma)
    for blk, (s, xs, inv, hs) in zip(reversed(blocks), reversed(saved), strict=True):
        # y = x * s(x) + t(x), s = exp(ls), ls = a * inv, inv = 1 / (1 + |a|/c), ladj = sum ls.
        # Through y: d/dt = g, d/da = (g * x * s + 1) * dls/da with dls/da = inv^2.
        g_a = (g * xs).add_(1.0).mul_(inv).mul_(inv)
        g_h = _bmm(torch.cat([g, g_a], dim=-1), blk.w_out.transpose(1, 2))
        for (w, _), h in zip(reversed(blk.hidden), reversed(hs[1:]), strict=True):
            g_h = _bmm(_relu_grad(g_h, h), w.transpose(1, 2))
        g_in = _bmm(_relu_grad(g_h, hs[0]), blk.w_in.transpose(1, 2))
        g = (g * s).index_add_(-1, blk.inputs, g_in)
    return lp, g


def _invert_block(blk: _Block, st: _BlockStructure, e: int, y: Tensor, rows: Tensor) -> Tensor:
    d = y.shape[-1]
    b_in = blk.b_in[e, rows] if blk.b_in.shape[1] > 1 else blk.b_in[e]
    hidden = [(w[e], b[e]) for w, b in blk.hidden]
    inf = st.influential.to(y.device)
    cols = torch.cat([inf, inf + d])
    w_part, b_part = blk.w_out[e][:, cols], blk.b_out[e][:, cols]

    def made(x: Tensor, w_out: Tensor, b_out: Tensor) -> tuple[Tensor, Tensor]:
        h = torch.relu(x[:, blk.inputs] @ blk.w_in[e] + b_in)
        for w, b in hidden:
            h = torch.relu(h @ w + b)
        return (h @ w_out + b_out).chunk(2, dim=-1)

    def solve(y: Tensor, t: Tensor, a: Tensor) -> Tensor:  # x from y = x * exp(ls(a)) + t
        return (y - t) * torch.exp(-a / (1.0 + a.abs() / _LOG_SCALE_BOUND))

    # Iterate the features others read to their fixed point, then one full pass: t and a
    # depend on those features only.
    x = torch.zeros_like(y)
    y_inf = y[:, inf]
    for _ in range(st.passes):
        x = x.index_copy(1, inf, solve(y_inf, *made(x, w_part, b_part)))
    return solve(y, *made(x, blk.w_out[e], blk.b_out[e]))
