"""JNF against MultiVae's JNF with shared nets: posteriors, flows, both stages, the HMC target."""

from __future__ import annotations

import pytest

pytest.importorskip("multivae", reason="multivae is not installed: pip install -e '.[reference]'")

import torch  # noqa: E402
from multivae.models import JNF as RefJNF  # noqa: E402
from multivae.models import JNFConfig as RefJNFConfig  # noqa: E402
from torch import nn  # noqa: E402

import plugins.jnf  # noqa: E402
from mmvae_bench.api import HMCSettings, log_std_normal  # noqa: E402
from plugins.jnf import JNF, JNFConfig  # noqa: E402
from tests.reference import shared  # noqa: E402
from tests.reference.shared import fixed_noise, grads, record, rel_diff  # noqa: E402

TOL = 1e-5


def build(beta: float = 1.0) -> tuple[JNF, RefJNF, dict]:
    ds = shared.dataset()
    config = JNFConfig(**shared.TINY, beta=beta, flow_hidden=16, flow_layers=2)
    ours = JNF(ds, config).eval().to(shared.DTYPE)
    d = ours.latent_dim
    # warmup 1: MultiVae's epoch 1 is the joint stage, epoch 2 the unimodal one.
    ref_config = RefJNFConfig(**shared.ref_config_fields(ours), warmup=1, beta=beta)
    unimodal = {
        m: nn.Sequential(ours.unimodal_encoders[m], ours.posteriors[m].base) for m in ours.specs
    }
    ref = RefJNF(
        ref_config,
        encoders=shared.ref_encoders(unimodal, d),
        decoders=shared.ref_decoders(ours.decoders),
        joint_encoder=shared.RefJointEncoder(ours.joint_encoders, ours.joint_merge, d),
        flows={m: shared.RefFlow(ours.posteriors[m]) for m in ours.specs},
    ).eval()
    return ours, ref, shared.batch_of(ds)


def stage_params(model: JNF, stage: str) -> list[nn.Parameter]:
    (modules,) = [s.modules for s in model.stages if s.name == stage]
    return [p for name in modules for p in getattr(model, name).parameters()]


def test_joint_and_unimodal_posteriors_equal() -> None:
    ours, ref, batch = build()
    inputs = shared.ref_inputs(batch)
    with torch.no_grad():
        with fixed_noise(8):
            z = ours.encode(batch, ours.modalities, 3).z
        with fixed_noise(8):
            rz = ref.encode(inputs, "all", N=3).z
        assert record("jnf", "encoder: q(z|X) samples", rel_diff(z, rz)) < TOL
        for m in ours.modalities:
            z0 = torch.randn(3, shared.BATCH, ours.latent_dim, dtype=shared.DTYPE)
            ours_lp = ours.unimodal_posterior(batch, m).log_prob(z0)
            out = ref.encoders[m](batch[m])
            flow = ref.flows[m](z0.reshape(-1, ours.latent_dim))
            base = torch.distributions.Normal(out.embedding, torch.exp(0.5 * out.log_covariance))
            u = flow.out.reshape(z0.shape)
            ref_lp = base.log_prob(u).sum(-1) + flow.log_abs_det_jac.reshape(z0.shape[:2])
            assert record("jnf", "encoder: log q_j(z|x_j)", rel_diff(ours_lp, ref_lp)) < TOL
            # Sampling q_j: ours inverts the MADE blocks with its own fixed-point passes,
            # MultiVae's flow through zuko's inverse.
            with fixed_noise(9):
                z = ours.encode({m: batch[m]}, (m,), 3).z
            with fixed_noise(9):
                rz = ref.encode(inputs, [m], N=3).z
            assert record("jnf", "encoder: q_j(z|x_j) samples", rel_diff(z, rz)) < TOL


def test_decoders_equal() -> None:
    ours, ref, _ = build()
    z = torch.randn(5, ours.latent_dim, dtype=shared.DTYPE)
    with torch.no_grad():
        for m, dec in ours.decoders.items():
            out = ref.decoders[m](z).reconstruction
            assert record("jnf", "decoder: raw output", rel_diff(dec(z), out)) == 0.0


@pytest.mark.parametrize("beta", [1.0, 2.5])
def test_joint_stage_loss_and_gradients_equal(beta: float) -> None:
    ours, ref, batch = build(beta)
    params = stage_params(ours, "joint")
    with fixed_noise(10):
        loss = ours.loss(batch, "joint", {})["loss"]
    with fixed_noise(10):
        rloss = ref(shared.ref_inputs(batch), epoch=1).loss
    assert record("jnf", "loss: stage joint (beta-ELBO)", rel_diff(loss, rloss)) < TOL
    assert (
        record("jnf", "gradients: stage joint", rel_diff(grads(loss, params), grads(rloss, params)))
        < TOL
    )


def test_unimodal_stage_loss_and_gradients_equal() -> None:
    ours, ref, batch = build()
    params = stage_params(ours, "unimodal")
    with fixed_noise(11):
        loss = ours.loss(batch, "unimodal", {})["loss"]
    try:
        with fixed_noise(11):
            rloss = ref(shared.ref_inputs(batch), epoch=2).loss
    finally:
        # MultiVae freezes the joint encoder and decoders in place: they are ours too.
        ours.requires_grad_(True)
    assert record("jnf", "loss: stage unimodal (L_uni)", rel_diff(loss, rloss)) < TOL
    err = rel_diff(grads(loss, params), grads(rloss, params))
    assert record("jnf", "gradients: stage unimodal", err) < TOL


@pytest.mark.parametrize("subset", [("m0", "m3"), ("m1", "m2"), ("m0", "m1", "m3")])
def test_poe_target_of_hmc_differs_by_the_prior_counted_once(monkeypatch, subset) -> None:
    # The density HMC samples for |S| >= 2. Ours (Eq. 12) subtracts log p(z) |S| - 1 times,
    # MultiVae once: ours - theirs = -(|S| - 2) log p(z), gradient +(|S| - 2) z. Equal at |S| = 2.
    ours, ref, batch = build()
    targets = []
    real = plugins.jnf.hmc_sample

    def spy(target, z0, settings):
        targets.append(target)
        return real(target, z0, settings)

    monkeypatch.setattr(plugins.jnf, "hmc_sample", spy)
    steps0 = HMCSettings(steps=0, n_leapfrog=1, step_size=0.01)
    with torch.no_grad():
        ours.encode({m: batch[m] for m in subset}, subset, 1, hmc=steps0)
    (target,) = targets
    z = torch.randn(shared.BATCH, ours.latent_dim, dtype=shared.DTYPE) * 1.5
    value, grad = target.value_and_grad(z)  # the closed-form gradient HMC uses
    rvalue, rgrad = ref._compute_poe_posterior(list(subset), z, batch, divide_prior=True)
    rvalue = rvalue.detach()
    k = len(subset) - 2
    predicted, predicted_grad = -k * log_std_normal(z), k * z
    name = f"|S|={len(subset)}"
    measured = float((value - rvalue).abs().max())
    record("jnf", f"deviation: PoE log-density {name}, max |ours - ref|", measured)
    record(
        "jnf", f"deviation: PoE log-density {name}, max |predicted|", float(predicted.abs().max())
    )
    err = rel_diff(value - predicted, rvalue)
    assert record("jnf", f"PoE log-density {name} after the prediction", err) < TOL
    err = rel_diff(grad - predicted_grad, rgrad)
    assert record("jnf", f"PoE gradient {name} after the prediction", err) < TOL
    assert torch.allclose(target(z), value, rtol=1e-9)  # autograd path = closed form
