"""MoPoE against MultiVae's MoPoE with shared nets: subset PoEs, encode(S), loss, gradients."""

from __future__ import annotations

import pytest

pytest.importorskip("multivae", reason="multivae is not installed: pip install -e '.[reference]'")

import torch  # noqa: E402
from multivae.models import MoPoE as RefMoPoE  # noqa: E402
from multivae.models import MoPoEConfig as RefMoPoEConfig  # noqa: E402

from mmvae_bench.api import all_subsets  # noqa: E402
from plugins.mopoe import MoPoE, MoPoEConfig  # noqa: E402
from tests.reference import shared  # noqa: E402
from tests.reference.shared import fixed_noise, grads, record, rel_diff  # noqa: E402

TOL = 1e-5


def build(beta: float = 1.0) -> tuple[MoPoE, RefMoPoE, dict]:
    ds = shared.dataset()
    ours = MoPoE(ds, MoPoEConfig(**shared.TINY, beta=beta)).eval().to(shared.DTYPE)
    config = RefMoPoEConfig(**shared.ref_config_fields(ours), beta=beta)
    ref = (
        RefMoPoE(
            config,
            encoders=shared.ref_encoders(ours.experts, ours.latent_dim),
            decoders=shared.ref_decoders(ours.decoders),
        )
        .eval()
        .to(shared.DTYPE)
    )
    return ours, ref, shared.batch_of(ds)


def test_subset_posteriors_equal() -> None:
    ours, ref, batch = build()
    with torch.no_grad():
        subsets, mus, logvars = ours.subset_posteriors(batch, ours.modalities)
        latents = ref.inference(shared.ref_inputs(batch))
    # MultiVae enumerates the same subsets in the same order (by size, then name), plus the
    # empty one, which it skips.
    assert [tuple(s) for s in ref.subsets.values() if s] == [tuple(s) for s in subsets]
    err = max(rel_diff(mus, latents["mus"]), rel_diff(logvars, latents["logvars"]))
    assert record("mopoe", "encoder: every q_s mean, logvar", err) < TOL


def test_encode_samples_the_product_of_s_as_multivae_does() -> None:
    # The fix of issue 12: our encode(S) drew from the mixture over S's subsets; MultiVae and
    # the MoPoE authors' evaluation sample the PoE of S itself (prior only for the full set).
    ours, ref, batch = build()
    inputs = shared.ref_inputs(batch)
    with torch.no_grad():
        for s in all_subsets(ours.modalities):
            with fixed_noise(4):
                z = ours.encode(batch, s, 3).z
            with fixed_noise(4):
                rz = ref.encode(inputs, list(s), N=3).z
            assert record("mopoe", "encoder: encode(S) samples", rel_diff(z, rz)) < TOL, s


def test_decoders_equal() -> None:
    ours, ref, _ = build()
    z = torch.randn(5, ours.latent_dim, dtype=shared.DTYPE)
    with torch.no_grad():
        for m, dec in ours.decoders.items():
            out = ref.decoders[m](z).reconstruction
            assert record("mopoe", "decoder: raw output", rel_diff(dec(z), out)) == 0.0


@pytest.mark.parametrize("beta", [1.0, 2.5])
def test_loss_and_gradients_equal_for_the_same_subset_assignment(monkeypatch, beta) -> None:
    # MultiVae assigns contiguous slices of the batch to the 2^M - 1 subsets; ours draws a
    # subset per datapoint. Read MultiVae's assignment by running its selection on the subset
    # indices, and give ours the same one (same distribution, fixed here).
    ours, ref, batch = build(beta)
    k, b = 2 ** len(ours.specs) - 1, shared.BATCH
    index = torch.arange(k, dtype=torch.float32)[:, None, None].expand(k, b, 1)
    picked = ref.deterministic_mixture_component_selection(index, index, torch.ones(k) / k)[0]
    picked = picked[:, 0].long()  # (B,): the subset of each datapoint
    assert set(picked.tolist()) == set(range(k))

    def pick(mus, logvars, n):
        at = picked[None, :, None].expand(n, b, mus.shape[-1])
        return mus.gather(0, at), logvars.gather(0, at)

    monkeypatch.setattr(ours, "_pick", pick)
    params = list(ours.parameters())
    with fixed_noise(5):
        loss = ours.loss(batch, "train", {})["loss"]
    with fixed_noise(5):
        rloss = ref(shared.ref_inputs(batch)).loss
    assert record("mopoe", "loss (beta-ELBO, mean subset KL)", rel_diff(loss, rloss)) < TOL
    assert record("mopoe", "gradients", rel_diff(grads(loss, params), grads(rloss, params))) < TOL
