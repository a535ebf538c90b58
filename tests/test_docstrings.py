"""Docstrings point only at what the repository holds (DESIGN.md is not in it)."""

from __future__ import annotations

import ast
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
