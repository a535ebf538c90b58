"""Published reference figures beside the leaderboards: the committed file, its schema check,
and the match / flag rules on generated records (Markdown, JSON and HTML)."""

from __future__ import annotations

import base64
import copy
import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from mmvae_bench.cli import app
from mmvae_bench.errors import BenchError
from mmvae_bench.leaderboard import build_leaderboards, load_leaderboard, load_references
from mmvae_bench.leaderboard.reference import REFERENCE_FILE
from mmvae_bench.leaderboard.render import FLAG_MARK, PUBLISHED_MARK, table
from tests.test_leaderboard import record, write

ROOT = Path(__file__).resolve().parent.parent
COMMITTED = ROOT / "leaderboards" / REFERENCE_FILE


# -- the committed file -----------------------------------------------------------------------
def test_committed_references_load_and_cite_their_sources() -> None:
    entries = load_references(COMMITTED)
    by_id = {e.id: e for e in entries}
    assert len(by_id) == len(entries) >= 4
    for e in entries:
        assert e.source.url.startswith("https://") and e.source.citation and e.source.where
        assert e.protocols == ("full",)  # the papers evaluate on the whole test set
        assert all(0 < v.mean <= 1 for v in e.values.values())
    jnf = by_id["jnf-mnist-svhn-paper"].values["joint_coherence"]
    assert (jnf.mean, jnf.std) == (0.51, 0.02)
    shared = by_id["jnf-shared-mnist-svhn-paper"].values["cross_coherence/mnist/svhn"]
    assert shared.mean == 0.75 and shared.std is None
    paper = by_id["mopoe-polymnist-paper"].values
    assert [paper[f"coherence/{k}"].mean for k in (1, 2, 3, 4)] == [0.66, 0.77, 0.81, 0.83]


# -- the schema check -------------------------------------------------------------------------
def _entry(**over: Any) -> dict[str, Any]:
    e = {
        "id": "jnf-toy",
        "label": "a paper",
        "model": "jnf",
        "dataset": "toy",
        "protocols": ["full"],
        "seeds": 5,
        "values": {"coherence/1": {"mean": 0.5, "std": 0.05}},
        "source": {
            "citation": "A. Author. A title. Venue 2025.",
            "url": "https://example.org/paper",
            "where": "Table 2, row JNF",
            "read": "the paper",
        },
        "metric_definition": "coherence",
        "protocol_notes": "test set",
    }
    e.update(over)
    return e


def _file(path: Path, entries: list[dict[str, Any]], version: Any = 1) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"reference_version": version, "about": "test", "entries": entries}))
    return path


def _without(key: str) -> dict[str, Any]:
    e = _entry()
    del e[key]
    return e


BAD = [
    ([_without("source")], "entries[0] lacks source"),
    ([_entry(extra=1)], "entries[0] has unknown extra"),
    ([_entry(label="")], "entries[0].label is '', not a non-empty string"),
    ([_entry(model="../x")], "entries[0].model is not a name"),
    ([_entry(protocols=[])], "entries[0].protocols is [], not a list of protocol names"),
    ([_entry(seeds=0)], "entries[0].seeds is 0, not a positive integer"),
    ([_entry(values={})], "entries[0].values is not a non-empty object"),
    ([_entry(values={"fid": {"mean": 1, "std": None}})], "entries[0].values.fid is not a metric"),
    (
        [_entry(values={"coherence/1": {"mean": "0.5", "std": None}})],
        "entries[0].values.coherence/1.mean is '0.5', not a finite number",
    ),
    (
        [_entry(values={"coherence/1": {"mean": 0.5, "std": -0.1}})],
        "entries[0].values.coherence/1.std is -0.1, negative",
    ),
    (
        [_entry(values={"coherence/1": {"mean": 0.5}})],
        "entries[0].values.coherence/1 lacks std",
    ),
    (
        [_entry(source={"citation": "x", "url": "u", "where": "w"})],
        "entries[0].source lacks read",
    ),
    ([_entry(), _entry()], "entries[1].id 'jnf-toy' is used twice"),
]


@pytest.mark.parametrize(("entries", "message"), BAD, ids=[m for _, m in BAD])
def test_a_bad_reference_file_names_the_file_and_the_field(
    tmp_path: Path, entries: list[dict[str, Any]], message: str
) -> None:
    path = _file(tmp_path / "published.json", entries)
    with pytest.raises(BenchError) as err:
        load_references(path)
    assert str(path) in str(err.value) and message in str(err.value)


def test_bad_reference_files_whole(tmp_path: Path) -> None:
    path = _file(tmp_path / "v.json", [_entry()], version=2)
    with pytest.raises(BenchError, match="reference_version is 2; this mmvae-bench reads 1"):
        load_references(path)
    (tmp_path / "broken.json").write_text("{")
    with pytest.raises(BenchError, match="broken.json is not readable JSON"):
        load_references(tmp_path / "broken.json")
    with pytest.raises(BenchError, match="no reference file .*missing.json"):
        load_references(tmp_path / "missing.json")


# -- match and flag on generated records ------------------------------------------------------
def _runs(tmp_path: Path) -> Path:
    """jnf and mvae, 2 seeds each, under protocols quick-1 and full-1, with a -> b coherence."""
    runs = tmp_path / "runs"
    for version in ("quick-1", "full-1"):
        for model, coh in (("jnf", (0.80, 0.82)), ("mvae", (0.60, 0.62))):
            for seed, c in enumerate(coh):
                rec = record(
                    f"{model}-{version}-{seed}",
                    model=model,
                    seed=seed,
                    coherence=(c, c + 0.05),
                    version=version,
                )
                rec["metrics"]["conditional_coherence"] = {
                    "a": {"b": c - 0.1, "c": c, "mean": c - 0.05},
                    "a+b": {"c": c + 0.05, "mean": c + 0.05},
                }
                write(runs, rec)
    return runs


REFERENCES = [
    # jnf: published 0.50 ± 0.05 -> our 0.81 is outside 0.50 ± 0.10: flagged.
    _entry(),
    # mvae: 0.62 ± 0.02 -> our 0.61 is inside 0.62 ± 0.04; a -> b without a spread: never flags.
    _entry(
        id="mvae-toy",
        model="mvae",
        label="the library",
        seeds=None,
        values={
            "coherence/1": {"mean": 0.62, "std": 0.02},
            "cross_coherence/a/b": {"mean": 0.9, "std": None},
        },
    ),
    _entry(id="jnf-other", dataset="other"),  # another dataset: not shown
    _entry(id="jnf-quick", protocols=["quick"], label="quick ref"),  # comparable with quick
]


def test_references_shown_where_dataset_and_protocol_match_and_flagged(tmp_path: Path) -> None:
    runs, out = _runs(tmp_path), tmp_path / "lb"
    _file(out / REFERENCE_FILE, REFERENCES)
    build_leaderboards(runs, out)
    board = load_leaderboard(out, "toy")
    refs = {r["id"]: r for r in board["references"]}
    assert sorted(refs) == ["jnf-quick", "jnf-toy", "mvae-toy"]  # not the other dataset's
    assert refs["jnf-toy"]["tables"] == ["full-1"] and refs["jnf-quick"]["tables"] == ["quick-1"]
    assert refs["jnf-toy"]["source"]["url"] == "https://example.org/paper"

    (jnf,) = refs["jnf-toy"]["comparisons"]
    assert jnf["row"].startswith("jnf-") and jnf["protocol"] == "full-1"
    assert jnf["ours"] == pytest.approx(0.81) and jnf["delta"] == pytest.approx(0.31)
    assert jnf["band"] == pytest.approx(0.10) and jnf["deviates"] is True
    mvae = {c["metric"]: c for c in refs["mvae-toy"]["comparisons"]}
    assert mvae["coherence/1"]["deviates"] is False
    assert mvae["coherence/1"]["band"] == pytest.approx(0.04)
    # The one-modality coherence a -> b joins the rows a reference asks it for, and only those.
    cross = mvae["cross_coherence/a/b"]
    assert cross["ours"] == pytest.approx(0.51) and cross["deviates"] is None
    full_mvae = next(r for r in board["rows"] if r["model"] == "mvae" and r["protocol"] == "full-1")
    assert set(full_mvae["metrics"]) == {
        "coherence/1",
        "coherence/2",
        "joint_coherence",
        "train_s",
        "cross_coherence/a/b",
    }
    quick_mvae = next(
        r for r in board["rows"] if r["model"] == "mvae" and r["protocol"] != "full-1"
    )
    assert "cross_coherence/a/b" not in quick_mvae["metrics"]
    (quick,) = refs["jnf-quick"]["comparisons"]
    assert quick["protocol"] == "quick-1" and quick["deviates"] is True  # 0.81 vs 0.50 ± 0.10

    # Tables: our flagged cell, the extra column, the published rows after ours.
    headers, body = table(board, "full-1")
    assert "coh a→b" in headers
    col = headers.index("coh |S|=1")
    cells = {row[0]: row[col] for row in body}
    assert cells["jnf"].endswith(FLAG_MARK) and not cells["mvae"].endswith(FLAG_MARK)
    md = (out / "toy.md").read_text()
    assert f"| *jnf {PUBLISHED_MARK}* | a paper | 5 | 0.500 ± 0.050 |" in md
    assert f"| *mvae {PUBLISHED_MARK}* | the library | – | 0.620 ± 0.020 | – | 0.900 |" in md
    assert "## Published reference figures" in md and "https://example.org/paper" in md
    assert "outside: flagged ⚠" in md and "no published spread: not flagged" in md
    assert "mean ± 2 × that std" in md
    # The quick table has the quick reference only, the full table the other two.
    quick_table = md.split("## protocol `quick-1`")[1].split("## ")[0]
    assert "quick ref" in quick_table and "a paper" not in quick_table
    html = (out / "toy.html").read_text()
    assert 'data-ref="jnf-toy"' in html and 'id="ref-jnf-toy"' in html
    assert f"<em>jnf {PUBLISHED_MARK}</em>" in html and "0.810 ± 0.014 ⚠" in html
    assert '<a href="https://example.org/paper">' in html


def test_no_reference_file_no_reference_rows_and_an_explicit_one_must_exist(
    tmp_path: Path,
) -> None:
    runs, out = _runs(tmp_path), tmp_path / "lb"
    build_leaderboards(runs, out)
    board = load_leaderboard(out, "toy")
    assert "references" not in board
    assert PUBLISHED_MARK not in (out / "toy.md").read_text()
    assert all("cross_coherence/a/b" not in r["metrics"] for r in board["rows"])
    with pytest.raises(BenchError, match="no reference file"):
        build_leaderboards(runs, out, references=tmp_path / "nope.json")


def test_cli_build_takes_references_and_a_bad_file_is_exit_2(tmp_path: Path) -> None:
    runs, out = _runs(tmp_path), tmp_path / "lb"
    refs = _file(tmp_path / "refs.json", REFERENCES)
    cmd = ["leaderboard", "build", "--runs", str(runs), "--out", str(out)]
    result = CliRunner().invoke(app, [*cmd, "--references", str(refs)])
    assert result.exit_code == 0, result.output
    assert len(load_leaderboard(out, "toy")["references"]) == 3
    bad = copy.deepcopy(REFERENCES)
    bad[1]["values"]["coherence/1"]["mean"] = None
    _file(refs, bad)
    result = CliRunner().invoke(app, [*cmd, "--references", str(refs)])
    assert result.exit_code == 2
    assert "entries[1].values.coherence/1.mean is None" in result.output
    assert "Traceback" not in result.output


# -- the published rows in a real browser ------------------------------------------------------
ROWS = (
    "[...document.querySelectorAll('table[data-protocol=\"full-1\"] tbody tr')]"
    ".map(r => r.dataset.ref ? 'ref:' + r.dataset.ref : r.dataset.row.split('-')[0])"
)


@pytest.mark.slow  # Chromium's start: 3-6 s on the 2-core machine
def test_published_rows_in_headless_chromium(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from tests.test_leaderboard_html import _chromium, _DevTools

    exe = _chromium()
    if exe is None:
        pytest.skip("no Chromium found (apt-get install chromium; .ci/run installs it)")
    runs, out = _runs(tmp_path), tmp_path / "lb"
    _file(out / REFERENCE_FILE, REFERENCES)
    build_leaderboards(runs, out)
    url = (out / "toy.html").as_uri()
    browser = _DevTools(exe, tmp_path / "profile")
    try:
        browser.open(url)
        assert browser.js("document.documentElement.dataset.ready") == "1", browser.errors()
        # Ranked: ours first, the published rows after them (no rank).
        assert browser.js(ROWS) == ["jnf", "mvae", "ref:jnf-toy", "ref:mvae-toy"]
        # Sorted by coherence |S|=1, best first: the published figures take their place.
        browser.click('table[data-protocol="full-1"] th[data-key="coherence/1"] button')
        assert browser.js(ROWS) == ["jnf", "ref:mvae-toy", "mvae", "ref:jnf-toy"]
        flagged = "document.querySelector('tr[data-row^=\"jnf-\"] td:nth-child(5)').textContent"
        assert browser.js(flagged).endswith("⚠")
        assert browser.js("document.getElementById('f-count').textContent") == "4 of 4 rows shown"
        browser.js("window.scrollTo(0, 0)")
        shot = base64.b64decode(
            browser.call("Page.captureScreenshot", session=True, format="png")["data"]
        )
        errors = browser.errors()
    finally:
        browser.close()
    path = tmp_path / "references.png"
    path.write_bytes(shot)
    with capsys.disabled():
        print(f"\npublished rows screenshot: {path}")
    assert errors == []
