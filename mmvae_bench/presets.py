"""Named presets (``run --preset NAME``): the published runs' models and training settings.

A preset has two halves. The model half is the plugin's: each :class:`ModelEntry` lists its
presets per dataset (``ModelEntry.presets``, model config fields with the source of each value
beside it), and they replace the plugin's per-dataset ``defaults``; ``--set`` still overrides
them. The training half is the same for every model on a dataset and lives here
(:data:`TRAINING`, per preset and dataset).

``paper`` on ``polymnist``: MultiVae 1.0.3's PolyMNIST benchmark (AgatheSenellart/MultiVae,
``examples/mmnist/training/config2.py`` and the per-model scripts beside it), the settings of
its published runs:

- ``validation=0.1`` and ``validation_seed=42``: ``random_split(train, [0.9, 0.1],
  generator=torch.Generator().manual_seed(42))`` in ``config2.py``; models train on the 90%.
- ``lr_patience=30``: ``scheduler_cls="ReduceLROnPlateau"`` on the validation loss with
  patience 30 (the published runs; ``config2.py`` at some commits says 10).
- ``keep_best=True``: the trainer's ``_best_model`` (lowest validation loss) is the one that
  was evaluated and published.

``paper`` on ``mnist-svhn``: MultiVae's MNIST-SVHN benchmark (``examples/mnist_svhn/config1.py``
with ``jnf.py`` and ``mopoe.py``): ``random_split(train, [0.8, 0.2]`` with seed 42, so
``validation=0.2``; ReduceLROnPlateau with patience 10; the best model kept. (Its MNIST-SVHN
pairs each image 5 times, ``data_multiplication=5``; the suite's dataset pairs 20 times.)

The batch size (256), Adam's learning rate (1e-3), the epochs and the architectures are model
config fields, in each plugin's ``PAPER_POLYMNIST``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from mmvae_bench.errors import BenchError
from mmvae_bench.model import ModelEntry

__all__ = ["TRAINING", "TrainingPreset", "preset_values", "supported_pairs"]


@dataclass(frozen=True, kw_only=True)
class TrainingPreset:
    """The training half of a preset (see the module docstring for the sources)."""

    validation: float  # fraction of the training split held out for validation
    validation_seed: int  # seed of the held-out draw (independent of the run's seed)
    lr_patience: int | None  # ReduceLROnPlateau patience on the validation loss; None: off
    keep_best: bool  # keep the parameters of the epoch with the lowest validation loss


TRAINING: dict[str, dict[str, TrainingPreset]] = {
    "paper": {
        "polymnist": TrainingPreset(
            validation=0.1, validation_seed=42, lr_patience=30, keep_best=True
        ),
        "mnist-svhn": TrainingPreset(
            validation=0.2, validation_seed=42, lr_patience=10, keep_best=True
        ),
    },
}


def supported_pairs(entries: Mapping[str, ModelEntry], preset: str) -> list[str]:
    """``"model on dataset"`` for every pair that has ``preset``, sorted."""
    return sorted(
        f"{name} on {ds}" for name, e in entries.items() for ds in e.presets.get(preset, {})
    )


def preset_values(
    entry: ModelEntry, dataset: str, preset: str, entries: Mapping[str, ModelEntry]
) -> dict[str, Any]:
    """The model config values of ``preset`` for ``entry`` on ``dataset``.

    Raises:
        BenchError: the preset is unknown, or the (model, dataset) pair has none; the message
            names the pair and lists the supported ones.
    """
    if preset not in TRAINING:
        raise BenchError(f"unknown preset {preset!r}; known: {', '.join(sorted(TRAINING))}")
    values = entry.presets.get(preset, {}).get(dataset)
    if values is None:
        pairs = supported_pairs(entries, preset) or ["none installed"]
        raise BenchError(
            f"no preset {preset!r} for ({entry.name}, {dataset}); --preset {preset} is "
            f"supported for: {', '.join(pairs)}"
        )
    return dict(values)
