"""Memory checks before data is built: every published dataset stops with a BenchError naming the
bytes and what reduces them, before anything is allocated or cached."""

from __future__ import annotations

import re
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from mmvae_bench.data import memory, mhd, mnist_svhn, polymnist
from mmvae_bench.data import translated_polymnist as tp
from mmvae_bench.data.spec import DataOptions
from mmvae_bench.errors import BenchError
from tests.data.fixtures import write_mhd, write_mnist, write_polymnist, write_svhn
from tests.data.test_translated_polymnist import write_data as write_translated

NUMPY_OOM = "Unable to allocate 90.9 TiB for an array with shape (100000000000000,)"
TORCH_OOM = (
    "[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: can't allocate memory: "
    "you tried to allocate 123456 bytes. Error code 12 (Cannot allocate memory)"
)


def _write_mnist_svhn(data_dir: Path) -> None:
    labels = list(range(10)) * 2
    for split in ("train", "test"):
        write_mnist(data_dir, split, labels)
        write_svhn(data_dir, split, labels)


# name -> (writer, what reduces the memory: part of the hint, a function of the build to fail)
DATASETS: dict[str, tuple[Callable[[Path], object], str, tuple[object, str]]] = {
    "mhd": (write_mhd, "no option loads part of MHD", (mhd, "sound_to_model")),
    "polymnist": (write_polymnist, "no option loads part of PolyMNIST", (polymnist, "_decode")),
    "mnist-svhn": (_write_mnist_svhn, "a smaller dm reduces", (mnist_svhn, "build_pairs")),
    "translated-polymnist": (
        write_translated,
        "no option builds part of TranslatedPolyMNIST",
        (tp, "build_split"),
    ),
}
LOADERS = {"mhd": mhd, "polymnist": polymnist, "mnist-svhn": mnist_svhn, "translated-polymnist": tp}


def _files(*roots: Path) -> set[Path]:
    return {p for root in roots if root.exists() for p in root.rglob("*")}


@pytest.mark.parametrize("name", DATASETS)
def test_too_little_memory_stops_before_anything_is_built(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str
) -> None:
    write, hint, _ = DATASETS[name]
    data, cache = tmp_path / "data", tmp_path / "cache"
    write(data)
    before = _files(data)
    monkeypatch.setattr(memory, "available_memory_bytes", lambda: 1000)
    with pytest.raises(BenchError) as err:
        LOADERS[name].load(DataOptions(data_dir=data, cache_dir=cache))
    msg = str(err.value)
    found = re.fullmatch(
        rf"not enough memory to load {name}: it needs about [\d.]+ [KMG]i?B \((\d+) bytes\), "
        r"1000 B \(1000 bytes\) is available; (.*)",
        msg,
    )
    assert found, msg
    assert int(found.group(1)) > 1000 and hint in found.group(2)
    # no pair indices, decoded tuples or built splits were cached
    assert _files(data) == before and not _files(cache)


def test_mnist_svhn_bytes_scale_with_dm(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _write_mnist_svhn(tmp_path)
    needed = {}
    for dm in (1, 4):
        # enough for the unique images (the first check), not for the pair indices
        answers = iter([10**12, 1])
        monkeypatch.setattr(memory, "available_memory_bytes", lambda a=answers: next(a))
        with pytest.raises(BenchError, match=rf"each image is used dm={dm} times") as err:
            mnist_svhn.load(DataOptions(data_dir=tmp_path), dm=dm)
        needed[dm] = int(re.search(r"\((\d+) bytes\), 1 B", str(err.value)).group(1))
    # checked per split, train first: 20 images each used dm times; per pair two int64
    # indices and an int64 label, counted twice for building them; the images are held once
    # whatever dm is
    assert needed == {dm: dm * 20 * 3 * 8 * 2 for dm in (1, 4)}


@pytest.mark.parametrize("name", DATASETS)
@pytest.mark.parametrize("error", [RuntimeError(TORCH_OOM), MemoryError(NUMPY_OOM)])
def test_allocation_failure_while_building_is_a_bench_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str, error
) -> None:
    write, hint, (module, function) = DATASETS[name]
    data, cache = tmp_path / "data", tmp_path / "cache"
    write(data)
    before = _files(data)

    def fail(*args, **kwargs):
        raise error

    monkeypatch.setattr(module, function, fail)
    with pytest.raises(BenchError) as err:
        LOADERS[name].load(DataOptions(data_dir=data, cache_dir=cache))
    msg = str(err.value)
    assert msg.startswith(f"ran out of memory while loading {name} (")
    assert hint in msg
    if isinstance(error, RuntimeError):
        assert "you tried to allocate 123456 bytes" in msg and "enforce fail" not in msg
    assert _files(data) == before and not _files(cache)


def test_guard_leaves_other_errors_alone() -> None:
    with pytest.raises(RuntimeError, match="shape mismatch"):
        with memory.memory_guard("x", "hint"):
            raise RuntimeError("shape mismatch")
    with pytest.raises(ValueError):
        with memory.memory_guard("x", "hint"):
            raise ValueError("not memory")


def test_require_memory_passes_when_enough_or_unknown(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(memory, "available_memory_bytes", lambda: 10**9)
    memory.require_memory("x", 10**9, "hint")
    monkeypatch.setattr(memory, "available_memory_bytes", lambda: None)
    memory.require_memory("x", 10**18, "hint")  # unknown: nothing to compare with
    monkeypatch.setattr(memory, "available_memory_bytes", lambda: 2 * 2**30)
    with pytest.raises(BenchError, match=r"needs about 3 GiB \(3221225472 bytes\), 2 GiB \("):
        memory.require_memory("x", 3 * 2**30, "use less")


def test_available_memory_without_psutil_reads_meminfo(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal:       16384000 kB\nMemAvailable:    8192000 kB\n")
    monkeypatch.setitem(sys.modules, "psutil", None)  # import psutil -> ImportError
    monkeypatch.setattr(memory, "_MEMINFO", meminfo)
    assert memory.available_memory_bytes() == 8192000 * 1024
    monkeypatch.setattr(memory, "_MEMINFO", tmp_path / "absent")
    assert memory.available_memory_bytes() is None


def test_available_memory_is_positive() -> None:
    available = memory.available_memory_bytes()
    assert available is None or available > 0


def test_format_bytes() -> None:
    assert memory.format_bytes(1000) == "1000 B"
    assert memory.format_bytes(1536) == "1.5 KiB"
    assert memory.format_bytes(17.9 * 2**30) == "17.9 GiB"
    assert memory.format_bytes(5 * 2**40) == "5120 GiB"
