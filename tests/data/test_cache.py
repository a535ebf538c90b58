"""The node-shared array cache: round trip, mapping, rebuilds of bad files, the lock, versions."""

from __future__ import annotations

import json
import logging
import multiprocessing
import struct
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from mmvae_bench.data import cache
from mmvae_bench.data.cache import FORMAT_VERSION, cached_arrays, open_cache, write_cache
from mmvae_bench.errors import BenchError

WHAT = "test cache"


def _arrays() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {
        "images": rng.integers(0, 256, size=(7, 3, 5, 5), dtype=np.uint8),
        "labels": np.arange(7, dtype=np.int64),
        "values": rng.standard_normal((7, 11)).astype(np.float32),
        "half": rng.standard_normal((7, 3)).astype(np.float16),
        "none": np.zeros((0, 4), dtype=np.float32),
    }


class Builder:
    """A ``build`` callable that counts its calls."""

    def __init__(self, arrays: dict[str, np.ndarray] | None = None) -> None:
        self.arrays = arrays if arrays is not None else _arrays()
        self.calls = 0

    def __call__(self) -> tuple[dict[str, np.ndarray], dict[str, object]]:
        self.calls += 1
        return dict(self.arrays), {"note": "meta", "n": 7}


def _same(got: dict[str, torch.Tensor], want: dict[str, np.ndarray]) -> None:
    assert set(got) == set(want)
    for k, a in want.items():
        assert got[k].dtype == torch.from_numpy(a).dtype, k
        assert tuple(got[k].shape) == a.shape, k
        assert np.array_equal(got[k].numpy(), a), k


def _mapped_paths() -> str:
    return Path("/proc/self/maps").read_text()


def _rewrite_header(path: Path, mutate) -> None:
    """Change the header of ``path`` in place: ``mutate`` edits it or returns a replacement."""
    raw = bytearray(path.read_bytes())
    magic, length = struct.unpack("<8sQ", raw[:16])
    header = json.loads(raw[16 : 16 + length])
    first = min(e["offset"] for e in header["arrays"].values())
    replaced = mutate(header)
    blob = json.dumps(header if replaced is None else replaced).encode()
    assert 16 + len(blob) <= first  # the data bytes stay where they were
    raw[:16] = struct.pack("<8sQ", magic, len(blob))
    raw[16 : 16 + len(blob)] = blob
    path.write_bytes(bytes(raw))


def test_round_trip_maps_the_file_and_builds_once(tmp_path: Path) -> None:
    path = tmp_path / "c.mmvb"
    build = Builder()
    arrays, meta = cached_arrays(path, {"src": 1}, build, what=WHAT)
    _same(arrays, build.arrays)
    assert meta == {"note": "meta", "n": 7}
    assert build.calls == 1
    again, meta2 = cached_arrays(path, {"src": 1}, build, what=WHAT)
    assert build.calls == 1  # the second load maps, it does not decode
    _same(again, build.arrays)
    assert meta2 == meta
    # the tensors are views of a mapping of the cache file, not copies
    assert str(path) in _mapped_paths()
    header, _ = open_cache(path)
    assert header["format_version"] == FORMAT_VERSION
    assert header["fingerprint"] == {"src": 1}
    assert header["file_bytes"] == path.stat().st_size
    assert header["arrays"]["images"] == {
        "dtype": "|u1",
        "shape": [7, 3, 5, 5],
        "offset": header["arrays"]["images"]["offset"],
        "nbytes": 7 * 75,
    }
    assert all(e["offset"] % 4096 == 0 for e in header["arrays"].values())


def test_writing_into_a_mapped_tensor_leaves_the_file_alone(tmp_path: Path) -> None:
    path = tmp_path / "c.mmvb"
    build = Builder()
    arrays, _ = cached_arrays(path, "fp", build, what=WHAT)
    before = path.read_bytes()
    arrays["images"].zero_()  # copy-on-write: this process's pages only
    assert int(arrays["images"].sum()) == 0
    assert path.read_bytes() == before
    fresh, _ = cached_arrays(path, "fp", build, what=WHAT)
    _same(fresh, build.arrays)


def test_torch_tensors_and_tuples_in_the_fingerprint(tmp_path: Path) -> None:
    path = tmp_path / "c.mmvb"
    t = {"x": torch.arange(6, dtype=torch.int32).reshape(2, 3)}
    arrays, _ = cached_arrays(path, ("a", 1), lambda: (t, {}), what=WHAT)
    assert torch.equal(arrays["x"], t["x"])
    build = Builder()
    cached_arrays(path, ["a", 1], build, what=WHAT)  # a tuple reads back as a list
    assert build.calls == 0


def test_other_fingerprint_rebuilds(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "c.mmvb"
    cached_arrays(path, {"mtime_ns": 1}, Builder(), what=WHAT)
    other = _arrays()
    other["labels"] = other["labels"] + 100
    build = Builder(other)
    with caplog.at_level(logging.INFO, logger="mmvae_bench.data.cache"):
        arrays, _ = cached_arrays(path, {"mtime_ns": 2}, build, what=WHAT)
    assert build.calls == 1
    _same(arrays, other)
    assert "other source files" in caplog.text
    assert open_cache(path)[0]["fingerprint"] == {"mtime_ns": 2}


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 100])


def _pad(path: Path) -> None:
    with open(path, "ab") as f:
        f.write(b"\0" * 10)


def _garbage_header(path: Path) -> None:
    raw = bytearray(path.read_bytes())
    raw[20:40] = b"\xff" * 20
    path.write_bytes(bytes(raw))


def _bad_magic(path: Path) -> None:
    raw = bytearray(path.read_bytes())
    raw[:8] = b"\x80\x04PICKLE"
    path.write_bytes(bytes(raw))


def _huge_header_length(path: Path) -> None:
    raw = bytearray(path.read_bytes())
    raw[8:16] = struct.pack("<Q", 1 << 40)
    path.write_bytes(bytes(raw))


def _set(key: str, value: object):
    return lambda path: _rewrite_header(path, lambda h: h.__setitem__(key, value))


def _array(name: str, key: str, value: object):
    return lambda path: _rewrite_header(path, lambda h: h["arrays"][name].__setitem__(key, value))


def _overlap(path: Path) -> None:
    def mutate(h: dict) -> None:
        h["arrays"]["labels"]["offset"] = h["arrays"]["images"]["offset"]

    _rewrite_header(path, mutate)


BAD_FILES = {
    "truncated": _truncate,
    "padded": _pad,
    "garbage header": _garbage_header,
    "not a cache file": _bad_magic,
    "header length past the file": _huge_header_length,
    "header not an object": lambda p: _rewrite_header(p, lambda h: [h]),
    "no format version": _set("format_version", None),
    "file_bytes differs": _set("file_bytes", 12),
    "no array table": _set("arrays", []),
    "object dtype": _array("labels", "dtype", "|O"),
    "record dtype": _array("labels", "dtype", [["a", "<i8"]]),
    "nbytes differs from shape": _array("labels", "nbytes", 8),
    "shape differs from nbytes": _array("images", "shape", [7, 3, 5, 6]),
    "negative shape": _array("images", "shape", [-7, 3, 5, 5]),
    "array past the end": _array("values", "offset", 1 << 30),
    "array inside the header": _array("values", "offset", 8),
    "misaligned": _array("values", "offset", 4097),
    "overlapping arrays": _overlap,
}


@pytest.mark.parametrize("damage", list(BAD_FILES), ids=list(BAD_FILES))
def test_damaged_files_are_rebuilt_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, damage: str
) -> None:
    path = tmp_path / "c.mmvb"
    cached_arrays(path, "fp", Builder(), what=WHAT)
    BAD_FILES[damage](path)
    build = Builder()
    with caplog.at_level(logging.WARNING, logger="mmvae_bench.data.cache"):
        arrays, _ = cached_arrays(path, "fp", build, what=WHAT)
    assert build.calls == 1
    _same(arrays, build.arrays)
    assert any(
        r.levelno == logging.WARNING and str(path) in r.getMessage() and "rebuilding" in r.message
        for r in caplog.records
    ), caplog.text
    assert open_cache(path)[0]["file_bytes"] == path.stat().st_size  # a good file again


def test_a_pickle_in_place_of_the_cache_is_not_loaded(tmp_path: Path) -> None:
    path = tmp_path / "c.mmvb"
    marker = tmp_path / "pwned"
    # A pickle that would create `marker` if anything unpickled it.
    import pickle

    class Evil:
        def __reduce__(self):
            return (Path.touch, (marker,))

    path.write_bytes(pickle.dumps(Evil()))
    build = Builder()
    arrays, _ = cached_arrays(path, "fp", build, what=WHAT)
    assert build.calls == 1 and not marker.exists()
    _same(arrays, build.arrays)


def test_validate_rejects_a_cache_the_loader_does_not_expect(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "c.mmvb"
    small = _arrays()
    small["images"] = small["images"][:3]
    cached_arrays(path, "fp", Builder(small), what=WHAT)

    def validate(arrays: dict[str, torch.Tensor], meta: dict) -> str | None:
        n = arrays["images"].shape[0]
        return None if n == 7 else f"{n} images, expected 7"

    build = Builder()
    with caplog.at_level(logging.WARNING, logger="mmvae_bench.data.cache"):
        arrays, _ = cached_arrays(path, "fp", build, what=WHAT, validate=validate)
    assert build.calls == 1 and "3 images, expected 7" in caplog.text
    _same(arrays, build.arrays)


def test_older_format_is_rebuilt_quietly(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "c.mmvb"
    cached_arrays(path, "fp", Builder(), what=WHAT)
    _set("format_version", FORMAT_VERSION - 1)(path)
    build = Builder()
    with caplog.at_level(logging.INFO, logger="mmvae_bench.data.cache"):
        cached_arrays(path, "fp", build, what=WHAT)
    assert build.calls == 1 and "older cache format" in caplog.text


def test_newer_format_is_refused_naming_the_file(tmp_path: Path) -> None:
    path = tmp_path / "c.mmvb"
    cached_arrays(path, "fp", Builder(), what=WHAT)
    _set("format_version", FORMAT_VERSION + 1)(path)
    before = path.read_bytes()
    build = Builder()
    with pytest.raises(BenchError, match="newer mmvae-bench") as e:
        cached_arrays(path, "fp", build, what=WHAT)
    assert str(path) in str(e.value) and "delete the file" in str(e.value)
    assert build.calls == 0 and path.read_bytes() == before  # not overwritten


def test_unwritable_cache_returns_this_process_copy(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "c.mmvb"

    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(cache, "write_cache", refuse)
    build = Builder()
    with caplog.at_level(logging.WARNING, logger="mmvae_bench.data.cache"):
        arrays, meta = cached_arrays(path, "fp", build, what=WHAT)
    _same(arrays, build.arrays)
    assert meta["n"] == 7 and not path.exists()
    assert "could not write" in caplog.text and "Permission denied" in caplog.text


def test_write_refuses_object_arrays(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match="plain numbers"):
        write_cache(tmp_path / "c", {"x": np.array([{}], dtype=object)}, fingerprint=1, meta={})
    assert not list(tmp_path.iterdir())  # nothing half-written


def _concurrent_load(path: str, log: str, start: float) -> None:
    torch.set_num_threads(1)

    def build():
        with open(log, "a") as f:
            f.write("built\n")
        time.sleep(0.5)  # long enough for the other processes to find no cache
        return {"x": np.arange(1000, dtype=np.int64)}, {}

    time.sleep(max(0.0, start - time.time()))
    arrays, _ = cached_arrays(Path(path), "fp", build, what=WHAT)
    assert int(arrays["x"].sum()) == 999 * 1000 // 2


def test_concurrent_processes_decode_once(tmp_path: Path) -> None:
    path, log = tmp_path / "c.mmvb", tmp_path / "builds.log"
    ctx = multiprocessing.get_context("fork")
    start = time.time() + 0.3
    procs = [
        ctx.Process(target=_concurrent_load, args=(str(path), str(log), start)) for _ in range(3)
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join(30)
    assert [p.exitcode for p in procs] == [0, 0, 0]
    assert log.read_text() == "built\n"  # one process decoded; the others waited and mapped
    assert sorted(q.name for q in tmp_path.iterdir()) == ["builds.log", "c.mmvb"]


# -- the loaders that cache through it ----------------------------------------------------------
def _loads_without_decoding(monkeypatch: pytest.MonkeyPatch, module, name: str, load):
    """Load once (decoding), then again with ``module.name`` broken: the cache must serve."""
    first = load()

    def no_decoding(*args, **kwargs):
        raise AssertionError(f"{module.__name__}.{name} called although the cache is current")

    with monkeypatch.context() as m:
        m.setattr(module, name, no_decoding)
        second = load()
    for a, b in ((first.train, second.train), (first.test, second.test)):
        assert torch.equal(a.y, b.y) and a.divisor == b.divisor
        assert all(torch.equal(a.x[k], b.x[k]) and a.x[k].dtype == b.x[k].dtype for k in a.x)
    return second


def test_polymnist_maps_its_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from mmvae_bench.data import polymnist
    from mmvae_bench.data.spec import DataOptions
    from tests.data.fixtures import write_polymnist

    write_polymnist(tmp_path)
    ds = _loads_without_decoding(
        monkeypatch, polymnist, "_decode", lambda: polymnist.load(DataOptions(data_dir=tmp_path))
    )
    assert ds.train.x["m0"].dtype == torch.uint8
    assert str(polymnist.cache_path(tmp_path, "train")) in _mapped_paths()


def test_mhd_maps_its_cache_and_rebuilds_for_a_new_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mmvae_bench.data import mhd
    from mmvae_bench.data.spec import DataOptions
    from tests.data.fixtures import write_mhd

    write_mhd(tmp_path)

    def load():
        return mhd.load(DataOptions(data_dir=tmp_path))

    ds = _loads_without_decoding(monkeypatch, mhd, "_load_file", load)
    assert str(mhd.cache_path(tmp_path, "train")) in _mapped_paths()
    assert ds.info["files"]["train"]["file"] == str(tmp_path / "mhd_train.pt")
    # a new file (other size or modification time) is read again
    write_mhd(tmp_path, n_per_class=4)
    assert len(load().train) == 40


def test_mnist_svhn_maps_its_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from mmvae_bench.data import mnist_svhn
    from mmvae_bench.data.spec import DataOptions
    from tests.data.fixtures import write_mnist, write_svhn

    for split in ("train", "test"):
        write_mnist(tmp_path, split, [k % 10 for k in range(30)])
        write_svhn(tmp_path, split, [k % 10 for k in range(40)])

    def load():
        return mnist_svhn.load(DataOptions(data_dir=tmp_path), dm=3)

    ds = _loads_without_decoding(monkeypatch, mnist_svhn, "read_svhn", load)
    assert str(mnist_svhn.split_cache_path(tmp_path, "train", 3)) in _mapped_paths()
    assert len(ds.train) == 90 and ds.train.x["svhn"].shape == (40, 3, 32, 32)
    assert torch.equal(ds.train.x["mnist"][ds.train.index["mnist"]][:, 0, 0, 1], ds.train.y)
