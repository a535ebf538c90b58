"""Import rules (STYLE §2): cli -> library, plugins -> api, heavy deps in one module each."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def _library_files() -> list[Path]:
    return sorted((ROOT / "mmvae_bench").rglob("*.py"))


def test_library_never_imports_plugins_or_typer() -> None:
    bad = []
    for f in _library_files():
        if f.name == "cli.py":
            continue
        for name in _imports(f):
            if name.split(".")[0] in ("plugins", "typer"):
                bad.append(f"{f.relative_to(ROOT)} imports {name}")
    assert not bad, bad


def test_plugins_import_only_the_api() -> None:
    bad = []
    for f in sorted((ROOT / "plugins").glob("*.py")):
        for name in _imports(f):
            if name.startswith("mmvae_bench") and name != "mmvae_bench.api":
                bad.append(f"{f.name} imports {name}")
    assert not bad, bad


def test_ray_and_torch_fidelity_live_in_one_module_each() -> None:
    owners = {"ray": "tune.py", "torch_fidelity": "fid.py"}
    bad = []
    for f in _library_files():
        for name in _imports(f):
            top = name.split(".")[0]
            if top in owners and f.name != owners[top]:
                bad.append(f"{f.relative_to(ROOT)} imports {name}")
    assert not bad, bad


def test_the_cli_and_sweep_definitions_load_without_ray() -> None:
    # Checking a sweep (bad keys, grid fields) must not pay Ray's import or need it installed.
    import subprocess
    import sys

    code = "import sys, mmvae_bench.cli, mmvae_bench.sweep; assert 'ray' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)
