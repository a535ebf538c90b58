"""The static HTML leaderboard pages: structure and escaping (html.parser), the committed pages
match their JSON, and a headless Chromium loads a page without errors and sorts and filters it.

The browser is Debian's ``chromium`` (``.ci/run`` installs it), driven over the DevTools
protocol on a pipe (``--remote-debugging-pipe``: no port, no websocket, no extra package).
Without a browser that test is skipped with the reason.
"""

from __future__ import annotations

import base64
import fcntl
import json
import os
import select
import shutil
import subprocess
import time
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
from PIL import Image
from typer.testing import CliRunner

from mmvae_bench.cli import app
from mmvae_bench.errors import BenchError
from mmvae_bench.leaderboard import (
    build_leaderboards,
    load_leaderboard,
    render_html,
    table,
    write_html_pages,
)
from mmvae_bench.leaderboard.html import render_index
from tests.test_leaderboard import record, write

BOARDS = Path(__file__).resolve().parent.parent / "leaderboards"
HOSTILE = "<script>alert(1)</script>"
HOSTILE_ERROR = 'BenchError: <img src=x onerror="alert(2)">'


# -- a leaderboard with two models, two samplers, two protocols, grids and hostile strings -------
def _png(path: Path, color: tuple[int, int, int]) -> None:
    Image.new("RGB", (24, 12), color).save(path)


def _build(tmp_path: Path) -> tuple[Path, dict[str, Any]]:
    runs, out = tmp_path / "runs", tmp_path / "lb"
    gmm = {"kind": "gmm", "settings": {"components": 10}}
    rows = [  # run id, model, seed, coherence (|S|=1, 2), joint, train_s, extras
        ("a0", "jnf", 0, (0.80, 0.90), 0.50, 30.0, {}),
        ("a1", "jnf", 1, (0.70, 0.80), 0.40, 32.0, {}),
        ("b0", "mvae", 0, (0.60, 0.65), 0.70, 10.0, {"sampler": gmm}),
        ("b1", "mvae", 1, (0.62, 0.66), 0.72, 12.0, {"sampler": gmm}),
        ("c0", "mopoe", 0, (0.40, 0.50), 0.90, 20.0, {"latent_dim": HOSTILE}),
        ("d0", "mmvae", 0, (0.55, 0.55), 0.10, 5.0, {"version": "full-1"}),
    ]
    for run_id, model, seed, coh, joint, train_s, extra in rows:
        version = extra.get("version", "quick-1")
        rec = record(
            run_id,
            model=model,
            seed=seed,
            coherence=coh,
            joint=joint,
            train_s=train_s,
            version=version,
        )
        if "latent_dim" in extra:  # a config value and a --set override with markup in it
            rec["config"]["latent_dim"] = rec["run"]["overrides"]["latent_dim"] = HOSTILE
        if "sampler" in extra:
            rec["sampler"] = extra["sampler"]
        p = write(runs, rec)
        _png(p.parent / "samples.png", (200, 40, 40))
        _png(p.parent / "prior_samples.png", (40, 40, 200))
    # mopoe at another latent_dim, so the hostile value is also in a config label (a cell).
    write(runs, record("c1", model="mopoe", coherence=(0.3, 0.3), latent_dim=8))
    write(runs, record("bad", status="failed", error=HOSTILE_ERROR))
    build_leaderboards(runs, out)
    return out, load_leaderboard(out, "toy")


class _Page(HTMLParser):
    """What the tests read from a page: tables, script blocks, event-handler attributes, text."""

    def __init__(self, text: str) -> None:
        super().__init__(convert_charrefs=True)
        self.tables: dict[str, dict[str, Any]] = {}  # protocol -> headers, rows
        self.scripts: list[str] = []
        self.handlers: list[tuple[str, str]] = []
        self.imgs: list[str] = []
        self.links: list[str] = []
        self.text: list[str] = []
        self._table: dict[str, Any] | None = None
        self._cell: list[str] | None = None
        self._in_script = False
        self.feed(text)
        self.close()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        self.handlers += [(tag, k) for k in a if k.startswith("on")]
        if tag == "script":
            self._in_script = True
            self.scripts.append("")
        elif tag == "img":
            self.imgs.append(a["src"] or "")
        elif tag == "a":
            self.links.append(a["href"] or "")
        elif tag == "table" and "board" in (a.get("class") or "").split():
            self._table = self.tables[a["data-protocol"] or ""] = {"headers": [], "rows": []}
        elif tag == "tr" and self._table is not None and "data-row" in a:
            self._table["rows"].append({"id": a["data-row"], "sampler": a["data-sampler"]})
            self._table["rows"][-1]["cells"] = []
        elif tag in ("th", "td") and self._table is not None:
            self._cell = []

    def handle_endtag(self, tag: str) -> None:
        if tag == "script":
            self._in_script = False
        elif tag == "table":
            self._table = None
        elif tag in ("th", "td") and self._table is not None and self._cell is not None:
            text = "".join(self._cell).strip()
            if tag == "th":
                self._table["headers"].append(text)
            else:
                self._table["rows"][-1]["cells"].append(text)
            self._cell = None

    def handle_data(self, data: str) -> None:
        if self._in_script:
            self.scripts[-1] += data
            return
        self.text.append(data)
        if self._cell is not None:
            self._cell.append(data)


def test_page_has_a_sortable_table_per_protocol_with_the_rows_of_the_board(tmp_path: Path) -> None:
    out, board = _build(tmp_path)
    page = _Page((out / "toy.html").read_text())
    assert sorted(page.tables) == ["full-1", "quick-1"]
    for version, t in page.tables.items():
        headers, body = table(board, version)
        assert t["headers"] == ["#", *headers]
        assert [r["cells"] for r in t["rows"]] == [
            [str(i), *cells] for i, cells in enumerate(body, start=1)
        ]
        assert [r["id"] for r in t["rows"]] == [
            r["id"] for r in board["rows"] if r["protocol"] == version
        ]
    quick = page.tables["quick-1"]
    assert [r["id"].split("-")[0] for r in quick["rows"]] == ["jnf", "mvae", "mopoe", "mopoe"]
    assert [r["sampler"] for r in quick["rows"]] == ["prior", "gmm", "prior", "prior"]
    assert quick["rows"][0]["cells"][4] == "0.750 ± 0.071"  # mean ± std text kept
    html = (out / "toy.html").read_text()
    # Numeric cells carry their mean for sorting; headers which way is better.
    assert 'data-sort="0.75"' in html and 'data-key="coherence/1"' in html
    assert 'data-key="train_s" data-type="num" data-better="low"' in html
    # Figures are linked relative to the page, and exist there.
    assert page.imgs and all(not src.startswith(("/", "data:", "http")) for src in page.imgs)
    assert all((out / src).is_file() for src in page.imgs)
    assert "toy/coherence_by_size.png" in page.imgs
    # Legend, reproduce commands (copyable), skipped records.
    text = "".join(page.text)
    assert "Legend" in text and "conditional coherence from 1 input modality" in text
    assert html.count('class="copy"') == sum(len(r["reproduce"]) for r in board["rows"])
    assert "mmvae-bench run jnf --dataset toy" in text and "--seed $s" in text
    assert "Skipped records (1)" in text and "bad/results.json" in text


def test_record_strings_are_escaped(tmp_path: Path) -> None:
    out, _ = _build(tmp_path)
    html = (out / "toy.html").read_text()
    page = _Page(html)
    # Only the page's own script; no event handler from a record became an attribute.
    assert len(page.scripts) == 1 and "alert" not in page.scripts[0]
    assert page.handlers == []
    assert HOSTILE not in html and "<img src=x" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    # ... and they read as the text they were: in the config cell, the config, the command,
    # the skipped reason.
    text = "".join(page.text)
    assert text.count(HOSTILE) >= 3 and HOSTILE_ERROR in text
    cells = [c for r in page.tables["quick-1"]["rows"] for c in r["cells"]]
    assert any(HOSTILE in c for c in cells)


def test_a_figure_outside_the_dataset_folder_is_not_linked(tmp_path: Path) -> None:
    out, board = _build(tmp_path)
    board["figures"]["coherence_by_size"] = "../../secret.png"
    board["rows"][0]["figures"] = {"conditional": "javascript:alert(1)", "prior": "/etc/x.png"}
    page = _Page(render_html(board))
    assert "toy/coherence_by_size.png" not in page.imgs
    urls = page.imgs + page.links
    assert not any("secret" in u or "javascript" in u or "/etc" in u for u in urls)
    assert "figure path javascript:alert(1) is not in toy/" in "".join(page.text)


def test_index_lists_every_leaderboard_and_a_rebuild_keeps_other_files(tmp_path: Path) -> None:
    out, board = _build(tmp_path)
    (out / "notes.txt").write_text("mine")
    (out / "toy.html").write_text("stale")
    (out / "broken.json").write_text("{")
    build_leaderboards(tmp_path / "runs", out)
    assert (out / "notes.txt").read_text() == "mine"  # nothing else deleted
    assert (out / "toy.html").read_text().startswith("<!DOCTYPE html>")  # replaced
    index = (out / "index.html").read_text()
    page = _Page(index)
    assert page.scripts == [] and page.handlers == []
    assert '<a href="toy.html">toy</a>' in index
    assert f"<td>{len(board['rows'])}</td><td>{board['n_runs']}</td><td>1</td>" in index
    assert "<code>full-1</code>" in index and "<code>quick-1</code> test" in index
    assert 'data-dataset="broken"' in index and "corrupt" in index
    assert not [p.name for p in out.iterdir() if p.name.endswith(".tmp")]


def test_pages_from_json_alone(tmp_path: Path) -> None:
    out, board = _build(tmp_path)
    shutil.rmtree(tmp_path / "runs")
    want = (out / "toy.html").read_text()
    (out / "toy.html").unlink()
    (out / "index.html").unlink()
    written = write_html_pages(out)
    assert [p.name for p in written] == ["toy.html", "index.html"]
    assert (out / "toy.html").read_text() == want
    with pytest.raises(BenchError, match="no leaderboards folder"):
        write_html_pages(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(BenchError, match="no leaderboards in"):
        write_html_pages(tmp_path / "empty")
    (out / "broken.json").write_text("{")
    with pytest.raises(BenchError, match="broken.json is corrupt"):
        write_html_pages(out)


def _flat(output: str) -> str:
    """CLI output without whitespace: the console wraps long paths at its width."""
    return "".join(output.split())


def test_cli_html_rewrites_pages_and_build_names_the_index(tmp_path: Path) -> None:
    runner = CliRunner()
    runs, out = tmp_path / "runs", tmp_path / "lb"
    _build(tmp_path)
    result = runner.invoke(app, ["leaderboard", "build", "--runs", str(runs), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert f"indexofallleaderboards:{out / 'index.html'}" in _flat(result.output)
    want = {name: (out / name).read_text() for name in ("toy.html", "index.html")}
    shutil.rmtree(runs)
    for name in want:
        (out / name).write_text("stale")
    result = runner.invoke(app, ["leaderboard", "html", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert {name: (out / name).read_text() for name in want} == want
    assert _flat(result.output) == f"{out / 'toy.html'}indexofallleaderboards:{out / 'index.html'}"
    result = runner.invoke(app, ["leaderboard", "html", "--out", str(tmp_path / "missing")])
    assert result.exit_code == 2
    assert "error: no leaderboards folder" in result.output and "Traceback" not in result.output


@pytest.mark.parametrize("dataset", ["circles-squares", "polymnist-lite"])
def test_committed_pages_match_their_json(dataset: str) -> None:
    board = load_leaderboard(BOARDS, dataset)
    fix = "regenerate: mmvae-bench leaderboard html --out leaderboards"
    assert (BOARDS / f"{dataset}.html").read_text() == render_html(board), fix
    boards = {p.stem: load_leaderboard(BOARDS, p.stem) for p in BOARDS.glob("*.json")}
    assert (BOARDS / "index.html").read_text() == render_index(boards), fix
    page = _Page(render_html(board))
    assert all((BOARDS / src).is_file() for src in page.imgs) and len(page.imgs) > 1


# -- the page in a real browser -------------------------------------------------------------
def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        if found := shutil.which(name):
            return found
    return None


class _DevTools:
    """A headless Chromium driven over the DevTools protocol on a pipe (fds 3 and 4)."""

    def __init__(self, exe: str, profile: Path, deadline_s: float = 30.0) -> None:
        self.deadline = time.monotonic() + deadline_s
        self.events: list[dict[str, Any]] = []
        self._next = 0
        self._buf = b""
        to_chrome_r, self._w = os.pipe()
        self._r, from_chrome_w = os.pipe()
        # Above 9 so that bash moves them onto 3 and 4 without clobbering either.
        ends = [fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10) for fd in (to_chrome_r, from_chrome_w)]
        os.close(to_chrome_r)
        os.close(from_chrome_w)
        args = [
            exe,
            "--headless",
            "--no-sandbox",  # root in CI
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--remote-debugging-pipe",
            f"--user-data-dir={profile}",
            "--window-size=1400,1000",
            "about:blank",
        ]
        self.log = (profile.parent / "chromium.log").open("wb")
        self.proc = subprocess.Popen(
            ["bash", "-c", f'exec "$@" 3<&{ends[0]} 4>&{ends[1]} {ends[0]}<&- {ends[1]}>&-']
            + ["bash", *args],
            pass_fds=ends,
            stdin=subprocess.DEVNULL,
            stdout=self.log,
            stderr=self.log,
        )
        for fd in ends:
            os.close(fd)
        try:
            targets = self.call("Target.getTargets")["targetInfos"]
            page = next(t["targetId"] for t in targets if t["type"] == "page")
            attached = self.call("Target.attachToTarget", targetId=page, flatten=True)
            self.session = attached["sessionId"]
            for domain in ("Page", "Runtime", "Log"):
                self.call(f"{domain}.enable", session=True)
            self.call(
                "Emulation.setDeviceMetricsOverride",
                session=True,
                width=1400,
                height=1000,
                deviceScaleFactor=1,
                mobile=False,
            )
        except BaseException:
            self.close()
            raise

    def _read(self) -> dict[str, Any]:
        while b"\0" not in self._buf:
            left = self.deadline - time.monotonic()
            if left <= 0 or not select.select([self._r], [], [], left)[0]:
                raise TimeoutError("chromium did not answer in time")
            chunk = os.read(self._r, 1 << 20)
            if not chunk:
                raise EOFError(f"chromium exited (log: {self.log.name})")
            self._buf += chunk
        message, _, self._buf = self._buf.partition(b"\0")
        return json.loads(message)

    def call(self, method: str, *, session: bool = False, **params: Any) -> dict[str, Any]:
        self._next += 1
        message: dict[str, Any] = {"id": self._next, "method": method, "params": params}
        if session:
            message["sessionId"] = self.session
        os.write(self._w, json.dumps(message).encode() + b"\0")
        while True:
            answer = self._read()
            if answer.get("id") == self._next:
                if "error" in answer:
                    raise RuntimeError(f"{method}: {answer['error']}")
                return answer["result"]
            self.events.append(answer)

    def wait_for(self, event: str) -> None:
        seen = len(self.events)
        while not any(e.get("method") == event for e in self.events[seen:]):
            self.events.append(self._read())

    def js(self, expression: str) -> Any:
        result = self.call(
            "Runtime.evaluate",
            session=True,
            expression=expression,
            returnByValue=True,
            awaitPromise=True,
        )
        assert "exceptionDetails" not in result, result["exceptionDetails"]
        return result["result"].get("value")

    def open(self, url: str) -> None:
        self.call("Page.navigate", session=True, url=url)
        self.wait_for("Page.loadEventFired")

    def click(self, selector: str) -> None:
        """A real mouse click (press and release) at the middle of the element."""
        x, y = self.js(
            f"(() => {{ const e = document.querySelector({json.dumps(selector)}); "
            "e.scrollIntoView({block: 'center'}); const r = e.getBoundingClientRect(); "
            "return [r.x + r.width / 2, r.y + r.height / 2]; })()"
        )
        for kind in ("mousePressed", "mouseReleased"):
            self.call(
                "Input.dispatchMouseEvent",
                session=True,
                type=kind,
                x=x,
                y=y,
                button="left",
                clickCount=1,
            )

    def errors(self) -> list[str]:
        """Uncaught exceptions, console errors, failed loads and CSP refusals so far."""
        found = []
        for e in self.events:
            method, p = e.get("method"), e.get("params", {})
            if method == "Runtime.exceptionThrown":
                found.append(p["exceptionDetails"].get("exception", {}).get("description", p))
            elif method == "Runtime.consoleAPICalled" and p["type"] in ("error", "assert"):
                found.append(str([a.get("value") for a in p["args"]]))
            elif method == "Log.entryAdded" and p["entry"]["level"] in ("error", "warning"):
                found.append(f"{p['entry']['source']}: {p['entry']['text']}")
        return found

    def close(self) -> None:
        try:
            self.call("Browser.close")
        except (OSError, EOFError, TimeoutError, RuntimeError):
            pass
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        os.close(self._w)
        os.close(self._r)
        self.log.close()


ORDER = (
    "[...document.querySelectorAll('table[data-protocol=\"quick-1\"] tbody tr')]"
    ".filter(r => r.getClientRects().length).map(r => r.dataset.row.split('-')[0] + "
    "(r.dataset.sampler === 'gmm' ? '/gmm' : ''))"
)

# The copy button's label once it changed (or after 5 s).
COPIED = (
    "new Promise(done => { const t0 = Date.now(); (function poll() { "
    "const label = document.querySelector('button.copy').textContent; "
    "if (label !== 'copy' || Date.now() - t0 > 5000) done(label); else setTimeout(poll, 20); "
    "})(); })"
)


@pytest.mark.slow  # 3-6 s on the 2-core machine: the build, then Chromium's start
def test_page_in_headless_chromium_sorts_filters_and_logs_no_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    exe = _chromium()
    if exe is None:
        pytest.skip("no Chromium found (apt-get install chromium; .ci/run installs it)")
    out, board = _build(tmp_path)
    url = (out / "toy.html").as_uri()
    mopoe = [r for r in board["rows"] if r["model"] == "mopoe"]
    # The two mopoe rows, by their config (latent_dim 4 or the hostile string) in rank order.
    assert [r["metrics"]["coherence/1"]["mean"] for r in mopoe] == [0.4, 0.3]
    started = time.monotonic()
    browser = _DevTools(exe, tmp_path / "profile")
    try:
        # A view in the address: sorted by training time, ascending.
        browser.open(url + "#sort=train_s")
        assert browser.js("document.documentElement.dataset.ready") == "1", browser.errors()
        assert browser.js(ORDER) == ["mopoe", "mvae/gmm", "mopoe", "jnf"]
        # Clicking a header sorts by it, best first; clicking again reverses.
        browser.open(url)
        assert browser.js(ORDER) == ["jnf", "mvae/gmm", "mopoe", "mopoe"]  # the ranking
        browser.click('table[data-protocol="quick-1"] th[data-key="joint_coherence"] button')
        assert browser.js(ORDER) == ["mopoe", "mvae/gmm", "jnf", "mopoe"]
        browser.click('table[data-protocol="quick-1"] th[data-key="joint_coherence"] button')
        assert browser.js(ORDER) == ["mopoe", "jnf", "mvae/gmm", "mopoe"]
        sorted_th = "table[data-protocol='quick-1'] th[aria-sort]"
        assert browser.js(f'document.querySelector("{sorted_th}").dataset.key') == (
            "joint_coherence"
        )
        assert browser.js("location.hash") == "#sort=joint_coherence&dir=asc"
        browser.click('table[data-protocol="quick-1"] th[data-key="model"] button')
        assert browser.js(ORDER) == ["jnf", "mopoe", "mopoe", "mvae/gmm"]
        # Filters: the sampler hides rows; the protocol hides whole tables.
        select = (
            "(() => {{ const s = document.getElementById('f-{0}'); s.value = '{1}'; "
            "s.dispatchEvent(new Event('change')); return s.value; }})()"
        )
        assert browser.js(select.format("sampler", "gmm")) == "gmm"
        assert browser.js(ORDER) == ["mvae/gmm"]
        assert browser.js("document.getElementById('f-count').textContent") == "1 of 5 rows shown"
        assert browser.js(select.format("sampler", "")) == ""
        assert browser.js(select.format("protocol", "full-1")) == "full-1"
        assert browser.js(ORDER) == []
        full = "table[data-protocol='full-1'] tbody tr"
        assert browser.js(f'document.querySelector("{full}").getClientRects().length') == 1
        assert browser.js(select.format("protocol", "")) == ""
        # The escaped config value reads as text, never ran.
        assert browser.js("document.body.innerText.includes('<script>alert(1)</script>')")
        # A copy button puts its command on the clipboard (asynchronously) and says so.
        browser.call("Browser.grantPermissions", permissions=["clipboardReadWrite"])
        browser.click("button.copy")
        assert browser.js(COPIED) == "copied"
        assert browser.js("navigator.clipboard.readText()") == board["rows"][0]["reproduce"][0]
        browser.js("window.scrollTo(0, 0)")
        shot = base64.b64decode(
            browser.call("Page.captureScreenshot", session=True, format="png")["data"]
        )
        browser.open((out / "index.html").as_uri())
        assert browser.js("document.querySelector('a[href=\"toy.html\"]').textContent") == "toy"
        errors = browser.errors()
    finally:
        browser.close()
    elapsed = time.monotonic() - started
    path = tmp_path / "leaderboard.png"
    path.write_bytes(shot)
    with capsys.disabled():
        print(f"\nleaderboard page screenshot: {path} (browser {elapsed:.1f} s)")
    assert errors == []
    with Image.open(path) as img:
        assert img.size == (1400, 1000)
