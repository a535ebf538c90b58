"""No file the suite reads is unpickled (DESIGN §10): one case per loader, fed a live payload.

Each case puts, at the exact name its loader reads, a file whose unpickling would create a
marker file (written with ``torch.save`` and with ``pickle.dump``), runs the loader, and checks
that the loader refuses it with a ``BenchError`` naming the file, or, for a cache, logs a
warning naming the file and rebuilds it; the marker must never appear.
"""

from __future__ import annotations

import logging
import pickle
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from mmvae_bench.cli import app
from mmvae_bench.data import mhd, mnist_svhn, polymnist, translated_polymnist
from mmvae_bench.data import polymnist_lite as pl
from mmvae_bench.data.cache import open_cache
from mmvae_bench.data.spec import DataOptions, ModalitySpec, MultimodalDataset, Split
from mmvae_bench.errors import BenchError
from mmvae_bench.eval import classifiers as clf
from mmvae_bench.eval import fid as fidlib
from mmvae_bench.io import load_tensors
from mmvae_bench.nets import build_classifier
from mmvae_bench.samplers import SAMPLER_FILE, load_sampler
from tests.data.fixtures import write_mhd, write_mnist, write_polymnist, write_svhn

INCEPTION_FILE = "weights-inception-2015-12-05-6726825d.pth"


class Payload:
    """Unpickling this touches ``marker``: what a crafted file could do with a shell command."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (Path.touch, (self.marker,))


def _torch_save(path: Path, obj: Any) -> None:
    torch.save(obj, path)


def _pickle_dump(path: Path, obj: Any) -> None:
    with open(path, "wb") as f:
        pickle.dump(obj, f)


WRITERS = {"torch.save": _torch_save, "pickle.dump": _pickle_dump}
# torch's safe unpickler warns about pickle.dump's newer protocol before refusing the file.
pytestmark = pytest.mark.filterwarnings("ignore:Detected pickle protocol:UserWarning")


def test_the_payload_runs_when_unpickled(tmp_path: Path) -> None:
    # The control: unpickled without care, every file written below would run code.
    for name, write in WRITERS.items():
        marker = tmp_path / f"ran-{name}"
        write(tmp_path / name, {"state_dict": Payload(marker)})
        if name == "torch.save":
            torch.load(tmp_path / name, weights_only=False)
        else:
            with open(tmp_path / name, "rb") as f:
                pickle.load(f)
        assert marker.exists(), name


# -- the loaders -------------------------------------------------------------------------------
# Each set-up writes what its loader needs except the payload, and returns the file the payload
# replaces and a call that runs the loader on it.
Setup = Callable[[Path, pytest.MonkeyPatch], tuple[Path, Callable[[], Any]]]


def _toy_dataset() -> MultimodalDataset:
    specs = {
        m: ModalitySpec(name=m, shape=(1, 8, 8), kind="image", classifier="mlp", fid=True)
        for m in ("a", "b")
    }
    g = torch.Generator().manual_seed(0)
    split = Split({m: torch.rand(8, 1, 8, 8, generator=g) for m in specs}, torch.arange(8) % 2)
    return MultimodalDataset(name="toy", specs=specs, train=split, test=split, n_classes=2)


def _checkpoint(tmp: Path, mp: pytest.MonkeyPatch) -> tuple[Path, Callable[[], Any]]:
    # runner.load_run reads <run>/checkpoint.pt through io.load_tensors; a run folder with a
    # valid record needs a trained run, too slow here.
    path = tmp / "runs" / "r" / "checkpoint.pt"
    return path, lambda: load_tensors(path, what="checkpoint")


def _sampler(tmp: Path, mp: pytest.MonkeyPatch) -> tuple[Path, Callable[[], Any]]:
    path = tmp / "runs" / "r" / SAMPLER_FILE
    model = SimpleNamespace(latent_dim=4)  # never reached: the file is refused first
    return path, lambda: load_sampler(path, model, device="cpu")  # type: ignore[arg-type]


def _classifier_cache(tmp: Path, mp: pytest.MonkeyPatch) -> tuple[Path, Callable[[], Any]]:
    ds = _toy_dataset()
    path = clf.classifier_dir(ds, tmp / "cache") / "a.pt"
    return path, lambda: clf.get_classifiers(ds, tmp / "cache", train_if_missing=False)


def _classifier_weights(tmp: Path, mp: pytest.MonkeyPatch) -> tuple[Path, Callable[[], Any]]:
    ds = _toy_dataset()
    torch.manual_seed(0)
    (tmp / "weights").mkdir()
    state = build_classifier(ds.specs["a"], ds.n_classes).state_dict()
    torch.save({"state_dict": state, "accuracy": 1.0}, tmp / "weights" / "a.pt")
    path = tmp / "weights" / "b.pt"  # --classifier-weights DIR holds <modality>.pt
    return path, lambda: clf.get_classifiers(ds, tmp / "cache", weights_dir=tmp / "weights")


def _polymnist_cache(tmp: Path, mp: pytest.MonkeyPatch) -> tuple[Path, Callable[[], Any]]:
    write_polymnist(tmp / "data", n_per_class=1)
    path = polymnist.cache_path(tmp / "data", "train")
    return path, lambda: polymnist.load(DataOptions(data_dir=tmp / "data"))


def _mnist_svhn_pairs(tmp: Path, mp: pytest.MonkeyPatch) -> tuple[Path, Callable[[], Any]]:
    for split in ("train", "test"):
        write_mnist(tmp / "data", split, list(range(10)))
        write_svhn(tmp / "data", split, list(range(10)))
    path = mnist_svhn.pairs_path(tmp / "data", "train", 1)
    return path, lambda: mnist_svhn.load(DataOptions(data_dir=tmp / "data"), dm=1)


def _polymnist_lite_cache(tmp: Path, mp: pytest.MonkeyPatch) -> tuple[Path, Callable[[], Any]]:
    # Only the cache is under test: a small stand-in for the 11,000-tuple build.
    def build(seed: int = pl.DATASET_SEED) -> tuple[dict, dict]:
        part = {m: torch.zeros(2, 3, pl.SIDE, pl.SIDE, dtype=torch.uint8) for m in pl.MODALITIES}
        return {s: {**part, "y": torch.zeros(2, dtype=torch.long)} for s in ("train", "test")}, {}

    mp.setattr(pl, "build", build)
    path = pl.cache_path(tmp / "cache")
    return path, lambda: pl.load(DataOptions(cache_dir=tmp / "cache"))


def _translated_polymnist_cache(
    tmp: Path, mp: pytest.MonkeyPatch
) -> tuple[Path, Callable[[], Any]]:
    folder = tmp / "data" / translated_polymnist.BACKGROUND_DIR
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for k in range(5):
        pixels = rng.integers(0, 256, size=(37, 45, 3), dtype=np.uint8)
        Image.fromarray(pixels, "RGB").save(folder / f"bg{k}.jpg")
    for split in ("train", "test"):
        write_mnist(tmp / "data", split, list(range(10)))
    options = DataOptions(data_dir=tmp / "data", cache_dir=tmp / "cache")
    translated_polymnist.load(options)  # the cache's name holds a hash of its inputs
    [path] = (tmp / "cache" / "datasets").glob("*-train-*.pt")
    return path, lambda: translated_polymnist.load(options)


def _mhd_file(tmp: Path, mp: pytest.MonkeyPatch) -> tuple[Path, Callable[[], Any]]:
    write_mhd(tmp / "data", n_per_class=1)
    path = tmp / "data" / "mhd_train.pt"
    return path, lambda: mhd.load(DataOptions(data_dir=tmp / "data"))


def _fid_statistics(tmp: Path, mp: pytest.MonkeyPatch) -> tuple[Path, Callable[[], Any]]:
    ds = _toy_dataset()
    torch.manual_seed(0)
    nets = {m: SimpleNamespace(net=build_classifier(ds.specs[m], 2).eval()) for m in ds.specs}
    ext = fidlib.classifier_extractor(ds, nets, ["a"])
    real = fidlib.ImageTensorDataset(fidlib.to_uint8_rgb(ds.test.x["a"], ds.specs["a"]))
    fake = fidlib.ImageTensorDataset(fidlib.to_uint8_rgb(ds.test.x["b"], ds.specs["a"]))
    name, cache = ext.registered["a"], tmp / "cache" / "fid"
    path = fidlib.real_stats_path(cache, "toy-a", name, ext.layer)
    expected = fidlib.frechet_distance(real, fake, extractor=name)

    def load() -> None:
        value = fidlib.frechet_distance(
            real, fake, extractor=name, real_cache_name="toy-a", cache_dir=cache
        )
        assert value == expected

    return path, load


def _evaluate(args: list[str]) -> None:
    """``mmvae-bench evaluate`` as a user runs it; its ``error: ...`` becomes a BenchError."""
    res = CliRunner().invoke(app, ["evaluate", *args])
    assert res.exit_code == 2 and "Traceback" not in res.output, res.output
    raise BenchError(res.output)


def _inception_weights(tmp: Path, mp: pytest.MonkeyPatch) -> tuple[Path, Callable[[], Any]]:
    path = tmp / INCEPTION_FILE
    return path, lambda: _evaluate([str(tmp / "run"), "--inception-weights", str(path)])


def _inception_hub_cache(tmp: Path, mp: pytest.MonkeyPatch) -> tuple[Path, Callable[[], Any]]:
    mp.setattr(torch.hub, "_hub_dir", str(tmp / "hub"))
    path = tmp / "hub" / "checkpoints" / INCEPTION_FILE
    return path, lambda: _evaluate([str(tmp / "run"), "--fid-extractor", "inception"])


@dataclass(frozen=True)
class Loader:
    """A loader of the suite and what it does with a pickle payload."""

    id: str
    setup: Setup
    refusal: str | None  # the BenchError's message (regex); None: a cache, rebuilt with a warning


REFUSED = "corrupt or unreadable"
# torch's and numpy's own messages advise loading the file unsafely: never passed on to users.
UNSAFE_ADVICE = re.compile(r"weights_only`? set to `?False|weights_only=False|allow_pickle=")
LOADERS = [
    Loader("checkpoint", _checkpoint, f"checkpoint .* {REFUSED}"),
    Loader("latent-sampler", _sampler, f"latent sampler .* {REFUSED}"),
    Loader("classifier-cache", _classifier_cache, f"classifier for 'a' .* {REFUSED}"),
    Loader("classifier-weights", _classifier_weights, f"classifier for 'b' .* {REFUSED}"),
    Loader("polymnist-cache", _polymnist_cache, None),
    Loader("mnist-svhn-pair-cache", _mnist_svhn_pairs, None),
    Loader("polymnist-lite-cache", _polymnist_lite_cache, None),
    Loader("translated-polymnist-cache", _translated_polymnist_cache, None),
    Loader("mhd-file", _mhd_file, "not allowed when loading safely|corrupt or truncated"),
    Loader("fid-statistics-cache", _fid_statistics, None),
    Loader("inception-weights", _inception_weights, "not a plain tensor state dict"),
    Loader("inception-hub-cache", _inception_hub_cache, "not a plain tensor state dict"),
]


@pytest.mark.parametrize("writer", list(WRITERS))
@pytest.mark.parametrize("loader", LOADERS, ids=[x.id for x in LOADERS])
def test_no_loader_unpickles(
    loader: Loader,
    writer: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    marker = tmp_path / "payload-ran"
    path, load = loader.setup(tmp_path, monkeypatch)
    path.parent.mkdir(parents=True, exist_ok=True)
    WRITERS[writer](path, {"state_dict": Payload(marker), "x": Payload(marker)})
    if loader.refusal is not None:
        with pytest.raises(BenchError) as e:
            load()
        message = " ".join(str(e.value).split())  # the CLI may wrap long lines
        assert str(path) in message and re.search(loader.refusal, message), message
        assert not UNSAFE_ADVICE.search(message), message
    else:
        with caplog.at_level(logging.WARNING):
            load()
        assert str(path) in caplog.text and not UNSAFE_ADVICE.search(caplog.text), caplog.text
        # Rebuilt: the file is now one the loader reads without unpickling.
        if path.suffix == ".npz":
            np.load(path, allow_pickle=False).close()
        elif path.suffix == ".mmvb":
            open_cache(path)  # the mapped array format: JSON header + raw bytes
        else:
            torch.load(path, map_location="cpu", weights_only=True)
    assert not marker.exists()
