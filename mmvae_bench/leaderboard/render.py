"""Leaderboard presentation: the columns and their definitions, the table cells (shared by the
Markdown file and ``leaderboard show``) and the Markdown page."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

__all__ = ["columns", "extractor_short", "render_markdown", "row_label", "table"]


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
                cells.append(_fmt(r["metrics"].get(c["key"]), c["key"], r["n_seeds"]))
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
        "",
    ]
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
