"""The published datasets end to end: tiny files in each format through `run`, `classifiers train`,
`--classifier-weights` and `data fetch/check`.

The fixtures' random pixels carry no label, so no classifier could reach a dataset's accuracy
floor on them. The files written here keep the fixtures' exact formats but mix a fixed per-class
template into every sample (80 % template, 20 % the fixture's noise): the coherence classifiers
then really learn the label from the train split and are measured on the test split, so the
floors in the dataset modules stay as they are.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import scipy.io
import torch
from PIL import Image
from typer.testing import CliRunner

from mmvae_bench.cli import app
from mmvae_bench.data import mhd, polymnist
from mmvae_bench.data.spec import DataOptions
from mmvae_bench.errors import BenchError
from mmvae_bench.eval.classifiers import classifier_dir, get_classifiers
from tests.data.fixtures import (
    idx_bytes,
    mhd_tuple,
    write_html_page,
    write_mhd,
    write_mnist,
    write_polymnist,
    write_svhn,
)

runner = CliRunner()


@pytest.fixture(autouse=True)
def _wide_console(monkeypatch: pytest.MonkeyPatch) -> None:
    # rich reads COLUMNS at each print: wide enough that no path in a message is wrapped.
    monkeypatch.setenv("COLUMNS", "500")


TINY = [
    *("--set", "latent_dim=4", "--set", "width=4", "--set", "features=16"),
    *("--threads", "1", "--device", "cpu"),
]
JNF_TINY = ["--set", "flow_hidden=16"]
TEMPLATE_WEIGHT = 0.8  # share of the class template in every sample


def _templates(shape: tuple[int, ...]) -> np.ndarray:
    """One fixed pattern in [0, 1] per class, (10, *shape); the same for train and test."""
    return np.random.default_rng(1234).random((10, *shape))


def _imprint(x: np.ndarray, labels: np.ndarray, high: float) -> np.ndarray:
    """``x`` (N, *shape) in [0, high] with each sample's class template mixed in, same dtype."""
    t = _templates(x.shape[1:])[labels] * high
    mixed = TEMPLATE_WEIGHT * t + (1 - TEMPLATE_WEIGHT) * x.astype(np.float64)
    return mixed.round().astype(x.dtype) if x.dtype == np.uint8 else mixed.astype(x.dtype)


def write_mhd_labelled(data_dir: Path, n_per_class: int) -> None:
    """``mhd_{train,test}.pt``: the fixture's 6-tuple, its three modalities label-imprinted."""
    data_dir.mkdir(parents=True, exist_ok=True)
    for i, split in enumerate(("train", "test")):
        labels, images, trajectories, sounds, traj_norm, sound_norm = mhd_tuple(n_per_class, seed=i)
        y = labels.numpy()
        imprinted = [
            torch.from_numpy(_imprint(t.numpy(), y, 1.0)) for t in (images, trajectories, sounds)
        ]
        torch.save((labels, *imprinted, traj_norm, sound_norm), data_dir / f"mhd_{split}.pt")


def write_polymnist_labelled(data_dir: Path, n_per_class: int) -> None:
    """The fixture's ``MMNIST/{split}/m{k}/{i}.{label}.png`` files, label-imprinted in place."""
    write_polymnist(data_dir, n_per_class=n_per_class)
    for png in sorted((data_dir / "MMNIST").rglob("*.png")):
        label = int(png.name.split(".")[1])
        x = np.asarray(Image.open(png))[None]  # (1, 28, 28, 3) uint8
        Image.fromarray(_imprint(x, np.array([label]), 255.0)[0], "RGB").save(png)


def write_mnist_svhn_labelled(data_dir: Path, n_per_class: int) -> None:
    """MNIST raw idx files and SVHN ``.mat`` files from the fixtures, label-imprinted."""
    labels = np.repeat(np.arange(10), n_per_class)
    for split, prefix in (("train", "train"), ("test", "t10k")):
        images = write_mnist(data_dir, split, labels)
        path = data_dir / "MNIST" / "raw" / f"{prefix}-images-idx3-ubyte"
        path.write_bytes(idx_bytes(_imprint(images, labels, 255.0)))
        write_svhn(data_dir, split, labels)
        mat = data_dir / f"{split}_32x32.mat"
        m = scipy.io.loadmat(mat)
        x = _imprint(m["X"].transpose(3, 0, 1, 2), m["y"].ravel() % 10, 255.0)  # (N, 32, 32, 3)
        scipy.io.savemat(mat, {"X": np.ascontiguousarray(x.transpose(1, 2, 3, 0)), "y": m["y"]})


@dataclass(frozen=True)
class Case:
    write: Callable[[Path, int], None]
    n_per_class: int  # per split; MNIST-SVHN: images per dataset, each used dm=20 times
    pairs_per_sample: int  # samples in a split per written sample
    classifier_epochs: int  # enough for every classifier to pass its floor, with margin
    eval_model: str  # the model of the evaluation check (see there)


CASES = {
    "mhd": Case(write_mhd_labelled, 6, 1, 20, "jnf"),
    "polymnist": Case(write_polymnist_labelled, 6, 1, 20, "mvae"),
    "mnist-svhn": Case(write_mnist_svhn_labelled, 2, 20, 8, "jnf"),
}


def _invoke(args: list[Any], code: int = 0) -> str:
    res = runner.invoke(app, [str(a) for a in args])
    assert res.exit_code == code, res.output
    assert "Traceback" not in res.output
    return res.output


def _run(model: str, name: str, data_dir: Path, tmp_path: Path, *extra: Any) -> dict:
    args = ["run", model, "--dataset", name, "--data-dir", data_dir, "--epochs", "1", "--quick"]
    args += ["--out", tmp_path / "runs", "--cache-dir", tmp_path / "cache", "--run-id", "r"]
    _invoke([*args, *TINY, *(JNF_TINY if model == "jnf" else []), *extra])
    return json.loads((tmp_path / "runs" / "r" / "results.json").read_text())


@pytest.mark.slow
@pytest.mark.parametrize("name", list(CASES))
def test_run_jnf_trains_and_records_on_published_format(name: str, tmp_path: Path) -> None:
    case, data_dir = CASES[name], tmp_path / "data"
    case.write(data_dir, case.n_per_class)
    record = _run("jnf", name, data_dir, tmp_path, "--no-evaluate")
    assert record["status"] == "ok" and record["dataset"] == name
    assert set(record["stages"]) == {"joint", "unimodal"}
    assert all(s["samples_per_s"] > 0 for s in record["stages"].values())
    assert record["metrics"] == {}
    assert record["run"]["data_dir"] == str(data_dir)
    n = 10 * case.n_per_class * case.pairs_per_sample
    assert (record["dataset_info"]["train"], record["dataset_info"]["test"]) == (n, n)
    # fewer samples than published: loaded, and the record says so
    counts = record["dataset_info"]["sample_counts"]
    assert all(c["found"] < c["published"] for c in counts.values()), counts
    assert record["dataset_info"]["published_counts_match"] is False
    assert (tmp_path / "runs" / "r" / "checkpoint.pt").is_file()


@pytest.mark.slow
@pytest.mark.parametrize("name", list(CASES))
def test_classifiers_train_then_evaluate_with_classifier_weights(name: str, tmp_path: Path) -> None:
    # PolyMNIST's evaluation runs MVAE: JNF's quick-protocol HMC over its 25 subsets of 2-4
    # modalities takes ~60 s on one CPU thread, and loading --classifier-weights does not
    # depend on the model. JNF's PolyMNIST training path is the test above.
    case, data_dir, cache = CASES[name], tmp_path / "data", tmp_path / "cache"
    case.write(data_dir, case.n_per_class)
    out = _invoke(
        ["classifiers", "train", "--dataset", name, "--data-dir", data_dir, "--cache-dir", cache]
        + ["--epochs", case.classifier_epochs, "--threads", "1", "--device", "cpu"]
    )
    assert "below floor" not in out
    # The cache is keyed by the dataset the published files make; copy it as a user's weights.
    ds = _load(name, data_dir)
    weights = tmp_path / "weights"
    shutil.copytree(classifier_dir(ds, cache, int(case.classifier_epochs)), weights)
    accuracy = json.loads((weights / "accuracy.json").read_text())
    assert set(accuracy) == set(ds.modalities)
    assert all(a >= ds.classifier_floor for a in accuracy.values()), accuracy
    shutil.rmtree(cache)  # evaluation must use --classifier-weights, not the cache
    record = _run(case.eval_model, name, data_dir, tmp_path, "--classifier-weights", weights)
    assert record["status"] == "ok"
    assert record["run"]["classifier_weights"] == str(weights)
    m = record["metrics"]
    assert m["classifier_accuracy"] == pytest.approx(accuracy)
    assert 0.0 <= m["joint_coherence"] <= 1.0
    assert m["test_samples"] == min(500, record["dataset_info"]["test"])  # quick: 500 at most
    assert not (cache / "classifiers").exists()  # nothing trained or cached behind our back
    # Re-evaluating the checkpoint takes the same option, and its history records it.
    run_dir = tmp_path / "runs" / "r"
    _invoke(["evaluate", run_dir, "--classifier-weights", weights, "--no-fid", "--device", "cpu"])
    again = json.loads((run_dir / "results.json").read_text())
    assert [e["classifier_weights"] for e in again["evaluations"]] == [str(weights)]
    assert again["metrics"]["classifier_accuracy"] == pytest.approx(accuracy)
    assert not (cache / "classifiers").exists()


def _load(name: str, data_dir: Path):
    from mmvae_bench.plugins import load_registry

    return load_registry(()).dataset(name).load(DataOptions(data_dir=data_dir))


def test_weights_that_do_not_fit_name_the_file(tmp_path: Path) -> None:
    write_mhd(tmp_path / "data", n_per_class=1)
    ds = mhd.load(DataOptions(data_dir=tmp_path / "data"))
    weights = tmp_path / "weights"
    weights.mkdir()
    for m in ds.modalities:  # image weights where the sound classifier is expected, and so on
        other = {"image": "sound", "sound": "trajectory", "trajectory": "image"}[m]
        net = torch.nn.Linear(3, 10) if other == "trajectory" else torch.nn.Conv2d(1, 2, 3)
        torch.save({"state_dict": net.state_dict(), "accuracy": 1.0}, weights / f"{m}.pt")
    with pytest.raises(BenchError, match=r"classifier weights .*image\.pt do not fit 'image'"):
        get_classifiers(ds, tmp_path / "cache", weights_dir=weights)


def test_missing_weights_file_names_it(tmp_path: Path) -> None:
    write_mhd(tmp_path / "data", n_per_class=1)
    ds = mhd.load(DataOptions(data_dir=tmp_path / "data"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(BenchError, match=r"no classifier for 'image' at .*image\.pt"):
        get_classifiers(ds, tmp_path / "cache", weights_dir=tmp_path / "empty")
    with pytest.raises(BenchError, match=r"weights folder .*nothing does not exist"):
        get_classifiers(ds, tmp_path / "cache", weights_dir=tmp_path / "nothing")


@pytest.mark.parametrize("empty", [False, True])
def test_run_without_data_names_the_file_and_fetch(tmp_path: Path, empty: bool) -> None:
    args = ["run", "jnf", "--dataset", "mhd", "--out", tmp_path / "runs", *TINY, *JNF_TINY]
    if empty:
        (tmp_path / "empty").mkdir()
        args += ["--data-dir", tmp_path / "empty"]
    out = _invoke(args, code=2)
    assert "mhd_train.pt" in out and "mmvae-bench data fetch mhd" in out


# -- data fetch / data check ----------------------------------------------------------------


def test_data_check_clean_and_broken(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_mhd(tmp_path, n_per_class=1)
    # fewer samples than published: a problem for `data check` (while `run` loads them)
    out = _invoke(["data", "check", "mhd", "--data-dir", tmp_path], code=2)
    assert "2 problem(s)" in out and "10 train samples, the published data has 50000" in out
    monkeypatch.setattr(mhd, "EXPECTED_SAMPLES", {"train": 10, "test": 10})
    out = _invoke(["data", "check", "mhd", "--data-dir", tmp_path])
    assert "no problems" in out
    (tmp_path / "mhd_test.pt").write_bytes((tmp_path / "mhd_test.pt").read_bytes()[:100])
    (tmp_path / "mhd_train.pt").unlink()
    out = _invoke(["data", "check", "mhd", "--data-dir", tmp_path], code=2)
    assert "2 problem(s)" in out
    assert "missing" in out and "mhd_train.pt" in out
    assert "mhd_test.pt is corrupt or truncated" in out
    assert "mmvae-bench data fetch mhd" in out
    assert "weights_only" not in out


def test_data_check_names_a_web_page_saved_as_data(tmp_path: Path) -> None:
    write_mhd(tmp_path, n_per_class=1)
    write_html_page(tmp_path / "mhd_train.pt")
    out = _invoke(["data", "check", "mhd", "--data-dir", tmp_path], code=2)
    assert f"{tmp_path / 'mhd_train.pt'} is an HTML page, not a torch file" in out
    assert "the download probably failed" in out and "weights_only" not in out
    out = _invoke(["run", "mvae", "--dataset", "mhd", "--data-dir", tmp_path, *TINY], code=2)
    assert "error:" in out and "is an HTML page" in out


def test_data_check_polymnist_names_the_missing_file(tmp_path: Path) -> None:
    write_polymnist(tmp_path, n_per_class=1)
    (tmp_path / "MMNIST" / "test" / "m3" / "0.7.png").unlink()
    out = _invoke(["data", "check", "polymnist", "--data-dir", tmp_path], code=2)
    assert "0.7.png" in out and "m3" in out


def test_data_fetch_calls_the_dataset_fetch(tmp_path: Path, monkeypatch) -> None:
    calls = []
    monkeypatch.setattr(polymnist, "fetch", lambda d, **kw: calls.append(Path(d)))
    out = _invoke(["data", "fetch", "polymnist", "--data-dir", tmp_path])
    assert calls == [tmp_path]
    assert f"mmvae-bench data check polymnist --data-dir {tmp_path}" in out


def test_data_fetch_builtin_needs_no_download(tmp_path: Path) -> None:
    out = _invoke(["data", "fetch", "circles-squares"])
    assert "built in" in out and "no download" in out
    assert "nothing to check" in _invoke(["data", "check", "polymnist-lite"])


@pytest.mark.parametrize("action", ["fetch", "check"])
def test_data_unknown_name_lists_valid_ones(action: str) -> None:
    out = _invoke(["data", action, "nope", "--data-dir", "x"], code=2)
    assert "unknown dataset 'nope'" in out
    assert all(n in out for n in ("mhd", "polymnist", "mnist-svhn"))


def test_data_fetch_needs_data_dir() -> None:
    out = _invoke(["data", "fetch", "mhd"], code=2)
    assert "--data-dir" in out
