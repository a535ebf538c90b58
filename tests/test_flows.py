"""Flow posteriors: the fast inference paths agree with zuko's generic ones."""

from __future__ import annotations

import pytest
import torch
from zuko.distributions import NormalizingFlow

from mmvae_bench import flows
from mmvae_bench.api import log_std_normal
from mmvae_bench.flows import FlowDistribution, FlowPosterior, ProductOfFlows


def _experts(k: int, d: int, hidden: int, *, context: bool = False, b: int = 5) -> list:
    qs = [FlowPosterior(8, d, depth=2, hidden=hidden, layers=2, context=context) for _ in range(k)]
    with torch.no_grad():
        for q in qs:  # move the flows away from their near-identity initialisation
            for p in q.parameters():
                p.add_(0.1 * torch.randn_like(p))
    return [q(torch.randn(b, 8)) for q in qs]


def _reference(experts: list, power: float, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    z = z.clone().requires_grad_(True)
    lp = sum(NormalizingFlow.log_prob(q, z) for q in experts) - power * log_std_normal(z)
    (grad,) = torch.autograd.grad(lp.sum(), z)
    return lp.detach(), grad


# Latent 24 with hidden 8: the MADE reads only the first 8 features of its order (the
# PolyMNIST case, 512 vs 128); latent 4 with hidden 16: hidden units cycle over all features.
@pytest.mark.parametrize(
    ("d", "hidden", "context"), [(24, 8, False), (4, 16, False), (6, 16, True)]
)
def test_product_value_and_gradient_match_zuko_autograd(d: int, hidden: int, context: bool) -> None:
    experts = _experts(3, d, hidden, context=context)
    target = ProductOfFlows(experts, prior_power=2)
    assert target._stack is not None  # the batched closed-form path, not the fallback
    z = torch.randn(7, 5, d)
    lp, grad = target.value_and_grad(z)
    ref_lp, ref_grad = _reference(experts, 2.0, z)
    # float32 sums of ~100 terms: 1e-4 relative.
    assert torch.allclose(lp, ref_lp, rtol=1e-4, atol=1e-4)
    assert torch.allclose(grad, ref_grad, rtol=1e-4, atol=1e-4)
    assert torch.allclose(target(z), ref_lp, rtol=1e-4, atol=1e-4)


def test_structure_reads_only_what_the_masks_allow() -> None:
    # The published sizes: latent 512, hidden 128 -> 128 features read, 128 inverse passes.
    q = FlowPosterior(16, 512, depth=2, hidden=128, layers=3)
    for st in q.structure():
        assert len(st.inputs) == 128 and len(st.influential) == 128
        assert st.passes == 128
    q = FlowPosterior(16, 4, depth=1, hidden=16, layers=2)
    (st,) = q.structure()
    assert st.passes == 3 and len(st.influential) == 3  # a chain 0 -> 1 -> 2 -> 3


@pytest.mark.parametrize(("d", "hidden", "context"), [(24, 8, False), (6, 16, True)])
def test_short_inverse_matches_zukos_full_inverse(d: int, hidden: int, context: bool) -> None:
    (q,) = _experts(1, d, hidden, context=context, b=3)
    u = q.base.sample((4,))  # (4, 3, d) base points
    with torch.no_grad():
        ours = ProductOfFlows([q])._stack.invert(0, u.reshape(-1, d), torch.arange(12) % 3)
        ref = q.transform.inv(u)
    assert torch.allclose(ours.view(4, 3, d), ref, atol=1e-5)
    x = q.rsample((2,))
    assert x.shape == (2, 3, d) and x.requires_grad  # differentiable like zuko's rsample


def test_rsample_gives_the_flow_distribution() -> None:
    # Samples through the short inverse, mapped back by zuko's forward transform, are the base
    # Gaussian: standardised, mean 0 and variance 1 within 4,000-sample errors.
    (q,) = _experts(1, 12, 4, b=2)
    with torch.no_grad():
        x = q.sample((4000,))
        r = (q.transform(x) - q.base.mean) / q.base.stddev
    assert r.mean().abs() < 0.02 and (r.var() - 1).abs() < 0.03


def test_product_falls_back_to_autograd_for_other_experts() -> None:
    experts = [
        torch.distributions.Independent(torch.distributions.Normal(m, 1.0), 1)
        for m in (
            torch.zeros(3, 2),
            torch.ones(3, 2),
        )
    ]
    target = ProductOfFlows(experts, prior_power=1)
    assert target._stack is None
    z = torch.randn(4, 3, 2)
    lp, grad = target.value_and_grad(z)
    # N(0,1) N(1,1) / N(0,1) = N(1,1): the gradient is 1 - z.
    assert torch.allclose(grad, 1 - z, atol=1e-6)
    assert target.sample_experts(5).shape == (5, 3, 2)


def test_sample_experts_draws_from_every_expert() -> None:
    experts = _experts(2, 6, 16, b=2)
    with torch.no_grad():  # make the experts far apart: each start sits near one of them
        for sign, q in zip((-1, 1), experts, strict=True):
            q.posterior.base.linear.bias[:6] = 20.0 * sign
    experts = [q.posterior(q.features) for q in experts]
    z = ProductOfFlows(experts).sample_experts(200)
    side = z.mean(-1) > 0
    assert 0.3 < side.float().mean() < 0.7  # about half of the chains from each expert


# Subsets of one size (every expert in equally many: no padding) and of mixed sizes (padded).
SUBSET_LISTS = [
    [(0, 1), (0, 2), (0, 3), (1, 2), (1, 3), (2, 3)],
    [(0, 1), (2,), (1, 2, 3)],
]


@pytest.mark.parametrize("subsets", SUBSET_LISTS)
@pytest.mark.parametrize("stacked", [True, False])
def test_one_target_for_many_subsets_equals_one_target_per_subset(
    subsets: list, stacked: bool
) -> None:
    # The evaluation samples every subset of a size in one HMC call: the multi-subset target's
    # row (s, b) must be subset s's own product at datapoint b, value and gradient.
    experts = _experts(4, 6, 16, b=3)
    if not stacked:  # zuko's generic flows: the autograd fallback
        experts = [NormalizingFlow(q.transform, q.base) for q in experts]
    many = ProductOfFlows(experts, prior_power=1.5, subsets=subsets)
    assert (many._stack is not None) == stacked
    z = torch.randn(2, len(subsets) * 3, 6)
    lp, grad = many.value_and_grad(z)
    assert lp.shape == (2, len(subsets) * 3) and grad.shape == z.shape
    for s, sub in enumerate(subsets):
        one = ProductOfFlows([experts[e] for e in sub], prior_power=1.5)
        rows = slice(3 * s, 3 * (s + 1))
        ref_lp, ref_grad = one.value_and_grad(z[:, rows])
        assert torch.allclose(lp[:, rows], ref_lp, rtol=1e-5, atol=1e-4)
        assert torch.allclose(grad[:, rows], ref_grad, rtol=1e-5, atol=1e-4)
        assert torch.allclose(many(z)[:, rows], ref_lp, rtol=1e-5, atol=1e-4)
        if stacked:
            mean, std = many.gaussian_product()
            ref_mean, ref_std = one.gaussian_product()
            assert torch.allclose(mean[rows], ref_mean, atol=1e-5)
            assert torch.allclose(std[rows], ref_std, atol=1e-5)


@pytest.mark.parametrize("stacked", [True, False])
def test_many_subset_starts_come_from_each_subsets_own_experts(stacked: bool) -> None:
    experts = _experts(3, 6, 16, b=2)
    with torch.no_grad():  # experts far apart: a start's nearest expert is the one it came from
        for e, q in enumerate(experts):
            q.posterior.base.linear.bias[:6] = 30.0 * e
            q.posterior.base.linear.bias[6:] = -6.0  # small variances
    experts = [q.posterior(q.features) for q in experts]
    if not stacked:
        experts = [NormalizingFlow(q.transform, q.base) for q in experts]
    subsets = [(0, 1), (1, 2), (0, 2)]
    target = ProductOfFlows(experts, subsets=subsets)
    z = target.sample_experts(300)
    assert z.shape == (300, 3 * 2, 6)
    with torch.no_grad():
        density = torch.stack([q.log_prob(z.unflatten(1, (3, 2))) for q in experts])
    source = density.argmax(0)  # (300, S, B): the expert each start came from
    for s, sub in enumerate(subsets):
        picked = source[:, s]
        assert set(picked.unique().tolist()) == set(sub)  # both of its experts, no other
        assert 0.35 < (picked == sub[0]).float().mean() < 0.65


def test_subsets_are_checked() -> None:
    experts = _experts(2, 4, 8)
    for bad in ([()], [(0, 0)], [(0, 2)], []):
        with pytest.raises(ValueError, match="subset"):
            ProductOfFlows(experts, subsets=bad)
    with pytest.raises(ValueError, match="one subset"):
        ProductOfFlows(experts, subsets=[(0,), (1,)]).sample_experts(2, expert=0)


def test_flow_distribution_is_zukos_with_its_source() -> None:
    q = FlowPosterior(8, 4)
    h = torch.randn(3, 8)
    d = q(h)
    assert isinstance(d, FlowDistribution) and isinstance(d, NormalizingFlow)
    assert d.posterior is q and d.features is h
    assert d.log_prob(d.sample((2,))).shape == (2, 3)


@pytest.mark.slow
def test_compiled_kernels_agree_with_eager() -> None:
    experts = _experts(2, 8, 16)
    target = ProductOfFlows(experts, prior_power=1)
    z = torch.randn(3, 5, 8)
    eager = target.value_and_grad(z)
    flows.compile_kernels(True)
    try:
        compiled = target.value_and_grad(z)
    finally:
        flows.compile_kernels(False)
    assert all(torch.allclose(a, b, atol=1e-4) for a, b in zip(eager, compiled, strict=True))
