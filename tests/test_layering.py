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
    owners = {
        "ray": "tune.py",
        "torch_fidelity": "fid.py",
        "mlflow": "tracking.py",
        "tensorboard": "tracking.py",
    }
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


def _module_name(path: Path, root: Path = ROOT) -> str:
    parts = path.relative_to(root).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_type_checking(node: ast.AST) -> bool:
    test = node.test if isinstance(node, ast.If) else None
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _runtime_imports(path: Path, known: set[str], root: Path = ROOT) -> set[str]:
    """The package modules ``path`` imports when it runs (function-level imports included,
    ``if TYPE_CHECKING:`` blocks left out), each resolved to the module file it loads."""

    def resolve(name: str) -> str | None:
        while name and name not in known:
            name = name.rpartition(".")[0]
        return name or None

    me = _module_name(path, root)
    package = me if path.name == "__init__.py" else me.rpartition(".")[0]
    found: set[str | None] = set()
    todo: list[ast.AST] = [ast.parse(path.read_text())]
    while todo:
        node = todo.pop()
        if _is_type_checking(node):
            todo.extend(node.orelse)
            continue
        todo.extend(ast.iter_child_nodes(node))
        if isinstance(node, ast.Import):
            found.update(resolve(a.name) for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*up, *([base] if base else [])])
            for a in node.names:  # `from pkg import module` loads pkg.module
                found.add(resolve(f"{base}.{a.name}") or resolve(base))
    return {m for m in found if m and m != me}


def _import_graph() -> dict[str, set[str]]:
    files = _library_files()
    known = {_module_name(f) for f in files}
    return {_module_name(f): _runtime_imports(f, known) for f in files}


def test_hookspecs_import_nothing_from_the_package_at_runtime() -> None:
    # pluggy's eggsample layout: the specs and markers depend on nothing of ours, so the data
    # catalog, the loader and the api can all import them without a cycle.
    graph = _import_graph()
    assert graph["mmvae_bench.hookspecs"] == set()
    assert "mmvae_bench.plugins" not in graph["mmvae_bench.data.catalog"]
    assert "mmvae_bench.plugins" not in graph["mmvae_bench.api"]


def test_no_two_modules_import_each_other() -> None:
    graph = _import_graph()
    pairs = sorted(
        f"{a} <-> {b}" for a, targets in graph.items() for b in targets if a < b and a in graph[b]
    )
    assert not pairs, pairs


def test_the_import_graph_sees_function_level_imports(tmp_path: Path) -> None:
    # The checks above can fail: an import inside a function counts, `from pkg import module`
    # is the module, and only `if TYPE_CHECKING:` imports are left out.
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "b.py").write_text("")
    (pkg / "c.py").write_text("")
    (pkg / "a.py").write_text(
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    import pkg.c\n"
        "def f():\n    from pkg import b\n"
    )
    known = {"pkg", "pkg.a", "pkg.b", "pkg.c"}
    assert _runtime_imports(pkg / "a.py", known, tmp_path) == {"pkg.b"}
