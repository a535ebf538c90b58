"""The built-in datasets: circles-squares and polymnist-lite (generated, no download)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from mmvae_bench.data import circles_squares as cs
from mmvae_bench.data import polymnist_lite as pl
from mmvae_bench.data.cache import open_cache, write_cache
from mmvae_bench.data.spec import DataOptions
from tests.data.batches import assert_batches_bit_identical

# Keep the one-thread rule even when this file runs without the shared conftest.
torch.set_num_threads(1)


# --- circles-squares ---------------------------------------------------------------------------


def test_circles_shapes_values_and_balance(tmp_path: Path) -> None:
    ds = cs.load(DataOptions(cache_dir=tmp_path))
    assert ds.name == "circles-squares"
    assert ds.modalities == ("circle", "square")
    assert (ds.n_classes, ds.latent_dim, ds.classifier_floor) == (2, 16, 0.9)
    assert all(s.shape == (1, 32, 32) and s.likelihood == "bernoulli" for s in ds.specs.values())
    for split, n in ((ds.train, cs.N_TRAIN), (ds.test, cs.N_TEST)):
        assert len(split) == n
        assert split.y.dtype == torch.long
        # Exactly balanced: the generator shuffles n/2 of each label.
        assert torch.bincount(split.y, minlength=2).tolist() == [n // 2, n // 2]
        for x in split.x.values():
            assert x.shape == (n, 1, 32, 32) and x.dtype == torch.uint8  # 0/1, divisor 1
            assert bool(((x == 0) | (x == 1)).all())
            # No blank images: the thinnest ring (r = 0.3) still covers grid points.
            assert bool((x.sum((1, 2, 3)) > 0).all())


def test_circles_batches_are_the_rendered_floats() -> None:
    splits, radii = cs.build()
    for name, split in splits.items():
        # the float32 0/1 images the loader used to hold, drawn again from the same radii
        assert_batches_bit_identical(split, cs.render(radii[name], split.y.bool()))


def test_circles_filled_have_more_foreground_than_rings(tmp_path: Path) -> None:
    ds = cs.load(DataOptions(cache_dir=tmp_path))
    for name, x in ds.train.batch().items():
        fg = x.mean((1, 2, 3))
        filled, ring = fg[ds.train.y == 1].mean(), fg[ds.train.y == 0].mean()
        assert filled > 1.5 * ring, (name, filled, ring)

    # Same radius, filled vs ring: the ring is a subset of the filled shape, and a strict one
    # once its hole (radius r - 0.25) reaches the grid points nearest the centre, which lie
    # 0.046 (disc) and 0.065 (diamond) from it; below r ~ 0.315 a diamond ring is filled.
    radius = torch.linspace(*cs.RADIUS_RANGE, 25).unsqueeze(1).expand(-1, 2).contiguous()
    full = cs.render(radius, torch.ones(25, dtype=torch.bool))
    ring = cs.render(radius, torch.zeros(25, dtype=torch.bool))
    holed = radius[:, 0] >= 0.35
    for name in cs.MODALITIES:
        assert bool((ring[name] <= full[name]).all())
        smaller = ring[name].sum((1, 2, 3)) < full[name].sum((1, 2, 3))
        assert bool(smaller[holed].all())

    # Areas match the geometry (disc pi r^2, diamond 2 r^2) within 25%: at r = 0.3 a shape
    # covers only ~40-70 grid points, so counting them is off by up to ~18%; a grid over any
    # other square than [-1, 1]^2 would be off by a factor.
    cell = (2 / (cs.GRID_SIZE - 1)) ** 2
    r = radius[:, 0]
    for name, area in (("circle", math.pi * r**2), ("square", 2 * r**2)):
        rel = full[name].sum((1, 2, 3)) * cell / area - 1
        assert bool((rel.abs() < 0.25).all()), (name, rel)


def test_circles_radii_independent_and_in_range() -> None:
    _, radii = cs.build()
    r = radii["train"]
    assert bool(((r >= cs.RADIUS_RANGE[0]) & (r <= cs.RADIUS_RANGE[1])).all())
    # Independent draws: |corr| ~ 1/sqrt(4000) = 0.016, so 0.1 is a > 6-sigma bound.
    corr = torch.corrcoef(r.T)[0, 1]
    assert corr.abs() < 0.1


def test_circles_deterministic_and_run_seed_independent(tmp_path: Path) -> None:
    a = cs.load(DataOptions(cache_dir=tmp_path, seed=0))
    b = cs.load(DataOptions(cache_dir=tmp_path, seed=0))
    c = cs.load(DataOptions(cache_dir=tmp_path, seed=123))
    for other in (b, c):
        for sa, so in ((a.train, other.train), (a.test, other.test)):
            assert torch.equal(sa.y, so.y)
            assert all(torch.equal(sa.x[m], so.x[m]) for m in cs.MODALITIES)
    # A different dataset seed does change the data (the seed is really used).
    other_seed, _ = cs.build(cs.DATASET_SEED + 1)
    assert not torch.equal(other_seed["train"].x["circle"], a.train.x["circle"])


# --- polymnist-lite ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def built() -> tuple[dict[str, dict[str, torch.Tensor]], dict[str, torch.Tensor]]:
    torch.set_num_threads(1)
    return pl.build()


@pytest.fixture(scope="module")
def mnist() -> tuple[torch.Tensor, torch.Tensor]:
    return pl.digits()


def test_polymnist_sizes_and_balance(built) -> None:
    data, _ = built
    for split, n in (("train", pl.N_TRAIN), ("test", pl.N_TEST)):
        part = data[split]
        assert set(part) == {"m0", "m1", "m2", "m3", "m4", "y"}
        assert all(part[m].shape == (n, 3, 28, 28) for m in pl.MODALITIES)
        assert all(part[m].dtype == torch.uint8 for m in pl.MODALITIES)
        assert torch.bincount(part["y"], minlength=10).tolist() == [n // 10] * 10


def test_polymnist_tuples_share_only_the_label(built, mnist) -> None:
    data, prov = built
    digit_labels = mnist[1]
    for split in ("train", "test"):
        idx = prov[f"{split}_digit_index"]
        assert idx.shape == (len(data[split]["y"]), 5)
        # Every modality's digit image has the tuple's label.
        assert bool((digit_labels[idx] == data[split]["y"][:, None]).all())
        # Independent draws from >= 100 images per class: the same image in two modalities
        # of one tuple has probability <= 1/100 per pair.
        same = (idx[:, 0] == idx[:, 1]).float().mean()
        assert same < 0.03


def test_polymnist_train_test_digits_disjoint(built) -> None:
    _, prov = built
    train = set(prov["train_digit_index"].unique().tolist())
    test = set(prov["test_digit_index"].unique().tolist())
    assert not train & test
    assert len(train) <= 4000 and len(test) <= 1000
    # 5,000 draws per class from 400 images leave none unused in practice (e^-12.5 each).
    assert len(train) > 3990


def test_polymnist_backgrounds_distinct(built) -> None:
    bgs = pl.backgrounds().float()
    assert bgs.shape == (5, 3, 427, 640)
    # Pixelwise the five backgrounds differ by > 40 grey levels on average (closest: m1, m3 ~58).
    for i in range(5):
        for j in range(i + 1, 5):
            assert (bgs[i] - bgs[j]).abs().mean() > 40, (i, j)
    # And their crops in the data differ in mean colour (closest pair ~17/255 apart).
    data, _ = built
    mean = torch.stack([data["train"][m].float().mean((0, 2, 3)) / 255 for m in pl.MODALITIES])
    dist = torch.cdist(mean, mean) + torch.eye(5)
    assert dist.min() > 10 / 255, dist


def test_polymnist_digit_pasted_by_inverting_the_crop(built, mnist) -> None:
    data, prov = built
    images, _ = mnist
    bgs = pl.backgrounds()
    idx, offset = prov["test_digit_index"], prov["test_offset"]
    ar = torch.arange(28)
    for m, name in enumerate(pl.MODALITIES):
        top, left = offset[:, m, 0], offset[:, m, 1]
        crop = bgs[m][:, (top[:, None] + ar)[:, :, None], (left[:, None] + ar)[:, None, :]]
        crop = crop.permute(1, 0, 2, 3).int()
        out = data["test"][name].int()
        on = (images[idx[:, m]] > 128).unsqueeze(1).expand_as(out)
        assert bool((on.sum((1, 2, 3)) > 0).all())
        assert torch.equal(out[~on], crop[~on])
        assert torch.equal(out[on], 255 - crop[on])
        # Visible: under the digit the pixels move far from the background on average.
        assert (out[on] - crop[on]).abs().float().mean() > 40


@pytest.mark.slow
def test_polymnist_deterministic(built) -> None:
    data, prov = built
    again, prov_again = pl.build()
    for split in ("train", "test"):
        assert all(torch.equal(data[split][k], again[split][k]) for k in data[split])
    assert all(torch.equal(prov[k], prov_again[k]) for k in prov)


def test_polymnist_load_caches_and_rebuilds_corrupt_cache(built, tmp_path, monkeypatch) -> None:
    data, prov = built
    calls = []

    def fake_build(seed: int = pl.DATASET_SEED):
        calls.append(seed)
        return data, prov

    # The real build is covered above; here only the cache logic matters, so reuse its result.
    monkeypatch.setattr(pl, "build", fake_build)
    path = pl.cache_path(tmp_path)

    def check(ds) -> None:
        assert ds.name == "polymnist-lite" and ds.modalities == pl.MODALITIES
        assert ds.info["train_tuples"] == pl.N_TRAIN and ds.info["test_digits"] == 1000
        for split in ("train", "test"):
            got = getattr(ds, split)
            assert torch.equal(got.y, data[split]["y"])
            for m in ("m0", "m4"):
                assert got.x[m].dtype == torch.uint8
                assert torch.equal(got.x[m], data[split][m])
            # batches: bit-identical to the float32 tensors the loader used to hold
            old = {m: data[split][m].float().div_(255.0) for m in pl.MODALITIES}
            assert_batches_bit_identical(got, old)

    check(pl.load(DataOptions(cache_dir=tmp_path, seed=0)))
    assert calls == [pl.DATASET_SEED] and path.is_file()
    assert path == tmp_path / "datasets" / "polymnist-lite-v2.mmvb"

    # Second load (another run seed) reads the cache: no rebuild.
    check(pl.load(DataOptions(cache_dir=tmp_path, seed=7)))
    assert len(calls) == 1

    # A corrupt file and a readable file with the wrong layout are both rebuilt.
    path.write_bytes(b"not a torch file")
    check(pl.load(DataOptions(cache_dir=tmp_path)))
    assert len(calls) == 2
    header, _ = open_cache(path)
    write_cache(path, {"train.m0": torch.zeros(3)}, fingerprint=header["fingerprint"], meta={})
    check(pl.load(DataOptions(cache_dir=tmp_path)))
    assert len(calls) == 3
    _, cached = open_cache(path)
    assert torch.equal(cached["test.m2"], data["test"]["m2"])
