"""Coherence classifiers: trained once per dataset and modality, cached with test accuracy."""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mmvae_bench.data.spec import MultimodalDataset, Split, iter_batches
from mmvae_bench.errors import BenchError
from mmvae_bench.io import atomic_torch_save, load_tensors
from mmvae_bench.nets import build_classifier

__all__ = [
    "Classifier",
    "balanced_accuracy",
    "classifier_dir",
    "dataset_fingerprint",
    "get_classifiers",
    "predict",
    "predict_split",
    "train_classifiers",
]

log = logging.getLogger(__name__)


@dataclass
class Classifier:
    """A trained coherence classifier for one modality, with its test accuracy."""

    modality: str
    net: nn.Module
    accuracy: float
    source: str  # "trained" or the weights file it was loaded from


def dataset_fingerprint(dataset: MultimodalDataset) -> str:
    """Short hash of what a classifier depends on: name, specs, sizes, test labels."""
    h = hashlib.sha256()
    h.update(dataset.name.encode())
    for m, s in dataset.specs.items():
        h.update(f"{m}:{s.shape}:{s.classifier}".encode())
    h.update(f"{len(dataset.train)}:{len(dataset.test)}".encode())
    h.update(dataset.test.y.to(torch.int64).numpy().tobytes())
    return h.hexdigest()[:12]


def classifier_dir(dataset: MultimodalDataset, cache_dir: Path, epochs: int | None = None) -> Path:
    """Where the classifiers of ``dataset`` trained for ``epochs`` are cached.

    The epochs are part of the folder name: changing a dataset's ``classifier_epochs`` must
    not silently reuse classifiers trained with the old budget.
    """
    e = dataset.classifier_epochs if epochs is None else epochs
    return Path(cache_dir) / "classifiers" / f"{dataset.name}-{dataset_fingerprint(dataset)}-e{e}"


def balanced_accuracy(pred: Tensor, target: Tensor, n_classes: int) -> float:
    """Mean over classes present in ``target`` of the per-class accuracy (vectorised)."""
    target = target.long().cpu()
    correct = (pred.long().cpu() == target).float()
    hits = torch.bincount(target, weights=correct, minlength=n_classes)
    counts = torch.bincount(target, minlength=n_classes).float()
    present = counts > 0
    return float((hits[present] / counts[present]).mean())


@torch.no_grad()
def predict(net: nn.Module, x: Tensor, batch_size: int = 1000) -> Tensor:
    """Class predictions for ``x`` (N, *shape) in batches."""
    net.eval()
    outs = [net(x[i : i + batch_size]).argmax(-1) for i in range(0, len(x), batch_size)]
    return torch.cat(outs) if outs else torch.empty(0, dtype=torch.long, device=x.device)


@torch.no_grad()
def predict_split(net: nn.Module, split: Split, m: str, batch_size: int = 1000) -> Tensor:
    """Class predictions for modality ``m`` of ``split``, batch by batch (never all as float)."""
    net.eval()
    one = split.select([m])
    outs = [net(b[m]).argmax(-1) for b, _ in iter_batches(one, batch_size, shuffle=False)]
    return torch.cat(outs) if outs else torch.empty(0, dtype=torch.long, device=split.device)


def _train_one(
    net: nn.Module, split: Split, m: str, epochs: int, seed: int, batch_size: int = 128
) -> None:
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    gen = torch.Generator().manual_seed(seed)
    one = split.select([m])
    net.train()
    for _ in range(epochs):
        for batch, extra in iter_batches(
            one, batch_size, shuffle=True, generator=gen, extras={"y": split.y}
        ):
            loss = F.cross_entropy(net(batch[m]), extra["y"].long())
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    net.eval()


def train_classifiers(
    dataset: MultimodalDataset,
    cache_dir: Path,
    *,
    epochs: int | None = None,
    device: torch.device | str = "cpu",
    seed: int = 0,
    modalities: list[str] | None = None,
) -> dict[str, Classifier]:
    """Train one classifier per modality on the train split, cache it with its test accuracy.

    ``epochs`` defaults to the dataset's ``classifier_epochs``.
    """
    epochs = dataset.classifier_epochs if epochs is None else epochs
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
        raise BenchError(f"classifier epochs must be an integer >= 1, got {epochs!r}")
    out_dir = classifier_dir(dataset, cache_dir, epochs)
    result: dict[str, Classifier] = {}
    for i, m in enumerate(modalities or list(dataset.specs)):
        spec = dataset.specs[m]
        torch.manual_seed(seed + i)
        net = build_classifier(spec, dataset.n_classes).to(device)
        t0 = time.perf_counter()
        train = dataset.train.select([m]).to(device)  # native precision on the device
        _train_one(net, train, m, epochs, seed + i)
        pred = predict_split(net, dataset.test.select([m]).to(device), m)
        acc = balanced_accuracy(pred, dataset.test.y, dataset.n_classes)
        log.info(
            "classifier %s/%s: accuracy %.3f (%.1f s)",
            dataset.name,
            m,
            acc,
            time.perf_counter() - t0,
        )
        atomic_torch_save(
            out_dir / f"{m}.pt",
            {
                "state_dict": net.cpu().state_dict(),
                "accuracy": acc,
                "epochs": epochs,
                "classifier": spec.classifier,
                "n_classes": dataset.n_classes,
            },
        )
        net.to(device)
        result[m] = Classifier(m, net, acc, "trained")
    (out_dir / "accuracy.json").write_text(
        json.dumps({m: c.accuracy for m, c in result.items()}, indent=2)
    )
    return result


def _load_one(
    path: Path, dataset: MultimodalDataset, m: str, device: torch.device | str
) -> Classifier:
    blob = load_tensors(
        path,
        what=f"classifier for '{m}'",
        fix=f"mmvae-bench classifiers train --dataset {dataset.name}",
    )
    if not isinstance(blob, dict) or not isinstance(blob.get("state_dict"), dict):
        raise BenchError(
            f"classifier weights {path} are not a classifier file (expected a dict with a "
            f"'state_dict' of tensors, got {type(blob).__name__}); "
            f"train one with `mmvae-bench classifiers train --dataset {dataset.name}`"
        )
    net = build_classifier(dataset.specs[m], dataset.n_classes)
    try:
        net.load_state_dict(blob["state_dict"])
    except (KeyError, RuntimeError, TypeError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise BenchError(f"classifier weights {path} do not fit '{m}': {first}") from None
    net.to(device).eval().requires_grad_(False)
    acc = blob.get("accuracy")
    if acc is None:  # published weights come without our accuracy: measure it
        acc = balanced_accuracy(
            predict_split(net, dataset.test.select([m]).to(device), m),
            dataset.test.y,
            dataset.n_classes,
        )
    return Classifier(m, net, float(acc), str(path))


def get_classifiers(
    dataset: MultimodalDataset,
    cache_dir: Path,
    *,
    device: torch.device | str = "cpu",
    weights_dir: Path | None = None,
    train_if_missing: bool = True,
    epochs: int | None = None,
) -> dict[str, Classifier]:
    """The coherence classifiers of ``dataset``, refusing any below the accuracy floor.

    Looks in ``weights_dir`` (``<modality>.pt``, e.g. published weights) if given, else in the
    cache; trains the missing ones when ``train_if_missing``.
    """
    if weights_dir is not None and not Path(weights_dir).is_dir():
        why = "is not a folder" if Path(weights_dir).exists() else "does not exist"
        raise BenchError(
            f"classifier weights folder {weights_dir} {why}; --classifier-weights takes a "
            "folder of <modality>.pt files"
        )
    src = Path(weights_dir) if weights_dir else classifier_dir(dataset, cache_dir, epochs)
    result: dict[str, Classifier] = {}
    missing = []
    for m in dataset.specs:
        path = src / f"{m}.pt"
        if path.is_file():
            result[m] = _load_one(path, dataset, m, device)
        elif weights_dir is not None or not train_if_missing:
            raise BenchError(
                f"no classifier for '{m}' at {path}; "
                f"run: mmvae-bench classifiers train --dataset {dataset.name}"
            )
        else:
            missing.append(m)
    if missing:
        log.info("training coherence classifiers for %s: %s", dataset.name, missing)
        result.update(
            train_classifiers(dataset, cache_dir, epochs=epochs, device=device, modalities=missing)
        )
    for m, c in result.items():
        c.net.eval().requires_grad_(False)
        if c.accuracy < dataset.classifier_floor:
            raise BenchError(
                f"classifier for '{m}' on {dataset.name} has test accuracy {c.accuracy:.3f}, "
                f"below the floor {dataset.classifier_floor}; coherence would be meaningless. "
                f"Retrain with more epochs: mmvae-bench classifiers train --dataset "
                f"{dataset.name} --epochs N"
            )
    return {m: result[m] for m in dataset.specs}
