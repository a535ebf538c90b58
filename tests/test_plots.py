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


def test_latent_maps_draw_every_panel_on_shared_limits(tmp_path: Path, monkeypatch) -> None:
    from mmvae_bench import plots

    labels = torch.tensor([0, 1, 0, 1, 1])
    narrow = torch.randn(6, 5, 2) * 0.1
    wide = torch.randn(6, 5, 2) * 10 + 3
    figures = []
    real = plots.plt.close
    monkeypatch.setattr(plots.plt, "close", lambda fig: figures.append(fig) or real(fig))
    path = plots.latent_maps(
        [[("a", narrow), ("b", wide)], [("c", narrow)]],  # a short row: its spare axis is off
        labels,
        tmp_path / "maps.png",
        class_names=["ring", "filled"],
        row_names=["x1", "x2"],
    )
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in tmp_path.iterdir()] == ["maps.png"]  # no temp file left behind
    [fig] = figures
    drawn = [ax for ax in fig.axes if ax.axison]
    assert [ax.get_title() for ax in drawn] == ["a", "b", "c"]
    assert len({ax.get_xlim() for ax in drawn}) == 1  # one range for all: spreads compare
    lo, hi = drawn[0].get_xlim()
    assert lo < wide[..., 0].quantile(0.1) and hi > wide[..., 0].quantile(0.9)
    assert all(len(ax.collections) == 2 for ax in drawn)  # one scatter per class
