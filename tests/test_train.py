"""The staged trainer: non-finite losses stop the run with stage, epoch and step."""

from __future__ import annotations

import pytest
import torch
from accelerate import Accelerator

from mmvae_bench.api import NonFiniteLossError
from mmvae_bench.train import (
    TrainSettings,
    compile_submodules,
    make_adam,
    stage_epochs,
    train,
)
from plugins.jnf import JNF, JNFConfig
from tests.plugins.test_jnf import tiny_dataset


def _model(ds) -> JNF:
    return JNF(
        ds,
        JNFConfig(
            latent_dim=4,
            batch_size=8,
            width=4,
            features=16,
            flow_hidden=16,
            epochs_joint=2,
            epochs_unimodal=1,
        ),
    )


def test_nan_loss_names_stage_epoch_and_step(monkeypatch: pytest.MonkeyPatch) -> None:
    ds = tiny_dataset(n=48)  # 6 steps per epoch at batch 8
    model = _model(ds)
    real = model.loss
    calls = {"n": 0}

    def loss(batch, stage, cached):
        out = real(batch, stage, cached)
        calls["n"] += 1
        if calls["n"] == 8:  # epoch 1 (0-based), its 2nd step, 8th overall
            out["loss"] = out["loss"] * float("nan")
        return out

    monkeypatch.setattr(model, "loss", loss)
    with pytest.raises(NonFiniteLossError) as e:
        train(model, ds, Accelerator(cpu=True), TrainSettings(progress=False, check_every=3))
    assert (e.value.stage, e.value.epoch, e.value.step) == ("joint", 1, 8)
    assert "stage 'joint', epoch 1, step 8" in str(e.value)


def test_epoch_overrides_and_reports() -> None:
    ds = tiny_dataset(n=32)
    model = _model(ds)
    reports = train(
        model,
        ds,
        Accelerator(cpu=True),
        TrainSettings(epochs={"*": 1, "unimodal": 2}, progress=False),
    )
    assert [(r.name, r.epochs, r.steps) for r in reports] == [("joint", 1, 4), ("unimodal", 2, 8)]
    assert all(
        r.samples_per_s > 0 and torch.isfinite(torch.tensor(r.loss["loss"])) for r in reports
    )
    assert not model.training  # left in eval mode after training
    assert stage_epochs(model.stages[0], {}) == model.config.epochs_joint


def test_compile_submodules_keeps_checkpoint_keys_and_adam_is_fused() -> None:
    # nn.Module.compile is lazy (nothing compiles until a forward): cheap to check here.
    model = _model(tiny_dataset(n=8))
    keys = list(model.state_dict())
    names = compile_submodules(model)
    assert "joint_encoders.m0" in names and "posteriors.v.base" in names
    assert "posteriors.v" not in names  # flows return distributions: compiled via flows.py
    assert list(model.state_dict()) == keys
    opt = make_adam(list(model.parameters()), 1e-3)
    assert opt.defaults["fused"]
