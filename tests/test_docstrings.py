"""Docstrings point only at what the repository holds (DESIGN.md is not in it)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _docstrings(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text())
    nodes = [tree] + [
        n
        for n in ast.walk(tree)
        if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef)
    ]
    out = []
    for node in nodes:
        doc = ast.get_docstring(node, clean=False)
        if doc:
            out.append((getattr(node, "lineno", 1), doc))
    return out


def test_no_docstring_cites_design_sections() -> None:
    files = sorted([*(ROOT / "mmvae_bench").rglob("*.py"), *(ROOT / "plugins").glob("*.py")])
    bad = [
        f"{f.relative_to(ROOT)}:{line}"
        for f in files
        for line, doc in _docstrings(f)
        if "DESIGN" in doc or "§" in doc
    ]
    assert not bad, f"docstrings citing DESIGN.md, which is not in the repository: {bad}"


# A documentation file (README.md, BENCHMARKS.md) or a path under a top-level folder of the
# repository, as docstrings and comments name them; `tests/test_<module>.py` (a template, the
# match stops at `<` or `{`) is not a file name.
_DOC_FILE = re.compile(r"(?<![\w./-])[A-Z][A-Z0-9_]*\.md\b")
_REPO_PATH = re.compile(
    r"(?<![\w./-])(?:mmvae_bench|plugins|tests|benchmarks|leaderboards|\.ci|docs)/[\w./-]*[\w/]"
)


def _sources() -> list[Path]:
    return sorted([*(ROOT / "mmvae_bench").rglob("*.py"), *(ROOT / "plugins").glob("*.py")])


def _references(text: str) -> list[str]:
    found = [m.group(0) for m in _DOC_FILE.finditer(text)]
    for m in _REPO_PATH.finditer(text):
        if text[m.end() : m.end() + 1] not in ("<", "{", "*"):
            found.append(m.group(0).rstrip("/."))
    return found


def test_references_helper_finds_files_and_skips_templates() -> None:
    text = "see DESIGN.md §4 and plugins/jnf.py, `tests/test_<module>.py`, benchmarks/perf/."
    assert _references(text) == ["DESIGN.md", "plugins/jnf.py", "benchmarks/perf"]


def test_no_comment_or_docstring_points_outside_the_repository() -> None:
    """Comments included (every line of the source): no "DESIGN", no section sign, and every
    file or folder named exists in the repository."""
    bad = []
    for f in _sources():
        for n, line in enumerate(f.read_text().splitlines(), start=1):
            where = f"{f.relative_to(ROOT)}:{n}"
            if "DESIGN" in line or "§" in line:
                bad.append(f"{where}: cites DESIGN (not in the repository): {line.strip()}")
            for ref in _references(line):
                if not (ROOT / ref).exists():
                    bad.append(f"{where}: names {ref}, which the repository does not hold")
    assert not bad, "\n".join(bad)
