"""MNIST-SVHN: torchvision's file formats (idx, .mat) through the real loader, pairing, fetch."""

from __future__ import annotations

import gzip
import logging
from pathlib import Path

import numpy as np
import pytest
import scipy.io
import torch

from mmvae_bench.data import mnist_svhn
from mmvae_bench.data.download import RemoteFile, part_path, sha256_file
from mmvae_bench.data.spec import DataOptions
from mmvae_bench.errors import BenchError
from tests.data.batches import assert_batches_bit_identical
from tests.data.fixtures import (
    as_tensor,
    idx_bytes,
    serve_directory,
    write_html_page,
    write_mnist,
    write_svhn,
)

FETCH = "mmvae-bench data fetch mnist-svhn --data-dir"

# Per-label counts chosen so that each side limits some labels: min(#mnist, #svhn) per label.
MNIST_COUNTS = {"train": [4, 3, 2, 5, 1, 3, 3, 2, 4, 1], "test": [2] * 10}
SVHN_COUNTS = {"train": [2, 5, 2, 1, 3, 3, 0, 4, 4, 2], "test": [1, 3] * 5}


def _labels(counts: list[int]) -> list[int]:
    # interleaved, so the images of a label are not contiguous in the file
    out = [label for label, c in enumerate(counts) for _ in range(c)]
    rng = np.random.default_rng(len(out))
    return [int(v) for v in rng.permutation(out)]


def _write(data_dir: Path, *, gz: bool = False, raw: bool = True) -> dict[str, dict]:
    out = {}
    for split in ("train", "test"):
        ml, sl = _labels(MNIST_COUNTS[split]), _labels(SVHN_COUNTS[split])
        out[split] = {
            "mnist": write_mnist(data_dir, split, ml, gz=gz, raw=raw),
            "mnist_y": torch.tensor(ml),
            "svhn": write_svhn(data_dir, split, sl),
            "svhn_y": torch.tensor(sl),
        }
    return out


def _expected_pairs(split: str, dm: int, cap: int = 10_000) -> int:
    return dm * sum(
        min(a, b, cap) for a, b in zip(MNIST_COUNTS[split], SVHN_COUNTS[split], strict=True)
    )


def _load(data_dir: Path, **kw):
    return mnist_svhn.load(DataOptions(data_dir=data_dir), **kw)


def test_loads_pairs_of_the_same_label(tmp_path: Path) -> None:
    written = _write(tmp_path)
    ds = _load(tmp_path, dm=3)
    assert ds.name == "mnist-svhn" and ds.modalities == ("mnist", "svhn")
    assert (ds.latent_dim, ds.n_classes, ds.classifier_floor) == (20, 10, 0.85)
    assert ds.rescale == pytest.approx({"mnist": 3 * 32 * 32 / (28 * 28), "svhn": 1.0})
    assert ds.specs["svhn"].encoder == "conv32" and ds.specs["mnist"].encoder == "conv28"
    for split_name, split in (("train", ds.train), ("test", ds.test)):
        w = written[split_name]
        assert len(split) == _expected_pairs(split_name, 3)
        # the unique images, once each as uint8; the pairs are indices into them
        assert split.x["mnist"].shape == (len(w["mnist_y"]), 1, 28, 28)
        assert split.x["svhn"].shape == (len(w["svhn_y"]), 3, 32, 32)
        assert all(t.dtype == torch.uint8 for t in split.x.values())
        assert split.divisor == {"mnist": 255.0, "svhn": 255.0}
        # every pair is (MNIST image, SVHN image) of the split's label; pixels identify images
        idx = torch.load(mnist_svhn.pairs_path(tmp_path, split_name, 3), weights_only=True)
        assert all(torch.equal(split.index[m], idx[m]) for m in ("mnist", "svhn"))
        # batches are bit-identical to the float32 pairs the loader used to gather
        old = {
            "mnist": as_tensor(w["mnist"])[idx["mnist"]].unsqueeze(1).to(torch.float32).div_(255.0),
            "svhn": as_tensor(w["svhn"])[idx["svhn"]].to(torch.float32).div_(255.0),
        }
        assert_batches_bit_identical(split, old)
        assert torch.equal(split.y, w["mnist_y"][idx["mnist"]])
        assert torch.equal(split.y, w["svhn_y"][idx["svhn"]])
        # each image used exactly dm times (no label here has more than max_per_class images)
        assert set(torch.bincount(idx["mnist"]).tolist()) <= {0, 3}


def test_svhn_label_10_is_digit_0(tmp_path: Path) -> None:
    write_svhn(tmp_path, "test", [0, 1, 0, 9])
    assert scipy.io.loadmat(tmp_path / "test_32x32.mat")["y"].ravel().tolist() == [10, 1, 10, 9]
    images, labels = mnist_svhn.read_svhn(tmp_path, "test")
    assert labels.tolist() == [0, 1, 0, 9]
    assert images.shape == (4, 3, 32, 32) and images.dtype == torch.uint8
    # X[row, col, channel, n] -> images[n, channel, row, col]
    x = scipy.io.loadmat(tmp_path / "test_32x32.mat")["X"]
    assert images[2, 1, 5, 7] == x[5, 7, 1, 2]


def test_pairing_is_deterministic_and_capped(tmp_path: Path) -> None:
    ml, sl = (
        torch.tensor(_labels(MNIST_COUNTS["train"])),
        torch.tensor(_labels(SVHN_COUNTS["train"])),
    )
    a = mnist_svhn.build_pairs(ml, sl, dm=4, max_per_class=2)
    b = mnist_svhn.build_pairs(ml, sl, dm=4, max_per_class=2)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert len(a[0]) == _expected_pairs("train", 4, cap=2)
    assert torch.equal(ml[a[0]], sl[a[1]])
    other = mnist_svhn.build_pairs(ml, sl, dm=4, max_per_class=2, seed=1)
    assert not torch.equal(a[0], other[0])


def test_pairs_are_cached_and_rebuilt_identically(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _write(tmp_path)
    first = _load(tmp_path, dm=2)
    cache = mnist_svhn.pairs_path(tmp_path, "train", 2)
    assert cache.is_file() and mnist_svhn.pairs_path(tmp_path, "test", 2).is_file()
    real_build = mnist_svhn.build_pairs

    def no_build(*args, **kwargs):
        raise AssertionError("rebuilt pairs although the cache is current")

    monkeypatch.setattr(mnist_svhn, "build_pairs", no_build)
    again = _load(tmp_path, dm=2)
    assert torch.equal(first.train.index["svhn"], again.train.index["svhn"])
    monkeypatch.setattr(mnist_svhn, "build_pairs", real_build)
    cache.unlink()
    rebuilt = _load(tmp_path, dm=2)
    assert torch.equal(first.train.y, rebuilt.train.y)
    assert torch.equal(first.train.index["mnist"], rebuilt.train.index["mnist"])
    # another dm is another cache file; max_per_class changes the fingerprint
    assert len(_load(tmp_path, dm=1).train) == _expected_pairs("train", 1)
    assert len(_load(tmp_path, dm=2, max_per_class=1).train) == _expected_pairs("train", 2, cap=1)


def test_reads_gz_when_raw_is_absent(tmp_path: Path) -> None:
    written = _write(tmp_path, gz=True, raw=False)
    assert not (tmp_path / "MNIST" / "raw" / "train-images-idx3-ubyte").exists()
    images, labels = mnist_svhn.read_mnist(tmp_path, "train")
    assert torch.equal(images, as_tensor(written["train"]["mnist"]))
    assert torch.equal(labels, written["train"]["mnist_y"])


def test_idx_header_checks(tmp_path: Path) -> None:
    good = idx_bytes(np.zeros((3, 28, 28), dtype=np.uint8))
    path = tmp_path / "f"
    path.write_bytes(good[:-10])
    with pytest.raises(
        BenchError, match=r"2358 bytes, its header \(3, 28, 28\) needs 2368 \(trunc"
    ):
        mnist_svhn.read_idx(path)
    path.write_bytes(good + b"x")
    with pytest.raises(BenchError, match="trailing data"):
        mnist_svhn.read_idx(path)
    path.write_bytes(b"\x00\x00\x0d\x03" + good[4:])  # 0x0d: float data, not MNIST's bytes
    with pytest.raises(BenchError, match="not an idx file of unsigned bytes"):
        mnist_svhn.read_idx(path)
    gz = tmp_path / "f.gz"
    gz.write_bytes(gzip.compress(good)[:-20])
    with pytest.raises(BenchError, match="f.gz is unreadable"):
        mnist_svhn.read_idx(gz)


def test_missing_files_name_them_and_the_fetch_command(tmp_path: Path) -> None:
    _write(tmp_path)
    (tmp_path / "MNIST" / "raw" / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(BenchError, match="t10k-labels-idx1-ubyte") as err:
        _load(tmp_path, dm=1)
    assert f"{FETCH} {tmp_path}" in str(err.value)
    _write(tmp_path)
    (tmp_path / "train_32x32.mat").unlink()
    with pytest.raises(BenchError, match=r"train_32x32\.mat.*mmvae-bench data fetch mnist-svhn"):
        _load(tmp_path, dm=1)
    with pytest.raises(BenchError, match="needs --data-dir"):
        mnist_svhn.load(DataOptions())


def test_corrupt_files(tmp_path: Path) -> None:
    _write(tmp_path)
    raw = tmp_path / "MNIST" / "raw" / "train-images-idx3-ubyte"
    raw.write_bytes(raw.read_bytes()[:1000])
    with pytest.raises(BenchError, match="train-images-idx3-ubyte.*truncated"):
        _load(tmp_path, dm=1)
    _write(tmp_path)
    mat = tmp_path / "test_32x32.mat"
    mat.write_bytes(mat.read_bytes()[:300])
    with pytest.raises(BenchError, match=r"test_32x32\.mat is corrupt or truncated") as err:
        _load(tmp_path, dm=1)
    assert FETCH in str(err.value)
    scipy.io.savemat(mat, {"X": np.zeros((28, 28, 3, 2), np.uint8), "y": np.ones((2, 1), np.uint8)})
    with pytest.raises(
        BenchError, match=r"X has shape \(28, 28, 3, 2\), expected \(32, 32, 3, N\)"
    ):
        _load(tmp_path, dm=1)
    scipy.io.savemat(mat, {"X": np.zeros((32, 32, 3, 2), np.uint8), "y": np.ones((3, 1), np.uint8)})
    with pytest.raises(BenchError, match=r"y has shape \(3, 1\), expected \(2, 1\)"):
        _load(tmp_path, dm=1)
    with pytest.raises(BenchError, match="dm"):
        _load(tmp_path, dm=0)


def _pin_fixture_hashes(data_dir: Path, monkeypatch: pytest.MonkeyPatch, urls=None) -> None:
    """Point the file tables at ``urls`` with the fixture files' own sha256 and sizes."""
    mnist_files = {}
    for stem, remote in mnist_svhn.MNIST_FILES.items():
        f = data_dir / remote.name
        u = (urls(remote.name),) if urls else remote.urls
        mnist_files[stem] = RemoteFile(
            name=remote.name, urls=u, sha256=sha256_file(f), size=f.stat().st_size
        )
    svhn_files = {}
    for split, remote in mnist_svhn.SVHN_FILES.items():
        f = data_dir / remote.name
        u = (urls(remote.name),) if urls else remote.urls
        svhn_files[split] = RemoteFile(name=remote.name, urls=u, sha256=sha256_file(f))
    monkeypatch.setattr(mnist_svhn, "MNIST_FILES", mnist_files)
    monkeypatch.setattr(mnist_svhn, "SVHN_FILES", svhn_files)


def test_check(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert len(mnist_svhn.check(tmp_path)) == 6  # four MNIST and two SVHN files missing
    _write(tmp_path, gz=True)
    problems = mnist_svhn.check(tmp_path)  # fixtures are not the published files
    assert len(problems) == 6 and all("sha256" in p and FETCH in p for p in problems)
    _pin_fixture_hashes(tmp_path, monkeypatch)
    problems = mnist_svhn.check(tmp_path)  # now only the published counts differ
    assert len(problems) == 4 and all(FETCH in p for p in problems)
    raw = tmp_path / "MNIST" / "raw"
    assert f"{raw}: 28 mnist train samples, the published data has 60000 (fewer)" in problems[0]
    assert f"{tmp_path}: 26 svhn train samples, the published data has 73257" in problems[1]
    counts = {
        k: {s: sum(c[s]) for s in c} for k, c in (("mnist", MNIST_COUNTS), ("svhn", SVHN_COUNTS))
    }
    monkeypatch.setattr(mnist_svhn, "EXPECTED_SAMPLES", counts)
    assert mnist_svhn.check(tmp_path) == []
    raw = tmp_path / "MNIST" / "raw" / "t10k-images-idx3-ubyte"
    raw.write_bytes(raw.read_bytes()[:-1])
    assert "truncated" in mnist_svhn.check(tmp_path)[0]


def test_fetch_downloads_checks_and_unpacks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    host, data = tmp_path / "host", tmp_path / "data"
    written = _write(host, gz=True, raw=False)
    with serve_directory(host) as srv:
        _pin_fixture_hashes(host, monkeypatch, urls=srv.url)
        mnist_svhn.fetch(data, progress=False)
        assert len(srv.requests) == 6
        assert (data / "MNIST" / "raw" / "train-images-idx3-ubyte").read_bytes() == gzip.decompress(
            (host / "MNIST" / "raw" / "train-images-idx3-ubyte.gz").read_bytes()
        )
        ds = _load(data, dm=1)
        assert len(ds.test) == _expected_pairs("test", 1)
        assert torch.equal(mnist_svhn.read_svhn(data, "train")[1], written["train"]["svhn_y"])
        mnist_svhn.fetch(data, progress=False)  # verified present: nothing downloaded again
        assert len(srv.requests) == 6


def test_fetch_checksum_failure_leaves_no_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    host, data = tmp_path / "host", tmp_path / "data"
    _write(host, gz=True, raw=False)
    with serve_directory(host) as srv:
        _pin_fixture_hashes(host, monkeypatch, urls=srv.url)
        bad = dict(mnist_svhn.SVHN_FILES)
        bad["test"] = RemoteFile(
            name="test_32x32.mat", urls=(srv.url("test_32x32.mat"),), sha256="ab" * 32
        )
        monkeypatch.setattr(mnist_svhn, "SVHN_FILES", bad)
        with pytest.raises(BenchError, match=r"test_32x32\.mat.*expected sha256 (ab)+, got"):
            mnist_svhn.fetch(data, progress=False)
    assert not (data / "test_32x32.mat").exists()
    assert not part_path(data / "test_32x32.mat").exists()
    assert (data / "train_32x32.mat").is_file()


def test_html_pages_instead_of_files_are_named_as_such(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _write(tmp_path, gz=True)
    _pin_fixture_hashes(tmp_path, monkeypatch)
    fix = f"the download probably failed; run `{FETCH} {tmp_path}`"
    mat = write_html_page(tmp_path / "test_32x32.mat")
    with pytest.raises(BenchError) as err:
        _load(tmp_path, dm=1)
    assert str(err.value) == f"{mat} is an HTML page, not a MATLAB .mat file: {fix}"
    raw = tmp_path / "MNIST" / "raw"
    gz = write_html_page(raw / "train-labels-idx1-ubyte.gz", doctype=False)
    idx = write_html_page(raw / "t10k-images-idx3-ubyte")
    problems = mnist_svhn.check(tmp_path)
    assert f"{gz} is an HTML page, not a gzipped MNIST idx file: {fix}" in problems
    assert f"{idx} is an HTML page, not an MNIST idx file: {fix}" in problems
    assert f"{mat} is an HTML page, not a MATLAB .mat file: {fix}" in problems
    assert len(problems) == 3  # no checksum complaint on top of the web page
    with pytest.raises(BenchError) as err:
        mnist_svhn.read_mnist(tmp_path, "test")
    assert str(err.value) == f"{idx} is an HTML page, not an MNIST idx file: {fix}"


def test_files_without_images(tmp_path: Path) -> None:
    _write(tmp_path)
    write_mnist(tmp_path, "test", [])
    with pytest.raises(BenchError, match=r"t10k-images-idx3-ubyte holds no images") as err:
        _load(tmp_path, dm=1)
    assert FETCH in str(err.value)
    _write(tmp_path)
    scipy.io.savemat(
        tmp_path / "train_32x32.mat",
        {"X": np.zeros((32, 32, 3, 0), np.uint8), "y": np.zeros((0, 1), np.uint8)},
    )
    with pytest.raises(BenchError, match=r"train_32x32\.mat holds no images"):
        _load(tmp_path, dm=1)


def test_short_files_load_with_a_warning_and_are_recorded(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    _write(tmp_path)
    with caplog.at_level(logging.WARNING, logger="mmvae_bench.data.published"):
        ds = _load(tmp_path, dm=1)
    assert ds.info["sample_counts"] == {
        "mnist train": {"found": 28, "published": 60_000},
        "svhn train": {"found": 26, "published": 73_257},
        "mnist test": {"found": 20, "published": 10_000},
        "svhn test": {"found": 20, "published": 26_032},
    }
    assert ds.info["published_counts_match"] is False
    assert sum(r.levelno == logging.WARNING for r in caplog.records) == 4


def test_pair_count_matches_build_pairs() -> None:
    ml = torch.tensor(_labels(MNIST_COUNTS["train"]))
    sl = torch.tensor(_labels(SVHN_COUNTS["train"]))
    for dm, cap in ((1, 10_000), (3, 2), (20, 1)):
        pairs = mnist_svhn.build_pairs(ml, sl, dm=dm, max_per_class=cap)
        assert mnist_svhn.pair_count(ml, sl, dm=dm, max_per_class=cap) == len(pairs[0])
