"""Sample grids: the unconditional grid decodes the codes of the run's latent sampler."""

from __future__ import annotations

from pathlib import Path

import torch

from mmvae_bench.plots import prior_grid
from mmvae_bench.testing import tiny_dataset
from plugins.mvae import MVAE, MVAEConfig


def test_prior_grid_decodes_the_given_sampler_not_the_prior(tmp_path: Path, monkeypatch) -> None:
    ds = tiny_dataset(("image28", "image32"), n=4)
    model = MVAE(ds, MVAEConfig(latent_dim=3, width=4, features=8)).eval()
    codes = torch.full((5, 3), 7.0)  # far from N(0, I): a gmm fitted to drifted embeddings
    decoded: list[torch.Tensor] = []
    real = model.decode
    monkeypatch.setattr(model, "decode", lambda z: decoded.append(z) or real(z))
    monkeypatch.setattr(model, "prior_sample", lambda n: (_ for _ in ()).throw(AssertionError))

    path = prior_grid(
        model, tmp_path / "g.png", n_samples=5, draw=lambda n: codes[:n], source="the gmm sampler"
    )
    assert path.stat().st_size > 500
    assert len(decoded) == 1 and torch.equal(decoded[0], codes)
