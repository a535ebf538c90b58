"""FID per image modality through torch-fidelity, unconditional and conditional (DESIGN §5).

Two feature extractors, never swapped silently:

* ``inception``: torch-fidelity's ``inception-v3-compat``, with weights from
  ``--inception-weights PATH`` or torch-fidelity's download cache; when neither has the file the
  evaluation fails and says where to put it (nothing here can download it offline).
* ``classifier``: the penultimate layer (``net.features``) of the dataset's own coherence
  classifier, registered with torch-fidelity under a name that fixes dataset, modality and
  weights (``mmvae-clf-<dataset>-<modality>-<fingerprint>``). Its numbers are only comparable with
  numbers of the same extractor; the record and the leaderboard carry the name.

Images go to torch-fidelity as uint8 ``(B, 3, H, W)`` (grayscale repeated); the real-data
statistics of the test split are cached by torch-fidelity under ``<cache_dir>/fid`` with a name
made of dataset, image fingerprint and extractor. torch-fidelity is imported lazily here and
nowhere else: it costs ~2 s of import time that runs without FID should not pay.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, get_args

import torch
from torch import Tensor, nn
from torch.utils.data import Dataset

from mmvae_bench.data.spec import ModalitySpec, MultimodalDataset, Split, iter_batches
from mmvae_bench.errors import BenchError
from mmvae_bench.eval.protocol import FID, FID_EXTRACTORS, Protocol
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
    "resolve_extractor",
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
    """The Inception v3 weights file to use; a missing file is a ``BenchError`` saying where.

    Looks at ``settings.inception_weights`` when given, else at the file torch-fidelity
    downloads into torch hub's cache (``<torch hub dir>/checkpoints/``).
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
        return path
    if not cached.is_file():
        raise BenchError(
            f"FID with Inception v3 needs its weights and none are here: put {filename} "
            f"(from {URL_INCEPTION_V3}) at {cached} (torch-fidelity's cache), or pass "
            "--inception-weights PATH; or use --fid-extractor classifier (labelled, offline)"
        )
    return cached


def inception_extractor(settings: FIDSettings, modalities: list[str]) -> FIDExtractor:
    """torch-fidelity's Inception v3, with its weights file checked up front."""
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

    Args:
        real: the reference images; their statistics are cached as ``real_cache_name``.
        fake: generated images (never cached).
        extractor: torch-fidelity registry name (``inception-v3-compat`` or a classifier's).
        real_cache_name: torch-fidelity cache entry for ``real`` (None: no caching).
        cache_dir: torch-fidelity ``cache_root``.
        device: where features are computed (cuda or cpu).
        batch_size: feature-extraction batch size (results do not depend on it).
        weights: ``feature_extractor_weights_path`` (Inception).
    """
    import torch_fidelity

    for name, s in (("real", real), ("generated", fake)):
        if len(s) < 2:
            raise BenchError(f"FID needs at least 2 {name} images, got {len(s)}")
    cuda = torch.device(device).type == "cuda"
    with native_threads():  # the matrix square root runs in SciPy's BLAS
        metrics = torch_fidelity.calculate_metrics(
            input1=real,
            input2=fake,
            fid=True,
            feature_extractor=extractor,
            feature_extractor_weights_path=str(weights) if weights else None,
            input1_cache_name=real_cache_name,
            cache=real_cache_name is not None,
            cache_root=str(cache_dir) if cache_dir else None,
            cuda=cuda,
            batch_size=batch_size,
            save_cpu_ram=True,  # DataLoader workers = 0: no forked processes
            verbose=False,
        )
    return float(metrics[torch_fidelity.KEY_METRIC_FID])


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
    x = {m: test.x[m].to(device) for m in subset}
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
        cache_dir: torch-fidelity's statistics cache goes to ``cache_dir / "fid"``.
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
    real = {m: ImageTensorDataset(to_uint8_rgb(dataset.test.x[m], dataset.specs[m])) for m in mods}
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
    # not torch-fidelity had the real statistics cached (its DataLoader draws from the global
    # RNG when it reads them); the caller's RNG stream is left alone.
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
