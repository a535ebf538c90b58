"""The networks of the published runs, layer for layer: MultiVae 1.0.3's PolyMNIST benchmark.

MultiVae's PolyMNIST benchmark configuration (``examples/mmnist/training/config2.py`` in
AgatheSenellart/MultiVae) builds every model from ``EncoderConvMMNIST_adapted`` and
``DecoderConvMMNIST`` (``multivae/models/nn/mmnist.py``) at latent 512. These classes have the
same layers (kind, shape, activation, order), so the same parameter count, and a MultiVae state
dict maps onto them tensor for tensor (:mod:`mmvae_bench.interop.multivae`).

The reference encoder ends in two convolutions ``Conv2d(128, latent, 4, 2, 0)`` (mean and
log-variance) applied to a 128 x 4 x 4 map: each is a linear map of the flattened map, so here
the encoder is the convolutional trunk flattened to 2,048 features and the model's Gaussian
head (``Linear(2048, 2 * latent)``, mean rows first) is the pair of convolutions.
"""

from __future__ import annotations

from torch import Tensor, nn

from mmvae_bench.nets.blocks import flat_batch

__all__ = ["MMNISTConvDecoder", "MMNISTConvEncoder", "MMNIST_FEATURES"]

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
