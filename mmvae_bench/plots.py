"""Pictures people look at: conditional sample grids, 2-d latent maps (more in leaderboard.py)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; never needs a display

import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from torch import Tensor  # noqa: E402

from mmvae_bench.data.spec import ModalitySpec, Split  # noqa: E402
from mmvae_bench.io import atomic_write  # noqa: E402
from mmvae_bench.model import MultimodalVAE  # noqa: E402

__all__ = ["latent_maps", "prior_grid", "sample_grid", "to_rgb"]

CELL = 32


def to_rgb(x: Tensor, spec: ModalitySpec) -> Tensor:
    """Render a batch ``(B, *shape)`` as ``(B, CELL, CELL, 3)`` images in [0, 1].

    Images are resized; spectrograms are min-max scaled; sequences of (x, y) points (MHD
    trajectories) are rasterised as dots.
    """
    x = x.detach().float().cpu()
    b = x.shape[0]
    if spec.kind in ("image", "spectrogram") and x.dim() == 4:
        if spec.kind == "spectrogram":
            lo = x.amin(dim=(1, 2, 3), keepdim=True)
            hi = x.amax(dim=(1, 2, 3), keepdim=True)
            x = (x - lo) / (hi - lo).clamp_min(1e-8)
        else:
            lo, hi = spec.value_range
            x = ((x - lo) / (hi - lo)).clamp(0, 1)
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        x = torch.nn.functional.interpolate(x[:, :3], size=(CELL, CELL), mode="nearest")
        return x.permute(0, 2, 3, 1)
    flat = x.reshape(b, -1)
    canvas = torch.zeros(b, CELL * CELL)
    if flat.shape[1] % 2 == 0:
        pts = flat.view(b, -1, 2)
        lo, hi = pts.amin(dim=1, keepdim=True), pts.amax(dim=1, keepdim=True)
        pts = ((pts - lo) / (hi - lo).clamp_min(1e-8) * (CELL - 1)).round().long()
        idx = (CELL - 1 - pts[..., 1]) * CELL + pts[..., 0]
        canvas.scatter_(1, idx, 1.0)
    return canvas.view(b, CELL, CELL, 1).expand(-1, -1, -1, 3)


@torch.no_grad()
def sample_grid(
    model: MultimodalVAE, test: Split, path: Path, *, n_examples: int = 8, device: str = "cpu"
) -> Path:
    """Write a PNG: for each single input modality, the inputs and every generated modality.

    One block per input modality: the first row is the input, the next rows the modalities
    generated from it (the input's own row is its reconstruction through the posterior).
    """
    mods = model.modalities
    batch = test.batch(slice(0, n_examples), device)
    rows: list[Tensor] = []
    labels: list[str] = []
    for m in mods:
        gen = model.generate({m: batch[m]}, (m,), 1)
        rows.append(to_rgb(batch[m], model.specs[m]))
        labels.append(f"input {m}")
        for t in mods:
            rows.append(to_rgb(gen[t][0], model.specs[t]))
            labels.append(f"  {m} -> {t}")
    grid = torch.stack(rows)  # (R, B, H, W, 3)
    r, b = grid.shape[:2]
    pad = torch.ones(r, b, CELL + 2, CELL + 2, 3)
    pad[:, :, 1:-1, 1:-1] = grid
    img = pad.permute(0, 2, 1, 3, 4).reshape(r * (CELL + 2), b * (CELL + 2), 3)
    fig, ax = plt.subplots(figsize=(1.0 + 0.45 * b, 0.45 * r), dpi=100)
    ax.imshow(img.numpy(), interpolation="nearest")
    ax.set_yticks([(i + 0.5) * (CELL + 2) for i in range(r)], labels, fontsize=7)
    ax.set_xticks([])
    ax.set_title("conditional generation from one modality", fontsize=9)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, bbox_inches="tight")
    plt.close(fig)
    return path


@torch.no_grad()
def prior_grid(
    model: MultimodalVAE,
    path: Path,
    *,
    n_samples: int = 8,
    draw: Callable[[int], Tensor] | None = None,
    source: str = "the prior",
) -> Path:
    """Write a PNG of ``n_samples`` unconditional draws decoded into every modality (one row each).

    ``draw(n)`` gives the latent codes, ``(n, latent_dim)`` (default: ``model.prior_sample``);
    pass the run's latent sampler so the grid shows what its joint coherence and FID decode,
    and name it in ``source``. A column is one z, so reading down it shows whether the
    modalities agree.
    """
    with torch.no_grad():
        z = (draw or model.prior_sample)(n_samples)
        out = model.decode(z.to(next(model.parameters()).device))
    out = {m: v.float().cpu() for m, v in out.items()}
    rows = [to_rgb(out[m], model.specs[m]) for m in model.modalities]
    grid = torch.stack(rows)  # (R, B, H, W, 3)
    r, b = grid.shape[:2]
    pad = torch.ones(r, b, CELL + 2, CELL + 2, 3)
    pad[:, :, 1:-1, 1:-1] = grid
    img = pad.permute(0, 2, 1, 3, 4).reshape(r * (CELL + 2), b * (CELL + 2), 3)
    fig, ax = plt.subplots(figsize=(1.0 + 0.45 * b, 0.3 + 0.45 * r), dpi=100)
    ax.imshow(img.numpy(), interpolation="nearest")
    ax.set_yticks([(i + 0.5) * (CELL + 2) for i in range(r)], list(model.modalities), fontsize=7)
    ax.set_xticks([])
    ax.set_title(f"samples from {source} (one z per column)", fontsize=9)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, bbox_inches="tight")
    plt.close(fig)
    return path


def latent_maps(
    panels: Sequence[Sequence[tuple[str, Tensor]]],
    labels: Tensor,
    path: Path,
    *,
    class_names: Sequence[str] | None = None,
    row_names: Sequence[str] = (),
    title: str = "",
) -> Path:
    """Write a PNG of 2-d latent samples: a grid of scatter plots, points coloured by class.

    ``panels[r][c]`` is ``(name, z)``, ``z`` (S, N, 2): S draws for each of N datapoints whose
    classes are ``labels`` (N,). Every panel has the same limits (the 0.5-99.5% quantiles over
    all panels, widened by 10%), so spreads and shapes compare across panels. Written
    atomically.
    """
    labels = labels.detach().cpu().long()
    classes = sorted(int(c) for c in labels.unique())
    names = list(class_names) if class_names else [str(c) for c in classes]
    rows, cols = len(panels), max(len(r) for r in panels)
    every = torch.cat([z.detach().float().cpu().reshape(-1, 2) for r in panels for _, z in r])
    lo, hi = every.quantile(0.005, dim=0), every.quantile(0.995, dim=0)
    pad = 0.1 * (hi - lo).clamp_min(1e-3)
    lo, hi = lo - pad, hi + pad
    cmap = plt.get_cmap("tab10")
    fig, axes = plt.subplots(rows, cols, figsize=(2.6 * cols, 2.6 * rows), squeeze=False)
    for r, row in enumerate(panels):
        for c in range(cols):
            ax = axes[r][c]
            if c >= len(row):
                ax.axis("off")
                continue
            name, z = row[c]
            z = z.detach().float().cpu()  # (S, N, 2)
            for k in classes:
                pts = z[:, labels == k].reshape(-1, 2)
                ax.scatter(pts[:, 0], pts[:, 1], s=1.5, alpha=0.35, color=cmap(k % 10), lw=0)
            ax.set_xlim(lo[0].item(), hi[0].item())
            ax.set_ylim(lo[1].item(), hi[1].item())
            ax.set_title(name, fontsize=8)
            ax.tick_params(labelsize=6)
            if c == 0 and r < len(row_names):
                ax.set_ylabel(row_names[r], fontsize=8)
    handles = [
        plt.Line2D([], [], ls="", marker="o", color=cmap(k % 10), label=names[i])
        for i, k in enumerate(classes)
    ]
    fig.legend(handles=handles, loc="upper right", fontsize=7, frameon=False)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    try:
        atomic_write(Path(path), lambda f: fig.savefig(f, format="png", dpi=110))
    finally:
        plt.close(fig)
    return Path(path)
