"""Networks per data shape, looked up by the names a :class:`ModalitySpec` gives.

``build_encoder(spec, out_features)`` maps ``(B, *spec.shape)`` to features,
``build_decoder(spec, latent_dim)`` maps ``(..., latent_dim)`` to the likelihood parameters of
shape ``(..., *spec.shape)``, ``build_classifier(spec, n_classes)`` gives a coherence classifier.
Unknown names are an error listing the known ones.

Two families of encoders and decoders (``NetConfig.nets``): ``suite``, the suite's nets sized by
``width`` and ``features``, and ``multivae``, the layers of the published runs
(:mod:`mmvae_bench.nets.published`), chosen by the modality's shape, whose encoders end at a
fixed feature size (:func:`encoder_features`; ``features`` does not apply).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

from torch import nn

from mmvae_bench.data.spec import ModalitySpec
from mmvae_bench.errors import BenchError
from mmvae_bench.nets.blocks import (
    Conv28Decoder,
    Conv28Encoder,
    Conv32Decoder,
    Conv32Encoder,
    MLPDecoder,
    MLPEncoder,
    SoundDecoder,
    SoundEncoder,
    flat_batch,
)
from mmvae_bench.nets.classifiers import (
    CNN28,
    CNN32,
    MLPClassifier,
    SoundClassifier,
    SVHNClassifier,
)
from mmvae_bench.nets.published import (
    MMNIST_FEATURES,
    MMNISTConvDecoder,
    MMNISTConvEncoder,
    MNISTMLPDecoder,
    MNISTMLPEncoder,
    SVHNConvDecoder,
    SVHNConvEncoder,
)

__all__ = [
    "CLASSIFIERS",
    "DECODERS",
    "ENCODERS",
    "NetFamily",
    "PUBLISHED_DECODERS",
    "PUBLISHED_ENCODERS",
    "build_classifier",
    "build_decoder",
    "build_encoder",
    "encoder_features",
    "flat_batch",
]


def _channels(spec: ModalitySpec) -> int:
    return spec.shape[0] if len(spec.shape) == 3 else 1


ENCODERS: dict[str, Callable[[ModalitySpec, int, int], nn.Module]] = {
    "conv28": lambda s, out, w: Conv28Encoder(_channels(s), out, w),
    "conv32": lambda s, out, w: Conv32Encoder(_channels(s), out, w),
    "sound": lambda s, out, w: SoundEncoder(out, 2 * w),
    "mlp": lambda s, out, w: MLPEncoder(s.shape, out, 16 * w),
}
DECODERS: dict[str, Callable[[ModalitySpec, int, int], nn.Module]] = {
    "conv28": lambda s, d, w: Conv28Decoder(d, _channels(s), w),
    "conv32": lambda s, d, w: Conv32Decoder(d, _channels(s), w),
    "sound": lambda s, d, w: SoundDecoder(d, 2 * w),
    "mlp": lambda s, d, w: MLPDecoder(d, s.shape, 16 * w),
}
NetFamily = Literal["suite", "multivae"]
# The published runs' nets by data shape: (constructor, the encoder's output features).
PUBLISHED_ENCODERS: dict[tuple[int, ...], tuple[Callable[[ModalitySpec], nn.Module], int]] = {
    (3, 28, 28): (lambda s: MMNISTConvEncoder(3), MMNIST_FEATURES),  # PolyMNIST
    (1, 28, 28): (lambda s: MNISTMLPEncoder(s.shape), 512),  # MNIST of MNIST-SVHN
    (3, 32, 32): (lambda s: SVHNConvEncoder(3), MMNIST_FEATURES),  # SVHN
}
PUBLISHED_DECODERS: dict[tuple[int, ...], Callable[[ModalitySpec, int], nn.Module]] = {
    (3, 28, 28): lambda s, d: MMNISTConvDecoder(d, 3),
    (1, 28, 28): lambda s, d: MNISTMLPDecoder(d, s.shape),
    (3, 32, 32): lambda s, d: SVHNConvDecoder(d, 3),
}
CLASSIFIERS: dict[str, Callable[[ModalitySpec, int], nn.Module]] = {
    "cnn28": lambda s, k: CNN28(_channels(s), k),
    "cnn32": lambda s, k: CNN32(_channels(s), k),
    "svhn": lambda s, k: SVHNClassifier(_channels(s), k),
    "sound": lambda s, k: SoundClassifier(k),
    "mlp": lambda s, k: MLPClassifier(s.shape, k),
}


def _get(table: dict[str, Callable[..., nn.Module]], kind: str, name: str) -> Callable:
    try:
        return table[name]
    except KeyError:
        raise BenchError(
            f"unknown {kind} net '{name}'; known: {', '.join(sorted(table))}"
        ) from None


def _published(table: dict[tuple[int, ...], Any], spec: ModalitySpec, nets: str) -> Any:
    try:
        return table[tuple(spec.shape)]
    except KeyError:
        known = ", ".join("x".join(map(str, s)) for s in table)
        raise BenchError(
            f"nets={nets!r} has no net for modality {spec.name!r} of shape "
            f"{'x'.join(map(str, spec.shape))}; it has nets for shapes {known}"
        ) from None


def encoder_features(spec: ModalitySpec, features: int, nets: NetFamily = "suite") -> int:
    """The size of what :func:`build_encoder` gives for ``spec``: ``features``, or the
    published net's fixed size with ``nets="multivae"``.

    Example:
        >>> spec = ModalitySpec(name="m0", shape=(3, 28, 28), kind="image")
        >>> encoder_features(spec, 128), encoder_features(spec, 128, "multivae")
        (128, 2048)
    """
    if nets == "suite":
        return features
    return _published(PUBLISHED_ENCODERS, spec, nets)[1]


def build_encoder(
    spec: ModalitySpec, out_features: int, width: int = 16, nets: NetFamily = "suite"
) -> nn.Module:
    """Encoder named by ``spec.encoder``: ``(B, *spec.shape) -> (B, out_features)``.

    With ``nets="multivae"`` the published net for the spec's shape, whose output size is
    fixed (:func:`encoder_features`); ``out_features`` and ``width`` do not apply.
    """
    if nets == "suite":
        return _get(ENCODERS, "encoder", spec.encoder)(spec, out_features, width)
    return _published(PUBLISHED_ENCODERS, spec, nets)[0](spec)


def build_decoder(
    spec: ModalitySpec, latent_dim: int, width: int = 16, nets: NetFamily = "suite"
) -> nn.Module:
    """Decoder named by ``spec.decoder``: ``(..., latent_dim) -> (..., *spec.shape)``.

    ``nets`` picks the family (``suite``: sized by ``width``; ``multivae``: the published net).
    """
    if nets == "suite":
        return _get(DECODERS, "decoder", spec.decoder)(spec, latent_dim, width)
    return _published(PUBLISHED_DECODERS, spec, nets)(spec, latent_dim)


def build_classifier(spec: ModalitySpec, n_classes: int) -> nn.Module:
    """Coherence classifier named by ``spec.classifier``: ``(B, *shape) -> (B, n_classes)``."""
    return _get(CLASSIFIERS, "classifier", spec.classifier)(spec, n_classes)
