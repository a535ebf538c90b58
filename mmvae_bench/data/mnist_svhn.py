"""MNIST-SVHN (Shi et al. 2019): MNIST digits paired with SVHN house numbers of the same label.

Reads the files torchvision downloads, directly (torchvision's dataset classes insist on the full
files' md5, which no test fixture can have), under ``--data-dir``::

    MNIST/raw/{train,t10k}-images-idx3-ubyte   (or the .gz beside it)
    MNIST/raw/{train,t10k}-labels-idx1-ubyte   (or the .gz beside it)
    train_32x32.mat, test_32x32.mat            (SVHN: X (32, 32, 3, N) uint8, y (N, 1))

SVHN's label 10 is the digit 0.

Pairs: for each label, the first ``min(#MNIST, #SVHN, max_per_class)`` images of that label in
each dataset (in file order), each used ``dm`` times, paired by ``dm`` independent permutations
per dataset, as in the MMVAE script. Unlike it (which reshuffles unseeded, and takes the first n
of an unstable sort), the pairs are built once with a fixed seed (:data:`PAIRING_SEED`) and
cached as index files (``.mmvae_bench_pairs_{split}_dm{dm}.pt``: MNIST and SVHN indices, long),
so every run and every model sees the same pairs.
Each split's unique images, labels and pairs are then cached together beside the files
(``.mmvae_bench_cache_{split}_dm{dm}.mmvb``, the mapped format of :mod:`mmvae_bench.data.cache`,
keyed by the files' sizes and modification times and the pairing settings): later loads and
every other process on the node map it instead of reading the files again.

Memory: each split holds its unique MNIST and SVHN images once, as uint8 (~0.36 GB for both
splits of the published files), and its pairs as indices into them (24 bytes a pair with the
label: ~27 MB for the ~1.12 million train pairs at dm=20); a batch gathers its pairs and is
converted to float32 on the device (gathering the pairs as float32 took ~20 GB at dm=20). The
files' sizes, then the pair count from the labels, are checked against the available memory
before anything is read or built.

Sample counts follow the rule of :mod:`mmvae_bench.data.published`: an MNIST or SVHN split size
other than :data:`EXPECTED_SAMPLES` is a problem for ``check``; ``load`` warns, goes on and
records the counts in ``info["sample_counts"]``. A file with no images is an error, and so is a
web page saved under a data file's name (named as such, with the fetch command).

Reference: Y. Shi, N. Siddharth, B. Paige, P. H. S. Torr, "Variational Mixture-of-Experts
Autoencoders for Multi-Modal Deep Generative Models", NeurIPS 2019, arXiv 1911.03393.
"""

from __future__ import annotations

import gzip
import hashlib
import logging
import struct
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from mmvae_bench.data.cache import cached_arrays, file_fingerprint
from mmvae_bench.data.download import (
    RemoteFile,
    fetch_command,
    fetch_remote,
    require_data_dir,
    verify_sha256,
)
from mmvae_bench.data.memory import format_bytes, is_out_of_memory, memory_guard, require_memory
from mmvae_bench.data.published import (
    count_problems,
    html_page_message,
    is_html_page,
    record_counts,
    reject_html_page,
    torch_load_error,
)
from mmvae_bench.data.spec import DataOptions, ModalitySpec, MultimodalDataset, Split
from mmvae_bench.errors import BenchError
from mmvae_bench.io import atomic_torch_save, atomic_write

__all__ = [
    "DM_DEFAULT",
    "EXPECTED_SAMPLES",
    "MAX_PER_CLASS",
    "MNIST_FILES",
    "NAME",
    "PAIRING_SEED",
    "SPECS",
    "SVHN_FILES",
    "build_pairs",
    "check",
    "check_mnist",
    "fetch",
    "fetch_mnist",
    "load",
    "pairs_path",
    "split_cache_path",
    "read_idx",
    "read_mnist",
    "read_svhn",
]

logger = logging.getLogger(__name__)

NAME = "mnist-svhn"
DM_DEFAULT = 20  # times each image is used; the MMVAE authors' script used 30
MAX_PER_CLASS = 10_000
PAIRING_SEED = 0
# Bump when the pairing algorithm changes, so cached pairs are rebuilt.
_PAIRING_VERSION = 1
_PAIR_INDEX_BYTES = 3 * 8  # a pair's MNIST and SVHN rows and its label, int64

_MNIST_PREFIX = {"train": "train", "test": "t10k"}
_MNIST_MIRRORS = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "http://yann.lecun.com/exdb/mnist/",
)


def _mnist_remote(stem: str, sha256: str, size: int) -> RemoteFile:
    return RemoteFile(
        name=f"MNIST/raw/{stem}.gz",
        urls=tuple(m + f"{stem}.gz" for m in _MNIST_MIRRORS),
        sha256=sha256,
        size=size,
    )


# sha256 of the .gz files as recorded by several independent projects (torchvision checks the
# same files' md5: f68b3c2d..., d53e105e..., 9fb629c4..., ec29112d...).
MNIST_FILES: dict[str, RemoteFile] = {
    "train-images-idx3-ubyte": _mnist_remote(
        "train-images-idx3-ubyte",
        "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
        9_912_422,
    ),
    "train-labels-idx1-ubyte": _mnist_remote(
        "train-labels-idx1-ubyte",
        "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
        28_881,
    ),
    "t10k-images-idx3-ubyte": _mnist_remote(
        "t10k-images-idx3-ubyte",
        "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
        1_648_877,
    ),
    "t10k-labels-idx1-ubyte": _mnist_remote(
        "t10k-labels-idx1-ubyte",
        "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",
        4_542,
    ),
}

# sha256 and sizes as recorded in TensorFlow Datasets' checksums for these URLs (torchvision
# checks their md5: e26dedcc434d2e4c54c9b2d4a06d8373 train, eb5a983be6a315427106f1b164d9cef3 test).
SVHN_FILES: dict[str, RemoteFile] = {
    "train": RemoteFile(
        name="train_32x32.mat",
        urls=("http://ufldl.stanford.edu/housenumbers/train_32x32.mat",),
        sha256="435e94d69a87fde4fd4d7f3dd208dfc32cb6ae8af2240d066de1df7508d083b8",
        size=182_040_794,
    ),
    "test": RemoteFile(
        name="test_32x32.mat",
        urls=("http://ufldl.stanford.edu/housenumbers/test_32x32.mat",),
        sha256="cdce80dfb2a2c4c6160906d0bd7c68ec5a99d7ca4831afa54f09182025b6a75b",
        size=64_275_384,
    ),
}

EXPECTED_SAMPLES = {
    "mnist": {"train": 60_000, "test": 10_000},
    "svhn": {"train": 73_257, "test": 26_032},
}

SPECS: dict[str, ModalitySpec] = {
    "mnist": ModalitySpec(
        name="mnist",
        shape=(1, 28, 28),
        kind="image",
        likelihood="laplace",
        scale=0.75,
        encoder="conv28",
        decoder="conv28",
        classifier="cnn28",
        fid=True,
    ),
    "svhn": ModalitySpec(
        name="svhn",
        shape=(3, 32, 32),
        kind="image",
        likelihood="laplace",
        scale=0.75,
        encoder="conv32",
        decoder="conv32",
        classifier="svhn",
        fid=True,
    ),
}


def load(
    options: DataOptions, *, dm: int = DM_DEFAULT, max_per_class: int = MAX_PER_CLASS
) -> MultimodalDataset:
    """MNIST-SVHN pairs from the torchvision files under ``options.data_dir``.

    Args:
        options: where the data lives.
        dm: times each image is used (pairs per image).
        max_per_class: most images of one label taken from each dataset.

    Returns:
        A dataset with ``mnist`` (N, 1, 28, 28) and ``svhn`` (N, 3, 32, 32) batched as float32
        in [0, 1], labels 0-9 (shared by both images of a pair); latent size 20; ``rescale``
        weighs MNIST's likelihood by 3*32*32 / (28*28), as MMVAE does. Each split stores the
        unique images once as uint8 and the pairs as indices (:class:`Split` ``index``).

    Raises:
        BenchError: no data dir, bad ``dm``, a missing or corrupt file (named, with the fetch
            command), or not enough memory for the images and pairs (naming ``dm``).
    """
    if dm < 1 or max_per_class < 1:
        raise BenchError(f"dm and max_per_class must be >= 1, got dm={dm}, {max_per_class=}")
    data_dir = require_data_dir(
        options.data_dir,
        NAME,
        ["MNIST/raw/*-idx?-ubyte", SVHN_FILES["train"].name, SVHN_FILES["test"].name],
    )
    splits = {}
    info: dict[str, Any] = {
        "source": "Shi et al. 2019: torchvision MNIST raw files + SVHN *_32x32.mat",
        "data_dir": str(data_dir),
        "dm": dm,
        "max_per_class": max_per_class,
        "pairing_seed": PAIRING_SEED,
    }
    hint = (
        "free memory or use a machine with more; each image is used dm={dm} times, and a "
        "smaller dm reduces the pair indices (24 bytes a pair) in proportion "
        "(mmvae_bench.data.mnist_svhn.load(options, dm=...); `mmvae-bench run` has no option "
        f"for dm yet and uses {DM_DEFAULT})"
    ).format(dm=dm)
    # The unique images are held once, as uint8 (about the files' sizes); reading an SVHN file
    # copies its images once more into channels-first order.
    mnist_raw = data_dir / "MNIST" / "raw"
    files = [mnist_raw / f"{p}-images-idx3-ubyte" for p in _MNIST_PREFIX.values()]
    files += [data_dir / f.name for f in SVHN_FILES.values()]  # missing ones are named below
    sizes = [f.stat().st_size for f in files if f.is_file()]
    require_memory(NAME, sum(sizes) + max(sizes, default=0), hint)
    found = {}
    with memory_guard(NAME, hint):
        for split in ("train", "test"):
            # One decoded copy per node: the split's unique images, labels and pairs are mapped
            # from one cache file that every process shares (data/cache.py).
            a = _split_arrays(data_dir, split, dm, max_per_class, hint)
            mnist_y, svhn_y, idx_m, idx_s = (
                a["mnist_y"],
                a["svhn_y"],
                a["pairs_mnist"],
                a["pairs_svhn"],
            )
            n = len(idx_m)
            # Index pairs into the unique uint8 images: each image is held once, whatever dm
            # is; a batch gathers its pairs and becomes float32 / 255 on the device.
            x = {"mnist": a["mnist_x"].unsqueeze(1), "svhn": a["svhn_x"]}
            splits[split] = Split(
                x,
                mnist_y[idx_m],
                divisor=dict.fromkeys(x, 255.0),
                index={"mnist": idx_m, "svhn": idx_s},
            )
            logger.info(
                "MNIST-SVHN %s: %d pairs (dm=%d) of %d MNIST and %d SVHN images, %s resident",
                split,
                n,
                dm,
                len(mnist_y),
                len(svhn_y),
                format_bytes(splits[split].nbytes),
            )
            info[f"n_{split}"] = n
            info[f"unique_{split}"] = {"mnist": len(mnist_y), "svhn": len(svhn_y)}
            found[f"mnist {split}"] = len(mnist_y)
            found[f"svhn {split}"] = len(svhn_y)
    found = {k: found[k] for k in ("mnist train", "svhn train", "mnist test", "svhn test")}
    info.update(record_counts(NAME, found, _published_counts()))
    return MultimodalDataset(
        name=NAME,
        specs=dict(SPECS),
        train=splits["train"],
        test=splits["test"],
        n_classes=10,
        latent_dim=20,
        classifier_floor=0.85,
        rescale={"mnist": SPECS["svhn"].size / SPECS["mnist"].size, "svhn": 1.0},
        info=info,
    )


def split_cache_path(data_dir: Path, split: str, dm: int) -> Path:
    """Where a split's unique images, labels and pairs for ``dm`` are cached (mapped format)."""
    return Path(data_dir) / f".mmvae_bench_cache_{split}_dm{dm}.mmvb"


def _split_arrays(
    data_dir: Path, split: str, dm: int, max_per_class: int, hint: str
) -> dict[str, Tensor]:
    """A split's unique MNIST and SVHN images and labels and its pairs, mapped from the cache
    when it was built from these files and settings, else read, paired and cached."""
    fix = f"run `{fetch_command(NAME, data_dir)}`"
    prefix = _MNIST_PREFIX[split]
    sources = [
        _mnist_file(data_dir, f"{prefix}-{k}-ubyte", fix) for k in ("images-idx3", "labels-idx1")
    ]
    svhn = Path(data_dir) / SVHN_FILES[split].name
    if not svhn.is_file():
        read_svhn(data_dir, split)  # names the missing file and the fetch command

    def build() -> tuple[dict[str, Tensor], dict[str, Any]]:
        mnist_x, mnist_y = read_mnist(data_dir, split)
        svhn_x, svhn_y = read_svhn(data_dir, split)
        n = pair_count(mnist_y, svhn_y, dm=dm, max_per_class=max_per_class)
        # Per pair: two long indices and a long label; building them takes a few more.
        require_memory(NAME, n * _PAIR_INDEX_BYTES * 2, hint)
        idx_m, idx_s = _cached_pairs(data_dir, split, mnist_y, svhn_y, dm, max_per_class)
        arrays = {
            "mnist_x": mnist_x,
            "mnist_y": mnist_y,
            "svhn_x": svhn_x,
            "svhn_y": svhn_y,
            "pairs_mnist": idx_m,
            "pairs_svhn": idx_s,
        }
        return arrays, {}

    def problem(a: dict[str, Tensor], meta: dict[str, Any]) -> str | None:
        want = {"mnist_x": torch.uint8, "svhn_x": torch.uint8, "mnist_y": torch.long}
        want |= {"svhn_y": torch.long, "pairs_mnist": torch.long, "pairs_svhn": torch.long}
        if any(k not in a or a[k].dtype != d for k, d in want.items()):
            return "missing arrays or wrong dtypes"
        if a["mnist_x"].shape[1:] != (28, 28) or a["svhn_x"].shape[1:] != (3, 32, 32):
            return "images of the wrong shape"
        if not _pairs_valid(a["pairs_mnist"], a["pairs_svhn"], a["mnist_y"], a["svhn_y"]):
            return "pairs inconsistent with the labels"
        return None

    arrays, _ = cached_arrays(
        split_cache_path(data_dir, split, dm),
        {
            "dataset": NAME,
            "split": split,
            "pairing": [_PAIRING_VERSION, dm, max_per_class, PAIRING_SEED],
            "files": file_fingerprint([*sources, svhn]),
        },
        build,
        what=f"MNIST-SVHN {split} cache",
        validate=problem,
    )
    return arrays


def build_pairs(
    mnist_labels: Tensor,
    svhn_labels: Tensor,
    *,
    dm: int,
    max_per_class: int = MAX_PER_CLASS,
    seed: int = PAIRING_SEED,
) -> tuple[Tensor, Tensor]:
    """Index pairs of images with the same label.

    Args:
        mnist_labels: (N_mnist,) labels 0-9.
        svhn_labels: (N_svhn,) labels 0-9.
        dm: permutations (uses of each image) per label.
        max_per_class: most images per label taken from each dataset.
        seed: seed of the ``torch.Generator`` behind the permutations.

    Returns:
        ``(mnist_index, svhn_index)``, two (P,) long tensors with
        ``P = dm * sum_l min(#mnist_l, #svhn_l, max_per_class)``, grouped by label.
    """
    g = torch.Generator().manual_seed(seed)
    out_m, out_s = [], []
    for label in range(10):
        im = (mnist_labels == label).nonzero().squeeze(1)
        is_ = (svhn_labels == label).nonzero().squeeze(1)
        n = min(len(im), len(is_), max_per_class)
        if n == 0:
            continue
        im, is_ = im[:n], is_[:n]
        for _ in range(dm):
            out_m.append(im[torch.randperm(n, generator=g)])
            out_s.append(is_[torch.randperm(n, generator=g)])
    if not out_m:
        return torch.empty(0, dtype=torch.long), torch.empty(0, dtype=torch.long)
    return torch.cat(out_m), torch.cat(out_s)


def pair_count(
    mnist_labels: Tensor, svhn_labels: Tensor, *, dm: int, max_per_class: int = MAX_PER_CLASS
) -> int:
    """How many pairs :func:`build_pairs` makes from these labels, without making them."""
    mnist_n = torch.bincount(mnist_labels, minlength=10)[:10]
    svhn_n = torch.bincount(svhn_labels, minlength=10)[:10]
    return dm * int(torch.minimum(mnist_n, svhn_n).clamp(max=max_per_class).sum())


def pairs_path(data_dir: Path, split: str, dm: int) -> Path:
    """Where the pair indices of ``split`` for ``dm`` are cached."""
    return Path(data_dir) / f".mmvae_bench_pairs_{split}_dm{dm}.pt"


def read_idx(path: Path, *, fix: str = "") -> Tensor:
    """An idx file of unsigned bytes (MNIST's format), raw or gzipped, as a uint8 tensor.

    Gzip is recognised by its magic bytes, so a ``.gz`` download is checked under any name.

    The header is two zero bytes, a type byte (0x08: unsigned byte), the number of dimensions,
    then each dimension as a big-endian uint32; the data follows, exactly prod(dims) bytes.

    Args:
        path: the file.
        fix: the remedy clause appended to a web page's message (e.g. the fetch command).

    Raises:
        BenchError: a web page, unreadable, not an unsigned-byte idx file, or truncated / too
            long.
    """
    path = Path(path)
    reject_html_page(path, "an MNIST idx file", fix)
    try:
        data = path.read_bytes()
        if data[:2] == b"\x1f\x8b":  # gzip magic: decided by content, not by the file's name
            data = gzip.decompress(data)
    except (OSError, EOFError, zlib.error) as e:
        raise BenchError(f"{path} is unreadable ({type(e).__name__}: {e})") from None
    if len(data) < 4 or data[:2] != b"\x00\x00" or data[2] != 0x08 or not 1 <= data[3] <= 4:
        raise BenchError(f"{path}: not an idx file of unsigned bytes (magic {data[:4].hex()})")
    ndim = data[3]
    head = 4 + 4 * ndim
    if len(data) < head:
        raise BenchError(f"{path}: truncated header")
    dims = struct.unpack(f">{ndim}I", data[4:head])
    expected = head + int(np.prod(dims, dtype=np.int64))
    if len(data) != expected:
        raise BenchError(
            f"{path}: {len(data)} bytes, its header {tuple(dims)} needs {expected} "
            f"({'truncated' if len(data) < expected else 'trailing data'})"
        )
    arr = np.frombuffer(data, dtype=np.uint8, offset=head).reshape(dims)
    return torch.from_numpy(arr.copy())


def read_mnist(data_dir: Path, split: str, *, dataset: str = NAME) -> tuple[Tensor, Tensor]:
    """MNIST images (N, 28, 28) uint8 and labels (N,) long of ``split``.

    ``dataset`` is the dataset whose fetch command errors name (TranslatedPolyMNIST reads the
    same files).
    """
    prefix = _MNIST_PREFIX[split]
    fix = f"run `{fetch_command(dataset, data_dir)}`"
    images = read_idx(_mnist_file(data_dir, f"{prefix}-images-idx3-ubyte", fix), fix=fix)
    labels = read_idx(_mnist_file(data_dir, f"{prefix}-labels-idx1-ubyte", fix), fix=fix)
    labels = labels.to(torch.long)
    where = Path(data_dir) / "MNIST" / "raw"
    if images.ndim != 3 or tuple(images.shape[1:]) != (28, 28):
        raise BenchError(
            f"{where}/{prefix}-images-idx3-ubyte: shape {tuple(images.shape)}, expected "
            f"(N, 28, 28); {fix}"
        )
    if labels.ndim != 1 or len(labels) != len(images):
        raise BenchError(
            f"{where}: {prefix} labels {tuple(labels.shape)} do not match {len(images)} images; "
            f"{fix}"
        )
    if len(labels) == 0:
        raise BenchError(f"{where}/{prefix}-images-idx3-ubyte holds no images; {fix}")
    if int(labels.max()) > 9:
        raise BenchError(f"{where}/{prefix}-labels-idx1-ubyte: labels above 9")
    return images, labels


def read_svhn(data_dir: Path, split: str) -> tuple[Tensor, Tensor]:
    """SVHN images (N, 3, 32, 32) uint8 and labels (N,) long 0-9 of ``split`` (10 -> 0)."""
    # scipy is imported here: only this dataset needs it.
    import scipy.io

    path = Path(data_dir) / SVHN_FILES[split].name
    fix = f"run `{fetch_command(NAME, data_dir)}`"
    if not path.is_file():
        raise BenchError(f"SVHN file not found: {path}; {fix}")
    reject_html_page(path, "a MATLAB .mat file", fix)
    try:
        mat = scipy.io.loadmat(path, variable_names=["X", "y"])
    except Exception as e:  # scipy raises many types for damaged files
        raise BenchError(
            f"{path} is corrupt or truncated ({type(e).__name__}: {e}); {fix}"
        ) from None
    if "X" not in mat or "y" not in mat:
        raise BenchError(f"{path}: no X and y variables; {fix}")
    x, y = np.asarray(mat["X"]), np.asarray(mat["y"])
    if x.ndim != 4 or x.shape[:3] != (32, 32, 3):
        raise BenchError(f"{path}: X has shape {x.shape}, expected (32, 32, 3, N); {fix}")
    y = y.reshape(-1) if y.ndim == 2 and 1 in y.shape else y
    if y.ndim != 1 or len(y) != x.shape[3]:
        raise BenchError(f"{path}: y has shape {mat['y'].shape}, expected ({x.shape[3]}, 1); {fix}")
    if x.dtype != np.uint8:
        raise BenchError(f"{path}: X has dtype {x.dtype}, expected uint8; {fix}")
    if len(y) == 0:
        raise BenchError(f"{path} holds no images; {fix}")
    labels = torch.from_numpy(y.astype(np.int64))
    if len(labels) and (int(labels.min()) < 1 or int(labels.max()) > 10):
        raise BenchError(
            f"{path}: labels span {int(labels.min())}..{int(labels.max())}, expected 1..10; {fix}"
        )
    labels[labels == 10] = 0  # SVHN writes digit 0 as label 10
    images = torch.from_numpy(np.ascontiguousarray(x.transpose(3, 2, 0, 1)))
    return images, labels


def fetch(data_dir: Path, *, progress: bool = True) -> None:
    """Download MNIST (4 idx .gz files, unpacked beside them) and SVHN (2 .mat files).

    Files already present with the right sha256 are not downloaded again.
    """
    data_dir = Path(data_dir).expanduser()
    fetch_mnist(data_dir, progress=progress)
    for remote in SVHN_FILES.values():
        fetch_remote(remote, data_dir, progress=progress)
    logger.info("MNIST and SVHN are in %s", data_dir)


def fetch_mnist(data_dir: Path, *, progress: bool = True) -> None:
    """Download the 4 MNIST idx .gz files (sha256-checked) and unpack each beside its .gz."""
    data_dir = Path(data_dir).expanduser()
    for remote in MNIST_FILES.values():
        gz = fetch_remote(remote, data_dir, progress=progress, validate=_validate_idx)
        raw = gz.with_suffix("")
        if not raw.is_file() or _idx_problem(raw):
            with gzip.open(gz, "rb") as f:
                data = f.read()
            atomic_write(raw, lambda out, data=data: out.write(data))
            logger.info("unpacked %s", raw)


def check_mnist(data_dir: Path, *, dataset: str = NAME) -> list[str]:
    """Problems with the MNIST files alone, checked as :func:`check` does; fixes name the fetch
    command of ``dataset`` (TranslatedPolyMNIST reads the same files)."""
    data_dir = Path(data_dir).expanduser()
    fix = f"run `{fetch_command(dataset, data_dir)}`"
    problems = _mnist_file_problems(data_dir, fix)
    if problems:
        return problems
    for split in ("train", "test"):
        problems += _read_problems(
            "mnist", split, lambda d, s: read_mnist(d, s, dataset=dataset), data_dir, fix
        )
    return problems


def _published_counts() -> dict[str, int]:
    """:data:`EXPECTED_SAMPLES` keyed ``"mnist train"``, ``"svhn test"``..."""
    return {f"{src} {split}": n for src, c in EXPECTED_SAMPLES.items() for split, n in c.items()}


def check(data_dir: Path) -> list[str]:
    """Problems with the MNIST and SVHN files in ``data_dir`` (empty when all are sound).

    Checks presence, that no file is a web page, sha256 of every downloaded file (MNIST .gz,
    SVHN .mat), that each file parses with the right shapes, and the sample counts against
    :data:`EXPECTED_SAMPLES` (another count is a problem).
    """
    data_dir = Path(data_dir).expanduser()
    fix = f"run `{fetch_command(NAME, data_dir)}`"
    problems = _mnist_file_problems(data_dir, fix)
    for remote in SVHN_FILES.values():
        path = data_dir / remote.name
        if not path.is_file():
            problems.append(f"missing {path}; {fix}")
            continue
        if is_html_page(path):
            problems.append(html_page_message(path, "a MATLAB .mat file", fix))
            continue
        bad = verify_sha256(path, remote.sha256)
        if bad:
            problems.append(f"{bad}; {fix}")
    if problems:
        return problems
    for split in ("train", "test"):
        for source, reader in (("mnist", read_mnist), ("svhn", read_svhn)):
            problems += _read_problems(source, split, reader, data_dir, fix)
    return problems


def _mnist_file_problems(data_dir: Path, fix: str) -> list[str]:
    problems = []
    for remote in MNIST_FILES.values():
        gz, raw = data_dir / remote.name, data_dir / remote.name[: -len(".gz")]
        if gz.is_file():
            if is_html_page(gz):
                problems.append(html_page_message(gz, "a gzipped MNIST idx file", fix))
            elif bad := verify_sha256(gz, remote.sha256):
                problems.append(f"{bad}; {fix}")
        if raw.is_file():
            bad = _idx_problem(raw, fix)
            if bad:
                problems.append(bad if bad.endswith(fix) else f"{bad}; {fix}")
        elif not gz.is_file():
            problems.append(f"missing {raw} (or {gz.name}); {fix}")
        else:
            logger.info("%s: only the .gz is present (it is read directly)", raw)
    return problems


def _read_problems(
    source: str,
    split: str,
    reader: Callable[[Path, str], tuple[Tensor, Tensor]],
    data_dir: Path,
    fix: str,
) -> list[str]:
    """A file that does not parse, or a sample count other than the published one."""
    try:
        _, labels = reader(data_dir, split)
    except BenchError as e:
        return [str(e)]
    where = str(data_dir / "MNIST" / "raw") if source == "mnist" else str(data_dir)
    return count_problems(
        {f"{source} {split}": len(labels)},
        {f"{source} {split}": EXPECTED_SAMPLES[source][split]},
        where,
        fix,
    )


def _mnist_file(data_dir: Path, stem: str, fix: str) -> Path:
    raw = Path(data_dir) / "MNIST" / "raw" / stem
    if raw.is_file():
        return raw
    gz = raw.with_name(raw.name + ".gz")
    if gz.is_file():
        return gz
    raise BenchError(f"MNIST file not found: {raw} (nor {gz.name}); {fix}")


def _validate_idx(path: Path) -> None:
    read_idx(path)


def _idx_problem(path: Path, fix: str = "") -> str | None:
    try:
        read_idx(path, fix=fix)
    except BenchError as e:
        return str(e)
    return None


def _cached_pairs(
    data_dir: Path, split: str, mnist_y: Tensor, svhn_y: Tensor, dm: int, max_per_class: int
) -> tuple[Tensor, Tensor]:
    """Pairs from the cache when it was built from these labels and settings, else built."""
    h = hashlib.sha256()
    for t in (mnist_y, svhn_y):
        h.update(t.to(torch.int64).numpy().tobytes())
    h.update(f"{_PAIRING_VERSION}:{dm}:{max_per_class}:{PAIRING_SEED}".encode())
    fingerprint = h.hexdigest()
    path = pairs_path(data_dir, split, dm)
    if path.is_file():
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:
            if is_out_of_memory(e):
                raise  # for memory_guard
            logger.warning(
                "pair cache %s is unreadable (%s); rebuilding", path, torch_load_error(e)
            )
            obj = None
        if isinstance(obj, dict) and obj.get("fingerprint") == fingerprint:
            idx_m, idx_s = obj.get("mnist"), obj.get("svhn")
            if _pairs_valid(idx_m, idx_s, mnist_y, svhn_y):
                return idx_m, idx_s
            logger.warning("pair cache %s is inconsistent with the data; rebuilding", path)
        elif obj is not None:
            logger.info("pair cache %s is for other data or settings; rebuilding", path)
    idx_m, idx_s = build_pairs(mnist_y, svhn_y, dm=dm, max_per_class=max_per_class)
    try:
        atomic_torch_save(
            path,
            {
                "mnist": idx_m,
                "svhn": idx_s,
                "fingerprint": fingerprint,
                "dm": dm,
                "max_per_class": max_per_class,
                "seed": PAIRING_SEED,
            },
        )
    except OSError as e:
        logger.warning("could not write the pair cache %s (%s)", path, e)
    return idx_m, idx_s


def _pairs_valid(idx_m: Any, idx_s: Any, mnist_y: Tensor, svhn_y: Tensor) -> bool:
    if not (isinstance(idx_m, Tensor) and isinstance(idx_s, Tensor)):
        return False
    if idx_m.dtype != torch.long or idx_s.dtype != torch.long or idx_m.shape != idx_s.shape:
        return False
    if idx_m.ndim != 1:
        return False
    if len(idx_m) == 0:
        return True
    if int(idx_m.min()) < 0 or int(idx_m.max()) >= len(mnist_y):
        return False
    if int(idx_s.min()) < 0 or int(idx_s.max()) >= len(svhn_y):
        return False
    return bool((mnist_y[idx_m] == svhn_y[idx_s]).all())
