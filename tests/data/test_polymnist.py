"""PolyMNIST: tiny PNG folders in the published layout through the real loader, cache, fetch."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from mmvae_bench.data import polymnist
from mmvae_bench.data.download import RemoteFile
from mmvae_bench.data.spec import DataOptions
from mmvae_bench.errors import BenchError
from tests.data.batches import assert_batches_bit_identical
from tests.data.fixtures import (
    as_tensor,
    serve_directory,
    write_html_page,
    write_polymnist,
    zip_tree,
)

FETCH = "mmvae-bench data fetch polymnist --data-dir"


def _load(data_dir: Path):
    return polymnist.load(DataOptions(data_dir=data_dir))


def test_loads_published_layout(tmp_path: Path) -> None:
    written = write_polymnist(tmp_path, n_per_class=3)
    ds = _load(tmp_path)
    assert ds.name == "polymnist" and ds.modalities == ("m0", "m1", "m2", "m3", "m4")
    assert (ds.latent_dim, ds.n_classes, ds.classifier_floor) == (512, 10, 0.9)
    for split_name, split in (("train", ds.train), ("test", ds.test)):
        images, labels = written[split_name]
        assert len(split) == 30
        assert torch.equal(split.y, as_tensor(labels).long())
        for k, m in enumerate(ds.modalities):
            x = split.x[m]  # stored as decoded: uint8
            assert x.shape == (30, 3, 28, 28) and x.dtype == torch.uint8
            assert torch.equal(x, as_tensor(images[k]))
            # a tuple is the same file name in every modality: pixel [0, 0] is (k, label, i)
            assert torch.equal(x[:, :, 0, 0].long()[:, 1], split.y)
            assert torch.equal(x[:, 0, 0, 0].long(), torch.full((30,), k))
        # batches: bit-identical to the float32 tensors the loader used to hold
        old = {
            m: as_tensor(images[k]).to(torch.float32).div_(255.0)
            for k, m in enumerate(polymnist.MODALITIES)
        }
        assert_batches_bit_identical(split, old)
    for spec in ds.specs.values():
        assert spec.shape == (3, 28, 28) and spec.likelihood == "laplace" and spec.scale == 0.75
        assert spec.fid and spec.kind == "image"


def test_decodes_once_then_uses_the_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_polymnist(tmp_path)
    first = _load(tmp_path)
    assert polymnist.cache_path(tmp_path, "train").is_file()
    assert polymnist.cache_path(tmp_path, "test").is_file()

    def no_decoding(*args, **kwargs):
        raise AssertionError("decoded PNGs although the cache is current")

    monkeypatch.setattr(polymnist.Image, "open", no_decoding)
    second = _load(tmp_path)
    assert all(torch.equal(first.train.x[m], second.train.x[m]) for m in first.modalities)


def test_changed_folder_is_read_again(tmp_path: Path) -> None:
    write_polymnist(tmp_path)
    _load(tmp_path)
    root = tmp_path / "MMNIST" / "train"
    for k in range(5):  # remove the tuple 2.9 everywhere
        (root / f"m{k}" / "2.9.png").unlink()
    assert len(_load(tmp_path).train) == 29
    # same names, new pixels in one file: its size or mtime changes the fingerprint
    from PIL import Image

    path = root / "m3" / "0.4.png"
    Image.fromarray(np.full((28, 28, 3), 7, dtype=np.uint8), "RGB").save(path)
    os.utime(path, ns=(1, 1))
    ds = _load(tmp_path)
    j = 3 * 4  # label 4, i 0 in (label, i) order
    assert torch.equal(ds.train.x["m3"][j], torch.full((3, 28, 28), 7, dtype=torch.uint8))


def test_corrupt_cache_is_ignored(tmp_path: Path) -> None:
    write_polymnist(tmp_path)
    _load(tmp_path)
    polymnist.cache_path(tmp_path, "train").write_bytes(b"garbage")
    assert len(_load(tmp_path).train) == 30


def test_name_missing_in_one_modality_is_named(tmp_path: Path) -> None:
    write_polymnist(tmp_path)
    (tmp_path / "MMNIST" / "test" / "m2" / "1.7.png").unlink()
    with pytest.raises(BenchError) as err:
        _load(tmp_path)
    msg = str(err.value)
    root = tmp_path / "MMNIST" / "test"
    assert f"{root / 'm2'} lacks 1.7.png, which m0, m1, m3, m4 have" in msg and FETCH in msg
    assert "m0 lacks" not in msg


def test_extra_name_in_one_modality_names_that_folder(tmp_path: Path) -> None:
    # m2 holds a file the others do not: m2 is the odd folder, not m0 (the first that "lacks" it)
    write_polymnist(tmp_path)
    root = tmp_path / "MMNIST" / "train"
    (root / "m2" / "0.0.png").rename(root / "m2" / "9.3.png")
    with pytest.raises(BenchError) as err:
        _load(tmp_path)
    msg = str(err.value)
    assert msg.startswith("PolyMNIST file names differ between m0..m4: ")
    assert f"{root / 'm2'} lacks 0.0.png, which m0, m1, m3, m4 have" in msg
    assert f"{root / 'm2'} has 9.3.png, which m0, m1, m3, m4 lack" in msg
    assert all(f"{root / m} " not in msg for m in ("m0", "m1", "m3", "m4")) and FETCH in msg
    problems = polymnist.check(tmp_path)
    assert problems[0] == msg


def test_names_missing_in_two_modalities_name_both(tmp_path: Path) -> None:
    write_polymnist(tmp_path)
    root = tmp_path / "MMNIST" / "test"
    (root / "m1" / "2.5.png").unlink()
    (root / "m4" / "2.5.png").unlink()
    with pytest.raises(BenchError) as err:
        _load(tmp_path)
    msg = str(err.value)
    assert f"{root / 'm1'} lacks 2.5.png, which m0, m2, m3 have" in msg
    assert f"{root / 'm4'} lacks 2.5.png, which m0, m2, m3 have" in msg
    assert f"{root / 'm0'} " not in msg


def test_split_without_pngs(tmp_path: Path) -> None:
    write_polymnist(tmp_path)
    for png in (tmp_path / "MMNIST" / "test").rglob("*.png"):
        png.unlink()
    with pytest.raises(BenchError, match=r"MMNIST/test holds no PNG files") as err:
        _load(tmp_path)
    assert FETCH in str(err.value)


def test_html_page_saved_as_a_png(tmp_path: Path) -> None:
    write_polymnist(tmp_path)
    path = write_html_page(tmp_path / "MMNIST" / "train" / "m3" / "1.4.png")
    expected = (
        f"{path} is an HTML page, not a PNG image: the download probably failed; "
        f"run `{FETCH} {tmp_path}`"
    )
    with pytest.raises(BenchError) as err:
        _load(tmp_path)
    assert str(err.value) == expected
    assert expected in polymnist.check(tmp_path)


def test_short_splits_load_with_a_warning_and_are_recorded(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    write_polymnist(tmp_path, n_per_class=1)
    with caplog.at_level(logging.WARNING, logger="mmvae_bench.data.published"):
        ds = _load(tmp_path)
    assert ds.info["sample_counts"] == {
        "train": {"found": 10, "published": 60_000},
        "test": {"found": 10, "published": 10_000},
    }
    assert ds.info["published_counts_match"] is False
    assert sum("polymnist train: 10 samples" in r.getMessage() for r in caplog.records) == 1


def test_missing_folder(tmp_path: Path) -> None:
    write_polymnist(tmp_path, splits=("train",))
    with pytest.raises(BenchError, match=r"MMNIST/test/m0.*mmvae-bench data fetch polymnist"):
        _load(tmp_path)
    with pytest.raises(BenchError, match="needs --data-dir"):
        polymnist.load(DataOptions())


def test_truncated_png(tmp_path: Path) -> None:
    write_polymnist(tmp_path)
    path = tmp_path / "MMNIST" / "train" / "m4" / "2.3.png"
    path.write_bytes(path.read_bytes()[:60])
    with pytest.raises(BenchError, match=r"m4/2\.3\.png is unreadable or truncated") as err:
        _load(tmp_path)
    assert FETCH in str(err.value)


def test_wrong_image_shape(tmp_path: Path) -> None:
    write_polymnist(tmp_path)
    from PIL import Image

    path = tmp_path / "MMNIST" / "train" / "m1" / "0.0.png"
    Image.fromarray(np.zeros((32, 32), dtype=np.uint8), "L").save(path)
    with pytest.raises(BenchError, match=r"m1/0\.0\.png: L image of 32x32, expected a 28x28 RGB"):
        _load(tmp_path)


def test_badly_named_png(tmp_path: Path) -> None:
    write_polymnist(tmp_path)
    (tmp_path / "MMNIST" / "train" / "m0" / "extra.png").write_bytes(b"")
    with pytest.raises(BenchError, match=r"extra\.png: not a PolyMNIST file name"):
        _load(tmp_path)


def test_check(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_polymnist(tmp_path)
    problems = polymnist.check(tmp_path)  # 30 tuples, not the published 60,000 / 10,000
    assert len(problems) == 2 and all(FETCH in p for p in problems)
    train = tmp_path / "MMNIST" / "train"
    assert f"{train}: 30 train samples, the published data has 60000 (fewer)" in problems[0]
    monkeypatch.setattr(polymnist, "EXPECTED_TUPLES", {"train": 30, "test": 30})
    assert polymnist.check(tmp_path) == []
    (tmp_path / "MMNIST" / "train" / "m0" / "0.0.png").unlink()
    assert "0.0.png" in polymnist.check(tmp_path)[0]


def test_fetch_unpacks_mmnist_from_the_archive(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    src, host, data = tmp_path / "src", tmp_path / "host", tmp_path / "data"
    written = write_polymnist(src, n_per_class=1)
    (src / "clf").mkdir()
    (src / "clf" / "weights.pth").write_bytes(b"w")
    host.mkdir()
    zip_tree(src, host / "PolyMNIST.zip", prefix="PolyMNIST/")  # nested one level, as may be
    monkeypatch.setattr(polymnist, "EXPECTED_TUPLES", {"train": 10, "test": 10})
    with serve_directory(host) as srv:
        monkeypatch.setattr(
            polymnist, "ARCHIVE", RemoteFile(name="PolyMNIST.zip", urls=(srv.url("PolyMNIST.zip"),))
        )
        polymnist.fetch(data, progress=False)
        assert len(srv.requests) == 1
        ds = _load(data)
        assert torch.equal(ds.test.batch()["m2"], as_tensor(written["test"][0][2]).float() / 255)
        assert (data / "clf" / "weights.pth").read_bytes() == b"w"
        assert not (data / "PolyMNIST.zip").exists()
        assert not list(data.glob(".polymnist-*"))
        polymnist.fetch(data, progress=False)  # complete: nothing downloaded
        assert len(srv.requests) == 1


def test_fetch_refuses_archive_without_mmnist(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    host, data = tmp_path / "host", tmp_path / "data"
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "readme.txt").write_text("no data here")
    host.mkdir()
    zip_tree(tmp_path / "src", host / "PolyMNIST.zip")
    with serve_directory(host) as srv:
        monkeypatch.setattr(
            polymnist, "ARCHIVE", RemoteFile(name="PolyMNIST.zip", urls=(srv.url("PolyMNIST.zip"),))
        )
        with pytest.raises(BenchError, match="no MMNIST folder"):
            polymnist.fetch(data, progress=False)
    assert not (data / "PolyMNIST.zip").exists()
