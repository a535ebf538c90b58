"""Leaderboards: run records -> ``leaderboards/<dataset>.json``, ``.md``, ``.html``, figures.

One row per (model, config without the seed, protocol version, latent sampler): mean ± std over
seeds and the seed count. Results of different protocols never share a row or a table; FID
numbers of different extractors never share a column. The latent sampler (``--sampler``: what
joint coherence and unconditional FID decode) is part of a row's identity and shown in its own
column, so numbers from different samplers are never averaged together. A record that is
corrupt, partial, unfinished or not ``ok`` is reported with its reason and skipped, never
averaged.

The concepts live in their own modules: :mod:`.runs` (records in), :mod:`.rows` (aggregation),
:mod:`.render` (columns, tables, Markdown), :mod:`.figures`, :mod:`.html` (static pages and
``index.html``); this module builds and reads the files. Every file written is named by a
checked dataset name inside ``out``; the previous build's figures are removed by the list in
its JSON, never by glob.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mmvae_bench.errors import BenchError
from mmvae_bench.io import atomic_write, atomic_write_json, check_output_folder
from mmvae_bench.leaderboard.figures import figures_of, stale_figures, write_figures
from mmvae_bench.leaderboard.html import render_html, write_html, write_index, write_pages
from mmvae_bench.leaderboard.reference import (
    REFERENCE_FILE,
    ReferenceEntry,
    compare,
    load_references,
    matching,
)
from mmvae_bench.leaderboard.render import reference_table, render_markdown, table
from mmvae_bench.leaderboard.rows import aggregate
from mmvae_bench.leaderboard.runs import RunSummary, collect_runs, summarize
from mmvae_bench.names import check_name
from mmvae_bench.results import Skipped

__all__ = [
    "LEADERBOARD_VERSION",
    "BuildReport",
    "RunSummary",
    "Skipped",
    "aggregate",
    "build_leaderboards",
    "collect_runs",
    "leaderboard_path",
    "load_leaderboard",
    "load_references",
    "render_html",
    "render_markdown",
    "summarize",
    "table",
    "write_html_pages",
]

log = logging.getLogger(__name__)

LEADERBOARD_VERSION = 1


@dataclass
class BuildReport:
    """What ``build_leaderboards`` did: files per dataset, runs used, records skipped, and the
    ``index.html`` it rewrote."""

    written: dict[str, list[Path]]
    used: int
    skipped: list[Skipped]
    index: Path | None = None


def leaderboard_path(out_dir: Path, dataset: str) -> Path:
    """Where the JSON leaderboard of ``dataset`` lives (a safe name, inside ``out_dir``)."""
    return Path(out_dir) / f"{check_name(dataset, 'dataset')}.json"


def load_leaderboard(out_dir: Path, dataset: str) -> dict[str, Any]:
    """Read a built leaderboard; a missing or corrupt one is a ``BenchError``."""
    path = leaderboard_path(out_dir, dataset)
    if not path.is_file():
        raise BenchError(
            f"no leaderboard for '{dataset}' at {path}; run: mmvae-bench leaderboard build "
            f"--out {out_dir}"
        )
    try:
        board = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise BenchError(f"leaderboard {path} is corrupt ({e}); rebuild it") from None
    if not isinstance(board, dict) or board.get("leaderboard_version") != LEADERBOARD_VERSION:
        raise BenchError(f"leaderboard {path} has an unknown format; rebuild it")
    try:
        for version in board["protocols"]:
            table(board, version)
            reference_table(board, version)
        [(s["path"], s["reason"]) for s in board["skipped"]]
        for ref in board.get("references", []):
            [ref[k] for k in ("id", "source", "metric_definition", "protocol_notes")]
            [(c["row"], c["metric"], c["published"]) for c in ref["comparisons"]]
    except (KeyError, TypeError, AttributeError, ValueError) as e:
        why = f"{type(e).__name__}: {e}"
        raise BenchError(f"leaderboard {path} is malformed ({why}); rebuild it") from None
    return board


def _previous_figures(out_dir: Path, dataset: str) -> set[str]:
    """The figures the last build of ``dataset`` wrote, from its JSON (empty if unreadable)."""
    try:
        return figures_of(json.loads(leaderboard_path(out_dir, dataset).read_text()))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return set()


def _leaderboards_in(out_dir: Path) -> dict[str, dict[str, Any] | str]:
    """Every ``<name>.json`` in ``out_dir``: its leaderboard, or why it cannot be read."""
    boards: dict[str, dict[str, Any] | str] = {}
    for path in sorted(Path(out_dir).glob("*.json")):
        try:
            boards[path.stem] = load_leaderboard(out_dir, path.stem)
        except BenchError as e:
            boards[path.stem] = str(e)
    return boards


def write_html_pages(out_dir: Path) -> list[Path]:
    """The HTML page of every leaderboard in ``out_dir`` from its JSON alone, and the index.

    No run records needed: this makes the committed ``leaderboards/*.html``. A leaderboard
    that cannot be read is a ``BenchError`` naming it. Returns the pages, the index last.
    """
    if not Path(out_dir).is_dir():
        raise BenchError(f"no leaderboards folder {out_dir}")
    return write_pages(out_dir, _leaderboards_in(out_dir))


def _references(out_dir: Path, references: Path | None) -> list[ReferenceEntry]:
    """The published figures: ``references`` if given (it must exist), else
    ``out_dir/reference/published.json`` if there (none otherwise)."""
    if references is not None:
        return load_references(references)
    default = out_dir / REFERENCE_FILE
    return load_references(default) if default.exists() else []


def _add_cross_coherence(runs: list[RunSummary], entries: list[ReferenceEntry]) -> None:
    """Give the runs the one-modality coherences that a reference of theirs reports."""
    for run in runs:
        for e in entries:
            if e.dataset == run.dataset and run.protocol.get("name") in e.protocols:
                run.values.update({k: run.cross[k] for k in e.values if k in run.cross})


def build_leaderboards(
    runs_dir: Path,
    out_dir: Path,
    *,
    command: str | None = None,
    figures: bool = True,
    references: Path | None = None,
) -> BuildReport:
    """Aggregate the records under ``runs_dir`` into ``out_dir/<dataset>.json|.md|.html`` + figures.

    Then ``out_dir/index.html`` is rewritten to list every leaderboard in ``out_dir``.

    Args:
        runs_dir: folder searched recursively for ``results.json``.
        out_dir: where leaderboards go (``leaderboards/``).
        command: the command line that regenerates them, printed in the markdown.
        figures: write the coherence plot and copy sample grids.
        references: the published figures to show beside the rows (see
            :mod:`mmvae_bench.leaderboard.reference`); default
            ``out_dir/reference/published.json`` when it exists. A leaderboard keeps the
            entries that match its dataset and protocols, with the comparisons, under
            ``references`` (absent when none match).

    Returns:
        A :class:`BuildReport`; skipped records are listed there and in each dataset's JSON.
        Records without a readable dataset are listed in every dataset's JSON.
    """
    runs_dir, out_dir = Path(runs_dir), Path(out_dir)
    check_output_folder(out_dir)  # a file, or a folder it cannot write: refused before work
    entries = _references(out_dir, references)
    runs, skipped = collect_runs(runs_dir)
    _add_cross_coherence(runs, entries)
    rows, dupes, protocols, extractors = aggregate(runs)
    skipped += dupes
    if not runs:
        reasons = "; ".join(f"{s.path}: {s.reason}" for s in skipped) or "none found"
        raise BenchError(f"no usable run records under {runs_dir} ({reasons})")
    command = command or f"mmvae-bench leaderboard build --runs {runs_dir} --out {out_dir}"
    datasets = sorted({r.dataset for r in runs} | {s.dataset for s in skipped if s.dataset})
    written: dict[str, list[Path]] = {}
    for ds in datasets:
        ds_rows = rows.get(ds, [])
        ds_runs = [r for r in runs if r.dataset == ds]
        versions = {r["protocol"] for r in ds_rows}
        used_ext = {e for r in ds_runs for e in r.extractors}
        board: dict[str, Any] = {
            "leaderboard_version": LEADERBOARD_VERSION,
            "dataset": ds,
            "command": command,
            "n_runs": sum(r["n_seeds"] for r in ds_rows),
            "subset_sizes": sorted(
                {
                    int(k.split("/")[1])
                    for r in ds_rows
                    for k in r["metrics"]
                    if k.startswith("coherence/")
                }
            ),
            "protocols": {v: protocols[v] for v in sorted(versions)},
            "extractors": {e: extractors[e] for e in sorted(used_ext)},
            "rows": ds_rows,
            "figures": {},
            "skipped": [
                {"path": s.path, "reason": s.reason} for s in skipped if s.dataset in (ds, None)
            ],
        }
        matched = matching(entries, ds, board["protocols"])
        if matched:
            board["references"] = [
                {**e.as_record(), "tables": versions, "comparisons": compare(e, versions, ds_rows)}
                for e, versions in matched
            ]
        if figures:
            previous = _previous_figures(out_dir, ds)
            stale_figures(out_dir, ds, previous, write_figures(board, runs_dir, out_dir))
        json_path = atomic_write_json(leaderboard_path(out_dir, ds), board)
        md = render_markdown(board).encode()
        md_path = atomic_write(out_dir / f"{ds}.md", lambda f, data=md: f.write(data))
        written[ds] = [json_path, md_path, write_html(board, out_dir)]
        log.info("leaderboard %s: %d rows, %d skipped", ds, len(ds_rows), len(board["skipped"]))
    index = write_index(out_dir, _leaderboards_in(out_dir))
    return BuildReport(written=written, used=len(runs) - len(dupes), skipped=skipped, index=index)
