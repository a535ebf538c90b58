"""FID per image modality through torch-fidelity, unconditional and conditional.

Two feature extractors, never swapped silently:

* ``inception``: torch-fidelity's ``inception-v3-compat``, with weights from
  ``--inception-weights PATH`` or torch-fidelity's download cache; when neither has the file the
  evaluation fails and says where to put it (nothing here can download it offline).
* ``classifier``: the penultimate layer (``net.features``) of the dataset's own coherence
  classifier, registered with torch-fidelity under a name that fixes dataset, modality and
  weights (``mmvae-clf-<dataset>-<modality>-<fingerprint>``). Its numbers are only comparable with
  numbers of the same extractor; the record and the leaderboard carry the name.

Images go to torch-fidelity's extractors as uint8 ``(B, 3, H, W)`` (grayscale repeated), and
its own functions turn features into statistics (mu, sigma) and statistics into the distance, so
the numbers are torch-fidelity's. Nothing here is unpickled (README.md, "What the suite
trusts"), so torch-fidelity's cache is never used (it reads with ``weights_only=False``):

* the real-data statistics of the test split are cached by this module as ``.npz`` (written
  atomically, read with ``allow_pickle=False``) under ``<cache_dir>/fid``, named by dataset,
  split, modality, image fingerprint, extractor and layer; an unreadable or mismatched file is
  logged and recomputed;
* Inception weights are read with ``torch.load(weights_only=True)`` as a plain tensor state dict;
  any other file (a pickle payload) is a ``BenchError``.

torch-fidelity is imported lazily here and nowhere else: it costs ~2 s of import time that runs
without FID should not pay.
"""

from __future__ import annotations

import hashlib
import io
import logging
import math
import pickle
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, get_args

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import Dataset

from mmvae_bench.data.memory import require_memory
from mmvae_bench.data.spec import ModalitySpec, MultimodalDataset, Split, iter_batches
from mmvae_bench.errors import BenchError
from mmvae_bench.eval.protocol import FID, FID_EXTRACTORS, Protocol
from mmvae_bench.io import atomic_write
from mmvae_bench.model import MultimodalVAE, all_subsets, subset_key
from mmvae_bench.threads import native_threads

__all__ = [
    "CLASSIFIER_FEATURE_LAYER",
    "ExtractorKind",
    "FIDExtractor",
    "FIDSettings",
    "ImageTensorDataset",
    "classifier_extractor",
    "fid_metrics",
    "fid_modalities",
    "frechet_distance",
    "inception_extractor",
    "inception_weights_path",
    "load_inception_weights",
    "real_stats_path",
    "require_reference_memory",
    "resolve_extractor",
    "split_uint8_rgb",
    "to_uint8_rgb",
]

log = logging.getLogger(__name__)

ExtractorKind = Literal["classifier", "inception"]
INCEPTION_NAME = "inception-v3-compat"  # torch-fidelity's registry name
INCEPTION_LAYER = "2048"  # torch-fidelity's default FID layer of Inception v3
CLASSIFIER_FEATURE_LAYER = "penultimate"
# Classifier nets behind the registered extractors, by registered name: torch-fidelity builds an
# extractor from its class alone (``cls(name, features, **kwargs)``), so the net is looked up.
_CLASSIFIER_NETS: dict[str, tuple[nn.Module, ModalitySpec]] = {}
_EXTRACTOR_CLASS: type | None = None
_INCEPTION_CLASS: type | None = None
# The last Inception weights file read, checked and re-serialised: (path, size, mtime) -> bytes.
# One FID call builds one extractor, and a model's evaluation makes ~80 calls for PolyMNIST.
_INCEPTION_BYTES: dict[tuple[str, int, int], bytes] = {}


@dataclass(frozen=True, kw_only=True)
class FIDSettings:
    """How FID is computed; recorded with the numbers.

    Attributes:
        extractor: ``classifier`` (offline, the coherence classifier's penultimate layer) or
            ``inception`` (Inception v3; its weights must be present).
        inception_weights: the Inception weights file
            (``weights-inception-2015-12-05-6726825d.pth``); None = torch-fidelity's cache.
    """

    extractor: ExtractorKind = "classifier"
    inception_weights: Path | None = None

    def __post_init__(self) -> None:
        if self.extractor not in get_args(ExtractorKind):
            raise BenchError(
                f"fid extractor must be one of {list(get_args(ExtractorKind))}, "
                f"got {self.extractor!r}"
            )
        if self.inception_weights is not None and self.extractor != "inception":
            raise BenchError("--inception-weights needs --fid-extractor inception")


@dataclass(frozen=True, kw_only=True)
class FIDExtractor:
    """A resolved extractor: the name its numbers are stored under, and per-modality details.

    Attributes:
        name: key of ``metrics[FID]``; ``inception-v3-compat`` or ``mmvae-clf-<dataset>-<fp>``.
        kind: ``classifier`` or ``inception``.
        registered: torch-fidelity extractor name per modality.
        layer: torch-fidelity feature layer the statistics are taken from.
        weights: the Inception weights file used (None for classifiers).
        label: what a reader should know, shown next to the numbers.
    """

    name: str
    kind: ExtractorKind
    registered: dict[str, str]
    layer: str
    weights: Path | None = None
    label: str = ""

    def as_record(self) -> dict[str, Any]:
        """What the record stores about the extractor (``metrics[FID_EXTRACTORS][name]``)."""
        return {
            "kind": self.kind,
            "label": self.label,
            "layer": self.layer,
            "torch_fidelity_extractors": dict(self.registered),
            "weights": str(self.weights) if self.weights else None,
        }


# -- images ----------------------------------------------------------------------------------
def fid_modalities(specs: Mapping[str, ModalitySpec]) -> list[str]:
    """The modalities that get FID: image modalities flagged ``fid`` in their spec."""
    return [m for m, s in specs.items() if s.fid and s.kind == "image"]


def to_uint8_rgb(x: Tensor, spec: ModalitySpec) -> Tensor:
    """``(B, C, H, W)`` values in ``spec.value_range`` -> uint8 ``(B, 3, H, W)`` on the CPU.

    Values are clamped to the range first (decoder means may overshoot); one channel is repeated
    three times, as torch-fidelity's extractors expect RGB.
    """
    if x.dim() != 4 or x.shape[1] not in (1, 3):
        raise BenchError(f"FID needs (B, 1|3, H, W) images for '{spec.name}', got {tuple(x.shape)}")
    lo, hi = spec.value_range
    x = ((x.detach().float() - lo) / (hi - lo)).clamp(0, 1)
    x = (x * 255).round().to(torch.uint8).cpu()
    return x.expand(-1, 3, -1, -1).contiguous() if x.shape[1] == 1 else x


def require_reference_memory(dataset: MultimodalDataset) -> None:
    """Stop with a ``BenchError`` when FID's reference set will not fit in memory.

    The reference set is the whole test split of every FID modality as uint8 RGB (what
    torch-fidelity reads); its size is known as soon as the dataset is, so the runner checks it
    before anything is written and :func:`fid_metrics` again before building it.
    """
    mods = fid_modalities(dataset.specs)
    nbytes = sum(len(dataset.test) * 3 * math.prod(dataset.specs[m].shape[1:]) for m in mods)
    require_memory(
        dataset.name,
        nbytes,
        "FID's reference set is the test split as uint8 RGB images; run without --fid "
        "(coherence needs no reference set)",
        purpose="build the FID reference set of",
    )


def split_uint8_rgb(split: Split, spec: ModalitySpec, batch_size: int = 1024) -> Tensor:
    """Modality ``spec.name`` of ``split`` as uint8 ``(N, 3, H, W)``: :func:`to_uint8_rgb` batch
    by batch, so the split is never held as float (the same bytes as converting it whole)."""
    x = split.select([spec.name])
    parts = [
        to_uint8_rgb(batch[spec.name], spec)
        for batch, _ in iter_batches(x, batch_size, shuffle=False)
    ]
    if not parts:
        return torch.empty(0, 3, *spec.shape[1:], dtype=torch.uint8)
    return torch.cat(parts)


class ImageTensorDataset(Dataset):
    """A resident uint8 ``(N, 3, H, W)`` tensor as the ``Dataset`` torch-fidelity reads."""

    def __init__(self, images: Tensor) -> None:
        if images.dtype != torch.uint8 or images.dim() != 4 or images.shape[1] != 3:
            raise BenchError(
                f"expected uint8 (N, 3, H, W) images, got {images.dtype} {images.shape}"
            )
        self.images = images

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> Tensor:
        return self.images[i]

    def fingerprint(self) -> str:
        """Hash of the pixels and shape: names the cached real-data statistics."""
        h = hashlib.sha256(str(tuple(self.images.shape)).encode())
        h.update(self.images.numpy().tobytes())
        return h.hexdigest()[:12]


# -- extractors ------------------------------------------------------------------------------
def _weights_fingerprint(net: nn.Module) -> str:
    h = hashlib.sha256()
    for k, v in sorted(net.state_dict().items()):
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:12]


def _classifier_extractor_class() -> type:
    """The FeatureExtractorBase subclass for classifier nets (built once; lazy import)."""
    global _EXTRACTOR_CLASS
    if _EXTRACTOR_CLASS is not None:
        return _EXTRACTOR_CLASS
    from torch_fidelity import FeatureExtractorBase

    class ClassifierFeatures(FeatureExtractorBase):
        """Penultimate layer of a coherence classifier on uint8 RGB input."""

        def __init__(self, name: str, features_list: list[str], **kwargs: Any) -> None:
            super().__init__(name, features_list)
            net, spec = _CLASSIFIER_NETS[name]
            self.net = net
            self.channels = spec.shape[0]
            self.lo, self.hi = spec.value_range

        @staticmethod
        def get_provided_features_list() -> tuple[str, ...]:
            return (CLASSIFIER_FEATURE_LAYER,)

        @staticmethod
        def get_default_feature_layer_for_metric(metric: str) -> str:
            return CLASSIFIER_FEATURE_LAYER

        @staticmethod
        def can_be_compiled() -> bool:
            return False

        @staticmethod
        def get_dummy_input_for_compile() -> Tensor:
            raise NotImplementedError("classifier extractors are not compiled")

        def forward(self, x: Tensor) -> tuple[Tensor]:
            # Back from uint8 RGB to what the classifier was trained on: the spec's value range
            # and channel count (grayscale was repeated three times on the way in).
            x = x[:, : self.channels].float() / 255 * (self.hi - self.lo) + self.lo
            # float64 features: FID of a set with itself must come out ~0, not ~float32 noise.
            return (self.net.features(x).double(),)

    _EXTRACTOR_CLASS = ClassifierFeatures
    return ClassifierFeatures


def classifier_extractor(
    dataset: MultimodalDataset, classifiers: Mapping[str, Any], modalities: list[str]
) -> FIDExtractor:
    """Register each modality's classifier with torch-fidelity; the extractor naming them all.

    ``classifiers`` maps modality -> an object with ``.net`` (a classifier with ``features``).
    The registered names hold a hash of the weights, so a retrained classifier is a new
    extractor, and its numbers land in a different leaderboard column.
    """
    from torch_fidelity import register_feature_extractor
    from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY

    cls = _classifier_extractor_class()
    registered: dict[str, str] = {}
    prints = []
    for m in modalities:
        net = classifiers[m].net
        if not hasattr(net, "features"):
            raise BenchError(f"classifier for '{m}' has no features() layer to use for FID")
        fp = _weights_fingerprint(net)
        prints.append(f"{m}:{fp}")
        name = f"mmvae-clf-{dataset.name}-{m}-{fp}"
        # Same name = same weights (the hash is in it): re-registering only refreshes the net.
        _CLASSIFIER_NETS[name] = (net, dataset.specs[m])
        if name not in FEATURE_EXTRACTORS_REGISTRY:
            register_feature_extractor(name, cls)
        registered[m] = name
    set_fp = hashlib.sha256(",".join(prints).encode()).hexdigest()[:12]
    return FIDExtractor(
        name=f"mmvae-clf-{dataset.name}-{set_fp}",
        kind="classifier",
        registered=registered,
        layer=CLASSIFIER_FEATURE_LAYER,
        label=f"coherence-classifier features ({dataset.name}), not Inception: "
        "comparable only with the same extractor",
    )


def inception_weights_path(settings: FIDSettings) -> Path:
    """The Inception v3 weights file to use, found and read (:func:`load_inception_weights`).

    Looks at ``settings.inception_weights`` when given, else at the file torch-fidelity
    downloads into torch hub's cache (``<torch hub dir>/checkpoints/``). Reading it here lets
    ``run``, ``evaluate`` and ``sweep`` refuse a bad file before any work.

    Raises:
        BenchError: the file is missing (the message says where to put it) or is not a plain
            tensor state dict.
    """
    from torch_fidelity.feature_extractor_inceptionv3 import URL_INCEPTION_V3

    filename = URL_INCEPTION_V3.rsplit("/", 1)[-1]
    cached = Path(torch.hub.get_dir()) / "checkpoints" / filename
    if settings.inception_weights is not None:
        path = Path(settings.inception_weights).expanduser()
        if not path.is_file():
            raise BenchError(
                f"Inception weights not found at {path} (--inception-weights). Download "
                f"{URL_INCEPTION_V3} and pass its path, or put it at {cached}; or use "
                "--fid-extractor classifier"
            )
    elif cached.is_file():
        path = cached
    else:
        raise BenchError(
            f"FID with Inception v3 needs its weights and none are here: put {filename} "
            f"(from {URL_INCEPTION_V3}) at {cached} (torch-fidelity's cache), or pass "
            "--inception-weights PATH; or use --fid-extractor classifier (labelled, offline)"
        )
    _inception_bytes(path)
    return path


def load_inception_weights(path: Path) -> dict[str, Tensor]:
    """The Inception v3 weights at ``path`` as a state dict, read with ``weights_only=True``.

    Raises:
        BenchError: the file is not a plain ``{name: tensor}`` state dict (a pickle payload,
            another object) or cannot be read; it is never unpickled.
    """
    path = Path(path)
    refuse = f"Inception weights {path} are not a plain tensor state dict (refusing to unpickle)"
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise BenchError(f"{refuse}: {_unpickling_reason(e)}") from None
    except Exception as e:
        raise BenchError(
            f"Inception weights {path} are corrupt or unreadable ({type(e).__name__}: {e})"
        ) from None
    if not isinstance(state, dict) or not state:
        raise BenchError(f"{refuse}: it holds a {type(state).__name__}")
    odd = [k for k, v in state.items() if not (isinstance(k, str) and isinstance(v, Tensor))]
    if odd:
        raise BenchError(f"{refuse}: entries that are not named tensors: {odd[:5]}")
    return state


def _unpickling_reason(e: Exception) -> str:
    """The refused object from torch's weights-only error, without its advice to unpickle."""
    msg = str(e)
    found = re.search(r"WeightsUnpickler error:\s*(.+?)(?:\. Please|\n\n|$)", msg, re.S)
    return (found.group(1) if found else msg.splitlines()[0]).strip()


def _inception_bytes(path: Path) -> bytes:
    """``load_inception_weights(path)`` re-serialised with ``torch.save``; the last one is kept."""
    path = Path(path).expanduser().resolve()
    st = path.stat()
    key = (str(path), st.st_size, st.st_mtime_ns)
    if key not in _INCEPTION_BYTES:
        buf = io.BytesIO()
        torch.save(load_inception_weights(path), buf)
        _INCEPTION_BYTES.clear()
        _INCEPTION_BYTES[key] = buf.getvalue()
    return _INCEPTION_BYTES[key]


def _inception_class() -> type:
    """torch-fidelity's Inception v3 reading its weights file safely (built once; lazy import)."""
    global _INCEPTION_CLASS
    if _INCEPTION_CLASS is not None:
        return _INCEPTION_CLASS
    from torch_fidelity import FeatureExtractorInceptionV3

    class CheckedInceptionV3(FeatureExtractorInceptionV3):
        """``FeatureExtractorInceptionV3`` whose weights file is read with ``weights_only=True``."""

        def __init__(
            self, name: str, features_list: list[str], *, feature_extractor_weights_path: Path
        ) -> None:
            # The parent torch.loads its argument with weights_only=False, so it gets an
            # in-memory torch.save of the state dict we read with weights_only=True: it unpickles
            # only bytes we wrote, and its layers stay torch-fidelity's (nothing vendored).
            safe = io.BytesIO(_inception_bytes(feature_extractor_weights_path))
            super().__init__(name, features_list, feature_extractor_weights_path=safe)

    _INCEPTION_CLASS = CheckedInceptionV3
    return CheckedInceptionV3


def _feature_extractor(name: str, layer: str, weights: Path | None, cuda: bool) -> nn.Module:
    """The frozen torch-fidelity extractor ``name`` computing ``layer``, on the GPU if ``cuda``."""
    from torch_fidelity.utils import create_feature_extractor

    if name != INCEPTION_NAME:
        return create_feature_extractor(name, [layer], cuda=cuda, verbose=False)
    if weights is None:
        weights = inception_weights_path(FIDSettings(extractor="inception"))
    # Built here, not from torch-fidelity's registry entry (which unpickles the file), under the
    # same name: the name is part of the cached statistics' and the record's identity.
    try:
        net = _inception_class()(INCEPTION_NAME, [layer], feature_extractor_weights_path=weights)
    except RuntimeError as e:  # load_state_dict: a tensor dict, but not Inception v3's
        raise BenchError(f"Inception weights {weights} do not fit Inception v3: {e}") from None
    net.requires_grad_(False).eval()
    return net.cuda() if cuda else net


def inception_extractor(settings: FIDSettings, modalities: list[str]) -> FIDExtractor:
    """torch-fidelity's Inception v3, with its weights file found and read up front."""
    weights = inception_weights_path(settings)
    return FIDExtractor(
        name=INCEPTION_NAME,
        kind="inception",
        registered=dict.fromkeys(modalities, INCEPTION_NAME),
        layer=INCEPTION_LAYER,
        weights=weights,
        label="Inception v3 (torch-fidelity inception-v3-compat, pool3 2048)",
    )


def resolve_extractor(
    settings: FIDSettings,
    dataset: MultimodalDataset,
    classifiers: Mapping[str, Any],
    modalities: list[str],
) -> FIDExtractor:
    """The extractor ``settings`` asks for; never another one."""
    if settings.extractor == "inception":
        return inception_extractor(settings, modalities)
    return classifier_extractor(dataset, classifiers, modalities)


# -- the distance ----------------------------------------------------------------------------
def real_stats_path(cache_dir: Path, real_cache_name: str, extractor: str, layer: str) -> Path:
    """Where the real-data statistics of ``real_cache_name`` under ``extractor`` are cached.

    torch-fidelity's own cache name for them, as ``.npz``: ``<name>-<extractor>-stat-fid-<layer>``.
    """
    return Path(cache_dir) / f"{real_cache_name}-{extractor}-stat-fid-{layer}.npz"


def _read_stats(path: Path, like: Mapping[str, np.ndarray]) -> dict[str, np.ndarray] | None:
    """Cached ``{mu, sigma}`` shaped and typed as ``like``; None (logged) when unusable."""
    if not path.is_file():
        return None
    try:
        npz = np.load(path, allow_pickle=False)
        if not isinstance(npz, np.lib.npyio.NpzFile):
            raise ValueError("not an .npz archive")
        with npz:
            if set(npz.files) != {"mu", "sigma"}:
                found = sorted(npz.files)
                raise ValueError(
                    f"expected the arrays mu and sigma, found {len(found)} entries: {found[:3]}"
                )
            stats = {k: npz[k] for k in ("mu", "sigma")}
    except Exception as e:
        # numpy's message for a pickle suggests allow_pickle=True: never do that to a cache.
        why = "it holds pickled data, not loaded" if "pickled" in str(e) else str(e)
        log.warning(
            "FID statistics cache %s is unreadable (%s: %s); recomputing it",
            path,
            type(e).__name__,
            why,
        )
        return None
    for k, v in stats.items():
        if v.shape != like[k].shape or v.dtype != like[k].dtype:
            log.warning(
                "FID statistics cache %s holds %s %s %s, expected %s %s; recomputing it",
                path,
                k,
                v.dtype,
                v.shape,
                like[k].dtype,
                like[k].shape,
            )
            return None
    return stats


def frechet_distance(
    real: ImageTensorDataset,
    fake: ImageTensorDataset,
    *,
    extractor: str,
    real_cache_name: str | None = None,
    cache_dir: Path | None = None,
    device: torch.device | str = "cpu",
    batch_size: int = 250,
    weights: Path | None = None,
) -> float:
    """FID between two uint8 image sets with a registered torch-fidelity extractor.

    Features, statistics and the distance come from torch-fidelity's functions (the steps of
    its ``calculate_metrics``); only the real statistics' cache is ours (see the module doc).

    Args:
        real: the reference images; their statistics are cached as ``real_cache_name``.
        fake: generated images (never cached).
        extractor: torch-fidelity registry name (``inception-v3-compat`` or a classifier's).
        real_cache_name: cache entry for ``real``'s statistics (None: no caching).
        cache_dir: folder of the cached statistics (needed with ``real_cache_name``).
        device: where features are computed (cuda or cpu).
        batch_size: feature-extraction batch size (results do not depend on it).
        weights: the Inception weights file (Inception only; None: torch-fidelity's cache).
    """
    from torch_fidelity import KEY_METRIC_FID
    from torch_fidelity.metric_fid import fid_featuresdict_to_statistics, fid_statistics_to_metric
    from torch_fidelity.utils import get_featuresdict_from_dataset, resolve_feature_layer_for_metric

    for name, s in (("real", real), ("generated", fake)):
        if len(s) < 2:
            raise BenchError(f"FID needs at least 2 {name} images, got {len(s)}")
    if real_cache_name is not None and cache_dir is None:
        raise ValueError("real_cache_name needs a cache_dir")
    cuda = torch.device(device).type == "cuda"
    layer = resolve_feature_layer_for_metric("fid", feature_extractor=extractor)
    path = None
    if real_cache_name is not None:
        path = real_stats_path(cache_dir, real_cache_name, extractor, layer)
    with native_threads():  # the matrix square root runs in NumPy's BLAS
        net = _feature_extractor(extractor, layer, weights, cuda)

        def statistics(images: ImageTensorDataset) -> dict[str, np.ndarray]:
            features = get_featuresdict_from_dataset(
                input=images,
                feat_extractor=net,
                batch_size=batch_size,
                cuda=cuda,
                save_cpu_ram=True,  # DataLoader workers = 0: no forked processes
                verbose=False,
            )
            return fid_featuresdict_to_statistics(features, layer)

        fake_stats = statistics(fake)
        real_stats = _read_stats(path, fake_stats) if path else None
        if real_stats is None:
            real_stats = statistics(real)
            if path:
                atomic_write(path, lambda f: np.savez(f, **real_stats))
        metric = fid_statistics_to_metric(real_stats, fake_stats, verbose=False)
    return float(metric[KEY_METRIC_FID])


# -- FID of a model --------------------------------------------------------------------------
@torch.no_grad()
def _unconditional(
    model: MultimodalVAE, mods: list[str], n: int, batch_size: int, draw: Callable[[int], Tensor]
) -> dict[str, Tensor]:
    out: dict[str, list[Tensor]] = {m: [] for m in mods}
    for start in range(0, n, batch_size):
        gen = model.decode(draw(min(batch_size, n - start)))
        for m in mods:
            out[m].append(to_uint8_rgb(gen[m], model.specs[m]))
    return {m: torch.cat(v) for m, v in out.items()}


@torch.no_grad()
def _conditional(
    model: MultimodalVAE,
    test: Split,
    subset: tuple[str, ...],
    targets: list[str],
    protocol: Protocol,
    device: torch.device | str,
) -> dict[str, Tensor]:
    out: dict[str, list[Tensor]] = {m: [] for m in targets}
    x = test.select(subset).to(device)
    for batch, _ in iter_batches(x, protocol.batch_size, shuffle=False):
        gen = model.generate(batch, subset, 1, hmc=protocol.hmc)
        for m in targets:
            out[m].append(to_uint8_rgb(gen[m][0], model.specs[m]))
    return {m: torch.cat(v) for m, v in out.items()}


def fid_metrics(
    model: MultimodalVAE,
    dataset: MultimodalDataset,
    test: Split,
    classifiers: Mapping[str, Any],
    protocol: Protocol,
    settings: FIDSettings,
    *,
    cache_dir: Path,
    device: torch.device | str = "cpu",
    progress: Callable[[str], None] | None = None,
    latent_sampler: Callable[[int], Tensor] | None = None,
) -> dict[str, Any]:
    """FID of every FID modality against the test split: from the prior and from every subset.

    Args:
        model: the trained model (put in eval mode).
        dataset: its dataset; the whole test split is the reference set.
        test: the protocol's test subsample; conditional samples are generated from its first
            ``protocol.fid_samples`` points.
        classifiers: coherence classifiers by modality (for the classifier extractor).
        protocol: sample counts, HMC settings, batch size.
        settings: which extractor.
        cache_dir: the real-data statistics are cached under ``cache_dir / "fid"``.
        latent_sampler: ``n -> (n, latent_dim)`` draws for unconditional samples
            (default ``model.prior_sample``).

    Returns:
        ``{FID: {extractor: {modality: {"unconditional": v, subset_key: v, ...}}},
        FID_EXTRACTORS: {extractor: {kind, label, layer, ..., real_samples, generated}}}``;
        empty when the dataset has no FID modality.
    """
    say = progress or (lambda msg: None)
    mods = fid_modalities(dataset.specs)
    if not mods:
        return {}
    extractor = resolve_extractor(settings, dataset, classifiers, mods)
    model.eval()
    n_gen = protocol.fid_samples or len(test)
    cond_test = test if n_gen >= len(test) else test.subset(torch.arange(n_gen))
    require_reference_memory(dataset)
    real = {
        m: ImageTensorDataset(split_uint8_rgb(dataset.test, dataset.specs[m], protocol.batch_size))
        for m in mods
    }
    values: dict[str, dict[str, float]] = {m: {} for m in mods}
    cuda = torch.device(device).type == "cuda"

    def distance(m: str, fake: Tensor) -> float:
        return frechet_distance(
            real[m],
            ImageTensorDataset(fake),
            extractor=extractor.registered[m],
            real_cache_name=f"mmvae-{dataset.name}-test-{m}-{real[m].fingerprint()}",
            cache_dir=Path(cache_dir) / "fid",
            device=device,
            batch_size=protocol.batch_size,
            weights=extractor.weights,
        )

    # Each sampling phase is seeded on its own: the same weights give the same FID whether or
    # not the real statistics were cached (torch-fidelity's DataLoader draws from the global
    # RNG when it reads images); the caller's RNG stream is left alone.
    seed = protocol.subsample_seed
    with torch.random.fork_rng(devices=[torch.device(device)] if cuda else []):
        torch.manual_seed(seed)
        prior = _unconditional(
            model, mods, n_gen, protocol.batch_size, latent_sampler or model.prior_sample
        )
        for m in mods:
            values[m]["unconditional"] = distance(m, prior[m])
            say(f"FID {m} from the prior: {values[m]['unconditional']:.3f} [{extractor.name}]")
        for i, subset in enumerate(all_subsets(model.modalities, proper=True), start=1):
            targets = [m for m in mods if m not in subset]
            if not targets:
                continue
            torch.manual_seed(seed + i)
            gen = _conditional(model, cond_test, subset, targets, protocol, device)
            key = subset_key(subset)
            for m in targets:
                values[m][key] = distance(m, gen[m])
                say(f"FID {m} from {key}: {values[m][key]:.3f} [{extractor.name}]")
    info = {
        **extractor.as_record(),
        "real_samples": len(dataset.test),
        "unconditional_samples": n_gen,
        "conditional_samples": len(cond_test),
    }
    return {FID: {extractor.name: values}, FID_EXTRACTORS: {extractor.name: info}}
