"""Leaderboard figures: coherence by |S| and each row's sample grids, and the clean-up of the
previous build's figures (by its own list of them, never by glob)."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from mmvae_bench.errors import BenchError
from mmvae_bench.leaderboard.render import row_label
from mmvae_bench.names import check_name
from mmvae_bench.results import COND_GRID, PRIOR_GRID

__all__ = ["figures_of", "stale_figures", "write_figures"]


def write_figures(board: dict[str, Any], runs_dir: Path, out_dir: Path) -> list[str]:
    """Coherence-by-|S| plot and each row's sample grids, next to the leaderboard.

    Fills ``board["figures"]`` and each row's ``figures`` with paths relative to ``out_dir``
    and returns them all (the build deletes only figures of its previous build that are not
    among them: :func:`stale_figures`).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    dataset = board["dataset"]
    fig_dir = out_dir / check_name(dataset, "dataset")
    fig_dir.mkdir(parents=True, exist_ok=True)
    versions = sorted({r["protocol"] for r in board["rows"]})
    sizes = board["subset_sizes"]
    if versions and sizes:
        fig, axes = plt.subplots(
            1, len(versions), figsize=(5.5 * len(versions), 3.8), squeeze=False, dpi=100
        )
        for ax, version in zip(axes[0], versions, strict=True):
            for r in (r for r in board["rows"] if r["protocol"] == version):
                ks = [k for k in sizes if f"coherence/{k}" in r["metrics"]]
                stats = [r["metrics"][f"coherence/{k}"] for k in ks]
                label = row_label(r)
                ax.errorbar(
                    ks,
                    [s["mean"] for s in stats],
                    yerr=[s["std"] or 0.0 for s in stats],
                    marker="o",
                    capsize=3,
                    label=f"{label}, {r['n_seeds']} seed{'s' if r['n_seeds'] != 1 else ''}",
                )
            ax.set_xticks(sizes)
            ax.set_xlabel("number of input modalities |S|")
            ax.set_ylabel("conditional coherence")
            ax.set_ylim(0, 1.02)
            ax.set_title(f"{dataset}, protocol {version}", fontsize=10)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
        fig.tight_layout()
        name = "coherence_by_size.png"
        fig.savefig(fig_dir / name)
        plt.close(fig)
        board["figures"]["coherence_by_size"] = f"{dataset}/{name}"
    for r in board["rows"]:
        best = next(x for x in r["runs"] if x["seed"] == r["best_seed"])
        run_dir = (runs_dir / best["path"]).parent
        r["figures"] = {}
        source = r.get("unconditional_source", "prior")
        unconditional = "prior" if source == "prior" else f"unconditional-{source}"
        for kind, src in (("conditional", COND_GRID), (unconditional, PRIOR_GRID)):
            if (run_dir / src).is_file():
                name = f"{r['id']}-{kind}.png"
                shutil.copyfile(run_dir / src, fig_dir / name)
                r["figures"][kind] = f"{dataset}/{name}"
    return [*board["figures"].values(), *(p for r in board["rows"] for p in r["figures"].values())]


def figures_of(board: Any) -> set[str]:
    """The figure paths a built leaderboard (parsed JSON, possibly malformed) says it wrote."""
    found: set[str] = set()
    if not isinstance(board, dict):
        return found
    maps = [board.get("figures")]
    rows = board.get("rows")
    if isinstance(rows, list):
        maps += [r.get("figures") for r in rows if isinstance(r, dict)]
    for m in maps:
        if isinstance(m, dict):
            found.update(v for v in m.values() if isinstance(v, str))
    return found


def stale_figures(out_dir: Path, dataset: str, previous: set[str], current: list[str]) -> None:
    """Delete the previous build's figures of ``dataset`` that this build did not write.

    Only paths of the form ``<dataset>/<name>.png`` under ``out_dir`` are deleted: never a
    glob, never a path a leaderboard file could point elsewhere.
    """
    for rel in sorted(previous - set(current)):
        folder, _, name = rel.partition("/")
        if folder != dataset or "/" in name or not name.endswith(".png"):
            continue
        try:
            check_name(name, "figure")
        except BenchError:
            continue
        path = out_dir / folder / name
        if path.is_file() and not path.is_symlink():
            path.unlink()
