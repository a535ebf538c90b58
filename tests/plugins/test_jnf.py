"""What is specific to JNF: frozen stage 1, no decoder pass in stage 2, PoE subset inference."""

from __future__ import annotations

import pytest
import torch
from accelerate import Accelerator

from mmvae_bench.api import HMCResult, HMCSettings, log_std_normal
from mmvae_bench.data.spec import ModalitySpec, MultimodalDataset, Split
from mmvae_bench.train import TrainSettings, freeze_for_stage, train
from plugins.jnf import JNF, JNFConfig


def tiny_dataset(n: int = 48, modalities: int = 3) -> MultimodalDataset:
    """A 3-modality dataset of 1x28x28 images and a vector, labels shared."""
    g = torch.Generator().manual_seed(0)
    y = torch.randint(0, 3, (n,), generator=g)
    specs = {
        f"m{i}": ModalitySpec(
            name=f"m{i}",
            shape=(1, 28, 28),
            kind="image",
            likelihood="gaussian",
            scale=0.5,
            encoder="conv28",
            decoder="conv28",
            classifier="cnn28",
        )
        for i in range(modalities - 1)
    }
    specs["v"] = ModalitySpec(name="v", shape=(6,), kind="vector", encoder="mlp", decoder="mlp")
    x = {m: torch.rand(n, *s.shape, generator=g) for m, s in specs.items()}
    split = Split(x, y)
    return MultimodalDataset(name="tiny", specs=specs, train=split, test=split, n_classes=3)


def make(ds: MultimodalDataset, **kw) -> JNF:
    cfg = JNFConfig(
        latent_dim=4,
        batch_size=16,
        width=4,
        features=16,
        flow_hidden=16,
        epochs_joint=1,
        epochs_unimodal=1,
        **kw,
    )
    return JNF(ds, cfg)


def test_unimodal_stage_leaves_stage1_bit_identical() -> None:
    ds = tiny_dataset()
    model = make(ds)
    # BatchNorm in stage-1 modules would move its running stats if left in train mode.
    model.joint_merge.insert(0, torch.nn.BatchNorm1d(16 * 3))
    acc = Accelerator(cpu=True)
    train(model, ds, acc, TrainSettings(epochs={"unimodal": 0}, progress=False))
    stage1 = ("joint_encoders", "joint_merge", "decoders")
    before = {k: v.clone() for k, v in model.state_dict().items() if k.startswith(stage1)}
    uni_before = {k: v.clone() for k, v in model.state_dict().items() if k.startswith("posteriors")}
    train(model, ds, acc, TrainSettings(epochs={"joint": 0, "unimodal": 2}, progress=False))
    after = model.state_dict()
    assert any("running_mean" in k for k in before)
    assert all(torch.equal(before[k], after[k]) for k in before), "stage 1 changed in stage 2"
    assert any(not torch.equal(uni_before[k], after[k]) for k in uni_before), "stage 2 idle"


def test_unimodal_stage_runs_no_decoder(monkeypatch: pytest.MonkeyPatch) -> None:
    ds = tiny_dataset()
    model = make(ds)
    calls = {"n": 0}
    for dec in model.decoders.values():
        dec.register_forward_hook(lambda *a: calls.__setitem__("n", calls["n"] + 1))
    stage = model.stages[1]
    freeze_for_stage(model, stage)
    batch = {m: t[:8] for m, t in ds.train.x.items()}
    cached = model.precompute(batch, "unimodal")
    out = model.loss(batch, "unimodal", cached)
    out["loss"].backward()
    assert calls["n"] == 0
    assert set(out) == {"loss", "nll_q_m0", "nll_q_m1", "nll_q_v"}


def test_freeze_puts_frozen_modules_in_eval_mode() -> None:
    model = make(tiny_dataset())
    freeze_for_stage(model, model.stages[1])
    assert not model.joint_encoders.training and not model.decoders.training
    assert model.posteriors.training
    assert not any(p.requires_grad for p in model.decoders.parameters())
    assert all(p.requires_grad for p in model.posteriors.parameters())


def test_subset_inference_paths_and_shapes() -> None:
    ds = tiny_dataset()
    model = make(ds).eval()
    batch = {m: t[:5] for m, t in ds.test.x.items()}
    hmc = HMCSettings(steps=3, n_leapfrog=2, step_size=0.01)
    joint = model.encode(batch, ("m0", "m1", "v"), 2)
    one = model.encode(batch, ("v",), 2)
    two = model.encode(batch, ("m1", "m0"), 2, hmc=hmc)
    assert joint.z.shape == one.z.shape == two.z.shape == (2, 5, 4)
    assert "hmc_acceptance" in two.info and "hmc_acceptance" not in one.info
    gen = model.generate(batch, ("m0",), 3)
    assert gen["m1"].shape == (3, 5, 1, 28, 28) and gen["v"].shape == (3, 5, 6)


def test_adaptive_hmc_starts_from_the_gaussian_product(monkeypatch: pytest.MonkeyPatch) -> None:
    ds = tiny_dataset()
    model = make(ds).eval()
    batch = {m: t[:5] for m, t in ds.test.x.items()}
    sub = model.modalities[:2]
    captured = {}
    import plugins.jnf as jnf_mod

    real = jnf_mod.hmc_sample

    def spy(log_target, z0, settings, generator=None, *, scale=None, groups=None):
        captured.update(target=log_target, z0=z0, scale=scale)
        return real(log_target, z0, settings, generator, scale=scale)

    monkeypatch.setattr(jnf_mod, "hmc_sample", spy)
    for precondition in (False, True):
        hmc = HMCSettings(
            kind="adaptive",
            warmup=3,
            steps=2,
            n_leapfrog=2,
            step_size=0.1,
            precondition=precondition,
        )
        out = model.encode(batch, sub, 4, hmc=hmc)
        assert out.z.shape == (4, 5, 4) and 0.0 <= out.info["hmc_acceptance"] <= 1.0
        mean, std = captured["target"].gaussian_product()
        if precondition:  # by the product's deviations
            assert torch.equal(captured["scale"], std)
        else:
            assert captured["scale"] is None
        # the starts are draws of N(mean, std^2): standardised, they are O(1), not an expert's
        assert ((captured["z0"] - mean) / std).abs().max() < 6.0
        assert torch.isfinite(out.z).all()


def test_poe_target_counts_prior_size_minus_one_times(monkeypatch: pytest.MonkeyPatch) -> None:
    # The density HMC samples for |S| = 3 is sum_j log q_j - 2 log p: check it on a point by
    # replacing the HMC run with a capture of the target.
    ds = tiny_dataset()
    model = make(ds).eval()
    batch = {m: t[:2] for m, t in ds.test.x.items()}
    captured = {}
    import plugins.jnf as jnf_mod

    def fake_hmc(log_target, z0, settings):
        captured["f"], captured["z0"] = log_target, z0
        return HMCResult(z=z0, acceptance=1.0)

    monkeypatch.setattr(jnf_mod, "hmc_sample", fake_hmc)
    model.encode(batch, ("m0", "m1", "v"), 1)  # all: joint encoder, no HMC
    assert "f" not in captured
    sub = model.modalities[:2]
    model.encode(batch, sub, 1)
    z = torch.randn(1, 2, 4)
    with torch.no_grad():
        expected = sum(model.unimodal_posterior(batch, m).log_prob(z) for m in sub)
        expected = expected - (len(sub) - 1) * log_std_normal(z)
        assert torch.allclose(captured["f"](z), expected, atol=1e-5)


@pytest.mark.parametrize("kind", ["paper", "chain", "pooled"])
def test_encode_subsets_samples_each_subset_from_its_own_modalities(kind: str) -> None:
    # The evaluation samples every subset of a size in one call. Each subset's samples must
    # depend on its own modalities only: changing m0's data leaves the subsets without m0
    # exactly as they were (same seed: same draws), and changes every subset holding it.
    ds = tiny_dataset(modalities=4)
    model = make(ds).eval()
    batch = {m: t[:3] for m, t in ds.test.x.items()}
    subsets = [("m0", "m1"), ("m1", "m2"), ("m0", "m2"), ("m2", "v"), ("m1",), ("m0",)]
    settings = (
        HMCSettings(steps=3, n_leapfrog=2)
        if kind == "paper"
        else HMCSettings(kind="adaptive", warmup=2, steps=2, n_leapfrog=2, adapt=kind)
    )

    def draw(b: dict) -> list:
        torch.manual_seed(0)
        with torch.no_grad():
            return model.encode_subsets(b, subsets, 2, hmc=settings)

    first = draw(batch)
    changed = draw({**batch, "m0": 1.0 - batch["m0"]})
    for subset, a, b in zip(subsets, first, changed, strict=True):
        assert a.z.shape == (2, 3, model.latent_dim)
        if len(subset) > 1:
            assert 0.0 <= a.info["hmc_acceptance"] <= 1.0
        assert torch.equal(a.z, b.z) == ("m0" not in subset), subset
