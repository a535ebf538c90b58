"""Leaderboard presentation: the columns and their definitions, the table cells (shared by the
Markdown file and ``leaderboard show``) and the Markdown page."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from mmvae_bench.leaderboard.reference import FLAG_SIGMAS, metric_title

__all__ = [
    "FLAG_MARK",
    "PUBLISHED_MARK",
    "columns",
    "extractor_short",
    "comparison_text",
    "reference_legend",
    "reference_table",
    "references_of",
    "render_markdown",
    "row_label",
    "table",
]

# Our cell outside a published figure's band; the label of a published row's model cell.
FLAG_MARK = "⚠"
PUBLISHED_MARK = "(published, not rerun)"


def extractor_short(name: str, info: Mapping[str, Any]) -> str:
    """A column-sized name: ``inception`` or ``clf:<fingerprint>`` for classifier features."""
    if info.get("kind") == "inception":
        return "inception"
    if info.get("kind") == "classifier":
        return "clf:" + name.rsplit("-", 1)[-1][:6]
    return name


def columns(board: Mapping[str, Any], version: str | None) -> list[dict[str, str]]:
    """The columns of one protocol's table (all tables' when None): key, title, definition."""
    rows = [r for r in board["rows"] if version is None or r["protocol"] == version]
    present = set().union(*(r["metrics"] for r in rows)) if rows else set()
    cols = [
        {"key": "model", "title": "model", "definition": "registry name of the model"},
        {
            "key": "config",
            "title": "config",
            "definition": "id of the configuration (model config, epochs per stage, precision; "
            "the seed excluded) and the fields that differ from the model's other rows; full "
            "configs are listed below",
        },
        {"key": "seeds", "title": "seeds", "definition": "number of seeds averaged"},
    ]
    for k in board["subset_sizes"]:
        cols.append(
            {
                "key": f"coherence/{k}",
                "title": f"coh |S|={k}",
                "definition": f"conditional coherence from {k} input modalit"
                f"{'y' if k == 1 else 'ies'}: class-balanced accuracy of the coherence "
                "classifiers on generated missing modalities, averaged over subsets S of that "
                "size and targets; mean ± std over seeds (higher is better)",
            }
        )
    for key in _reference_keys(board, version):
        if key in present_keys(cols):
            continue
        cols.append(
            {
                "key": key,
                "title": metric_title(key),
                "definition": _reference_definition(key),
            }
        )
    cols.append(
        {
            "key": "sampler",
            "title": "sampler",
            "definition": "the latent sampler that joint coherence and unconditional (prior) FID "
            "decode: `prior` (the model's prior), `gmm` (a Gaussian mixture) or `flow` (a zuko "
            "flow) fitted to the training set's joint embeddings after training (`--sampler`); "
            "part of the row's identity, so numbers of different samplers are never averaged",
        }
    )
    cols.append(
        {
            "key": "joint_coherence",
            "title": "joint coh",
            "definition": "fraction of latent draws from the row's sampler whose decoded "
            "modalities all classifiers give one label; mean ± std over seeds (higher is "
            "better; read with the label histograms in the run records)",
        }
    )
    for ext, info in sorted(board["extractors"].items()):
        short = extractor_short(ext, info)
        label = info.get("label") or info.get("kind", "")
        for part, what in (
            (
                "prior",
                "unconditional samples (latent draws from the row's sampler, the prior unless "
                "the sampler column says otherwise), averaged over image modalities",
            ),
            (
                "conditional",
                "samples generated from every subset not containing the modality, averaged "
                "over modalities and subsets",
            ),
        ):
            key = f"fid/{ext}/{part}"
            if key in present:
                cols.append(
                    {
                        "key": key,
                        "title": f"FID {'prior' if part == 'prior' else 'cond'} [{short}]",
                        "definition": f"FID against the test split of {what}, with features of "
                        f"`{ext}` ({label}); mean ± std over seeds (lower is better; never "
                        "compare across extractors)",
                    }
                )
    cols.append(
        {
            "key": "train_s",
            "title": "train s",
            "definition": "training wall time in seconds, all stages (hardware in the records)",
        }
    )
    return cols


def present_keys(cols: list[dict[str, str]]) -> set[str]:
    """The keys of a list of columns."""
    return {c["key"] for c in cols}


def references_of(board: Mapping[str, Any], version: str | None) -> list[Mapping[str, Any]]:
    """The published entries shown in one protocol's table (all of them when None)."""
    refs = board.get("references") or []
    return [r for r in refs if version is None or version in r["tables"]]


def _reference_keys(board: Mapping[str, Any], version: str | None) -> list[str]:
    keys: list[str] = []
    for ref in references_of(board, version):
        keys += [k for k in sorted(ref["values"]) if k not in keys]
    return keys


def _reference_definition(key: str) -> str:
    if key.startswith("cross_coherence/"):
        _, source, target = key.split("/")
        return (
            f"conditional coherence from `{source}` alone to `{target}`: accuracy of the "
            f"`{target}` classifier on `{target}` generated from `{source}`; shown because a "
            "published figure reports it; mean ± std over seeds (higher is better)"
        )
    return "the metric a published figure reports; mean ± std over seeds (higher is better)"


def _flags(board: Mapping[str, Any]) -> set[tuple[str, str, str]]:
    """(row id, protocol, metric) of our cells outside a published figure's band."""
    return {
        (c["row"], c["protocol"], c["metric"])
        for ref in references_of(board, None)
        for c in ref["comparisons"]
        if c["deviates"]
    }


def _published(value: Mapping[str, Any] | None) -> str:
    if not value:
        return "–"
    text = f"{value['mean']:.3f}"
    return text + (f" ± {value['std']:.3f}" if value.get("std") is not None else "")


def reference_table(
    board: Mapping[str, Any], version: str
) -> list[tuple[Mapping[str, Any], list[str]]]:
    """The published rows of one protocol's table, cells in :func:`columns` order."""
    cols = columns(board, version)
    out = []
    for ref in references_of(board, version):
        cells = []
        for c in cols:
            if c["key"] == "model":
                cells.append(f"{ref['model']} {PUBLISHED_MARK}")
            elif c["key"] == "config":
                cells.append(ref["label"])
            elif c["key"] == "seeds":
                cells.append(str(ref["seeds"]) if ref.get("seeds") else "–")
            else:
                cells.append(_published(ref["values"].get(c["key"])))
        out.append((ref, cells))
    return out


def reference_legend() -> list[str]:
    """What published rows, their matching and the flag mean (Markdown and HTML legends)."""
    return [
        f"Rows marked `{PUBLISHED_MARK}` are published figures (`reference/published.json` "
        "beside the leaderboards, each cited below): copied from the literature, not rerun "
        "here, not ranked, never averaged with our runs",
        "A published figure appears in a protocol's table when it is of this dataset and its "
        "entry names that protocol (`full` or `quick`) as the one it is comparable with (the "
        "papers evaluate on the whole test set: the suite's entries name `full`). "
        "Architectures, training budgets and classifiers may still differ (each entry's notes)",
        f"{FLAG_MARK} marks our cell when a published figure of the same model and metric "
        "comes with a spread (std over the source's seeds) and our mean lies outside the "
        f"published mean ± {FLAG_SIGMAS:g} × that std; a figure without a published spread is "
        "compared (Δ below) but never flags",
    ]


def comparison_text(c: Mapping[str, Any]) -> str:
    """One comparison of our row with a published value, in words."""
    head = f"`{c['row']}` {metric_title(c['metric'])}: "
    if c["ours"] is None:
        return head + f"published {c['published']:.3f}; the row has no value of this metric"
    text = f"ours {c['ours']:.3f} vs published {c['published']:.3f} (Δ {c['delta']:+.3f}"
    if c["band"] is None:
        return head + text + "; no published spread: not flagged)"
    verdict = f"outside: flagged {FLAG_MARK}" if c["deviates"] else "within"
    return head + text + f"; band ± {c['band']:.3f}: {verdict})"


def _fmt(stat: Mapping[str, Any] | None, key: str, n_seeds: int) -> str:
    if not stat:
        return "–"
    spec = ".1f" if key == "train_s" else (".4g" if key.startswith("fid/") else ".3f")
    text = format(stat["mean"], spec)
    if stat.get("std") is not None:
        text += f" ± {format(stat['std'], spec)}"
    if stat["n"] != n_seeds:
        text += f" (n={stat['n']})"
    return text


def table(board: Mapping[str, Any], version: str) -> tuple[list[str], list[list[str]]]:
    """Headers and string cells of one protocol's table (shared by the .md and ``show``)."""
    cols = columns(board, version)
    flags = _flags(board)
    body = []
    for r in board["rows"]:
        if r["protocol"] != version:
            continue
        cells = []
        for c in cols:
            if c["key"] == "model":
                cells.append(r["model"])
            elif c["key"] == "config":
                label = r.get("config_label")
                cells.append(f"{r['config_id']} ({label})" if label else r["config_id"])
            elif c["key"] == "seeds":
                cells.append(str(r["n_seeds"]))
            elif c["key"] == "sampler":
                cells.append(r.get("sampler", "prior"))
            else:
                cell = _fmt(r["metrics"].get(c["key"]), c["key"], r["n_seeds"])
                if (r["id"], version, c["key"]) in flags:
                    cell += f" {FLAG_MARK}"
                cells.append(cell)
        body.append(cells)
    return [c["title"] for c in cols], body


def _protocol_title(version: str, p: Mapping[str, Any]) -> str:
    label = f": {p['label']}" if p.get("label") else ""
    return f"protocol `{version}` ({p.get('name', '?')}){label}"


def row_label(row: Mapping[str, Any]) -> str:
    """Model, the config fields that differ, and a sampler other than the prior."""
    label = row["model"] + (f" ({row['config_label']})" if row.get("config_label") else "")
    sampler = row.get("sampler", "prior")
    return label if sampler == "prior" else f"{label} [{sampler} sampler]"


def _md_escape(text: str) -> str:
    return text.replace("|", "\\|")


def render_markdown(board: Mapping[str, Any]) -> str:
    """The leaderboard as markdown: tables per protocol, figures, legend, configs, skipped."""
    ds = board["dataset"]
    lines = [
        f"# Leaderboard: {ds}",
        "",
        f"Built from {board['n_runs']} run records ({len(board['skipped'])} skipped) by "
        f"`{board['command']}`; rerun that command to regenerate this file, its JSON and "
        "figures (never edit them by hand).",
        "",
    ]
    for version in sorted(board["protocols"]):
        headers, body = table(board, version)
        if not body:
            continue
        lines += [f"## {_protocol_title(version, board['protocols'][version])}", ""]
        lines.append("| " + " | ".join(_md_escape(h) for h in headers) + " |")
        lines.append("|" + "|".join("---" if i < 2 else "---:" for i in range(len(headers))) + "|")
        lines += ["| " + " | ".join(_md_escape(c) for c in row) + " |" for row in body]
        for _, cells in reference_table(board, version):
            cells = [f"*{cells[0]}*", *cells[1:]]
            lines.append("| " + " | ".join(_md_escape(c) for c in cells) + " |")
        lines.append("")
    if board["figures"].get("coherence_by_size"):
        lines += [
            "## Coherence by number of input modalities",
            "",
            f"![coherence vs |S|]({board['figures']['coherence_by_size']})",
            "",
            "Error bars: standard deviation over seeds.",
            "",
        ]
    grids = [r for r in board["rows"] if r.get("figures")]
    if grids:
        lines += ["## Samples (best seed of each row)", ""]
        for r in grids:
            label = row_label(r)
            links = [f"[{k}]({v})" for k, v in sorted(r["figures"].items())]
            lines.append(
                f"- **{label}**, protocol `{r['protocol']}`, seed {r['best_seed']}: "
                + ", ".join(links)
            )
        lines.append("")
        for r in grids:
            for kind, path in sorted(r["figures"].items()):
                lines += [f"![{r['model']} {kind} samples]({path})", ""]
    refs = references_of(board, None)
    if refs:
        lines += ["## Published reference figures", ""]
        for ref in refs:
            src = ref["source"]
            tables = ", ".join(f"`{v}`" for v in ref["tables"])
            lines += [
                f"- **{_md_escape(ref['label'])}** (`{ref['model']}` on `{ref['dataset']}`, "
                f"comparable with protocol {', '.join(ref['protocols'])}; shown in {tables}): "
                f"{_md_escape(src['citation'])} {_md_escape(src['where'])} <{src['url']}> "
                f"(read: {_md_escape(src['read'])}).",
                f"  - Metric: {_md_escape(ref['metric_definition'])}.",
                f"  - Protocol: {_md_escape(ref['protocol_notes'])}",
            ]
            lines += [f"  - {_md_escape(comparison_text(c))}" for c in ref["comparisons"]]
            if not ref["comparisons"]:
                lines.append(f"  - No row of `{ref['model']}` in {tables} to compare.")
        lines.append("")
    lines += ["## Legend", ""]
    for c in columns(board, None):
        lines.append(f"- **{_md_escape(c['title'])}**: {c['definition']}.")
    lines += [
        "- Cells are mean ± sample standard deviation over seeds; `(n=k)` marks a metric that "
        "only k of the row's seeds have; `–` means no seed has it.",
        "- Rows are ranked within a protocol by mean conditional coherence over |S|. Results of "
        "different protocol versions are in different tables and are not comparable.",
        "- Runs that differ only in their latent sampler are separate rows: conditional "
        "coherence does not depend on the sampler (they agree), joint coherence and "
        "unconditional FID do.",
        "- The best seed (highest mean conditional coherence) provides the sample grids.",
    ]
    if refs:
        lines += [f"- {text}." for text in reference_legend()]
    lines.append("")
    if board["extractors"]:
        lines += ["### FID feature extractors", ""]
        for ext, info in sorted(board["extractors"].items()):
            lines.append(f"- `{extractor_short(ext, info)}` = `{ext}`: {info.get('label') or info}")
        lines.append("")
    lines += ["### Protocols", ""]
    for version, p in sorted(board["protocols"].items()):
        settings = {k: v for k, v in p.items() if k not in ("label",)}
        lines.append(f"- {_protocol_title(version, p)}: `{json.dumps(settings, default=str)}`")
    lines += ["", "## Configs and how to reproduce them", ""]
    for r in board["rows"]:
        sampler = r.get("sampler", "prior")
        settings = r.get("sampler_settings") or {}
        used = "" if sampler == "prior" else f", sampler `{sampler}` `{json.dumps(settings)}`"
        lines.append(
            f"- `{r['model']} {r['config_id']}` (protocol `{r['protocol']}`{used}, seeds "
            f"{', '.join(map(str, r['seeds']))}): `{json.dumps(r['config'], default=str)}`"
        )
        lines += [f"  - `{cmd}`" for cmd in r["reproduce"]]
    if board["skipped"]:
        lines += ["", "## Skipped records", ""]
        lines += [f"- `{s['path']}`: {_md_escape(s['reason'])}" for s in board["skipped"]]
    return "\n".join(lines) + "\n"
