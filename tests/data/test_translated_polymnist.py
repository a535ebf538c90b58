"""TranslatedPolyMNIST: built from tiny MNIST idx files and background JPEGs through the loader."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from typer.testing import CliRunner

from mmvae_bench.cli import app
from mmvae_bench.data import mnist_svhn, polymnist
from mmvae_bench.data import translated_polymnist as tp
from mmvae_bench.data.spec import DataOptions
from mmvae_bench.errors import BenchError
from tests.data.batches import assert_batches_bit_identical
from tests.data.fixtures import write_html_page, write_mnist

FETCH = "mmvae-bench data fetch translated-polymnist --data-dir"
LABELS = {"train": np.repeat(np.arange(10), 3), "test": np.tile(np.arange(10), 2)}


def write_backgrounds(data_dir: Path, n: int = 5, size: tuple[int, int] = (45, 37)) -> None:
    """``n`` random RGB JPEGs of ``size`` (width, height) in ``data_dir/backgrounds``."""
    folder = data_dir / tp.BACKGROUND_DIR
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(7)
    for k in range(n):
        pixels = rng.integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)
        Image.fromarray(pixels, "RGB").save(folder / f"bg{k}.jpg")


def write_data(data_dir: Path) -> dict[str, np.ndarray]:
    write_backgrounds(data_dir)
    return {split: write_mnist(data_dir, split, labels) for split, labels in LABELS.items()}


def _load(data_dir: Path, cache: Path):
    return tp.load(DataOptions(data_dir=data_dir, cache_dir=cache))


def test_loads_tuples_sharing_only_the_label(tmp_path: Path) -> None:
    write_data(tmp_path)
    ds = _load(tmp_path, tmp_path / "cache")
    assert ds.name == "translated-polymnist" and ds.modalities == polymnist.MODALITIES
    assert ds.specs == polymnist.SPECS  # same images, nets and Laplace(0.75) likelihood
    assert (ds.latent_dim, ds.classifier_floor, ds.n_classes) == (512, 0.9, 10)
    for split, labels in LABELS.items():
        part = getattr(ds, split)
        assert len(part) == len(labels)
        assert torch.equal(part.y, torch.from_numpy(np.sort(labels)).long())  # (label, i) order
        for m in ds.modalities:
            x = part.x[m]  # stored as built: uint8
            assert x.shape == (len(labels), 3, 28, 28) and x.dtype == torch.uint8
        # batches: bit-identical to the float32 tensors the loader used to hold
        assert_batches_bit_identical(
            part, {m: part.x[m].to(torch.float32).div_(255.0) for m in ds.modalities}
        )
    assert ds.info["scale"] == 0.75 and ds.info["backgrounds"] == [f"bg{k}.jpg" for k in range(5)]


def _reference_image(
    digit: np.ndarray, background: Image.Image, offset: tuple[int, int], corner: tuple[int, int]
) -> np.ndarray:
    """The generator's per-image steps (make_polymnist_dataset.py --translate --scale 0.75),
    given its random draws: shrink, paste at (row, col), binarise, crop at (top, left), invert.
    Written independently of the module's batched version. Returns (3, 28, 28) uint8."""
    t = torch.from_numpy(digit).unsqueeze(0)  # (1, 28, 28) uint8, as mnist.data[ix]
    small = F.interpolate(t.unsqueeze(0).float(), scale_factor=0.75, mode="bilinear")
    canvas = t * 0
    r, c = offset
    canvas[:, r : r + 21, c : c + 21] = small  # float into the uint8 canvas, as the generator
    on = (canvas > 128).squeeze(0).numpy()
    top, left = corner
    crop = np.asarray(background.crop((left, top, left + 28, top + 28)), dtype=np.float64) / 255
    img = crop.transpose(2, 0, 1).copy()
    img[:, on] = 1 - img[:, on]
    return np.clip(img * 255 + 0.5, 0, 255).astype(np.uint8)  # save_image's conversion


def test_build_matches_the_generators_per_image_recipe(tmp_path: Path) -> None:
    digits = write_data(tmp_path)["train"]
    images, labels = mnist_svhn.read_mnist(tmp_path, "train")
    backgrounds, files = tp.read_backgrounds(tmp_path)
    x, y, prov = tp.build_split(images, labels, backgrounds, seed=3)
    pil = [Image.open(f).convert("RGB") for f in files]
    n = len(y)
    for m in range(5):
        # Every digit image used once per modality, always for a tuple of its own label.
        assert sorted(prov["digit"][m].tolist()) == list(range(n))
        assert torch.equal(labels[prov["digit"][m]], y)
        assert int(prov["offset"][m].min()) >= 0 and int(prov["offset"][m].max()) <= 6
        for j in range(n):
            expected = _reference_image(
                digits[int(prov["digit"][m, j])],
                pil[m],
                tuple(prov["offset"][m, j].tolist()),
                tuple(prov["crop"][m, j].tolist()),
            )
            assert np.array_equal(x[m, j].numpy(), expected), (m, j)
    # The members of a tuple show different digit images: they share only the label.
    assert not torch.equal(prov["digit"][0], prov["digit"][1])


def test_digit_is_shrunk_to_21_pixels_inside_the_image(tmp_path: Path) -> None:
    write_backgrounds(tmp_path)
    n = 40
    images = torch.full((n, 28, 28), 255, dtype=torch.uint8)  # every digit pixel on
    backgrounds, _ = tp.read_backgrounds(tmp_path)
    x, _, prov = tp.build_split(images, torch.arange(n) % 10, backgrounds, seed=0)
    for m in range(5):
        for j in range(n):
            top, left = prov["crop"][m, j].tolist()
            crop = backgrounds[m][:, top : top + 28, left : left + 28]
            r, c = prov["offset"][m, j].tolist()
            window = torch.zeros(28, 28, dtype=torch.bool)
            window[r : r + 21, c : c + 21] = True  # the 21x21 digit, inside the 28x28 image
            assert torch.equal(x[m, j], torch.where(window, 255 - crop, crop)), (m, j)
        assert len(set(map(tuple, prov["offset"][m].tolist()))) > 1  # positions do vary


def test_deterministic_cached_and_rebuilt_when_inputs_change(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_data(tmp_path)
    cache = tmp_path / "cache"
    first = _load(tmp_path, cache)
    assert len(list((cache / "datasets").glob("translated-polymnist-v1-*.pt"))) == 2
    other = _load(tmp_path, tmp_path / "other-cache")  # built again from scratch: same data
    assert all(torch.equal(first.train.x[m], other.train.x[m]) for m in first.modalities)

    def no_build(*args, **kwargs):
        raise AssertionError("rebuilt despite a valid cache")

    monkeypatch.setattr(tp, "build_split", no_build)
    again = _load(tmp_path, cache)
    assert all(torch.equal(first.test.x[m], again.test.x[m]) for m in first.modalities)
    monkeypatch.undo()
    write_backgrounds(tmp_path, size=(50, 40))  # new backgrounds: a new fingerprint
    changed = _load(tmp_path, cache)
    assert not torch.equal(first.train.x["m0"], changed.train.x["m0"])
    assert len(list((cache / "datasets").glob("translated-polymnist-v1-*.pt"))) == 4


def test_corrupt_cache_is_rebuilt(tmp_path: Path) -> None:
    write_data(tmp_path)
    cache = tmp_path / "cache"
    first = _load(tmp_path, cache)
    for path in (cache / "datasets").glob("*.pt"):
        path.write_bytes(b"not a torch file")
    again = _load(tmp_path, cache)
    assert torch.equal(first.train.x["m4"], again.train.x["m4"])


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        ("none", "found 0 background .jpg files, need 5"),
        ("four", "found 4 background .jpg files, need 5"),
        ("small", "is 28x40; a 28x28 crop needs more than 28 pixels"),
        ("corrupt", "bg2.jpg is unreadable"),
    ],
)
def test_bad_backgrounds_name_the_problem(tmp_path: Path, damage: str, message: str) -> None:
    for split, labels in LABELS.items():
        write_mnist(tmp_path, split, labels)
    if damage == "four":
        write_backgrounds(tmp_path, n=4)
    elif damage == "small":
        write_backgrounds(tmp_path, size=(28, 40))
    elif damage == "corrupt":
        write_backgrounds(tmp_path)
        (tmp_path / "backgrounds" / "bg2.jpg").write_bytes(b"\xff\xd8 truncated")
    with pytest.raises(BenchError, match=message) as e:
        _load(tmp_path, tmp_path / "cache")
    assert "backgrounds" in str(e.value) and "PolyMNIST background images" in str(e.value)


def test_missing_or_corrupt_mnist_names_the_file_and_fetch(tmp_path: Path) -> None:
    write_backgrounds(tmp_path)
    with pytest.raises(BenchError, match=r"train-images-idx3-ubyte") as e:
        _load(tmp_path, tmp_path / "cache")
    assert FETCH in str(e.value)
    write_data(tmp_path)
    raw = tmp_path / "MNIST" / "raw" / "t10k-images-idx3-ubyte"
    raw.write_bytes(raw.read_bytes()[:-5])
    with pytest.raises(BenchError, match="truncated"):
        _load(tmp_path, tmp_path / "cache")
    with pytest.raises(BenchError, match="needs --data-dir") as e:
        tp.load(DataOptions(data_dir=None))
    assert "mmvae-bench data fetch translated-polymnist" in str(e.value)


def test_check(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    problems = tp.check(tmp_path)
    assert len(problems) == 5  # four MNIST files and the backgrounds
    assert all(FETCH in p for p in problems[:4]) and "backgrounds" in problems[4]
    write_data(tmp_path)
    problems = tp.check(tmp_path)  # the fixtures do not have the published counts
    assert len(problems) == 2 and "60000" in problems[0] and FETCH in problems[0]
    counts = {"mnist": {s: len(v) for s, v in LABELS.items()}}
    monkeypatch.setattr(mnist_svhn, "EXPECTED_SAMPLES", counts)
    assert tp.check(tmp_path) == []
    (tmp_path / "backgrounds" / "bg4.jpg").unlink()
    assert tp.check(tmp_path) == [
        f"{tmp_path / 'backgrounds'}: found 4 background .jpg files, need 5; copy the five "
        f"PolyMNIST background images (the .jpg files of its generation code) into "
        f"{tmp_path / 'backgrounds'}"
    ]


def test_html_pages_instead_of_files_are_named_as_such(tmp_path: Path) -> None:
    write_data(tmp_path)
    bg = write_html_page(tmp_path / "backgrounds" / "bg2.jpg")
    with pytest.raises(BenchError, match=rf"^{bg} is an HTML page, not a JPEG image: the download"):
        _load(tmp_path, tmp_path / "cache")
    idx = write_html_page(tmp_path / "MNIST" / "raw" / "train-labels-idx1-ubyte")
    problems = tp.check(tmp_path)
    assert problems[0] == (
        f"{idx} is an HTML page, not an MNIST idx file: the download probably failed; "
        f"run `{FETCH} {tmp_path}`"
    )
    assert problems[-1].startswith(f"{bg} is an HTML page, not a JPEG image")


def test_short_mnist_loads_and_is_recorded(tmp_path: Path) -> None:
    write_data(tmp_path)
    ds = _load(tmp_path, tmp_path / "cache")
    assert ds.info["sample_counts"] == {
        "mnist train": {"found": 30, "published": 60_000},
        "mnist test": {"found": 20, "published": 10_000},
    }
    assert ds.info["published_counts_match"] is False


def test_fetch_gets_mnist_then_needs_the_backgrounds(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fetched = []
    monkeypatch.setattr(tp, "fetch_mnist", lambda d, **kw: fetched.append(Path(d)))
    with pytest.raises(BenchError, match="found 0 background .jpg files"):
        tp.fetch(tmp_path)
    assert fetched == [tmp_path]
    write_backgrounds(tmp_path)
    tp.fetch(tmp_path)


@pytest.mark.slow
def test_registered_and_runs_through_the_cli(tmp_path: Path) -> None:
    runner = CliRunner()
    res = runner.invoke(app, ["datasets"])
    assert res.exit_code == 0 and "translated-polymnist" in res.output
    write_data(tmp_path / "data")
    args = ["run", "jnf", "--dataset", "translated-polymnist", "--data-dir", tmp_path / "data"]
    args += ["--epochs", "1", "--no-evaluate", "--out", tmp_path / "runs", "--run-id", "r"]
    args += ["--cache-dir", tmp_path / "cache", "--device", "cpu", "--threads", "1"]
    args += ["--set", "latent_dim=4", "--set", "width=4", "--set", "features=16"]
    args += ["--set", "flow_hidden=16"]
    res = runner.invoke(app, [str(a) for a in args])
    assert res.exit_code == 0, res.output
    record = json.loads((tmp_path / "runs" / "r" / "results.json").read_text())
    assert record["status"] == "ok" and record["dataset_info"]["train"] == 30
