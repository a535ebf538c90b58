"""Coherence classifiers per data shape (the published small CNNs where there is one)."""

from __future__ import annotations

import math

from torch import Tensor, nn

__all__ = ["CNN28", "CNN32", "MLPClassifier", "SVHNClassifier", "SoundClassifier"]


class _Classifier(nn.Module):
    """features(x) -> logits; ``features`` is the penultimate layer (used as an FID extractor)."""

    body: nn.Module
    head: nn.Module

    def features(self, x: Tensor) -> Tensor:
        """Penultimate-layer features (B, feature_dim)."""
        return self.body(x)

    def forward(self, x: Tensor) -> Tensor:
        """``x``: (B, *shape) -> logits (B, n_classes)."""
        return self.head(self.body(x))


class CNN28(_Classifier):
    """The PolyMNIST classifier: convs 3->10->20 (stride 2), fc 980->128->classes."""

    feature_dim = 128

    def __init__(self, channels: int, n_classes: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(channels, 10, 3, 2, 1),  # 14x14
            nn.ReLU(),
            nn.Conv2d(10, 20, 3, 2, 1),  # 7x7 -> 980 features
            nn.ReLU(),
            nn.Flatten(),
            nn.Dropout(0.25),
            nn.Linear(980, 128),
            nn.ReLU(),
        )
        self.head = nn.Linear(128, n_classes)


class CNN32(_Classifier):
    """Small CNN for C x 32 x 32 images."""

    feature_dim = 128

    def __init__(self, channels: int, n_classes: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(channels, 16, 3, 2, 1),  # 16
            nn.ReLU(),
            nn.Conv2d(16, 32, 3, 2, 1),  # 8
            nn.ReLU(),
            nn.Flatten(),
            nn.Linear(32 * 64, 128),
            nn.ReLU(),
        )
        self.head = nn.Linear(128, n_classes)


class SVHNClassifier(_Classifier):
    """SVHN digit classifier: three conv blocks with batch norm, then two linear layers."""

    feature_dim = 128

    def __init__(self, channels: int, n_classes: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(channels, 32, 4, 2, 1),  # 16
            nn.BatchNorm2d(32),
            nn.ReLU(),
            nn.Conv2d(32, 64, 4, 2, 1),  # 8
            nn.BatchNorm2d(64),
            nn.ReLU(),
            nn.Conv2d(64, 128, 4, 2, 1),  # 4
            nn.BatchNorm2d(128),
            nn.ReLU(),
            nn.Flatten(),
            nn.Dropout(0.3),
            nn.Linear(128 * 16, 128),
            nn.ReLU(),
        )
        self.head = nn.Linear(128, n_classes)


class SoundClassifier(_Classifier):
    """MHD sound (1 x 32 x 128) classifier: a filter bank over time, then strided convs."""

    feature_dim = 128

    def __init__(self, n_classes: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(1, 64, (1, 128)),  # 32 x 1
            nn.BatchNorm2d(64),
            nn.ReLU(),
            nn.Conv2d(64, 128, (4, 1), (2, 1), (1, 0)),  # 16 x 1
            nn.BatchNorm2d(128),
            nn.ReLU(),
            nn.Flatten(),
            nn.Linear(128 * 16, 128),
            nn.ReLU(),
        )
        self.head = nn.Linear(128, n_classes)


class MLPClassifier(_Classifier):
    """Any shape flattened -> two hidden layers -> classes (MHD trajectory, vectors)."""

    feature_dim = 128

    def __init__(self, shape: tuple[int, ...], n_classes: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Flatten(),
            nn.Linear(math.prod(shape), 256),
            nn.ReLU(),
            nn.Linear(256, 128),
            nn.ReLU(),
        )
        self.head = nn.Linear(128, n_classes)
