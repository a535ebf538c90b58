"""MHD, the Multimodal Handwritten Digits dataset (Vasco et al. 2021), from its published files.

Each digit comes as a 28x28 grey image, a pen trajectory of 200 values and a spoken sound
(a mel spectrogram). The authors publish two files, ``mhd_train.pt`` and ``mhd_test.pt``; each
is a ``torch.save`` of the tuple::

    (labels, images, trajectories, sounds, trajectory_normalisation, sound_normalisation)

with labels (N,) class indices 0-9, images (N, 1, 28, 28), trajectories (N, 200) and sounds
(N, 4, 32, 32): four 32x32 chunks of a 128-frame x 32-mel spectrogram. As in the reference
code, a sound is given to models as 1x32x128: the chunks concatenated along their first axis
(128x32), then transposed. The two normalisation entries hold the ``min``/``max`` the authors
used to scale trajectories and sounds into [0, 1] (their code undoes it as
``x * (max - min) + min``); they are kept in ``info`` for de-normalising samples.

Files are read with ``torch.load(weights_only=True)``: arbitrary pickles never run. The
normalisation entries may have been saved as numpy scalars or arrays, so exactly the numpy types
needed to rebuild numeric scalars and arrays are allowed (:data:`NUMPY_SAFE_GLOBALS`), nothing
else. A file holding NaN or infinite values (in any float tensor, the normalisation constants
included), no samples, or a web page saved under the file's name is refused by ``load`` and
reported by ``check``.

Sample counts follow the rule of :mod:`mmvae_bench.data.published`: a split size other than
:data:`EXPECTED_SAMPLES` is a problem for ``check``; ``load`` warns, goes on and records the
counts in ``info["sample_counts"]``. Memory: a file is loaded whole once (about its size, plus
a copy of the sounds in the model layout; checked against the available memory first), checked,
and its tensors cached beside it (``.mmvae_bench_cache_{split}.mmvb``, the mapped format of
:mod:`mmvae_bench.data.cache`, keyed by the file's size and modification time); later loads and
every other process on the node map that cache, sharing one copy.

Reference: M. Vasco, H. Yin, F. S. Melo, A. Paiva, "Leveraging hierarchy in multimodal generative
models for effective cross-modality inference", Neural Networks 146 (2022), arXiv 2021.
"""

from __future__ import annotations

import logging
import pickle
import re
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
from mmvae_bench.data.memory import is_out_of_memory, memory_guard, require_memory
from mmvae_bench.data.precision import narrowest_exact
from mmvae_bench.data.published import (
    count_problems,
    record_counts,
    reject_html_page,
    torch_load_error,
)
from mmvae_bench.data.spec import DataOptions, ModalitySpec, MultimodalDataset, Split
from mmvae_bench.errors import BenchError

__all__ = [
    "EXPECTED_SAMPLES",
    "FILES",
    "NAME",
    "NUMPY_SAFE_GLOBALS",
    "SPECS",
    "cache_path",
    "check",
    "fetch",
    "load",
    "read_split",
    "sound_to_model",
]

logger = logging.getLogger(__name__)

NAME = "mhd"

# The authors' Google Drive files (the ids their download scripts use). The usercontent host
# with confirm=t skips the "can't scan this large file for viruses" page Drive shows otherwise.
_DRIVE = "https://drive.usercontent.google.com/download?id={}&export=download&confirm=t"
FILES: dict[str, RemoteFile] = {
    "train": RemoteFile(
        name="mhd_train.pt",
        urls=(_DRIVE.format("1Tj1i-hXA0INQpU0jmuTMO4IwfDoGD2oV"),),
        # Unknown: no checksum is published. Fill in on the first verified download (fetch logs
        # the sha256 it computed); until then the structural check stands in.
        sha256=None,
    ),
    "test": RemoteFile(
        name="mhd_test.pt",
        urls=(_DRIVE.format("1qiEjFNCFn1ws383pKmY3zJtm4JDymOU6"),),
        sha256=None,  # unknown, as above
    ),
}

# Split sizes as stated in the paper: `check` reports another count, `load` warns and records it.
EXPECTED_SAMPLES = {"train": 50_000, "test": 10_000}
# Bump when the cached content changes (the checks, the layout, the dtype rule), so old caches
# are rebuilt.
_CACHE_VERSION = 1

_FORMAT = "a torch file of MHD's 6-tuple"
# No option loads part of MHD: both files are read whole.
_MEMORY_HINT = "free memory or use a machine with more (no option loads part of MHD)"
_CHUNK = 4096  # samples per NaN/Inf scan: bounds the boolean temporaries

_TUPLE_FIELDS = (
    "labels",
    "images",
    "trajectories",
    "sounds",
    "trajectory_normalisation",
    "sound_normalisation",
)

SPECS: dict[str, ModalitySpec] = {
    "image": ModalitySpec(
        name="image",
        shape=(1, 28, 28),
        kind="image",
        likelihood="gaussian",
        scale=1.0,
        encoder="conv28",
        decoder="conv28",
        classifier="cnn28",
        fid=True,
    ),
    "trajectory": ModalitySpec(
        name="trajectory",
        shape=(200,),
        kind="sequence",
        likelihood="gaussian",
        scale=1.0,
        encoder="mlp",
        decoder="mlp",
        classifier="mlp",
        fid=False,
    ),
    "sound": ModalitySpec(
        name="sound",
        shape=(1, 32, 128),
        kind="spectrogram",
        likelihood="gaussian",
        scale=1.0,
        encoder="sound",
        decoder="sound",
        classifier="sound",
        fid=False,
    ),
}


def _numpy_safe_globals() -> list[Any]:
    # numpy 2 moved numpy.core to numpy._core; files pickled under numpy 1 name the old module,
    # so each reconstruction function is allowed under both names.
    core = getattr(np, "_core", None) or np.core
    allowed: list[Any] = [np.ndarray, np.dtype]
    for fn in (core.multiarray.scalar, core.multiarray._reconstruct):
        for module in ("numpy.core.multiarray", "numpy._core.multiarray"):
            allowed.append((fn, f"{module}.{fn.__name__}"))
    dtypes = getattr(np, "dtypes", None)  # numpy >= 1.25: dtype instances have these classes
    if dtypes is not None:
        for cls in ("Float16DType", "Float32DType", "Float64DType", "Int32DType", "Int64DType"):
            allowed.append(getattr(dtypes, cls))
    return allowed


#: The extra globals ``torch.load(weights_only=True)`` may resolve in MHD files: numpy's numeric
#: scalar and array reconstruction, in case the normalisation values were saved as numpy values.
NUMPY_SAFE_GLOBALS = _numpy_safe_globals()


def load(options: DataOptions) -> MultimodalDataset:
    """MHD from ``options.data_dir`` (``mhd_train.pt`` and ``mhd_test.pt``).

    Returns:
        A dataset with modalities ``image`` (1, 28, 28), ``trajectory`` (200,) and ``sound``
        (1, 32, 128), batched as float32 (each stored in the narrowest dtype that holds its
        values exactly: uint8 for k/255 images, float16, else float32), labels 0-9.
        ``rescale`` (likelihood weights lambda_j) is the ratio of the largest modality's size
        to each modality's size: sound 1, image 4096/784, trajectory 4096/200, so each
        modality weighs like the largest one in the ELBO.

    Raises:
        BenchError: no data dir, a file that is missing or corrupt (named, with the fetch
            command), or not enough memory for both files.
    """
    data_dir = require_data_dir(options.data_dir, NAME, [f.name for f in FILES.values()])
    sizes = [
        (data_dir / f.name).stat().st_size for f in FILES.values() if (data_dir / f.name).is_file()
    ]
    # Both splits stay resident (about their file size) and the sounds of the split being read
    # are copied into the model layout (most of a file): all files plus the largest once more.
    require_memory(NAME, sum(sizes) + max(sizes, default=0), _MEMORY_HINT)
    with memory_guard(NAME, _MEMORY_HINT):
        train, train_info = read_split(data_dir, "train")
        test, test_info = read_split(data_dir, "test")
    largest = max(s.size for s in SPECS.values())
    return MultimodalDataset(
        name=NAME,
        specs=dict(SPECS),
        train=train,
        test=test,
        n_classes=10,
        latent_dim=64,
        classifier_floor=0.8,
        rescale={m: largest / s.size for m, s in SPECS.items()},
        info={
            "source": "Vasco et al. 2021, mhd_train.pt / mhd_test.pt",
            "data_dir": str(data_dir),
            "n_train": len(train),
            "n_test": len(test),
            # per-split provenance; not "train"/"test", the run record's sample counts
            "files": {"train": train_info, "test": test_info},
            **record_counts(NAME, {"train": len(train), "test": len(test)}, EXPECTED_SAMPLES),
        },
    )


def read_split(data_dir: Path, split: str) -> tuple[Split, dict[str, Any]]:
    """One split file, checked and converted to the model layout.

    Returns:
        The split (x: image (N, 1, 28, 28), trajectory (N, 200), sound (N, 1, 32, 128), each in
        the narrowest exact dtype, batched as float32; y: (N,) long) and provenance: stored
        dtypes, value ranges and the normalisation constants as floats.

    Raises:
        BenchError: naming the file and what is wrong (missing, a web page, unreadable or
            truncated, not a 6-tuple, wrong shapes, mismatched counts, no samples, labels out
            of range, NaN or infinite values).
    """
    path = Path(data_dir) / FILES[split].name
    fix = f"run `{fetch_command(NAME, data_dir)}`"
    if not path.is_file():
        _load_file(path, fix)  # names the missing file and the fetch command

    def decode() -> tuple[dict[str, Tensor], dict[str, Any]]:
        return _decode(path, fix)

    # One decoded copy per node: every process maps the same cache file (data/cache.py).
    arrays, meta = cached_arrays(
        cache_path(data_dir, split),
        {"dataset": NAME, "version": _CACHE_VERSION, "files": file_fingerprint([path])},
        decode,
        what=f"MHD {split} cache",
        validate=_cache_problem,
    )
    labels = arrays.pop("labels")
    return Split(arrays, labels, divisor=dict(meta["divisor"])), dict(meta["info"])


def cache_path(data_dir: Path, split: str) -> Path:
    """Where the checked, model-layout tensors of ``split`` are cached (beside the file)."""
    return Path(data_dir) / f".mmvae_bench_cache_{split}.mmvb"


def _decode(path: Path, fix: str) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """The split file read, checked and converted: stored tensors + labels, and meta."""
    raw = _load_file(path, fix)
    labels, images, trajectories, sounds, traj_norm, sound_norm = _check_tuple(raw, path, fix)
    n = len(labels)
    x = {
        "image": images.to(torch.float32).reshape(n, 1, 28, 28),
        "trajectory": trajectories.to(torch.float32),
        "sound": sound_to_model(sounds.to(torch.float32)),
    }
    ranges, stored = {}, {}
    for name, t in x.items():
        lo, hi = (float(t.min()), float(t.max())) if n else (0.0, 0.0)
        ranges[name] = [lo, hi]
        if lo < -1e-6 or hi > 1 + 1e-6:
            # The reference code scales all three into [0, 1]; other values would mean another
            # preprocessing than the published one.
            logger.warning("%s: %s values span [%g, %g], expected [0, 1]", path, name, lo, hi)
    # Native precision: a modality narrower dtypes hold bit for bit is stored narrowed (grey
    # images saved as k/255 -> uint8, values float16 rounds to themselves -> float16); the
    # batches are the same float32 values either way (data/precision.py).
    divisor = {}
    for name in list(x):
        stored[name], d = narrowest_exact(x.pop(name))
        if d is not None:
            divisor[name] = d
    info = {
        "file": str(path),
        "stored_dtypes": {name: str(t.dtype).removeprefix("torch.") for name, t in stored.items()},
        "value_range": ranges,
        "trajectory_normalisation": _floats(traj_norm),
        "sound_normalisation": _floats(sound_norm),
    }
    meta = {"divisor": divisor, "info": info}
    return {**stored, "labels": labels}, meta


def _cache_problem(arrays: dict[str, Tensor], meta: dict[str, Any]) -> str | None:
    """What makes a mapped MHD cache unusable (None: nothing)."""
    labels = arrays.get("labels")
    if labels is None or labels.dtype != torch.long or labels.ndim != 1:
        return "no (N,) long labels"
    n = len(labels)
    shapes = {"image": (n, 1, 28, 28), "trajectory": (n, 200), "sound": (n, 1, 32, 128)}
    for name, shape in shapes.items():
        t = arrays.get(name)
        if t is None or tuple(t.shape) != shape:
            return f"{name} is not {shape}"
        if t.dtype == torch.uint8 and name not in meta.get("divisor", {}):
            return f"uint8 {name} without a divisor"
    if not isinstance(meta.get("info"), dict):
        return "no provenance"
    return None


def sound_to_model(sounds: Tensor) -> Tensor:
    """Stored sound chunks (N, 4, 32, 32) to the model layout (N, 1, 32, 128).

    The 4 chunks are concatenated along their first axis (N, 128, 32), then the last two axes
    are swapped, as the reference code's ``unstack_tensor`` + ``permute(0, 2, 1)``: element
    ``[n, k, r, c]`` lands at ``[n, 0, c, 32 * k + r]``.
    """
    n = sounds.shape[0]
    return sounds.reshape(n, 128, 32).transpose(1, 2).unsqueeze(1).contiguous()


def fetch(data_dir: Path, *, progress: bool = True) -> None:
    """Download ``mhd_train.pt`` and ``mhd_test.pt`` into ``data_dir``.

    No checksum is published, so each file is loaded and checked (shapes, counts, finite
    values) before it gets its final name; a file that fails is deleted and reported.
    """
    data_dir = Path(data_dir).expanduser()

    def validate(path: Path) -> None:
        _check_tuple(_load_file(path, ""), path, "")

    for remote in FILES.values():
        fetch_remote(remote, data_dir, progress=progress, validate=validate)
    logger.info("MHD is in %s", data_dir)


def check(data_dir: Path) -> list[str]:
    """Problems with the MHD files in ``data_dir`` (empty when both are present and sound).

    Checks presence, that the file is not a web page, sha256 where one is known (none is
    published: logged as information), readability, the tuple's length, shapes, finite values
    and the sample count against :data:`EXPECTED_SAMPLES` (another count is a problem).
    """
    data_dir = Path(data_dir).expanduser()
    fix = f"run `{fetch_command(NAME, data_dir)}`"
    problems = []
    for split, remote in FILES.items():
        path = data_dir / remote.name
        if not path.is_file():
            problems.append(f"missing {path}; {fix}")
            continue
        try:
            reject_html_page(path, _FORMAT, fix)
        except BenchError as e:
            problems.append(str(e))
            continue
        bad_sum = verify_sha256(path, remote.sha256)
        if bad_sum:
            problems.append(f"{bad_sum}; {fix}")
            continue
        try:
            with memory_guard(NAME, _MEMORY_HINT):
                labels, *_ = _check_tuple(_load_file(path, fix), path, fix)
        except BenchError as e:
            problems.append(str(e))
            continue
        problems += count_problems({split: len(labels)}, EXPECTED_SAMPLES, str(path), fix)
    return problems


def _load_file(path: Path, fix: str) -> Any:
    hint = f"; {fix}" if fix else ""
    if not path.is_file():
        raise BenchError(f"MHD file not found: {path}{hint}")
    reject_html_page(path, _FORMAT, fix)
    try:
        with torch.serialization.safe_globals(NUMPY_SAFE_GLOBALS):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        msg = str(e)
        if "Unsupported global" in msg or "allowlisted" in msg:
            found = re.search(r"GLOBAL (\S+)|but got <class '([^']+)'>", msg)
            what = (found.group(1) or found.group(2)) if found else "unknown"
            raise BenchError(
                f"{path} holds a Python type ({what}) that is not allowed when loading safely; "
                f"it is not the published file, or the published file changed{hint}"
            ) from None
        raise BenchError(f"{path} is corrupt or truncated ({torch_load_error(e)}){hint}") from None
    except Exception as e:
        if is_out_of_memory(e):
            raise  # for memory_guard: not a corrupt file
        raise BenchError(f"{path} is corrupt or truncated ({torch_load_error(e)}){hint}") from None


def _check_tuple(raw: Any, path: Path, fix: str) -> tuple[Tensor, Tensor, Tensor, Tensor, Any, Any]:
    hint = f"; {fix}" if fix else ""
    if not isinstance(raw, (tuple, list)) or len(raw) != len(_TUPLE_FIELDS):
        got = (
            f"a {len(raw)}-{type(raw).__name__}"
            if isinstance(raw, (tuple, list))
            else type(raw).__name__
        )
        raise BenchError(
            f"{path}: expected a tuple of {len(_TUPLE_FIELDS)} ({', '.join(_TUPLE_FIELDS)}), "
            f"found {got}{hint}"
        )
    labels, images, trajectories, sounds, traj_norm, sound_norm = raw
    for name, t in zip(_TUPLE_FIELDS[:4], raw[:4], strict=True):
        if not isinstance(t, Tensor):
            raise BenchError(f"{path}: {name} should be a tensor, found {type(t).__name__}{hint}")
    labels = _labels(labels, path, hint)
    n = len(labels)
    if n == 0:
        raise BenchError(f"{path} holds no samples (labels have length 0){hint}")
    expected = {
        "images": ((n, 1, 28, 28), (n, 28, 28)),
        "trajectories": ((n, 200),),
        "sounds": ((n, 4, 32, 32),),
    }
    for name, t in (("images", images), ("trajectories", trajectories), ("sounds", sounds)):
        shapes = expected[name]
        if tuple(t.shape) not in shapes:
            if t.ndim >= 1 and t.shape[0] != n:
                raise BenchError(
                    f"{path}: {name} has {t.shape[0]} samples but labels have {n}{hint}"
                )
            want = " or ".join(str(("N", *s[1:])) for s in shapes)
            raise BenchError(f"{path}: {name} has shape {tuple(t.shape)}, expected {want}{hint}")
        if not t.is_floating_point():
            raise BenchError(f"{path}: {name} has dtype {t.dtype}, expected floats{hint}")
    bad = [
        f"{name} ({count})"
        for name, value in zip(_TUPLE_FIELDS[1:], raw[1:], strict=True)
        if (count := _non_finite(value))
    ]
    if bad:
        raise BenchError(f"{path} holds NaN or infinite values: {', '.join(bad)}{hint}")
    return labels, images, trajectories, sounds, traj_norm, sound_norm


def _non_finite(value: Any) -> int:
    """How many NaN or infinite floats ``value`` holds (a tensor, array, number, or a dict or
    list of them, as the normalisation entries)."""
    if isinstance(value, dict):
        return sum(_non_finite(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return sum(_non_finite(v) for v in value)
    if isinstance(value, (np.ndarray, np.generic, float)):
        arr = np.asarray(value)
        return int((~np.isfinite(arr)).sum()) if np.issubdtype(arr.dtype, np.floating) else 0
    if isinstance(value, Tensor) and value.is_floating_point():
        if value.ndim == 0:
            return int(not bool(torch.isfinite(value)))
        return sum(
            int((~torch.isfinite(value[i : i + _CHUNK])).sum())
            for i in range(0, len(value), _CHUNK)
        )
    return 0


def _labels(labels: Tensor, path: Path, hint: str) -> Tensor:
    """Class indices (N,) long; a one-hot (N, 10) file is converted with argmax."""
    if labels.ndim == 2 and labels.shape[1] == 10:
        # Some copies store the label one-hot (the reference code one-hot encodes it to use it
        # as a modality); a valid one-hot row has a single 1.
        if not bool(((labels == 0) | (labels == 1)).all() and (labels.sum(1) == 1).all()):
            raise BenchError(f"{path}: labels are (N, 10) but not one-hot{hint}")
        labels = labels.argmax(1)
    if labels.ndim != 1:
        raise BenchError(
            f"{path}: labels have shape {tuple(labels.shape)}, expected (N,) or one-hot (N, 10)"
            f"{hint}"
        )
    if labels.is_floating_point():
        if not bool((labels == labels.round()).all()):
            raise BenchError(f"{path}: labels are not whole numbers{hint}")
    labels = labels.to(torch.long)
    if len(labels) and (int(labels.min()) < 0 or int(labels.max()) > 9):
        raise BenchError(
            f"{path}: labels span {int(labels.min())}..{int(labels.max())}, expected 0..9{hint}"
        )
    return labels


def _floats(norm: Any) -> Any:
    """A normalisation entry as JSON-friendly floats (scalars, lists) for ``info``."""
    if isinstance(norm, dict):
        return {str(k): _floats(v) for k, v in norm.items()}
    if isinstance(norm, (list, tuple)):
        return [_floats(v) for v in norm]
    if isinstance(norm, (Tensor, np.ndarray, np.generic)):
        arr = np.asarray(norm.cpu() if isinstance(norm, Tensor) else norm, dtype=np.float64)
        return float(arr) if arr.ndim == 0 else arr.tolist()
    if isinstance(norm, (int, float)):
        return float(norm)
    return repr(norm)
