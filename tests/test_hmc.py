"""HMC on product-of-experts targets whose posterior is known in closed form."""

from __future__ import annotations

import pytest
import torch

from mmvae_bench.api import (
    BenchError,
    FlowPosterior,
    HMCSettings,
    ProductOfFlows,
    gaussian_poe,
    hmc_sample,
    log_normal_diag,
    log_std_normal,
)

MUS = torch.tensor([[1.0, -0.5, 0.3], [0.2, 0.8, -1.0], [-0.6, 0.1, 0.9]])
LOGVARS = torch.log(torch.tensor([[0.3, 0.5, 0.4], [0.6, 0.2, 0.5], [0.4, 0.4, 0.3]]))


def _poe_target(mus: torch.Tensor, logvars: torch.Tensor):
    k = len(mus)

    def log_target(z: torch.Tensor) -> torch.Tensor:
        # Eq. 12 of the JNF paper: experts times the prior divided out k-1 times.
        experts = sum(log_normal_diag(z, mus[j], logvars[j]) for j in range(k))
        return experts - (k - 1) * log_std_normal(z)

    return log_target


@pytest.mark.parametrize("k", [2, 3])
def test_hmc_recovers_gaussian_poe(k: int) -> None:
    # Each expert q_j = N(mu_j, s_j^2) is a posterior that already contains the prior once:
    # prod_j q_j / p^(k-1) has precision sum_j 1/s_j^2 - (k-1) and the matching mean.
    d = 3
    mus, logvars = MUS[:k], LOGVARS[:k]
    prec = torch.exp(-logvars).sum(0) - (k - 1)
    mean = (mus * torch.exp(-logvars)).sum(0) / prec
    var = 1.0 / prec

    chains = 4000
    z0 = mus[0].expand(chains, d).clone()  # start at one expert's mean, as JNF does
    res = hmc_sample(
        _poe_target(mus, logvars), z0, HMCSettings(steps=60, n_leapfrog=10, step_size=0.1)
    )
    # Tolerances: 4,000 nearly independent chains give a standard error of ~0.01 on the mean
    # and ~2% on the variance; 0.05 / 10% leaves room for residual autocorrelation.
    assert torch.allclose(res.z.mean(0), mean, atol=0.05), (res.z.mean(0), mean)
    assert torch.allclose(res.z.var(0), var, rtol=0.10), (res.z.var(0), var)
    assert 0.5 < res.acceptance <= 1.0


def test_dividing_the_prior_once_is_detectably_wrong() -> None:
    # With three experts the target must divide the prior twice; the variance of a sampler
    # that divides once differs by more than the tolerance above, so the test above can fail.
    correct = 1.0 / (torch.exp(-LOGVARS).sum(0) - 2)
    once = 1.0 / (torch.exp(-LOGVARS).sum(0) - 1)
    assert ((correct - once).abs() / correct > 0.10).all()


def test_matches_closed_form_poe_helper() -> None:
    # gaussian_poe with the prior expert = product of experts in precision space.
    mus = torch.randn(2, 5, 4)
    logvars = torch.randn(2, 5, 4) * 0.3
    mu, logvar = gaussian_poe(mus, logvars, prior=True)
    prec = 1 + torch.exp(-logvars).sum(0)
    assert torch.allclose(logvar, -torch.log(prec))
    assert torch.allclose(mu, (mus * torch.exp(-logvars)).sum(0) / prec, atol=1e-6)


def test_absurd_step_size_gives_low_acceptance_not_nan() -> None:
    target = _poe_target(torch.zeros(2, 4), torch.zeros(2, 4) - 2.0)
    z0 = torch.zeros(500, 4)
    res = hmc_sample(target, z0, HMCSettings(steps=20, n_leapfrog=10, step_size=50.0))
    assert res.acceptance < 0.05
    assert torch.isfinite(res.z).all()


def test_batched_chains_shape_and_independence() -> None:
    # (n, B, D) chains: each datapoint has its own target mean.
    mus = torch.stack([torch.full((4, 2), 2.0), torch.full((4, 2), 2.0)])
    mus[:, 1] = -2.0
    target = _poe_target(mus, torch.zeros_like(mus) - 1.0)
    z0 = torch.zeros(300, 4, 2)
    res = hmc_sample(target, z0, HMCSettings(steps=40, n_leapfrog=10, step_size=0.1))
    assert res.z.shape == (300, 4, 2)
    m = res.z.mean(0)
    assert (m[0] > 1.0).all() and (m[1] < -1.0).all()


def test_invalid_settings_are_user_errors() -> None:
    with pytest.raises(BenchError, match="step_size"):
        HMCSettings(step_size=0.0)
    with pytest.raises(BenchError, match="n_leapfrog"):
        HMCSettings(n_leapfrog=0)
    with pytest.raises(BenchError, match="warmup"):
        HMCSettings(warmup=10)  # the paper's sampler has no warm-up to adapt in
    with pytest.raises(BenchError, match="target_accept"):
        HMCSettings(kind="adaptive", target_accept=1.0)
    with pytest.raises(BenchError, match="precondition"):
        HMCSettings(precondition=True)
    with pytest.raises(BenchError, match="adapt"):
        HMCSettings(kind="adaptive", adapt="datapoint")  # type: ignore[arg-type]
    with pytest.raises(BenchError, match="kind"):
        HMCSettings(kind="nuts")  # type: ignore[arg-type]


def _hmc_as_it_was(log_prob, z0, settings, generator=None):
    # The sampler before `kind` existed (commit b4104b9, mmvae_bench/hmc.py), verbatim but for
    # the autograd fallback: `hmc=paper` must stay this function, bit for bit.
    def value_and_grad(z):
        with torch.enable_grad():
            z = z.detach().requires_grad_(True)
            lp = log_prob(z)
            (grad,) = torch.autograd.grad(lp.sum(), z)
        return lp.detach(), grad

    eps = settings.step_size
    z = z0.detach().clone()
    lp, grad = value_and_grad(z)
    accepted = torch.zeros(z.shape[:-1], device=z.device)
    for _ in range(settings.steps):
        p0 = torch.randn(z.shape, generator=generator, device=z.device, dtype=z.dtype)
        zn, pn, gn = z, p0 + 0.5 * eps * grad, grad
        for k in range(settings.n_leapfrog):
            zn = zn + eps * pn
            lpn, gn = value_and_grad(zn)
            if k < settings.n_leapfrog - 1:
                pn = pn + eps * gn
        pn = pn + 0.5 * eps * gn
        h0 = -lp + 0.5 * (p0 * p0).sum(-1)
        h1 = -lpn + 0.5 * (pn * pn).sum(-1)
        u = torch.rand(h0.shape, generator=generator, device=z.device, dtype=z.dtype)
        accept = torch.isfinite(h1) & (torch.log(u) < (h0 - h1))
        z = torch.where(accept.unsqueeze(-1), zn, z)
        lp = torch.where(accept, lpn, lp)
        grad = torch.where(accept.unsqueeze(-1), gn, grad)
        accepted += accept
    rate = (accepted.mean() / max(settings.steps, 1)).item() if settings.steps else 1.0
    return z.detach(), float(rate)


def test_paper_sampler_is_bit_identical_to_the_original() -> None:
    target = _poe_target(MUS, LOGVARS)
    z0 = torch.randn(64, 5, 3)
    settings = HMCSettings(steps=15, n_leapfrog=4, step_size=0.2)  # acceptance well below 1
    z_old, rate_old = _hmc_as_it_was(target, z0, settings, torch.Generator().manual_seed(3))
    new = hmc_sample(target, z0, settings, torch.Generator().manual_seed(3))
    assert torch.equal(new.z, z_old) and new.acceptance == rate_old
    assert 0.2 < rate_old < 0.99  # the comparison covers accepts and rejects


def _adapted(target_accept: float, adapt: str, start_step: float):
    # N(0, diag(s^2)) in 32-d, scales 0.2..0.4: mean acceptance falls smoothly with the step
    # (0.93 at 0.1, 0.74 at 0.2, 0.39 at 0.3 with 5 leapfrog steps), so a target is reachable.
    scales = torch.linspace(0.2, 0.4, 32)

    def log_prob(z: torch.Tensor) -> torch.Tensor:
        return -0.5 * (z / scales).pow(2).sum(-1)

    settings = HMCSettings(
        kind="adaptive",
        steps=100,
        warmup=100,
        n_leapfrog=5,
        step_size=start_step,
        target_accept=target_accept,
        adapt=adapt,  # type: ignore[arg-type]
    )
    z0 = torch.randn(400, 32) * scales
    return hmc_sample(log_prob, z0, settings, torch.Generator().manual_seed(0))


@pytest.mark.slow
@pytest.mark.parametrize("target_accept", [0.65, 0.8])
def test_dual_averaging_reaches_the_target_acceptance(target_accept: float) -> None:
    # From 400x too small and 10x too large a first step. 400 chains x 100 frozen iterations
    # give the pooled rate a standard error < 0.01; measured |rate - target| <= 0.03.
    for start_step in (0.0005, 2.0):
        res = _adapted(target_accept, "pooled", start_step)
        assert abs(res.acceptance - target_accept) < 0.05, (start_step, res.acceptance)
        assert 0.1 < res.step_size < 0.3, res.step_size  # between the curve's 0.93 and 0.39


@pytest.mark.slow
def test_per_chain_adaptation_moves_with_the_target_and_overshoots_it() -> None:
    # Per-chain steps adapt on one acceptance draw per iteration each: measured 0.76 for a
    # 0.65 target and 0.92 for 0.8 (the documented bias, HMCSettings.adapt). The test pins
    # that the steps follow the target and stay in the stable range, and the bias's size.
    low, high = (_adapted(t, "chain", 0.0005) for t in (0.65, 0.8))
    assert low.acceptance < high.acceptance
    assert 0.65 <= low.acceptance < 0.65 + 0.15 and 0.8 <= high.acceptance < 0.8 + 0.15
    assert high.step_size < low.step_size < 0.3


@pytest.mark.parametrize("k", [2, 3])
def test_adaptive_sampler_recovers_a_2d_gaussian_product(k: int) -> None:
    d = 2
    mus, logvars = MUS[:k, :d], LOGVARS[:k, :d]
    prec = torch.exp(-logvars).sum(0) - (k - 1)
    mean, var = (mus * torch.exp(-logvars)).sum(0) / prec, 1.0 / prec
    chains = 4000
    z0 = mus[0].expand(chains, d).clone()  # a biased start: warm-up must forget it
    settings = HMCSettings(kind="adaptive", warmup=30, steps=15, n_leapfrog=4, step_size=0.1)
    res = hmc_sample(_poe_target(mus, logvars), z0, settings, torch.Generator().manual_seed(1))
    # Same tolerances as the paper sampler's test above (standard errors ~0.01 and ~2%).
    assert torch.allclose(res.z.mean(0), mean, atol=0.05), (res.z.mean(0), mean)
    assert torch.allclose(res.z.var(0), var, rtol=0.10), (res.z.var(0), var)
    # A wrong preconditioner (10x too wide in one coordinate) costs efficiency, not correctness:
    # started from the target itself, the chains keep its moments.
    scale = torch.tensor([1.0, 10.0])
    exact = mean + var.sqrt() * torch.randn(chains, d)
    res = hmc_sample(
        _poe_target(mus, logvars), exact, settings, torch.Generator().manual_seed(2), scale=scale
    )
    assert torch.allclose(res.z.mean(0), mean, atol=0.05), (res.z.mean(0), mean)
    assert torch.allclose(res.z.var(0), var, rtol=0.10), (res.z.var(0), var)


def _affine_flow(seed: int) -> FlowPosterior:
    # MADE blocks whose outputs ignore z (last layer's weights zeroed, random biases): every
    # block is an elementwise affine map, so the linearised moments are exact.
    torch.manual_seed(seed)
    q = FlowPosterior(features=6, latent_dim=3, depth=2, hidden=16, layers=2)
    with torch.no_grad():
        q.base.linear.weight.mul_(0.1)
        q.base.linear.bias[3:] = -2.0  # base variances ~0.14: the product stays proper
        for t in q.transforms:
            last = list(t.hyper)[-1]
            last.weight.zero_()
            last.bias.normal_(0.0, 0.5)
    return q


def test_gaussian_product_of_flow_experts() -> None:
    h = torch.randn(4, 6)
    experts = [_affine_flow(s)(h) for s in (0, 1, 2)]
    target = ProductOfFlows(experts, prior_power=2)
    assert target._stack is not None  # the linearised (stacked) path
    mean, std = target.gaussian_product()
    draws = torch.stack([q.sample((20000,)) for q in experts])  # (E, K, B, D)
    m, v = draws.mean(1), draws.var(1)
    prec = (1 / v).sum(0) - 2
    assert (prec > (1 / v).min(0).values).all()  # the unfloored case
    assert torch.allclose(mean, (m / v).sum(0) / prec, atol=0.05)
    assert torch.allclose(std, prec.rsqrt(), rtol=0.05)
    # The sampled fallback (experts not stackable) agrees within its Monte Carlo error.
    fallback = ProductOfFlows([torch.distributions.Normal(q.sample((1,))[0], 1.0) for q in experts])
    fmean, fstd = fallback.gaussian_product(samples=4000)
    assert fmean.shape == fstd.shape == (4, 3) and torch.isfinite(fstd).all()


def test_sample_experts_of_one_expert() -> None:
    h = torch.randn(4, 6)
    experts = [_affine_flow(s)(h) for s in (0, 1)]
    target = ProductOfFlows(experts, prior_power=1)
    for e, q in enumerate(experts):
        z = target.sample_experts(3000, expert=e)
        assert z.shape == (3000, 4, 3)
        ref = q.sample((3000,))
        assert torch.allclose(z.mean(0), ref.mean(0), atol=0.1)
        assert torch.allclose(z.std(0), ref.std(0), rtol=0.1)
    # the two experts differ by more than that tolerance, so a wrong pick fails
    assert (
        experts[0].sample((3000,)).mean(0) - experts[1].sample((3000,)).mean(0)
    ).abs().max() > 0.3
