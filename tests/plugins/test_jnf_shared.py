"""What is specific to JNF-Shared: the projector losses, the frozen projector, q_j on g_j(x_j)."""

from __future__ import annotations

import itertools

import pytest
import torch
from accelerate import Accelerator
from torch.nn import functional as F

from mmvae_bench.api import BenchError, MultimodalDataset
from mmvae_bench.config import make_config
from mmvae_bench.plugins import load_registry
from mmvae_bench.testing import check_model, tiny_dataset
from mmvae_bench.train import TrainSettings, freeze_for_stage, train
from plugins.jnf_shared import (
    JNFShared,
    JNFSharedConfig,
    dcca_correlation,
    multi_positive_nt_xent,
)

PROJECTOR_MODULES = {"contrastive": ("processors", "shared_head"), "dcca": ("processors",)}


def vectors(n: int = 48) -> MultimodalDataset:
    return tiny_dataset(("vector", "vector", "vector"), n=n)


def make(ds: MultimodalDataset, projector: str = "contrastive", **kw) -> JNFShared:
    values = dict(
        latent_dim=4,
        batch_size=16,
        width=2,
        features=16,
        flow_hidden=16,
        flow_layers=1,
        common_dim=16,
        shared_dim=4,
        dcca_dim=4,
        projector_batch_size=16,
        epochs_projector=1,
        epochs_joint=1,
        epochs_unimodal=1,
    )
    values.update(kw)
    return JNFShared(ds, JNFSharedConfig(projector=projector, **values))


def _well_conditioned(d: int) -> torch.Tensor:
    """A random invertible d x d map with singular values in [0.5, 2]."""
    q, _ = torch.linalg.qr(torch.randn(d, d))
    return q * torch.empty(d).uniform_(0.5, 2.0)


def _reference_correlation(h1: torch.Tensor, h2: torch.Tensor, reg: float) -> float:
    """The textbook formula: sum of singular values of S11^-1/2 S12 S22^-1/2 (eigh)."""
    h1, h2 = (h.double() - h.double().mean(0) for h in (h1, h2))
    n, d = h1.shape
    eye = torch.eye(d, dtype=torch.float64)

    def inv_sqrt(s: torch.Tensor) -> torch.Tensor:
        lam, v = torch.linalg.eigh(s)
        return v @ torch.diag(lam.clamp_min(1e-12).rsqrt()) @ v.T

    s11 = h1.T @ h1 / (n - 1) + reg * eye
    s22 = h2.T @ h2 / (n - 1) + reg * eye
    t = inv_sqrt(s11) @ (h1.T @ h2 / (n - 1)) @ inv_sqrt(s22)
    return float(torch.linalg.svdvals(t).sum())


# -- DCCA ------------------------------------------------------------------------------------------
def test_dcca_perfectly_correlated_views_reach_the_optimum() -> None:
    # Three views, each an invertible linear map (plus a shift) of one source: every canonical
    # correlation is 1, so each pair's total correlation is k = dim and the loss -k per pair.
    # (Well-conditioned maps: r caps a component of variance s at about s / (s + r).)
    n, d = 2000, 5
    src = torch.randn(n, d)
    views = torch.stack([src @ _well_conditioned(d) + torch.randn(d) for _ in range(3)])
    corr = dcca_correlation(views, reg=1e-3)
    assert corr.shape == (3,)
    # r = 1e-3 against variances of order 1 costs about r per component: tolerance 1e-2 * d.
    assert torch.allclose(corr, torch.full((3,), float(d)), atol=1e-2 * d), corr
    assert all(c <= d + 1e-6 for c in corr.tolist())


def test_dcca_matches_the_eigh_whitening_formula() -> None:
    # The Cholesky whitening gives the same singular values as S^-1/2 (up to float error).
    h = torch.randn(2, 300, 6)
    h[1] = 0.7 * h[0] + 0.5 * h[1]
    got = float(dcca_correlation(h, reg=1e-3)[0])
    assert got == pytest.approx(_reference_correlation(h[0], h[1], 1e-3), abs=1e-5)


def test_dcca_independent_views_are_near_zero() -> None:
    # Sample canonical correlations of independent views are about sqrt(d / n) each (0.03 here);
    # the total over d = 5 components must stay under 0.25, i.e. 5% of the optimum.
    h = torch.randn(3, 5000, 5)
    corr = dcca_correlation(h, reg=1e-3)
    assert float(corr.max()) < 0.25, corr


def test_dcca_top_k_sums_the_strongest_components() -> None:
    # Two correlated dims, three independent ones: top-2 is about 2, all five not much more.
    n = 4000
    shared = torch.randn(n, 2)
    a = torch.cat([shared, torch.randn(n, 3)], dim=1)
    b = torch.cat([torch.randn(n, 3), shared @ _well_conditioned(2)], dim=1)
    h = torch.stack([a, b])
    top2 = float(dcca_correlation(h, reg=1e-3, top_k=2)[0])
    assert top2 == pytest.approx(2.0, abs=0.01)
    assert float(dcca_correlation(h, reg=1e-3)[0]) < top2 + 0.15


def test_dcca_gradient_is_finite_at_white_embeddings_and_small_batches() -> None:
    # The cases where eigh's backward divides by zero eigenvalue gaps: identical white views
    # (S = I) and a batch smaller than the dimension (the eigenvalue r repeated).
    x = torch.randn(500, 8, dtype=torch.float64)
    x = x - x.mean(0)
    chol = torch.linalg.cholesky(x.T @ x / 499)
    white = torch.linalg.solve_triangular(chol, x.T, upper=False).T.float()
    for h in (torch.stack([white, white]), torch.randn(2, 4, 8)):
        h = h.clone().requires_grad_(True)
        dcca_correlation(h, reg=1e-3).sum().backward()
        assert bool(torch.isfinite(h.grad).all())


def test_dcca_diverged_embeddings_give_nan_not_an_exception() -> None:
    # The trainer's NaN stop must see it (svdvals itself raises on non-finite input).
    h = torch.randn(3, 10, 3)
    h[0, 0, 0] = float("inf")
    corr = dcca_correlation(h, reg=1e-3)
    assert torch.isnan(corr[:2]).all() and bool(torch.isfinite(corr[2]))


# -- contrastive -----------------------------------------------------------------------------------
def test_contrastive_loss_ranks_matching_tuples_above_shuffled() -> None:
    # Embeddings of a tuple aligned across modalities give a lower loss than the same
    # embeddings with one modality's tuples shuffled.
    b, d = 32, 8
    base = F.normalize(torch.randn(b, d), dim=-1)
    noisy = torch.stack([F.normalize(base + 0.1 * torch.randn(b, d), dim=-1) for _ in range(3)])
    aligned = multi_positive_nt_xent(noisy, temperature=0.1)
    shuffled = noisy.clone()
    shuffled[1] = shuffled[1, torch.randperm(b)]
    worse = multi_positive_nt_xent(shuffled, temperature=0.1)
    assert float(aligned) < float(worse) - 1.0


def test_contrastive_loss_is_nt_xent_for_two_modalities() -> None:
    # M = 2: each anchor has one positive, so the loss is SimCLR's cross-entropy exactly.
    b, tau = 6, 0.1
    e = F.normalize(torch.randn(2, b, 5), dim=-1)
    flat = e.reshape(2 * b, 5)
    logits = (flat @ flat.T / tau).fill_diagonal_(float("-inf"))
    target = torch.arange(2 * b).roll(b)  # row r's partner is r +- b
    expected = F.cross_entropy(logits, target)
    got = multi_positive_nt_xent(e, tau)
    assert float(got) == pytest.approx(float(expected), rel=1e-5)


# -- stages and freezing ---------------------------------------------------------------------------
@pytest.mark.parametrize("projector", ["contrastive", "dcca"])
def test_projector_stage_trains_only_the_projector(projector: str) -> None:
    ds = vectors()
    model = make(ds, projector)
    stage = model.stages[0]
    assert [s.name for s in model.stages] == ["projector", "joint", "unimodal"]
    assert stage.modules == PROJECTOR_MODULES[projector]
    params = freeze_for_stage(model, stage)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    batch = {m: t[:16] for m, t in ds.train.x.items()}
    out = model.loss(batch, "projector", {})
    opt = torch.optim.Adam(params, lr=1e-2)
    out["loss"].backward()
    opt.step()
    after = model.state_dict()
    own = tuple(f"{m}." for m in stage.modules)
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(k.startswith(own) for k in changed), changed
    assert set(out) == ({"loss"} if projector == "contrastive" else {"loss", "corr_mean"})


def test_projector_batch_size_defaults() -> None:
    ds = vectors()
    assert make(ds, "dcca", projector_batch_size=None).stages[0].batch_size == 500
    assert make(ds, "contrastive", projector_batch_size=None).stages[0].batch_size == 16
    assert make(ds, "dcca", projector_batch_size=64).stages[0].batch_size == 64


@pytest.mark.parametrize("projector", ["contrastive", "dcca"])
def test_unimodal_stage_keeps_the_projector_frozen_and_in_eval_mode(projector: str) -> None:
    ds = vectors()
    model = make(ds, projector)
    acc = Accelerator(cpu=True)
    train(model, ds, acc, TrainSettings(epochs={"joint": 0, "unimodal": 0}, progress=False))
    proj = PROJECTOR_MODULES[projector]
    before = {k: v.clone() for k, v in model.state_dict().items() if k.startswith(proj)}
    if projector == "dcca":  # its BatchNorm buffers would move in train mode
        assert any("running_mean" in k for k in before)
    modes: list[bool] = []
    for name in proj:  # every submodule: a ModuleDict's own forward never runs
        for mod in getattr(model, name).modules():
            mod.register_forward_pre_hook(lambda mod, _: modes.append(mod.training))
    uni = model.stages[2]
    freeze_for_stage(model, uni)
    assert not any(p.requires_grad for n in proj for p in getattr(model, n).parameters())
    uni_before = {k: v.clone() for k, v in model.state_dict().items() if k.startswith(uni.modules)}
    train(model, ds, acc, TrainSettings(epochs={"projector": 0, "joint": 1}, progress=False))
    after = model.state_dict()
    assert modes and not any(modes), "the projector ran in train mode after its stage"
    assert all(torch.equal(before[k], after[k]) for k in before), "projector changed"
    assert any(not torch.equal(uni_before[k], after[k]) for k in uni_before), "stage 2 idle"


# -- q_j conditioned on g_j(x_j) -----------------------------------------------------------------
def test_unimodal_posterior_sees_x_only_through_the_projector() -> None:
    ds = vectors()
    model = make(ds).eval()
    x = ds.test.x
    a, b = {m: t[:6] for m, t in x.items()}, {m: t[6:12] for m, t in x.items()}
    z = torch.randn(6, 4)
    with torch.no_grad():
        qa = model.unimodal_posterior(a, "m0").log_prob(z)
        qb = model.unimodal_posterior(b, "m0").log_prob(z)
        assert not torch.allclose(qa, qb)
        # Different x_j, same g_j(x_j): the same posterior.
        fixed = model.project(a["m0"], "m0")
        model.project = lambda x, m: fixed  # type: ignore[method-assign]
        assert torch.equal(model.unimodal_posterior(b, "m0").log_prob(z), qa)
        del model.project
        # Same x_j, another projector output: another posterior.
        model.shared_head[-1].weight.add_(1.0)
        assert not torch.allclose(model.unimodal_posterior(a, "m0").log_prob(z), qa)


def test_cached_and_recomputed_unimodal_losses_agree() -> None:
    ds = vectors()
    model = make(ds, "dcca")
    freeze_for_stage(model, model.stages[2])
    batch = {m: t[:8] for m, t in ds.train.x.items()}
    with torch.no_grad():
        cached = model.precompute(batch, "unimodal")
    assert {f"g_{m}" for m in ds.specs} <= set(cached)
    with torch.random.fork_rng():
        from_cache = model.loss(batch, "unimodal", cached)["loss"]
    recomputed = model.loss(batch, "unimodal", {})["loss"]
    assert torch.allclose(from_cache, recomputed, atol=1e-6)


# -- config ----------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("projector", "pca"),
        ("epochs_projector", -1),
        ("lr_projector", 0.0),
        ("common_dim", 0),
        ("shared_dim", 0),
        ("dcca_dim", 0),
        ("dcca_reg", 0.0),
        ("temperature", -0.1),
        ("projector_batch_size", 1),
        ("dcca_top_k", 21),
        ("random_dim", 0),
    ],
)
def test_config_rejects_bad_values_naming_the_field(field: str, value: object) -> None:
    with pytest.raises(BenchError, match=field):
        JNFSharedConfig(**{field: value})


def test_config_parses_the_projector_choice() -> None:
    cfg = make_config(JNFSharedConfig, {"projector": "dcca", "dcca_top_k": "5"})
    assert cfg.projector == "dcca" and cfg.dcca_top_k == 5 and cfg.projector_dim == 20


def test_dcca_variant_conforms() -> None:
    # tests/test_conformance.py checks the default (contrastive) variant on every dataset.
    entry = load_registry().model("jnf-shared")
    small = {"flow_hidden": 16, "flow_layers": 1, "projector": "dcca", "dcca_dim": 6}
    check_model(entry, tiny_dataset(("image28", "vector"), n=8), overrides=small)


# -- random projector (a baseline) ----------------------------------------------------------------
def test_random_variant_conforms() -> None:
    entry = load_registry().model("jnf-shared")
    small = {"flow_hidden": 16, "flow_layers": 1, "projector": "random", "random_dim": 5}
    check_model(entry, tiny_dataset(("image28", "vector"), n=8), overrides=small)


def test_random_projector_has_no_stage_and_is_never_trained() -> None:
    ds = tiny_dataset(("image28", "vector"), n=32)
    model = make(ds, "random", random_dim=5)
    assert [s.name for s in model.stages] == ["joint", "unimodal"]
    assert not list(model.processors.parameters()), "the random projection has parameters"
    before = {k: v.clone() for k, v in model.processors.state_dict().items()}
    assert sorted(before) == ["m0.weight", "m1.weight"]
    assert before["m0.weight"].shape == (5, 3 * 28 * 28)
    # Entries N(0, 1/D): each row has squared norm about 1 (D = 2352: sd 0.03).
    assert before["m0.weight"].pow(2).sum(1).sub(1).abs().max() < 0.2
    stage2 = {k: v.clone() for k, v in model.unimodal_encoders.state_dict().items()}
    acc = Accelerator(cpu=True)
    train(model, ds, acc, TrainSettings(epochs={"joint": 1, "unimodal": 1}, progress=False))
    after = model.processors.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before), "random projection changed"
    moved = model.unimodal_encoders.state_dict()
    assert any(not torch.equal(stage2[k], moved[k]) for k in stage2), "stage 2 idle"
    # g_j is the linear map itself: g(a x) = a g(x), and it is what q_j sees.
    x = ds.train.batch(slice(0, 4))["m0"]
    g = model.project(x, "m0")
    assert torch.allclose(g, x.flatten(1) @ before["m0.weight"].T, atol=1e-5)
    assert torch.allclose(model.project(2 * x, "m0"), 2 * g, atol=1e-5)


def test_random_projection_is_saved_with_the_model() -> None:
    ds = vectors()
    a, b = make(ds, "random"), make(ds, "random")
    assert not torch.equal(a.processors["m0"].weight, b.processors["m0"].weight)
    b.load_state_dict(a.state_dict())
    assert torch.equal(a.processors["m0"].weight, b.processors["m0"].weight)


def test_pairs_follow_combinations_order() -> None:
    # corr[p] belongs to the p-th pair of itertools.combinations: view 2 is a copy of view 0.
    h = torch.randn(3, 400, 3)
    h[2] = h[0]
    corr = dcca_correlation(h, reg=1e-3)
    pairs = list(itertools.combinations(range(3), 2))
    assert pairs[int(corr.argmax())] == (0, 2)
