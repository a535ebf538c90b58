"""What the command line shows: rich tables and status lines.

Every string that comes from the user or a file (names, paths, error messages, plugin
descriptions) goes into a ``rich.text.Text``, never into markup, so text such as ``foo[/x]``
prints as written instead of breaking the printer.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from mmvae_bench.eval import protocol as P
from mmvae_bench.results import RECORD_FILE, RunRecord
from mmvae_bench.testing import stage_names

__all__ = [
    "classifiers_table",
    "console",
    "datasets_table",
    "err_console",
    "leaderboard_build_report",
    "leaderboard_tables",
    "models_table",
    "print_error",
    "print_record",
    "print_sweep",
    "print_wall_time",
    "problems_table",
    "say",
]

console = Console()
err_console = Console(stderr=True)


def _row(table: Table, *cells: Any) -> None:
    table.add_row(*(c if isinstance(c, Text) else Text(str(c)) for c in cells))


def say(message: str) -> None:
    """A status line (dim)."""
    console.print(Text(message, style="dim"))


def print_error(message: str) -> None:
    """``error: <message>`` on stderr (the CLI's one way to report a user error)."""
    err_console.print(Text.assemble(("error:", "bold red"), " ", message), soft_wrap=True)


def print_record(record: RunRecord, run_dir: Path) -> None:
    """A summary of a run record: stages, coherence by |S|, joint coherence, FID."""
    t = Table(title=Text(f"{record.model} on {record.dataset} (seed {record.seed})"))
    t.add_column("metric")
    t.add_column("value", justify="right")
    for name, s in record.stages.items():
        fmt = "" if s.memory_format == "contiguous" else f", {s.memory_format}"
        _row(t, f"stage {name}", f"{s.wall_s:.1f} s, {s.samples_per_s:.0f} samples/s{fmt}")
    m = record.metrics
    for k, v in m.get(P.COND_COHERENCE_BY_SIZE, {}).items():
        _row(t, f"conditional coherence |S|={k}", f"{v['mean']:.3f} ± {v['std']:.3f}")
    if P.JOINT_COHERENCE in m:
        _row(t, f"joint coherence ({record.sampler_kind} sampler)", f"{m[P.JOINT_COHERENCE]:.3f}")
        for mod, hist in m.get(P.JOINT_LABEL_HIST, {}).items():
            total = max(sum(hist), 1)
            top = max(range(len(hist)), key=lambda i: hist[i])
            _row(t, f"  sampled labels {mod}", f"top class {top}: {hist[top] / total:.0%}")
    ll = (record.sampler or {}).get("train_log_likelihood")
    if ll is not None:
        _row(t, "sampler train log-likelihood", f"{ll:.3f} nats")
    for mod, acc in m.get(P.CLASSIFIER_ACCURACY, {}).items():
        _row(t, f"classifier {mod}", f"{acc:.3f}")
    if m.get(P.HMC_ACCEPTANCE):
        rates = list(m[P.HMC_ACCEPTANCE].values())
        _row(t, "HMC acceptance", f"{min(rates):.2f}–{max(rates):.2f}")
    _row(t, "protocol", record.protocol.get("name", "?"))
    for key, label in (("sampler_s", "latent sampler fit"), ("eval_s", "evaluation")):
        if key in record.timings:
            _row(t, label, f"{record.timings[key]:.1f} s")
    console.print(t)
    for ext, per_mod in m.get(P.FID, {}).items():
        label = m.get(P.FID_EXTRACTORS, {}).get(ext, {}).get("label", "")
        t = Table(title=Text(f"FID [{ext}]"), caption=Text(label))
        t.add_column("modality")
        t.add_column("generated from")
        t.add_column("FID", justify="right")
        for mod, values in per_mod.items():
            for key, v in values.items():
                source = f"{record.sampler_kind} sampler" if key == "unconditional" else key
                _row(t, mod, source, f"{v:.4g}")
        console.print(t)
    console.print(Text(f"record: {run_dir / RECORD_FILE}"))


def print_wall_time(seconds: float, record: RunRecord) -> None:
    """The command's wall time, with the CPU (or GPU) and thread count it ran on."""
    env = record.environment
    device = env.get("device", "?")
    where = env.get("cpu") or "CPU" if str(device) == "cpu" else device
    console.print(
        Text(
            f"wall time {seconds:.0f} s ({seconds / 60:.1f} min) on {where}, "
            f"{env.get('threads', '?')} torch thread(s); data loading, classifiers, training "
            "and evaluation included"
        )
    )


def print_sweep(summary: Any) -> None:
    """Tables of a sweep: every trial, then the best grid point per metric."""
    trials = summary.trials
    metrics = sorted({k for t in trials for k in t.metrics})
    t = Table(title=Text(f"sweep {summary.name}: {len(trials)} trials"))
    for col in (*summary.axes, "seed", "status", "node", *metrics):
        t.add_column(escape(col), justify="right" if col in metrics else "left")
    t.add_column("error (full text in sweep.json)", max_width=48, no_wrap=True)
    style = {"ok": "green", "failed": "red", "unfinished": "yellow"}
    for tr in trials:
        status = Text(tr.status, style=style[tr.status]) + (" (reused)" if tr.reused else "")
        _row(
            t,
            *(tr.params[a] for a in summary.axes),
            tr.seed,
            status,
            tr.node_ip or "",
            *(f"{tr.metrics[m]:.3f}" if m in tr.metrics else "" for m in metrics),
            tr.error or "",
        )
    console.print(t)
    if summary.best:
        b = Table(title="best config per metric (mean ± std over finished seeds)")
        for col in ("metric", "config", "value", "seeds"):
            b.add_column(col)
        for m, best in summary.best.items():
            config = ", ".join(f"{k}={v}" for k, v in best["params"].items()) or "(no grid)"
            value = f"{best['mean']:.3f} ± {best['std']:.3f}"
            _row(b, m, config, value, f"{best['seeds']}/{best['of']}")
        console.print(b)
    counts = {s: sum(tr.status == s for tr in trials) for s in ("ok", "failed", "unfinished")}
    console.print(", ".join(f"{n} {s}" for s, n in counts.items()) + f" in {summary.wall_s:.0f} s")
    if counts["unfinished"]:
        console.print(Text(f"continue with: --resume --name {summary.name}"))
    console.print(Text(f"summary: {summary.path / 'sweep.json'}"))
    for metric, path in summary.heatmaps.items():
        console.print(Text(f"heat map ({metric}): {path}"))


def models_table(registry: Any) -> Table:
    """The model plugins: name, stages in order, where each comes from, and broken plugins.

    "source" is the distribution and version for an installed plugin, the file for
    ``--plugin``; a plugin that failed to load shows "broken" and the reason. The stage names
    are read from a model built on the conformance kit's tiny dataset
    (:func:`mmvae_bench.testing.stage_names`); a model that cannot be built there shows why.
    """
    t = Table(title="models")
    t.add_column("name", no_wrap=True)
    t.add_column("stages")
    t.add_column("source", overflow="fold")  # a file path is never cut short
    t.add_column("description")
    for name, e in registry.models.items():
        try:
            stages = Text(", ".join(stage_names(e)))
        except Exception as err:  # a plugin's bug: shown in its row, the listing goes on
            stages = Text(f"? cannot build: {type(err).__name__}: {err}", style="yellow")
        _row(t, name, stages, registry.origin("models", name), e.description)
    for name, err in registry.broken.items():
        _row(t, name, Text("broken", style="red"), registry.origins.get(name, ""), err)
    return t


def datasets_table(registry: Any) -> Table:
    """The registered datasets and whether they need a download."""
    t = Table(title="datasets")
    for col in ("name", "kind", "description"):
        t.add_column(col)
    for name, e in registry.datasets.items():
        _row(t, name, "built-in" if e.builtin else "download", e.description)
    return t


def classifiers_table(dataset: str, result: Mapping[str, Any], floor: float) -> Table:
    """Each modality's classifier accuracy against the dataset's floor."""
    t = Table(title=Text(f"classifiers for {dataset}"))
    t.add_column("modality")
    t.add_column("test accuracy (balanced)", justify="right")
    t.add_column("floor", justify="right")
    for m, c in result.items():
        acc = Text(f"{c.accuracy:.3f}")
        if c.accuracy < floor:
            acc.append(" (below floor)", style="red")
        _row(t, m, acc, floor)
    return t


def problems_table(title: str, problems: Iterable[str]) -> Table:
    """Numbered problems (``data check``)."""
    t = Table(title=Text(title))
    t.add_column("#", justify="right")
    t.add_column("problem", overflow="fold")
    for i, problem in enumerate(problems, 1):
        _row(t, i, problem)
    return t


def leaderboard_build_report(report: Any) -> None:
    """What ``leaderboard build`` wrote, and the records it skipped (on stderr)."""
    for ds, paths in report.written.items():
        console.print(Text(f"{ds}: " + ", ".join(str(p) for p in paths)))
    if report.index is not None:
        console.print(Text(f"index of all leaderboards: {report.index}"))
    console.print(f"{report.used} runs used, {len(report.skipped)} records skipped")
    if report.skipped:
        t = Table(title="skipped records (not averaged)")
        t.add_column("record")
        t.add_column("reason")
        for s in report.skipped:
            _row(t, s.path, s.reason)
        err_console.print(t)


def leaderboard_pages(pages: list[Path]) -> None:
    """What ``leaderboard html`` wrote: the pages, then the index."""
    *boards, index = pages
    for p in boards:
        console.print(Text(str(p)))
    console.print(Text(f"index of all leaderboards: {index}"))


def leaderboard_tables(dataset: str, board: Mapping[str, Any], table: Any, out: Path) -> None:
    """A built leaderboard: one table per protocol, then its skipped records."""
    for version, p in sorted(board["protocols"].items()):
        headers, body = table(board, version)
        label = f": {p['label']}" if p.get("label") else ""
        t = Table(title=Text(f"{dataset}, protocol {version}{label}"))
        for i, h in enumerate(headers):
            t.add_column(escape(h), justify="left" if i < 2 else "right")
        for cells in body:
            _row(t, *cells)
        console.print(t)
    for s in board["skipped"]:
        err_console.print(Text.assemble(("skipped", "yellow"), f" {s['path']}: {s['reason']}"))
    console.print(Text(f"legend and figures: {out / (dataset + '.md')}"))
