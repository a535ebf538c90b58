"""Nets for every published modality: built from the specs the real loaders give, right shapes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from mmvae_bench.data import mhd, mnist_svhn, polymnist
from mmvae_bench.data.spec import DataOptions, ModalitySpec, MultimodalDataset
from mmvae_bench.nets import build_classifier, build_decoder, build_encoder
from tests.data.fixtures import write_mhd, write_mnist, write_polymnist, write_svhn

# (dataset, modality, shape the modality must have): the published shapes of DESIGN §3.
PUBLISHED = [
    ("mhd", "image", (1, 28, 28)),
    ("mhd", "trajectory", (200,)),
    ("mhd", "sound", (1, 32, 128)),
    ("polymnist", "m0", (3, 28, 28)),
    ("polymnist", "m4", (3, 28, 28)),
    ("mnist-svhn", "mnist", (1, 28, 28)),
    ("mnist-svhn", "svhn", (3, 32, 32)),
]
N_SAMPLES, BATCH, LATENT, FEATURES = 2, 3, 5, 7


@pytest.fixture(scope="module")
def datasets(tmp_path_factory: pytest.TempPathFactory) -> dict[str, MultimodalDataset]:
    """Each published dataset loaded from its tiny fixture through the real loader."""
    root = tmp_path_factory.mktemp("published")
    write_mhd(root / "mhd", n_per_class=1)
    write_polymnist(root / "polymnist", n_per_class=1)
    for split in ("train", "test"):
        write_mnist(root / "mnist-svhn", split, np.arange(10))
        write_svhn(root / "mnist-svhn", split, np.arange(10))
    loaders = {"mhd": mhd.load, "polymnist": polymnist.load, "mnist-svhn": mnist_svhn.load}
    return {
        name: load(DataOptions(data_dir=Path(root / name), cache_dir=root / "cache"))
        for name, load in loaders.items()
    }


def test_published_modalities_are_all_covered(datasets: dict[str, MultimodalDataset]) -> None:
    covered = {(d, m) for d, m, _ in PUBLISHED}
    for name, ds in datasets.items():
        missing = {m for m in ds.modalities if (name, m) not in covered}
        # PolyMNIST's five modalities share one spec but for the name: m0 and m4 stand for all.
        if name == "polymnist":
            kinds = {(s.shape, s.encoder, s.decoder, s.classifier) for s in ds.specs.values()}
            assert len(kinds) == 1
            missing -= {"m1", "m2", "m3"}
        assert not missing, (name, missing)


@pytest.mark.parametrize("width", [4, 16])
@pytest.mark.parametrize(("name", "modality", "shape"), PUBLISHED)
def test_nets_fit_the_published_spec(
    datasets: dict[str, MultimodalDataset],
    name: str,
    modality: str,
    shape: tuple[int, ...],
    width: int,
) -> None:
    ds = datasets[name]
    spec: ModalitySpec = ds.specs[modality]
    assert spec.shape == shape and ds.train.x[modality].shape[1:] == shape
    x = ds.train.batch(slice(0, BATCH))[modality]  # float32, as models get it

    encoder = build_encoder(spec, FEATURES, width)
    assert encoder(x).shape == (BATCH, FEATURES)

    decoder = build_decoder(spec, LATENT, width)
    z = torch.randn(N_SAMPLES, BATCH, LATENT)  # (n, B, latent): several samples per datapoint
    out = decoder(z)
    assert out.shape == (N_SAMPLES, BATCH, *shape)
    assert decoder(z[0]).shape == (BATCH, *shape)
    out.square().mean().backward()  # the gradient reaches the first layer
    assert all(p.grad is not None for p in decoder.parameters())

    classifier = build_classifier(spec, ds.n_classes).eval()
    logits = classifier(x)
    assert logits.shape == (BATCH, ds.n_classes) and torch.isfinite(logits).all()
    assert classifier.features(x).shape == (BATCH, classifier.feature_dim)


def test_decoder_batch_layout_is_per_sample(datasets: dict[str, MultimodalDataset]) -> None:
    # (n, B, latent) -> (n, B, *shape) keeps sample i of datapoint b at [i, b] (eval mode: the
    # sound decoder's BatchNorm then does not mix the batch).
    spec = datasets["mhd"].specs["sound"]
    decoder = build_decoder(spec, LATENT, 4).eval()
    z = torch.randn(N_SAMPLES, BATCH, LATENT)
    out = decoder(z)
    torch.testing.assert_close(out[1, 2], decoder(z[1, 2:3])[0], rtol=1e-5, atol=1e-6)
