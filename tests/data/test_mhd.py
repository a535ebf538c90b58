"""MHD: tiny files in the published 6-tuple format through the real loader, fetch and check."""

from __future__ import annotations

import fractions
import logging
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from mmvae_bench.data import mhd
from mmvae_bench.data.download import RemoteFile, part_path
from mmvae_bench.data.spec import DataOptions
from mmvae_bench.errors import BenchError
from tests.data.batches import assert_batches_bit_identical
from tests.data.fixtures import mhd_tuple, serve_directory, write_html_page, write_mhd

FETCH = "mmvae-bench data fetch mhd --data-dir"


def _load(data_dir: Path):
    return mhd.load(DataOptions(data_dir=data_dir))


@pytest.fixture
def fixture_sizes(monkeypatch: pytest.MonkeyPatch) -> None:
    """The published split sizes set to write_mhd's (30 each): only other problems remain."""
    monkeypatch.setattr(mhd, "EXPECTED_SAMPLES", {"train": 30, "test": 30})


def test_loads_published_layout(tmp_path: Path) -> None:
    stored = write_mhd(tmp_path, n_per_class=3)
    ds = _load(tmp_path)
    assert ds.name == "mhd" and ds.modalities == ("image", "trajectory", "sound")
    assert (ds.latent_dim, ds.n_classes, ds.classifier_floor) == (64, 10, 0.8)
    for split in (ds.train, ds.test):
        assert len(split) == 30
        assert split.x["image"].shape == (30, 1, 28, 28)
        assert split.x["trajectory"].shape == (30, 200)
        assert split.x["sound"].shape == (30, 1, 32, 128)
        # random floats: nothing narrower holds them exactly
        assert all(t.dtype == torch.float32 for t in split.x.values())
        assert split.y.dtype == torch.long
        assert torch.equal(torch.bincount(split.y, minlength=10), torch.full((10,), 3))
    labels, images, trajectories, *_ = stored["train"]
    assert torch.equal(ds.train.y, labels)
    batch = ds.train.batch()
    assert torch.equal(batch["image"], images)
    assert torch.equal(batch["trajectory"], trajectories)
    for name, spec in ds.specs.items():
        assert spec.shape == ds.train.x[name].shape[1:]
        assert spec.likelihood == "gaussian"
    assert ds.specs["image"].fid and not ds.specs["sound"].fid
    # lambda_j = size of the largest modality (sound, 4096) / size of modality j
    assert ds.rescale == pytest.approx({"image": 4096 / 784, "trajectory": 4096 / 200, "sound": 1})
    assert ds.info["files"]["train"]["trajectory_normalisation"] == {"min": -3.5, "max": 7.25}


def test_exact_values_are_stored_narrower_and_batched_bit_identical(tmp_path: Path) -> None:
    labels, images, trajectories, sounds, *norms = mhd_tuple(3, seed=5)
    g = torch.Generator().manual_seed(1)
    images = torch.randint(0, 256, images.shape, generator=g).to(torch.float32).div_(255.0)
    trajectories = trajectories.to(torch.float16).to(torch.float32)  # float16 holds these
    torch.save((labels, images, trajectories, sounds, *norms), tmp_path / "mhd_train.pt")
    torch.save(mhd_tuple(3, seed=6), tmp_path / "mhd_test.pt")
    ds = _load(tmp_path)
    stored = {m: t.dtype for m, t in ds.train.x.items()}
    assert stored == {"image": torch.uint8, "trajectory": torch.float16, "sound": torch.float32}
    assert ds.train.divisor == {"image": 255.0}
    assert ds.info["files"]["train"]["stored_dtypes"] == {
        "image": "uint8",
        "trajectory": "float16",
        "sound": "float32",
    }
    # the float32 tensors the loader used to hold
    old = {
        "image": images.reshape(-1, 1, 28, 28),
        "trajectory": trajectories,
        "sound": mhd.sound_to_model(sounds),
    }
    assert_batches_bit_identical(ds.train, old)
    assert ds.train.nbytes < sum(t.numel() * 4 for t in old.values())


def test_sound_chunks_concatenated_then_transposed(tmp_path: Path) -> None:
    stored = write_mhd(tmp_path, n_per_class=1)
    sounds = stored["train"][3]  # (N, 4, 32, 32), distinct increasing values
    x = _load(tmp_path).train.batch()["sound"]  # (N, 1, 32, 128)
    # chunk k's row r is time step 32k + r; its column c the mel bin c
    for k in range(4):
        assert torch.equal(x[:, 0, :, 32 * k : 32 * (k + 1)], sounds[:, k].transpose(1, 2))
    # the first chunk ends at time 31 and the second begins at 32
    assert x[0, 0, 0, 31] == sounds[0, 0, 31, 0] and x[0, 0, 0, 32] == sounds[0, 1, 0, 0]
    assert x[0, 0, 5, 0] == sounds[0, 0, 0, 5]


def test_one_hot_labels_become_indices(tmp_path: Path) -> None:
    stored = write_mhd(tmp_path, one_hot=True)
    ds = _load(tmp_path)
    assert torch.equal(ds.train.y, stored["train"][0].argmax(1))


def test_numpy_normalisation_in_legacy_format_is_allowed(tmp_path: Path) -> None:
    write_mhd(tmp_path, numpy_norm=True, legacy=True)
    ds = _load(tmp_path)
    assert ds.info["files"]["test"]["sound_normalisation"] == {"min": [-80.0], "max": 0.0}


def test_other_pickled_types_are_refused(tmp_path: Path) -> None:
    t = list(mhd_tuple(1))
    t[4] = {"min": fractions.Fraction(1, 3)}
    torch.save(tuple(t), tmp_path / "mhd_train.pt")
    write_mhd(tmp_path, splits=("test",))
    with pytest.raises(BenchError, match=r"mhd_train\.pt holds a Python type \(fractions"):
        _load(tmp_path)


def test_missing_file_names_it_and_the_fetch_command(tmp_path: Path) -> None:
    write_mhd(tmp_path, splits=("train",))
    with pytest.raises(BenchError) as err:
        _load(tmp_path)
    assert "mhd_test.pt" in str(err.value) and f"{FETCH} {tmp_path}" in str(err.value)


def test_no_data_dir(tmp_path: Path) -> None:
    with pytest.raises(BenchError, match="mhd_train.pt.*mmvae-bench data fetch mhd"):
        mhd.load(DataOptions(data_dir=None))


def _write_bad(tmp_path: Path, change) -> None:
    write_mhd(tmp_path)
    t = list(mhd_tuple(3))
    t = change(t)
    torch.save(tuple(t) if isinstance(t, list) else t, tmp_path / "mhd_train.pt")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda t: t[:5], r"expected a tuple of 6 .* found a 5-tuple"),
        (lambda t: t[:3] + [t[3][:, :3]] + t[4:], r"sounds has shape \(30, 3, 32, 32\)"),
        (lambda t: [t[0], t[1], t[2][:, :100], *t[3:]], r"trajectories has shape \(30, 100\)"),
        (lambda t: [t[0], t[1][:-1], *t[2:]], r"images has 29 samples but labels have 30"),
        (lambda t: [t[0] + 5, *t[1:]], r"labels span \d+\.\.1[0-4], expected 0\.\.9"),
        (lambda t: {"labels": t[0]}, r"expected a tuple of 6 .* found dict"),
    ],
)
@pytest.mark.usefixtures("fixture_sizes")
def test_corrupt_content_names_file_and_problem(tmp_path: Path, change, message: str) -> None:
    _write_bad(tmp_path, change)
    with pytest.raises(BenchError, match=message) as err:
        _load(tmp_path)
    assert "mhd_train.pt" in str(err.value) and FETCH in str(err.value)
    problems = mhd.check(tmp_path)  # check reports what load refuses
    assert len(problems) == 1 and re.search(message, problems[0]) and FETCH in problems[0]


def test_truncated_file(tmp_path: Path) -> None:
    write_mhd(tmp_path)
    path = tmp_path / "mhd_test.pt"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(BenchError, match=r"mhd_test\.pt is corrupt or truncated") as err:
        _load(tmp_path)
    assert FETCH in str(err.value)


def test_check(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert len(mhd.check(tmp_path)) == 2  # both missing
    write_mhd(tmp_path)
    # no published checksum (logged); 30 samples a split instead of the paper's: problems
    problems = mhd.check(tmp_path)
    assert len(problems) == 2 and all(FETCH in p for p in problems)
    assert (
        f"{tmp_path / 'mhd_train.pt'}: 30 train samples, the published data has 50000 (fewer)"
        in problems[0]
    )
    assert "30 test samples, the published data has 10000 (fewer)" in problems[1]
    monkeypatch.setattr(mhd, "EXPECTED_SAMPLES", {"train": 30, "test": 30})
    assert mhd.check(tmp_path) == []
    (tmp_path / "mhd_train.pt").write_bytes(b"not a torch file")
    problems = mhd.check(tmp_path)
    assert len(problems) == 1 and "mhd_train.pt" in problems[0] and FETCH in problems[0]


def test_unreadable_file_never_suggests_weights_only_false(tmp_path: Path) -> None:
    write_mhd(tmp_path)
    (tmp_path / "mhd_train.pt").write_bytes(b"not a torch file")
    with pytest.raises(BenchError, match=r"mhd_train\.pt is corrupt or truncated") as err:
        _load(tmp_path)
    problems = mhd.check(tmp_path)
    for message in (str(err.value), *problems):
        assert "weights_only" not in message and "Re-running" not in message


@pytest.mark.parametrize("doctype", [True, False])
def test_html_page_instead_of_the_file_is_named_as_such(tmp_path: Path, doctype: bool) -> None:
    write_mhd(tmp_path)
    write_html_page(tmp_path / "mhd_test.pt", doctype=doctype)
    expected = (
        f"{tmp_path / 'mhd_test.pt'} is an HTML page, not a torch file of MHD's 6-tuple: the "
        f"download probably failed; run `{FETCH} {tmp_path}`"
    )
    with pytest.raises(BenchError) as err:
        _load(tmp_path)
    assert str(err.value) == expected
    assert expected in mhd.check(tmp_path)


@pytest.mark.parametrize(
    ("index", "value", "reported"),
    [
        (
            1,
            lambda t: t.index_put_((torch.tensor([3]),), torch.tensor(float("nan"))),
            "images (784)",
        ),
        (
            2,
            lambda t: t.index_put_(
                (torch.tensor([0, 5]), torch.tensor([7, 9])), torch.tensor(float("inf"))
            ),
            "trajectories (2)",
        ),
        (
            3,
            lambda t: t.index_put_((torch.tensor([29]),), torch.tensor(float("-inf"))),
            "sounds (4096)",
        ),
        (4, lambda d: {**d, "max": torch.tensor(float("nan"))}, "trajectory_normalisation (1)"),
        (
            5,
            lambda d: {**d, "min": np.array([np.inf, 0.0], dtype=np.float32)},
            "sound_normalisation (1)",
        ),
    ],
)
@pytest.mark.usefixtures("fixture_sizes")
def test_nan_or_inf_in_any_float_tensor_is_reported(
    tmp_path: Path, index: int, value, reported: str
) -> None:
    write_mhd(tmp_path)
    t = list(mhd_tuple(3))
    t[index] = value(t[index])
    torch.save(tuple(t), tmp_path / "mhd_train.pt")
    message = f"{tmp_path / 'mhd_train.pt'} holds NaN or infinite values: {reported}"
    with pytest.raises(BenchError, match=re.escape(message)) as err:
        _load(tmp_path)
    assert FETCH in str(err.value)
    problems = mhd.check(tmp_path)
    assert len(problems) == 1 and problems[0].startswith(message) and FETCH in problems[0]


def test_nan_in_several_tensors_lists_each(tmp_path: Path) -> None:
    t = list(mhd_tuple(1))
    t[2][0, 0] = float("nan")
    t[3][1, 0, 0, 0] = float("inf")
    tmp_path.mkdir(exist_ok=True)
    torch.save(tuple(t), tmp_path / "mhd_train.pt")
    with pytest.raises(
        BenchError, match=r"NaN or infinite values: trajectories \(1\), sounds \(1\)"
    ):
        mhd.read_split(tmp_path, "train")


@pytest.mark.usefixtures("fixture_sizes")
def test_file_with_zero_samples_is_reported(tmp_path: Path) -> None:
    write_mhd(tmp_path)
    labels, images, trajectories, sounds, traj_norm, sound_norm = mhd_tuple(1)
    empty = (labels[:0], images[:0], trajectories[:0], sounds[:0], traj_norm, sound_norm)
    torch.save(empty, tmp_path / "mhd_test.pt")
    with pytest.raises(BenchError, match=r"mhd_test\.pt holds no samples") as err:
        _load(tmp_path)
    assert FETCH in str(err.value)
    problems = mhd.check(tmp_path)
    assert len(problems) == 1 and "mhd_test.pt holds no samples" in problems[0]


def test_short_splits_load_with_a_warning_and_are_recorded(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    write_mhd(tmp_path, n_per_class=1)
    with caplog.at_level(logging.WARNING, logger="mmvae_bench.data.published"):
        ds = _load(tmp_path)
    assert len(ds.train) == 10
    assert ds.info["sample_counts"] == {
        "train": {"found": 10, "published": 50_000},
        "test": {"found": 10, "published": 10_000},
    }
    assert ds.info["published_counts_match"] is False
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warned) == 2 and "mhd train: 10 samples, the published data has 50000" in warned[0]


def _serve_mhd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, srv) -> None:
    monkeypatch.setattr(
        mhd,
        "FILES",
        {
            s: RemoteFile(name=f"mhd_{s}.pt", urls=(srv.url(f"mhd_{s}.pt"),))
            for s in ("train", "test")
        },
    )


def test_fetch_downloads_and_validates(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    host, data = tmp_path / "host", tmp_path / "data"
    write_mhd(host)
    with serve_directory(host) as srv:
        _serve_mhd(tmp_path, monkeypatch, srv)
        mhd.fetch(data, progress=False)
        assert len(_load(data).train) == 30
        mhd.fetch(data, progress=False)  # present and valid: nothing downloaded again
        assert len(srv.requests) == 2


def test_fetch_refuses_a_file_that_is_not_mhd(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    host, data = tmp_path / "host", tmp_path / "data"
    write_mhd(host)
    torch.save({"something": torch.zeros(3)}, host / "mhd_train.pt")
    with serve_directory(host) as srv:
        _serve_mhd(tmp_path, monkeypatch, srv)
        with pytest.raises(BenchError, match="mhd_train.pt .*not usable"):
            mhd.fetch(data, progress=False)
    assert not (data / "mhd_train.pt").exists()
    assert not part_path(data / "mhd_train.pt").exists()


def test_fetch_reports_drive_web_page(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    host, data = tmp_path / "host", tmp_path / "data"
    write_mhd(host)
    with serve_directory(host, content_type="text/html") as srv:
        _serve_mhd(tmp_path, monkeypatch, srv)
        with pytest.raises(BenchError, match="web page"):
            mhd.fetch(data, progress=False)
    assert not (data / "mhd_train.pt").exists()
