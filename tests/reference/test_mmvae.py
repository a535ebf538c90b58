"""MMVAE against MultiVae's MMVAE with shared nets: experts, decoders, IWAE/DReG, gradients."""

from __future__ import annotations

import pytest

pytest.importorskip("multivae", reason="multivae is not installed: pip install -e '.[reference]'")

import torch  # noqa: E402
from multivae.models import MMVAE as RefMMVAE  # noqa: E402
from multivae.models import MMVAEConfig as RefMMVAEConfig  # noqa: E402
from torch import Tensor, nn  # noqa: E402

from plugins.mmvae import MMVAE, MMVAEConfig, laplace_log_prob  # noqa: E402
from tests.reference import shared  # noqa: E402
from tests.reference.shared import fixed_noise, grads, record, rel_diff  # noqa: E402

TOL = 1e-5
K = 3


class RawLaplaceHead(nn.Module):
    """Our Laplace expert's (loc, raw scale logits): MultiVae applies softmax * D + 1e-6 itself."""

    def __init__(self, expert: nn.Module) -> None:
        super().__init__()
        self.expert = expert

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        loc, raw = self.expert.head(self.expert.encoder(x)).chunk(2, dim=-1)
        return loc, raw


def build(estimator: str, learn_prior: bool) -> tuple[MMVAE, RefMMVAE, dict]:
    ds = shared.dataset()
    config = MMVAEConfig(**shared.TINY, k=K, estimator=estimator, learn_prior=learn_prior)
    ours = MMVAE(ds, config).eval().to(shared.DTYPE)
    loss = {"iwae": "iwae_looser", "dreg": "dreg_looser"}[estimator]
    ref_config = RefMMVAEConfig(
        **shared.ref_config_fields(ours), K=K, loss=loss, learn_prior=learn_prior
    )
    nets = {m: RawLaplaceHead(e) for m, e in ours.experts.items()}
    ref = (
        RefMMVAE(
            ref_config,
            encoders=shared.ref_encoders(nets, ours.latent_dim),
            decoders=shared.ref_decoders(ours.decoders),
        )
        .eval()
        .to(shared.DTYPE)
    )
    if learn_prior:
        # One set of prior logits for both: ours is the parameter, MultiVae's a copy of it.
        with torch.no_grad():
            ours.prior.logits.copy_(torch.randn(ours.latent_dim) * 0.3)
            ref.prior_log_var.copy_(ours.prior.logits[None])
    return ours, ref, shared.batch_of(ds)


def ref_loss(ours: MMVAE, ref: RefMMVAE, batch: dict) -> Tensor:
    """MultiVae's loss is the batch sum of the bound; ours its batch mean."""
    with fixed_noise(6):
        return ref(shared.ref_inputs(batch)).loss / shared.BATCH


def test_experts_and_decoders_equal() -> None:
    ours, ref, batch = build("dreg", False)
    with torch.no_grad():
        for m in ours.modalities:
            loc, scale = ours.experts[m](batch[m])
            out = ref.encoders[m](batch[m])
            rscale = ref.log_var_to_std(out.log_covariance)
            err = max(rel_diff(loc, out.embedding), rel_diff(scale, rscale))
            assert record("mmvae", "encoder: expert loc, scale", err) < TOL
            with fixed_noise(7):
                z = ours.encode({m: batch[m]}, (m,), 2).z
            with fixed_noise(7):
                rz = ref.encode(shared.ref_inputs(batch), [m], N=2).z
            assert record("mmvae", "encoder: encode({m}) samples", rel_diff(z, rz)) < TOL
        z = torch.randn(5, ours.latent_dim, dtype=shared.DTYPE)
        for m, dec in ours.decoders.items():
            raw = rel_diff(dec(z), ref.decoders[m](z).reconstruction)
            assert record("mmvae", "decoder: raw output", raw) == 0.0


def record_grads(estimator: str, learn_prior: bool, g: list, rg: list) -> float:
    """The nets' gradients and, when learnt, the prior logits' (the last parameter)."""
    nets = rel_diff(g[:-1], rg[:-1]) if learn_prior else rel_diff(g, rg)
    record("mmvae", f"gradients ({estimator}), nets", nets)
    if not learn_prior:
        return nets
    prior = rel_diff(g[-1], rg[-1].view_as(g[-1]))
    record("mmvae", f"gradients ({estimator}), learned prior", prior)
    return max(nets, prior)


@pytest.mark.parametrize("learn_prior", [False, True])
def test_iwae_bound_and_gradients_equal(learn_prior: bool) -> None:
    ours, ref, batch = build("iwae", learn_prior)
    with fixed_noise(6, split_laplace=True):
        loss = ours.loss(batch, "train", {})["loss"]
    rloss = ref_loss(ours, ref, batch)
    # MultiVae's prior scale is softmax * D + 1e-6, ours softmax * D: log Laplace(z; 0, s)
    # moves by 1e-6 * sum_d (|z_d| / s_d^2 - 1 / s_d), a few 1e-6 per sample at most.
    assert record("mmvae", "loss (stratified IWAE bound)", rel_diff(loss, rloss)) < TOL
    params = [p for p in ours.parameters() if p.requires_grad]
    g = grads(loss, params)
    rparams = params if not learn_prior else params[:-1] + [ref.prior_log_var]
    rg = grads(ref_loss(ours, ref, batch), rparams)
    assert record_grads("IWAE", learn_prior, g, rg) < TOL


@pytest.mark.parametrize("learn_prior", [False, True])
def test_dreg_gradients_equal(learn_prior: bool) -> None:
    # DReG: the values differ by design (ours reports the bound, MultiVae the surrogate
    # sum_k w_k log w_k); the gradients, the estimator's point, must agree.
    ours, ref, batch = build("dreg", learn_prior)
    params = [p for p in ours.parameters() if p.requires_grad]
    with fixed_noise(6, split_laplace=True):
        g = grads(ours.loss(batch, "train", {})["loss"], params)
    rparams = params if not learn_prior else params[:-1] + [ref.prior_log_var]
    rg = grads(ref_loss(ours, ref, batch), rparams)
    assert record_grads("DReG", learn_prior, g, rg) < TOL


def test_prior_scale_offset_is_the_documented_size() -> None:
    # The one difference of definition in the bound: MultiVae's prior scale is softmax * D
    # + 1e-6, ours softmax * D, so log p(z) differs by -delta * sum_d (|z_d| / s_d^2 - 1 / s_d)
    # to first order, delta = 1e-6 (in float64; 9.5e-7 after float32 rounding of 1 + 1e-6).
    ours, ref, _ = build("iwae", False)
    z = torch.randn(1000, ours.latent_dim, dtype=torch.float64) * 2
    with torch.no_grad():
        loc, scale = ours.prior()
        rloc, rscale = ref.pz_params
        ours_lp = laplace_log_prob(z, loc, scale)
        ref_lp = torch.distributions.Laplace(rloc, rscale).log_prob(z).sum(-1)
    delta = rscale - scale
    assert torch.allclose(delta, torch.full_like(delta, 1e-6), rtol=1e-6)
    predicted = -(delta * (z.abs() / scale**2 - 1 / scale)).sum(-1)
    measured = ours_lp - ref_lp
    size = float(measured.abs().max())
    record("mmvae", "deviation: prior +1e-6, max |log p(z) ours - ref|", size)
    error = float((measured - predicted).abs().max())
    assert record("mmvae", "deviation: prior +1e-6, |measured - predicted|", error) < 1e-10
