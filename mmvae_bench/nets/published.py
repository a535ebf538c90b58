"""The networks of the published runs, layer for layer: MultiVae 1.0.3's benchmarks.

MultiVae's benchmark configurations (AgatheSenellart/MultiVae) build their models from:

- PolyMNIST (``examples/mmnist/training/config2.py``): ``EncoderConvMMNIST_adapted`` and
  ``DecoderConvMMNIST`` (``multivae/models/nn/mmnist.py``) for every 3 x 28 x 28 modality;
- MNIST-SVHN (``examples/mnist_svhn/config1.py``): ``Encoder_VAE_MLP``/``Decoder_AE_MLP``
  (``multivae/models/nn/default_architectures.py``) for MNIST, ``Encoder_VAE_SVHN``/
  ``Decoder_VAE_SVHN`` (``multivae/models/nn/svhn.py``) for SVHN.

The classes here have the same layers (kind, shape, activation, order), so the same parameter
counts, and a MultiVae state dict maps onto them tensor for tensor
(:mod:`mmvae_bench.interop.multivae`). Each reference encoder ends in a mean and a
log-variance layer; here the encoder stops before them and the model's Gaussian head
(``Linear(features, 2 * latent)``, mean rows first) is that pair. Where the pair are
convolutions ``Conv2d(128, latent, 4, 2, 0)`` on a 128 x 4 x 4 map, each is a linear map of
the flattened map, so the encoder is the convolutional trunk flattened to 2,048 features.
"""

from __future__ import annotations

from torch import Tensor, nn

from mmvae_bench.nets.blocks import flat_batch

__all__ = [
    "MMNISTConvDecoder",
    "MMNISTConvEncoder",
    "MMNIST_FEATURES",
    "MNISTMLPDecoder",
    "MNISTMLPEncoder",
    "SVHNConvDecoder",
    "SVHNConvEncoder",
]

MMNIST_FEATURES = 128 * 4 * 4  # the trunk's flattened output, the Gaussian head's input


class MMNISTConvEncoder(nn.Module):
    """C x 28 x 28 -> 2,048 features: three 3x3 stride-2 convs (32, 64, 128), ReLU, flattened.

    The reference's trunk; its 4x4 mean/log-variance convolutions are the model's head.
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(channels, 32, 3, 2, 1),  # 14x14
            nn.ReLU(),
            nn.Conv2d(32, 64, 3, 2, 1),  # 7x7
            nn.ReLU(),
            nn.Conv2d(64, 128, 3, 2, 1),  # 4x4
            nn.ReLU(),
            nn.Flatten(),
        )

    def forward(self, x: Tensor) -> Tensor:
        """``x``: (B, C, 28, 28) -> (B, 2048)."""
        return self.net(x)


class MMNISTConvDecoder(nn.Module):
    """z -> C x 28 x 28: a linear layer to 128 x 4 x 4, then three 3x3 transposed convs."""

    def __init__(self, latent_dim: int, channels: int) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(latent_dim, MMNIST_FEATURES),
            nn.ReLU(),
            nn.Unflatten(1, (128, 4, 4)),
            nn.ConvTranspose2d(128, 64, 3, 2, 1),  # 7x7
            nn.ReLU(),
            nn.ConvTranspose2d(64, 32, 3, 2, 1, output_padding=1),  # 14x14
            nn.ReLU(),
            nn.ConvTranspose2d(32, channels, 3, 2, 1, output_padding=1),  # 28x28
        )

    def forward(self, z: Tensor) -> Tensor:
        """``z``: (..., latent_dim) -> (..., C, 28, 28)."""
        zf, lead = flat_batch(z, 1)
        out = self.net(zf)
        return out.view(*lead, *out.shape[1:])


class MNISTMLPEncoder(nn.Module):
    """1 x 28 x 28 -> 512 features: flattened, two linear layers of 512, ReLU."""

    def __init__(self, shape: tuple[int, ...]) -> None:
        super().__init__()
        size = 1
        for n in shape:
            size *= n
        self.net = nn.Sequential(
            nn.Flatten(), nn.Linear(size, 512), nn.ReLU(), nn.Linear(512, 512), nn.ReLU()
        )

    def forward(self, x: Tensor) -> Tensor:
        """``x``: (B, *shape) -> (B, 512)."""
        return self.net(x)


class MNISTMLPDecoder(nn.Module):
    """z -> *shape in (0, 1): a linear layer of 512, ReLU, a linear layer, sigmoid."""

    def __init__(self, latent_dim: int, shape: tuple[int, ...]) -> None:
        super().__init__()
        self.shape = tuple(shape)
        size = 1
        for n in shape:
            size *= n
        self.net = nn.Sequential(
            nn.Linear(latent_dim, 512), nn.ReLU(), nn.Linear(512, size), nn.Sigmoid()
        )

    def forward(self, z: Tensor) -> Tensor:
        """``z``: (..., latent_dim) -> (..., *shape)."""
        return self.net(z).view(*z.shape[:-1], *self.shape)


class SVHNConvEncoder(nn.Module):
    """3 x 32 x 32 -> 2,048 features: three 4x4 stride-2 convs (32, 64, 128), ReLU, flattened."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(channels, 32, 4, 2, 1),  # 16x16
            nn.ReLU(),
            nn.Conv2d(32, 64, 4, 2, 1),  # 8x8
            nn.ReLU(),
            nn.Conv2d(64, 128, 4, 2, 1),  # 4x4
            nn.ReLU(),
            nn.Flatten(),
        )

    def forward(self, x: Tensor) -> Tensor:
        """``x``: (B, C, 32, 32) -> (B, 2048)."""
        return self.net(x)


class SVHNConvDecoder(nn.Module):
    """z -> C x 32 x 32 in (0, 1): four 4x4 transposed convs from a 1x1 map, sigmoid."""

    def __init__(self, latent_dim: int, channels: int) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Unflatten(1, (latent_dim, 1, 1)),
            nn.ConvTranspose2d(latent_dim, 128, 4, 1, 0),  # 4x4
            nn.ReLU(),
            nn.ConvTranspose2d(128, 64, 4, 2, 1),  # 8x8
            nn.ReLU(),
            nn.ConvTranspose2d(64, 32, 4, 2, 1),  # 16x16
            nn.ReLU(),
            nn.ConvTranspose2d(32, channels, 4, 2, 1),  # 32x32
            nn.Sigmoid(),
        )

    def forward(self, z: Tensor) -> Tensor:
        """``z``: (..., latent_dim) -> (..., C, 32, 32)."""
        zf, lead = flat_batch(z, 1)
        out = self.net(zf)
        return out.view(*lead, *out.shape[1:])
