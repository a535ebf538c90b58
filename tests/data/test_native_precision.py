"""The native-precision contract (data/spec.py): stored dtypes, index pairs, float batches.

Each loader's batches are checked against its former float path in its own test module; here:
the conversion itself, the split's rules, training and evaluation on uint8 data giving what
float32 data gave, evaluation never holding a split as float, and the device-memory error.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
from accelerate import Accelerator

from mmvae_bench.data import memory
from mmvae_bench.data.precision import float16_error, narrowest_exact
from mmvae_bench.data.spec import MultimodalDataset, Split, _via_table, iter_batches, to_float
from mmvae_bench.errors import BenchError
from mmvae_bench.eval import fid as fidlib
from mmvae_bench.eval.classifiers import Classifier
from mmvae_bench.eval.coherence import conditional_coherence
from mmvae_bench.eval.protocol import PROTOCOLS, Protocol
from mmvae_bench.hmc import HMCSettings
from mmvae_bench.train import TrainSettings, train
from tests.data.batches import same_bits
from tests.eval.test_fid import _classifiers, _dataset, _ToyModel
from tests.plugins.test_jnf import make, tiny_dataset

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("divisor", [255.0, 1.0, 127.5])
def test_uint8_converts_as_the_cpu_division_on_every_device(device: str, divisor: float) -> None:
    values = torch.arange(256, dtype=torch.uint8).reshape(4, 1, 8, 8)
    expected = values.to(torch.float32).div_(divisor)  # the loaders' former path, on the CPU
    got = to_float(values.to(device), divisor)
    assert got.device.type == device and same_bits(got.cpu(), expected)
    # the table lookup other devices use gives the CPU's quotients (checked here on the CPU)
    assert same_bits(_via_table(values, divisor), expected)


def test_float16_and_float32_storage() -> None:
    x = torch.rand(5, 3)
    assert to_float(x) is x
    half = x.to(torch.float16)
    assert same_bits(to_float(half), half.to(torch.float32))


def test_split_rules() -> None:
    y = torch.arange(4)
    with pytest.raises(BenchError, match="stored as uint8 without a divisor"):
        Split({"a": torch.zeros(4, 2, dtype=torch.uint8)}, y)
    with pytest.raises(BenchError, match="stored as torch.float64"):
        Split({"a": torch.zeros(4, 2, dtype=torch.float64)}, y)
    with pytest.raises(BenchError, match="3 indexed samples, labels have 4"):
        Split({"a": torch.zeros(2, 2)}, y, index={"a": torch.tensor([0, 1, 1])})
    with pytest.raises(BenchError, match="which is no modality"):
        Split({"a": torch.zeros(4, 2)}, y, divisor={"b": 255.0})


def test_pairs_subset_and_select_share_the_stored_rows() -> None:
    images = torch.randint(0, 256, (5, 1, 2, 2), dtype=torch.uint8)
    vec = torch.rand(8, 3)
    pairs = torch.tensor([4, 0, 1, 1, 2, 3, 3, 0])
    split = Split({"img": images, "v": vec}, torch.arange(8), {"img": 255.0}, {"img": pairs})
    part = split.subset(torch.tensor([6, 1, 3]))
    assert (
        part.x["img"].data_ptr() == images.data_ptr() and part.x["v"].data_ptr() == vec.data_ptr()
    )
    batch = part.batch()
    assert same_bits(batch["img"], images[pairs[[6, 1, 3]]].to(torch.float32).div_(255.0))
    assert same_bits(batch["v"], vec[[6, 1, 3]])
    assert part.y.tolist() == [6, 1, 3]
    assert set(split.select(["v"]).batch()) == {"v"}
    # resident bytes: unique images + floats + index + labels, no float copy of the pairs
    assert split.nbytes == 5 * 4 + 8 * 3 * 4 + 8 * 8 + 8 * 8


def _as_uint8(ds: MultimodalDataset) -> MultimodalDataset:
    """``ds`` with its [0, 1] floats quantised to k/255: as uint8 and as the float32 path."""

    def quantise(split: Split) -> tuple[Split, Split]:
        stored = {m: (t * 255).round().to(torch.uint8) for m, t in split.x.items()}
        floats = {m: t.to(torch.float32).div_(255.0) for m, t in stored.items()}
        native = Split(stored, split.y, divisor=dict.fromkeys(stored, 255.0))
        return native, Split(floats, split.y)

    native, floats = quantise(ds.train)
    return (
        dataclasses.replace(ds, train=native, test=native),
        dataclasses.replace(ds, train=floats, test=floats),
    )


def test_training_on_uint8_gives_the_float32_run_bit_for_bit() -> None:
    native, floats = _as_uint8(tiny_dataset(n=24))
    states = []
    for ds in (native, floats):
        torch.manual_seed(0)
        model = make(ds)
        settings = TrainSettings(epochs={"*": 1}, progress=False, seed=3)
        train(model, ds, Accelerator(cpu=True), settings)
        states.append(model.state_dict())
    a, b = states
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)


class _Recorder:
    """Wraps ``Split.batch``: the largest number of samples any call converted to float."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.most = 0
        real = Split.batch

        def batch(split: Split, index=None, device=None):
            out = real(split, index, device)
            self.most = max(self.most, len(next(iter(out.values()))))
            return out

        monkeypatch.setattr(Split, "batch", batch)


def test_evaluation_streams_batches_and_matches_the_float_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    toy = _dataset(48)  # 0/1 discs: exact as uint8 with divisor 1
    stored = {m: t.to(torch.uint8) for m, t in toy.test.x.items() if m != "v"}
    native_test = Split(
        {**stored, "v": toy.test.x["v"]}, toy.test.y, divisor=dict.fromkeys(stored, 1.0)
    )
    native = dataclasses.replace(toy, train=native_test, test=native_test)
    protocol = Protocol(
        name="t",
        version="t-1",
        test_samples=None,
        joint_samples=10,
        hmc=HMCSettings(steps=1, n_leapfrog=1, step_size=0.01),
        batch_size=16,
        fid_samples=32,
    )
    out = {}
    for name, ds in (("float", toy), ("native", native)):
        torch.manual_seed(0)
        model = _ToyModel(ds)
        args = (model, ds, ds.test, _classifiers(ds), protocol, fidlib.FIDSettings())
        recorder = _Recorder(monkeypatch)
        out[name] = fidlib.fid_metrics(*args, cache_dir=tmp_path / name)
        if name == "native":
            assert 0 < recorder.most <= protocol.batch_size
    assert out["native"] == out["float"]


def test_conditional_coherence_streams_batches(monkeypatch: pytest.MonkeyPatch) -> None:
    native, floats = _as_uint8(tiny_dataset(n=12))
    proto = dataclasses.replace(
        PROTOCOLS["quick"], batch_size=5, hmc=HMCSettings(steps=2, n_leapfrog=2)
    )
    results = []
    for ds in (floats, native):
        torch.manual_seed(0)
        model = make(ds).eval()
        torch.manual_seed(1)  # fixed random linear classifiers: depend on every value
        clfs = {
            m: Classifier(
                m, torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(s.size, 3)), 1.0, "t"
            )
            for m, s in ds.specs.items()
        }
        recorder = _Recorder(monkeypatch)
        torch.manual_seed(2)
        results.append(conditional_coherence(model, ds.test, clfs, proto, 3))
        assert 0 < recorder.most <= proto.batch_size
    assert results[0] == results[1]


def test_iter_batches_over_a_split_moves_only_the_batch() -> None:
    images = torch.randint(0, 256, (6, 1, 2, 2), dtype=torch.uint8)
    split = Split({"a": images}, torch.arange(6), {"a": 255.0})
    got = [b["a"] for b, _ in iter_batches(split, 4, shuffle=False, device="cpu")]
    assert [len(b) for b in got] == [4, 2] and all(b.dtype == torch.float32 for b in got)


def test_narrowest_exact_and_float16_error() -> None:
    k = torch.randint(0, 256, (50, 7))
    grey = k.to(torch.float32).div_(255.0)
    stored, divisor = narrowest_exact(grey)
    assert (
        stored.dtype == torch.uint8 and divisor == 255.0 and torch.equal(stored, k.to(torch.uint8))
    )
    halves = torch.rand(50, 7).to(torch.float16).to(torch.float32)
    assert narrowest_exact(halves)[0].dtype == torch.float16
    noise = torch.rand(50, 7)
    stored, divisor = narrowest_exact(noise)
    assert stored is noise and divisor is None
    abs_err, rel_err = float16_error(noise)
    assert 0 < abs_err <= 2**-12 and 0 < rel_err <= 2**-11  # float16: 11 significant bits
    assert float16_error(halves) == (0.0, 0.0)


def test_a_split_too_big_for_the_device_stops_training_before_anything_moves(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    ds = tiny_dataset(n=16)
    monkeypatch.setattr(memory, "available_device_bytes", lambda device: 1000)
    moved = []
    monkeypatch.setattr(Split, "to", lambda self, *a, **k: moved.append(1))
    with pytest.raises(BenchError) as err:
        train(make(ds), ds, Accelerator(cpu=True), TrainSettings(progress=False))
    msg = str(err.value)
    assert msg.startswith("not enough memory on cpu for tiny: it needs about ")
    assert f"({ds.train.nbytes} bytes), 1000 B (1000 bytes) is free there" in msg
    assert "--device cpu" in msg and not moved


def test_run_refuses_a_split_too_big_for_the_device_before_writing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from typer.testing import CliRunner

    from mmvae_bench.cli import app
    from tests.tiny import TINY_JNF

    monkeypatch.setattr(memory, "available_device_bytes", lambda device: 1000)
    out = tmp_path / "runs"
    args = ["run", "jnf", "--dataset", "circles-squares", "--epochs", "0", "--no-evaluate"]
    res = CliRunner().invoke(
        app, [*args, *TINY_JNF, "--out", str(out), "--cache-dir", str(tmp_path / "cache")]
    )
    assert res.exit_code == 2, res.output
    assert "error: not enough memory on cpu for circles-squares" in res.output
    assert "--device cpu" in res.output and "Traceback" not in res.output
    assert not out.exists() or not any(out.iterdir())


def test_fid_reference_set_too_big_is_an_error_before_the_run_writes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from typer.testing import CliRunner

    from mmvae_bench.cli import app
    from tests.tiny import TINY_JNF

    toy = _dataset(48)  # two 1x16x16 FID modalities
    monkeypatch.setattr(memory, "available_memory_bytes", lambda: 1000)
    with pytest.raises(BenchError) as err:
        fidlib.require_reference_memory(toy)
    assert str(err.value).startswith(
        "not enough memory to build the FID reference set of toy-discs: it needs about "
    )
    assert f"({2 * 48 * 3 * 16 * 16} bytes), 1000 B (1000 bytes)" in str(err.value)
    assert "run without --fid" in str(err.value)
    out = tmp_path / "runs"
    args = ["run", "jnf", "--dataset", "circles-squares", "--epochs", "0", "--fid", *TINY_JNF]
    res = CliRunner().invoke(
        app, [*args, "--out", str(out), "--cache-dir", str(tmp_path / "cache")]
    )
    assert res.exit_code == 2, res.output
    assert (
        "error: not enough memory to build the FID reference set of circles-squares" in res.output
    )
    assert not out.exists() or not any(out.iterdir())
