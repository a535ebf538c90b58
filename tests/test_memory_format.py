"""``--memory-format``: the probe keeps the faster format, a probed stage trains exactly as the
pinned format would, and the nets leave every stage contiguous."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import torch
from accelerate import Accelerator
from torch import nn

from mmvae_bench import train as train_module
from mmvae_bench.config import RunConfig
from mmvae_bench.errors import BenchError
from mmvae_bench.memory_format import MARGIN, Probe, probe, set_memory_format, supports
from mmvae_bench.results import SCHEMA_VERSION, RunRecord
from mmvae_bench.train import TrainSettings, train
from plugins.jnf import JNF, JNFConfig
from tests.plugins.test_jnf import tiny_dataset


def _is_channels_last(module: nn.Module) -> bool:
    weights = [p for p in module.parameters() if p.dim() == 4]
    return all(w.is_contiguous(memory_format=torch.channels_last) for w in weights) and not all(
        w.is_contiguous() for w in weights
    )


def _conv() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 8, 3), nn.SiLU(), nn.Conv2d(8, 8, 3))


@pytest.mark.parametrize("slow", ["contiguous", "channels-last"])
def test_the_probe_keeps_the_faster_format(slow: str) -> None:
    net = _conv()
    seen: list[bool] = []

    def step() -> None:  # the slow format's step sleeps 20 ms more
        cl = _is_channels_last(net)
        seen.append(cl)
        time.sleep(0.025 if (cl == (slow == "channels-last")) else 0.005)

    result = probe(net, step, rounds=3)
    fast = "contiguous" if slow == "channels-last" else "channels-last"
    assert result.chosen == fast and _is_channels_last(net) == (fast == "channels-last")
    assert result.step_ms[slow] > result.step_ms[fast]
    # One warm-up and three timed steps per format, alternating after the warm-ups.
    assert seen == [False, True, False, True, True, False, False, True]


def test_a_near_tie_keeps_the_contiguous_format() -> None:
    net = _conv()
    ms = {False: 0.010, True: 0.010 * (1 - MARGIN / 2)}  # channels_last only slightly faster
    result = probe(net, lambda: time.sleep(ms[_is_channels_last(net)]), rounds=3)
    assert result.chosen == "contiguous" and not _is_channels_last(net)


def test_supports_only_nets_with_convolutions() -> None:
    assert supports(_conv())
    assert not supports(nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2)))
    net = _conv()
    params = list(net.parameters())
    set_memory_format(net, "channels-last")  # in place: an optimizer keeps its parameters
    assert list(net.parameters()) == params and _is_channels_last(net)
    set_memory_format(net, "contiguous")
    assert all(p.is_contiguous() for p in net.parameters())


def _model(ds) -> JNF:
    torch.manual_seed(0)
    model = JNF(
        ds,
        JNFConfig(latent_dim=4, batch_size=8, width=4, features=16, flow_hidden=16),
    )
    # A BatchNorm in a trained encoder: the probe's forward passes must not move its
    # running statistics.
    enc = model.joint_encoders["m0"].net
    enc.insert(1, nn.BatchNorm2d(enc[0].out_channels))
    return model


def _train(fmt: str) -> tuple[JNF, list]:
    ds = tiny_dataset(n=32)
    model = _model(ds)
    settings = TrainSettings(
        epochs={"joint": 2, "unimodal": 1}, progress=False, seed=1, memory_format=fmt
    )
    return model, train(model, ds, Accelerator(cpu=True), settings)


@pytest.mark.parametrize("fmt", ["contiguous", "channels-last"])
def test_a_probed_stage_trains_exactly_as_its_pinned_format(
    fmt: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The real probe runs its steps on the model; only its verdict is fixed, so that both
    # outcomes are compared with a run pinned to them.
    real = train_module.probe

    def probe_then(module, step, **kw):
        result = real(module, step, **kw)
        set_memory_format(module, fmt)
        return Probe(fmt, result.step_ms)

    monkeypatch.setattr(train_module, "probe", probe_then)
    probed, reports = _train("auto")
    assert all(set(r.memory_format_probe_ms) == {"contiguous", "channels-last"} for r in reports)
    assert [r.memory_format for r in reports] == [fmt, fmt]
    pinned, pinned_reports = _train(fmt)
    assert all(r.memory_format_probe_ms == {} for r in pinned_reports)
    a, b = probed.state_dict(), pinned.state_dict()
    assert a.keys() == b.keys()
    for k in a:  # parameters and buffers (BatchNorm statistics) to the last bit
        assert torch.equal(a[k], b[k]), k
    # Every stage hands back contiguous nets: checkpoints do not depend on the choice.
    assert all(t.is_contiguous() for t in a.values())


def test_channels_last_trains_in_it_and_ends_contiguous() -> None:
    ds = tiny_dataset(n=16)
    model = _model(ds)
    formats: list[bool] = []
    real = model.loss

    def loss(batch, stage, cached):
        formats.append(_is_channels_last(model))
        return real(batch, stage, cached)

    model.loss = loss  # type: ignore[method-assign]
    settings = TrainSettings(epochs={"*": 1}, progress=False, memory_format="channels-last")
    reports = train(model, ds, Accelerator(cpu=True), settings)
    assert formats and all(formats)
    assert [r.memory_format for r in reports] == ["channels-last", "channels-last"]
    assert all(p.is_contiguous() for p in model.parameters())


def test_bad_formats_are_user_errors() -> None:
    with pytest.raises(BenchError, match="memory_format must be one of"):
        TrainSettings(memory_format="nhwc")
    with pytest.raises(BenchError, match="memory_format must be one of"):
        RunConfig(model="jnf", memory_format="nhwc")  # type: ignore[arg-type]


def test_records_before_the_option_read_as_contiguous(tmp_path: Path) -> None:
    stage = {
        "name": "joint",
        "epochs": 1,
        "steps": 1,
        "samples": 8,
        "wall_s": 1.0,
        "samples_per_s": 8.0,
        "loss": {"loss": 1.0},
    }
    old = {
        "schema": 4,
        "run_id": "r",
        "status": "ok",
        "model": "jnf",
        "dataset": "polymnist-lite",
        "seed": 0,
        "config": {},
        "run": {},
        "protocol": {"version": "1"},
        "environment": {},
        "created": "2026-12-03T00:00:00Z",
        "epochs": {"joint": 1},
        "stages": {"joint": stage},
        "metrics": {},
        "timings": {},
    }
    record = RunRecord.from_json(old)
    assert record.schema == SCHEMA_VERSION == 5
    assert record.stages["joint"].memory_format == "contiguous"
    assert record.stages["joint"].memory_format_probe_ms == {}
