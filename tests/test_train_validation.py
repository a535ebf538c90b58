"""The trainer's held-out validation: the split, the LR schedules, the best epoch kept."""

from __future__ import annotations

import math

import pytest
import torch
from accelerate import Accelerator

from mmvae_bench.errors import BenchError
from mmvae_bench.train import TrainSettings, holdout, train
from plugins.jnf import JNF, JNFConfig
from tests.plugins.test_jnf import tiny_dataset


def _model(ds) -> JNF:
    config = JNFConfig(
        latent_dim=4,
        batch_size=8,
        width=4,
        features=16,
        flow_hidden=16,
        epochs_joint=3,
        epochs_unimodal=2,
        lr=3e-2,  # large enough that some epoch is worse than an earlier one
    )
    return JNF(ds, config)


def test_holdout_is_a_seeded_partition_independent_of_the_run() -> None:
    ds = tiny_dataset(n=40)
    kept, held = holdout(ds.train, 0.1, 42)
    again, held_again = holdout(ds.train, 0.1, 42)
    other = holdout(ds.train, 0.1, 7)[1]
    assert held is not None and held_again is not None and other is not None
    assert (len(kept), len(held)) == (36, 4)
    assert torch.equal(held.y, held_again.y) and torch.equal(kept.y, again.y)
    rows = {m: torch.cat([kept.batch(None)[m], held.batch(None)[m]]) for m in ds.specs}
    full = ds.train.batch(None)
    for m in ds.specs:  # kept + held is a permutation of the training split
        assert sorted(map(tuple, rows[m].flatten(1).tolist())) == sorted(
            map(tuple, full[m].flatten(1).tolist())
        )
    assert holdout(ds.train, 0.0, 42)[1] is None
    with pytest.raises(BenchError, match="keep_best needs a validation split"):
        TrainSettings(keep_best=True)
    with pytest.raises(BenchError, match="validation must be in"):
        TrainSettings(validation=1.0)


@pytest.mark.slow
def test_keep_best_ends_each_stage_with_its_best_validation_epoch() -> None:
    ds = tiny_dataset(n=48)
    torch.manual_seed(0)
    model = _model(ds)
    settings = TrainSettings(
        progress=False, validation=0.25, validation_seed=42, lr_patience=0, keep_best=True
    )
    snapshots: dict[tuple[str, int], dict[str, torch.Tensor]] = {}
    losses: dict[tuple[str, int], float] = {}

    def on_epoch(stage: str, epoch: int, metrics: dict[str, float]) -> None:
        modules = next(s for s in model.stages if s.name == stage).modules
        snapshots[stage, epoch + 1] = {
            f"{n}.{k}": v.clone()
            for n in modules
            for k, v in getattr(model, n).state_dict().items()
        }
        losses[stage, epoch + 1] = metrics["val_loss"]

    reports = train(model, ds, Accelerator(cpu=True), settings, on_epoch=on_epoch)
    state = model.state_dict()
    for report in reports:
        epochs = [losses[report.name, e] for e in range(1, report.epochs + 1)]
        best = min(range(1, report.epochs + 1), key=lambda e: losses[report.name, e])
        assert report.best_epoch == best and report.validation_loss == min(epochs)
        # The stage ends with the parameters it had after its best epoch.
        kept = snapshots[report.name, best]
        assert all(torch.equal(state[k], v) for k, v in kept.items())


def _epoch_metrics(settings: TrainSettings) -> list[tuple[str, dict[str, float]]]:
    """(stage, metrics) after every epoch of the tiny JNF trained on 48 points with seed 0."""
    ds = tiny_dataset(n=48)
    torch.manual_seed(0)
    seen: list[tuple[str, dict[str, float]]] = []
    train(
        _model(ds),
        ds,
        Accelerator(cpu=True),
        settings,
        on_epoch=lambda stage, e, m: seen.append((stage, dict(m))),
    )
    return seen


def test_the_lr_drops_after_each_epoch_that_does_not_improve() -> None:
    settings = TrainSettings(progress=False, validation=0.25, lr_patience=0, epochs={"*": 4})
    seen = _epoch_metrics(settings)
    for stage in ("joint", "unimodal"):
        rows = [(m["val_loss"], m["lr"]) for s, m in seen if s == stage]
        lr, best = 3e-2, float("inf")
        for val, after in rows:  # ReduceLROnPlateau(mode="min", factor=0.1, patience=0)
            lr = lr if val < best * (1 - 1e-4) else lr * 0.1
            best = min(best, val)
            assert after == pytest.approx(lr, rel=1e-9)
    assert any(m["lr"] < 3e-2 for _, m in seen)  # the run did hit a plateau (else nothing tested)


def test_cosine_decays_each_stage_from_its_lr_to_zero_step_by_step() -> None:
    seen = _epoch_metrics(TrainSettings(progress=False, lr_schedule="cosine", epochs={"*": 3}))
    total = 3 * 6  # 48 points at batch 8: 6 steps an epoch
    for stage in ("joint", "unimodal"):
        lrs = [m["lr"] for s, m in seen if s == stage]
        want = [3e-2 * 0.5 * (1 + math.cos(math.pi * 6 * (e + 1) / total)) for e in range(3)]
        assert lrs == pytest.approx(want, abs=1e-12)
    assert lrs[-1] == pytest.approx(0.0, abs=1e-12)  # the last step ran at (almost) zero
    with pytest.raises(BenchError, match="lr_schedule must be one of"):
        TrainSettings(lr_schedule="linear")
    with pytest.raises(BenchError, match="exclude each other"):
        TrainSettings(lr_schedule="cosine", lr_patience=3)
