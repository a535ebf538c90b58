"""Leaderboard pages: one self-contained static HTML page per dataset, and an index.

``<out>/<dataset>.html`` shows what ``<dataset>.md`` shows (tables per protocol, the
coherence plot, each row's sample grids, the legend, configs, reproduce commands, skipped
records) and adds what a static file can do with a little inline JavaScript: click a header to
sort (numeric columns by their mean, best first, click again to reverse), filter by protocol
and sampler, copy a reproduce command. ``<out>/index.html`` lists the leaderboards it is
given (the package reads them; it imports this module, not the other way). No server and no
network: CSS and JS are inline, the figures are PNG files next to the page linked by relative
paths (embedding them as data URIs would make the polymnist page ~4 MB instead of ~35 kB),
so a page is viewed with its ``<dataset>/`` folder beside it.

Record content is untrusted: every string from a leaderboard goes through ``html.escape``,
figure links must name a PNG inside the dataset's own folder, and a Content-Security-Policy
admits only the page's own script and style (by hash) and its local images, so even a
string that slipped through could neither run a script nor load anything from elsewhere.
The page sets ``location.hash`` to its state (``#sort=coherence/1&dir=desc&sampler=gmm``) and
applies a hash on load, so a sorted, filtered view is a link.
"""

from __future__ import annotations

import base64
import hashlib
import html
import json
import logging
import math
import re
import urllib.parse
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from mmvae_bench.errors import BenchError
from mmvae_bench.io import atomic_write
from mmvae_bench.leaderboard.render import (
    columns,
    comparison_text,
    extractor_short,
    reference_legend,
    reference_table,
    references_of,
    row_label,
    table,
)
from mmvae_bench.names import check_name

__all__ = [
    "INDEX_NAME",
    "html_path",
    "render_html",
    "render_index",
    "write_html",
    "write_index",
    "write_pages",
]

log = logging.getLogger(__name__)

INDEX_NAME = "index.html"

# Which way is better for a column: its first click sorts best first. Text columns sort A-Z.
_HIGH_IS_BETTER = ("seeds", "joint_coherence", "coherence/")
_LOW_IS_BETTER = ("rank", "train_s", "fid/")
_TEXT_COLUMNS = ("model", "config", "sampler")

_RANK = {
    "key": "rank",
    "title": "#",
    "definition": "position in the ranking (mean conditional coherence over |S|, within the "
    "protocol); click it to restore that order",
}

_CSS = """
:root { color-scheme: light; --line: #d0d7de; --muted: #57606a; --head: #f6f8fa; }
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; color: #1f2328;
  margin: 0 auto; padding: 0 24px 48px; max-width: 1500px; }
h1 { font-size: 24px; margin: 18px 0 4px; }
h2 { font-size: 18px; margin: 28px 0 8px; border-bottom: 1px solid var(--line);
  padding-bottom: 4px; }
h3 { font-size: 15px; margin: 14px 0 6px; }
code, pre { font: 12.5px/1.4 ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; }
code { background: #eff1f3; padding: 1px 4px; border-radius: 4px; overflow-wrap: anywhere; }
pre { background: var(--head); border: 1px solid var(--line); border-radius: 6px;
  padding: 8px 10px; margin: 4px 0; overflow-x: auto; white-space: pre-wrap;
  overflow-wrap: anywhere; }
pre code { background: none; padding: 0; }
.muted, .nav { color: var(--muted); }
a { color: #0969da; }
.filters { position: sticky; top: 0; z-index: 2; background: #fff; padding: 8px 0;
  border-bottom: 1px solid var(--line); display: flex; gap: 18px; align-items: center;
  flex-wrap: wrap; }
select { font: inherit; padding: 2px 4px; }
.scroll { overflow-x: auto; }
table { border-collapse: collapse; margin: 6px 0; }
table.board { font-size: 13px; }
th, td { border: 1px solid var(--line); padding: 4px 7px; text-align: right;
  white-space: nowrap; }
th { background: var(--head); vertical-align: bottom; white-space: normal; }
td.text, th.text { text-align: left; }
tbody tr:nth-child(even) { background: #fafbfc; }
tbody tr:hover { background: #eef6ff; }
th button { font: inherit; font-weight: 600; border: 0; background: none; padding: 0;
  cursor: pointer; color: inherit; }
th button::after { content: "\\00a0\\2195"; color: #8c959f; font-weight: 400; }
th[aria-sort="ascending"] button::after { content: "\\00a0\\2191"; color: #1f2328; }
th[aria-sort="descending"] button::after { content: "\\00a0\\2193"; color: #1f2328; }
table.plain td { text-align: left; white-space: normal; }
.grids { display: flex; gap: 14px; flex-wrap: wrap; align-items: flex-start; }
.card { border: 1px solid var(--line); border-radius: 6px; padding: 6px 10px; margin: 8px 0; }
figure { margin: 4px 0; }
figcaption { color: var(--muted); font-size: 12.5px; }
img { max-width: 100%; height: auto; }
.grid-img { max-height: 560px; width: auto; }
.cmd { display: flex; gap: 6px; align-items: flex-start; }
.cmd pre { flex: 1; }
button.copy { font: inherit; font-size: 12px; margin-top: 6px; cursor: pointer; }
dt { font-weight: 600; margin-top: 6px; }
dd { margin-left: 18px; }
[hidden] { display: none !important; }
"""

_JS = """
"use strict";
(function () {
  var state = { sort: "", dir: "", protocol: "", sampler: "" };
  var tables = Array.prototype.slice.call(document.querySelectorAll("table.board"));

  function sortValue(td) {
    var v = td.getAttribute("data-sort");
    return v === null || v === "" ? null : parseFloat(v);
  }
  function firstDir(th) { return th.getAttribute("data-better") === "high" ? "desc" : "asc"; }
  function keyHeader(table, key) {
    var ths = table.tHead.rows[0].cells;
    for (var i = 0; i < ths.length; i++) if (ths[i].getAttribute("data-key") === key) return i;
    return -1;
  }

  function sortTable(table, key, dir) {
    // A table without the column (another protocol's) keeps its ranking.
    var ths = table.tHead.rows[0].cells, col = keyHeader(table, key), shown = col >= 0;
    if (!shown) { col = 0; dir = "asc"; }
    var numeric = ths[col].getAttribute("data-type") === "num", sign = dir === "desc" ? -1 : 1;
    for (var i = 0; i < ths.length; i++) ths[i].removeAttribute("aria-sort");
    if (shown && state.sort) {
      ths[col].setAttribute("aria-sort", dir === "desc" ? "descending" : "ascending");
    }
    var body = table.tBodies[0], rows = Array.prototype.slice.call(body.rows);
    rows.sort(function (a, b) {
      var c;
      if (numeric) {
        var x = sortValue(a.cells[col]), y = sortValue(b.cells[col]);
        // A missing value ("-") goes last whichever the direction.
        if (x === null || y === null) return (x === null) - (y === null);
        c = sign * (x - y);
      } else {
        c = sign * a.cells[col].textContent.localeCompare(b.cells[col].textContent);
      }
      return c || sortValue(a.cells[0]) - sortValue(b.cells[0]);
    });
    rows.forEach(function (r) { body.appendChild(r); });
  }

  function matches(el) {
    var p = el.getAttribute("data-protocol"), s = el.getAttribute("data-sampler");
    return !(state.protocol && p !== null && p !== state.protocol) &&
      !(state.sampler && s !== null && s !== state.sampler);
  }

  function apply() {
    tables.forEach(function (t) { sortTable(t, state.sort || "rank", state.dir || "asc"); });
    var shown = 0, total = 0;
    document.querySelectorAll(".f").forEach(function (el) {
      el.hidden = !matches(el);
      if (el.tagName === "TR") { total += 1; if (!el.hidden) shown += 1; }
    });
    document.getElementById("f-count").textContent = shown + " of " + total + " rows shown";
    document.getElementById("f-protocol").value = state.protocol;
    document.getElementById("f-sampler").value = state.sampler;
  }

  function save() {
    var parts = [];
    ["sort", "dir", "protocol", "sampler"].forEach(function (k) {
      if (state[k]) parts.push(k + "=" + encodeURIComponent(state[k]));
    });
    history.replaceState(null, "", parts.length ? "#" + parts.join("&") : location.pathname);
  }

  function load() {
    var params = new URLSearchParams(location.hash.replace(/^#/, ""));
    state.sort = params.get("sort") || "";
    var th = null;
    tables.forEach(function (t) {
      var i = keyHeader(t, state.sort);
      if (i >= 0 && !th) th = t.tHead.rows[0].cells[i];
    });
    if (!th) state.sort = "";
    var dir = params.get("dir");
    state.dir = th ? (dir === "asc" || dir === "desc" ? dir : firstDir(th)) : "";
    ["protocol", "sampler"].forEach(function (k) {
      var v = params.get(k) || "", sel = document.getElementById("f-" + k);
      state[k] = Array.prototype.some.call(sel.options, function (o) { return o.value === v; })
        ? v : "";
    });
    apply();
  }

  document.querySelectorAll("table.board th[data-key] button").forEach(function (b) {
    b.addEventListener("click", function () {
      var th = b.parentNode, key = th.getAttribute("data-key");
      state.dir = state.sort === key ? (state.dir === "asc" ? "desc" : "asc") : firstDir(th);
      state.sort = key;
      apply();
      save();
    });
  });
  ["protocol", "sampler"].forEach(function (k) {
    document.getElementById("f-" + k).addEventListener("change", function (e) {
      state[k] = e.target.value;
      apply();
      save();
    });
  });

  document.querySelectorAll("button.copy").forEach(function (b) {
    b.addEventListener("click", function () {
      var code = b.parentNode.querySelector("code"), text = code.textContent;
      function done(ok) {
        b.textContent = ok ? "copied" : "selected: press Ctrl+C";
        setTimeout(function () { b.textContent = "copy"; }, 2000);
      }
      function fallback() {
        var range = document.createRange(), sel = window.getSelection();
        range.selectNodeContents(code);
        sel.removeAllRanges();
        sel.addRange(range);
        var ok = false;
        try { ok = document.execCommand("copy"); } catch (e) { ok = false; }
        done(ok);
      }
      if (navigator.clipboard && window.isSecureContext) {
        navigator.clipboard.writeText(text).then(function () { done(true); }, fallback);
      } else {
        fallback();
      }
    });
  });

  window.addEventListener("hashchange", load);
  load();
  document.documentElement.setAttribute("data-ready", "1");
})();
"""


def html_path(out_dir: Path, dataset: str) -> Path:
    """Where the HTML page of ``dataset`` lives (a safe name, inside ``out_dir``)."""
    return Path(out_dir) / f"{check_name(dataset, 'dataset')}.html"


# -- helpers ----------------------------------------------------------------------------------
def _e(value: Any) -> str:
    """Any value from a leaderboard as escaped text (attributes included)."""
    return html.escape(str(value), quote=True)


def _inline(text: str) -> str:
    """Escaped text whose `backticked` parts become <code> (the Markdown the definitions use)."""
    return re.sub(r"`([^`]*)`", r"<code>\1</code>", _e(text))


def _hash(source: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(source.encode()).digest()).decode() + "'"


def _head(title: str) -> list[str]:
    # Only this page's own script and style run (by hash); images only from its folder.
    csp = (
        f"default-src 'none'; script-src {_hash(_JS)}; style-src {_hash(_CSS)}; "
        "img-src 'self' data:; base-uri 'none'; form-action 'none'"
    )
    return [
        "<!DOCTYPE html>",
        '<html lang="en">',
        "<head>",
        '<meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f'<meta http-equiv="Content-Security-Policy" content="{csp}">',
        f"<title>{_e(title)}</title>",
        f"<style>{_CSS}</style>",
        "</head>",
        "<body>",
    ]


def _figure_url(path: Any, dataset: str) -> str | None:
    """A figure's relative URL, if it names a PNG in ``<dataset>/`` (anything else: None)."""
    if not isinstance(path, str):
        return None
    folder, _, name = path.partition("/")
    try:
        check_name(name, "figure")
    except BenchError:
        return None
    if folder != dataset or not name.endswith(".png"):
        return None
    return urllib.parse.quote(f"{folder}/{name}")


def _sort_value(value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return ""
    return repr(float(value))


def _better(key: str) -> str:
    if key.startswith(_HIGH_IS_BETTER):
        return "high"
    if key.startswith(_LOW_IS_BETTER):
        return "low"
    return ""


def _protocol_title(version: str, p: Mapping[str, Any]) -> str:
    label = f": {_e(p['label'])}" if p.get("label") else ""
    return f"protocol <code>{_e(version)}</code> ({_e(p.get('name', '?'))}){label}"


def _attrs(row: Mapping[str, Any]) -> str:
    """The attributes the filter reads."""
    return (
        f'class="f" data-protocol="{_e(row["protocol"])}" '
        f'data-sampler="{_e(row.get("sampler", "prior"))}"'
    )


# -- the page ---------------------------------------------------------------------------------
def _tables(board: Mapping[str, Any]) -> list[str]:
    out: list[str] = []
    for version in sorted(board["protocols"]):
        headers, body = table(board, version)
        if not body:
            continue
        cols = [_RANK, *columns(board, version)]
        rows = [r for r in board["rows"] if r["protocol"] == version]
        out += [
            f'<section class="f protocol" data-protocol="{_e(version)}">',
            f"<h2>{_protocol_title(version, board['protocols'][version])}</h2>",
            '<div class="scroll">',
            f'<table class="board" data-protocol="{_e(version)}">',
            "<thead><tr>",
        ]
        for c in cols:
            text = c["key"] in _TEXT_COLUMNS
            klass = ' class="text"' if text else ""
            kind = "text" if text else "num"
            better = _better(c["key"])
            out.append(
                f'<th scope="col"{klass} data-key="{_e(c["key"])}" data-type="{kind}"'
                + (f' data-better="{better}"' if better else "")
                + f'><button type="button" title="{_e(c["definition"])}">'
                f"{_e(c['title'])}</button></th>"
            )
        out += ["</tr></thead>", "<tbody>"]
        for rank, (r, cells) in enumerate(zip(rows, body, strict=True), start=1):
            tds = [f'<td data-sort="{rank}">{rank}</td>']
            for c, cell in zip(cols[1:], cells, strict=True):
                key = c["key"]
                if key == "model":
                    href = urllib.parse.quote(f"row-{r['id']}")
                    tds.append(f'<td class="text"><a href="#{_e(href)}">{_e(cell)}</a></td>')
                elif key in _TEXT_COLUMNS:
                    tds.append(f'<td class="text">{_e(cell)}</td>')
                else:
                    stat = r["metrics"].get(key) if key != "seeds" else None
                    value = r["n_seeds"] if key == "seeds" else (stat or {}).get("mean")
                    tds.append(f'<td data-sort="{_sort_value(value)}">{_e(cell)}</td>')
            out.append(f'<tr {_attrs(r)} data-row="{_e(r["id"])}">' + "".join(tds) + "</tr>")
        # Published rows: no rank (they sort last by it), in italics, linked to their citation.
        for ref, cells in reference_table(board, version):
            href = urllib.parse.quote(f"ref-{ref['id']}")
            tds = ['<td data-sort="">–</td>']
            for c, cell in zip(cols[1:], cells, strict=True):
                value = (ref["values"].get(c["key"]) or {}).get("mean")
                if c["key"] == "model":
                    tds.append(
                        f'<td class="text"><a href="#{_e(href)}"><em>{_e(cell)}</em></a></td>'
                    )
                elif c["key"] in _TEXT_COLUMNS:
                    tds.append(f'<td class="text"><em>{_e(cell)}</em></td>')
                else:
                    tds.append(f'<td data-sort="{_sort_value(value)}"><em>{_e(cell)}</em></td>')
            out.append(f'<tr data-ref="{_e(ref["id"])}">' + "".join(tds) + "</tr>")
        out += ["</tbody>", "</table>", "</div>", "</section>"]
    return out


def _figures(board: Mapping[str, Any]) -> list[str]:
    ds = board["dataset"]
    out: list[str] = []
    plot = _figure_url(board["figures"].get("coherence_by_size"), ds)
    if plot:
        out += [
            '<section id="coherence">',
            "<h2>Coherence by number of input modalities</h2>",
            f'<figure><img src="{_e(plot)}" alt="conditional coherence against the number of '
            'input modalities |S|, one line per row">',
            "<figcaption>Error bars: standard deviation over seeds.</figcaption></figure>",
            "</section>",
        ]
    grids = [r for r in board["rows"] if r.get("figures")]
    if grids:
        out += ['<section id="samples">', "<h2>Samples (best seed of each row)</h2>"]
        for r in grids:
            out += [
                f'<div {_attrs(r)}><div class="card">',
                f"<h3>{_e(row_label(r))}, protocol <code>{_e(r['protocol'])}</code>, seed "
                f"{_e(r['best_seed'])}</h3>",
                '<div class="grids">',
            ]
            for kind, path in sorted(r["figures"].items()):
                url = _figure_url(path, ds)
                if url is None:
                    out.append(f"<p>{_e(kind)}: figure path {_e(path)} is not in {_e(ds)}/</p>")
                    continue
                out.append(
                    f'<figure><a href="{_e(url)}"><img class="grid-img" src="{_e(url)}" '
                    f'alt="{_e(r["model"])} {_e(kind)} samples" loading="lazy"></a>'
                    f"<figcaption>{_e(kind)}</figcaption></figure>"
                )
            out += ["</div>", "</div></div>"]
        out.append("</section>")
    return out


def _references(board: Mapping[str, Any]) -> list[str]:
    refs = references_of(board, None)
    if not refs:
        return []
    out = ['<section id="references">', "<h2>Published reference figures</h2>"]
    for ref in refs:
        src = ref["source"]
        tables = ", ".join(f"<code>{_e(v)}</code>" for v in ref["tables"])
        url = src["url"] if str(src["url"]).startswith("https://") else None
        link = f' <a href="{_e(url)}">{_e(url)}</a>' if url else f" {_e(src['url'])}"
        out += [
            f'<div class="card" id="{_e("ref-" + str(ref["id"]))}">',
            f"<h3>{_e(ref['label'])}</h3>",
            f"<p><code>{_e(ref['model'])}</code> on <code>{_e(ref['dataset'])}</code>, "
            f"comparable with protocol {_e(', '.join(ref['protocols']))}; shown in {tables}.</p>",
            f"<p>{_e(src['citation'])} {_e(src['where'])}{link} (read: {_e(src['read'])}).</p>",
            f"<p>Metric: {_e(ref['metric_definition'])}. Protocol: {_e(ref['protocol_notes'])}</p>",
            "<ul>",
        ]
        out += [f"<li>{_inline(comparison_text(c))}</li>" for c in ref["comparisons"]]
        if not ref["comparisons"]:
            out.append(f"<li>No row of <code>{_e(ref['model'])}</code> in {tables}.</li>")
        out += ["</ul>", "</div>"]
    return [*out, "</section>"]


def _legend(board: Mapping[str, Any]) -> list[str]:
    out = ['<section id="legend">', "<h2>Legend</h2>", "<dl>"]
    for c in [_RANK, *columns(board, None)]:
        out.append(f"<dt>{_e(c['title'])}</dt><dd>{_inline(c['definition'])}.</dd>")
    out += [
        "</dl>",
        "<ul>",
        "<li>Cells are mean ± sample standard deviation over seeds; <code>(n=k)</code> marks a "
        "metric that only k of the row's seeds have; <code>–</code> means no seed has it.</li>",
        "<li>Rows are ranked within a protocol by mean conditional coherence over |S|. Results "
        "of different protocol versions are in different tables and are not comparable.</li>",
        "<li>Runs that differ only in their latent sampler are separate rows: conditional "
        "coherence does not depend on the sampler (they agree), joint coherence and "
        "unconditional FID do.</li>",
        "<li>The best seed (highest mean conditional coherence) provides the sample grids.</li>",
        "<li>Click a column header to sort by it (numeric columns by their mean, best first; "
        "a missing value last); click again to reverse. The filters above the tables hide rows "
        "of other protocols or samplers. The address bar keeps the view, as a link.</li>",
    ]
    if references_of(board, None):
        out += [f"<li>{_inline(text)}.</li>" for text in reference_legend()]
    out.append("</ul>")
    if board["extractors"]:
        out += ["<h3>FID feature extractors</h3>", "<ul>"]
        for ext, info in sorted(board["extractors"].items()):
            what = info.get("label") if isinstance(info, Mapping) else None
            out.append(
                f"<li><code>{_e(extractor_short(ext, info))}</code> = <code>{_e(ext)}</code>: "
                f"{_e(what or info)}</li>"
            )
        out.append("</ul>")
    out += ["<h3>Protocols</h3>", "<ul>"]
    for version, p in sorted(board["protocols"].items()):
        settings = {k: v for k, v in p.items() if k != "label"}
        out.append(
            f"<li>{_protocol_title(version, p)}: "
            f"<code>{_e(json.dumps(settings, default=str))}</code></li>"
        )
    out += ["</ul>", "</section>"]
    return out


def _reproduce(board: Mapping[str, Any]) -> list[str]:
    out = ['<section id="reproduce">', "<h2>Configs and how to reproduce them</h2>"]
    for r in board["rows"]:
        sampler = r.get("sampler", "prior")
        settings = r.get("sampler_settings") or {}
        used = (
            ""
            if sampler == "prior"
            else f", sampler <code>{_e(sampler)}</code> <code>{_e(json.dumps(settings))}</code>"
        )
        seeds = ", ".join(_e(s) for s in r["seeds"])
        out += [
            f'<div {_attrs(r)} id="{_e("row-" + str(r["id"]))}"><div class="card">',
            f"<h3><code>{_e(r['model'])} {_e(r['config_id'])}</code></h3>",
            f"<p>{_e(row_label(r))}: protocol <code>{_e(r['protocol'])}</code>{used}, seeds "
            f"{seeds}.</p>",
            "<details><summary>config</summary>"
            f"<pre>{_e(json.dumps(r['config'], indent=2, default=str))}</pre></details>",
        ]
        out += [
            f'<div class="cmd"><pre><code>{_e(cmd)}</code></pre>'
            '<button type="button" class="copy">copy</button></div>'
            for cmd in r["reproduce"]
        ]
        out.append("</div></div>")
    out.append("</section>")
    return out


def _skipped(board: Mapping[str, Any]) -> list[str]:
    skipped = board["skipped"]
    out = ['<section id="skipped">', f"<h2>Skipped records ({len(skipped)})</h2>"]
    if not skipped:
        return [*out, "<p>None: every record found was used.</p>", "</section>"]
    out.append('<table class="plain"><thead><tr><th>record</th><th>reason</th></tr></thead>')
    out.append("<tbody>")
    out += [
        f"<tr><td><code>{_e(s['path'])}</code></td><td>{_e(s['reason'])}</td></tr>" for s in skipped
    ]
    return [*out, "</tbody></table>", "</section>"]


def _select(name: str, values: Iterable[str]) -> str:
    options = ['<option value="">all</option>']
    options += [f'<option value="{_e(v)}">{_e(v)}</option>' for v in sorted(set(values))]
    return f'<label>{name} <select id="f-{name}">' + "".join(options) + "</select></label>"


def render_html(board: Mapping[str, Any]) -> str:
    """One leaderboard (the dict of ``<dataset>.json``) as a self-contained HTML page.

    Args:
        board: a built leaderboard, as :func:`~mmvae_bench.leaderboard.load_leaderboard`
            returns it; its figure paths are relative to the folder the page is written to.

    Returns:
        The page: tables per protocol (sortable, filterable), coherence plot, sample grids,
        legend, configs with copyable reproduce commands, skipped records.
    """
    ds = board["dataset"]
    rows = board["rows"]
    n = len(rows)
    lines = _head(f"Leaderboard: {ds}")
    lines += [
        "<header>",
        f'<p class="nav"><a href="{INDEX_NAME}">all leaderboards</a> · '
        f'<a href="{_e(urllib.parse.quote(ds))}.md">Markdown</a> · '
        f'<a href="{_e(urllib.parse.quote(ds))}.json">JSON</a></p>',
        f"<h1>Leaderboard: {_e(ds)}</h1>",
        f"<p>{n} row{'s' if n != 1 else ''} from {_e(board['n_runs'])} run records "
        f"({len(board['skipped'])} skipped), built by <code>{_e(board['command'])}</code>; "
        "rerun that command to regenerate this page, its JSON, Markdown and figures (never "
        "edit them by hand).</p>",
        "</header>",
        '<nav class="filters">',
        _select("protocol", (r["protocol"] for r in rows)),
        _select("sampler", (r.get("sampler", "prior") for r in rows)),
        f'<span id="f-count" class="muted">{n} of {n} rows shown</span>',
        '<a href="#legend">legend</a> <a href="#reproduce">reproduce</a> '
        '<a href="#skipped">skipped</a>',
        "</nav>",
        "<main>",
    ]
    lines += _tables(board) + _figures(board) + _references(board) + _legend(board)
    lines += _reproduce(board)
    lines += _skipped(board)
    lines += ["</main>", f"<script>{_JS}</script>", "</body>", "</html>"]
    return "\n".join(lines) + "\n"


def render_index(boards: Mapping[str, Mapping[str, Any] | str]) -> str:
    """The index page: per dataset its rows, runs, protocols and skipped records.

    Args:
        boards: dataset name -> its leaderboard, or the reason it could not be read.
    """
    lines = _head("Leaderboards")
    lines += [
        "<main>",
        "<h1>Leaderboards</h1>",
        "<p>Generated from run records by <code>mmvae-bench leaderboard build</code>; never "
        "edited by hand. Each page has the tables (sortable), figures, legend and the commands "
        "that reproduce every row.</p>",
        '<table class="index"><thead><tr><th class="text">dataset</th><th>rows</th>'
        '<th>runs</th><th>skipped</th><th class="text">protocols</th>'
        '<th class="text">files</th></tr></thead>',
        "<tbody>",
    ]
    for ds, board in sorted(boards.items()):
        q = _e(urllib.parse.quote(ds))
        if isinstance(board, str):
            lines.append(
                f'<tr data-dataset="{_e(ds)}"><td class="text">{_e(ds)}</td>'
                f'<td colspan="5" class="text">unreadable: {_e(board)}</td></tr>'
            )
            continue
        protocols = "<br>".join(
            f"<code>{_e(v)}</code>" + (f" {_e(p['label'])}" if p.get("label") else "")
            for v, p in sorted(board["protocols"].items())
        )
        page = f'<a href="{q}.html">{_e(ds)}</a>'
        lines.append(
            f'<tr data-dataset="{_e(ds)}"><td class="text">{page}</td>'
            f"<td>{len(board['rows'])}</td><td>{_e(board['n_runs'])}</td>"
            f'<td>{len(board["skipped"])}</td><td class="text">{protocols}</td>'
            f'<td class="text"><a href="{q}.md">md</a> · <a href="{q}.json">json</a></td></tr>'
        )
    lines += ["</tbody>", "</table>", "</main>", "</body>", "</html>"]
    return "\n".join(lines) + "\n"


# -- files ------------------------------------------------------------------------------------
def write_html(board: Mapping[str, Any], out_dir: Path) -> Path:
    """Write ``out_dir/<dataset>.html`` atomically, replacing the previous build's."""
    data = render_html(board).encode()
    return atomic_write(html_path(out_dir, board["dataset"]), lambda f: f.write(data))


def write_index(out_dir: Path, boards: Mapping[str, Mapping[str, Any] | str]) -> Path:
    """Write ``out_dir/index.html`` atomically (``boards`` as for :func:`render_index`)."""
    data = render_index(boards).encode()
    return atomic_write(Path(out_dir) / INDEX_NAME, lambda f: f.write(data))


def write_pages(out_dir: Path, boards: Mapping[str, Mapping[str, Any] | str]) -> list[Path]:
    """Every leaderboard's page, then the index; an unreadable leaderboard is a ``BenchError``.

    Args:
        out_dir: the leaderboards folder (figure paths in the boards are relative to it).
        boards: dataset name -> its leaderboard, or the reason it could not be read.

    Returns:
        The pages written, the index last.
    """
    if not boards:
        raise BenchError(
            f"no leaderboards in {out_dir}; run: mmvae-bench leaderboard build --out {out_dir}"
        )
    for reason in boards.values():
        if isinstance(reason, str):
            raise BenchError(reason)
    written = [
        write_html(board, out_dir) for board in boards.values() if not isinstance(board, str)
    ]
    log.info("wrote %d leaderboard pages and the index in %s", len(written), out_dir)
    return [*written, write_index(out_dir, boards)]
