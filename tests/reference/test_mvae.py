"""MVAE against MultiVae's MVAE with shared nets: subset posteriors, decoders, loss, gradients."""

from __future__ import annotations

import pytest

pytest.importorskip("multivae", reason="multivae is not installed: pip install -e '.[reference]'")

import torch  # noqa: E402
from multivae.models import MVAE as RefMVAE  # noqa: E402
from multivae.models import MVAEConfig as RefMVAEConfig  # noqa: E402
from pythae.models.base.base_utils import ModelOutput  # noqa: E402

from mmvae_bench.api import all_subsets  # noqa: E402
from plugins.mvae import MVAE, MVAEConfig  # noqa: E402
from tests.reference import shared  # noqa: E402
from tests.reference.shared import fixed_noise, grads, record, rel_diff  # noqa: E402

TOL = 1e-5


def build(k: int = 0, beta: float = 1.0) -> tuple[MVAE, RefMVAE, dict]:
    ds = shared.dataset()
    ours = MVAE(ds, MVAEConfig(**shared.TINY, k_subsets=k, beta=beta)).eval().to(shared.DTYPE)
    # warmup 0: no KL annealing (ours has none by default; MultiVae's default is 10 epochs).
    config = RefMVAEConfig(**shared.ref_config_fields(ours), k=k, warmup=0, beta=beta)
    ref = (
        RefMVAE(
            config,
            encoders=shared.ref_encoders(ours.experts, ours.latent_dim),
            decoders=shared.ref_decoders(ours.decoders),
        )
        .eval()
        .to(shared.DTYPE)
    )
    return ours, ref, shared.batch_of(ds)


def test_subset_posteriors_and_samples_equal() -> None:
    ours, ref, batch = build()
    inputs = shared.ref_inputs(batch)
    with torch.no_grad():
        for s in all_subsets(ours.modalities):
            mu, logvar = ours.posterior(batch, s)
            rmu, rlogvar = ref.compute_mu_log_var_subset(inputs, list(s))
            err = max(rel_diff(mu, rmu), rel_diff(logvar, rlogvar))
            with fixed_noise(1):
                z = ours.encode(batch, s, 3).z
            with fixed_noise(1):
                rz = ref.encode(inputs, list(s), N=3).z
            err = max(err, rel_diff(z, rz))
            assert record("mvae", "encoder: q(z|X_S) mean, logvar, samples", err) < TOL, s


def test_decoders_equal() -> None:
    ours, ref, _ = build()
    z = torch.randn(5, ours.latent_dim, dtype=shared.DTYPE)
    with torch.no_grad():
        out = ref.decode(ModelOutput(z=z, one_latent_space=True))
        for m, dec in ours.decoders.items():
            assert record("mvae", "decoder: raw output", rel_diff(dec(z), out[m])) == 0.0


@pytest.mark.parametrize("beta", [1.0, 2.5])
def test_loss_and_gradients_equal_without_random_subsets(beta: float) -> None:
    ours, ref, batch = build(k=0, beta=beta)
    params = list(ours.parameters())
    with fixed_noise(2):
        loss = ours.loss(batch, "train", {})["loss"]
    with fixed_noise(2):
        rloss = ref(shared.ref_inputs(batch), epoch=1).loss
    assert record("mvae", "loss (joint + unimodal ELBOs)", rel_diff(loss, rloss)) < TOL
    g, rg = grads(loss, params), grads(rloss, params)
    assert record("mvae", "gradients", rel_diff(g, rg)) < TOL


def test_loss_with_one_random_subset_equal_when_the_draw_matches(monkeypatch) -> None:
    # Ours draws k subsets with torch.randperm, MultiVae with numpy's choice: record our draw
    # and hand MultiVae the same subset, then the objectives must agree.
    ours, ref, batch = build(k=1)
    drawn: list[tuple[str, ...]] = []
    elbo = ours._elbo

    def spy(batch, experts, subset, kl_weight):
        drawn.append(tuple(subset))
        return elbo(batch, experts, subset, kl_weight)

    monkeypatch.setattr(ours, "_elbo", spy)
    with fixed_noise(3):
        loss = ours.loss(batch, "train", {})["loss"]
    extra = drawn[-1]
    assert 1 < len(extra) < len(ours.specs)
    index = [tuple(s) for s in ref.subsets].index(extra)
    monkeypatch.setattr("multivae.models.mvae.mvae_model.choice", lambda a, size, replace: [index])
    ref.train()  # MultiVae adds random subsets in training mode only
    with fixed_noise(3):
        rloss = ref(shared.ref_inputs(batch), epoch=1).loss
    assert record("mvae", "loss with k=1 random subset", rel_diff(loss, rloss)) < TOL
    params = list(ours.parameters())
    assert record("mvae", "gradients", rel_diff(grads(loss, params), grads(rloss, params))) < TOL


def test_kl_annealing_matches_but_for_the_last_warm_up_epoch() -> None:
    # Ours ramps the KL weight by the fractional epoch e (0 at the start) over anneal_epochs;
    # MultiVae by (epoch - 1 + batch_ratio) / warmup with epochs counted from 1, but switches
    # to the full weight at epoch == warmup, one epoch early: in e in [warmup - 1, warmup)
    # ours is beta * e / warmup, MultiVae's beta (a documented difference of theirs).
    ours, ref, batch = build(beta=2.0)
    ours = MVAE(shared.dataset(), MVAEConfig(**shared.TINY, anneal_epochs=10, beta=2.0))
    ref.warmup = 10
    inputs = shared.ref_inputs(batch)
    for e in (0.0, 0.25, 3.5, 8.75, 9.0, 9.5, 10.0, 12.0):
        epoch, ratio = int(e) + 1, e - int(e)
        with torch.no_grad():
            ref_beta = float(ref(inputs, epoch=epoch, batch_ratio=ratio).metrics["beta"])
        expected = 2.0 if 9.0 <= e < 10.0 else ours.kl_weight(e)
        assert abs(ref_beta - expected) < 1e-9, e
    assert ours.kl_weight(9.5) == pytest.approx(1.9)
