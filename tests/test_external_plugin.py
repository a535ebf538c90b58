"""Out-of-tree plugins (issue 3 item 7): the README's example model as an installed package
found through the ``mmvae_bench`` entry-point group, as a ``--plugin FILE``, and a clash.

The package is built and installed the ordinary way (``pip install --target``, offline: no
index, no build isolation, no dependencies) into a folder under ``tmp_path`` that the
``mmvae-bench`` subprocesses get on ``PYTHONPATH``: entry points are read afresh by each
process, and nothing is installed into the shared virtual environment, so there is nothing to
uninstall afterwards.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from typer.testing import CliRunner

from mmvae_bench import present
from mmvae_bench.cli import app
from mmvae_bench.testing import check_model, tiny_dataset
from tests.tiny import TINY_NETS, TINY_QUICK

ROOT = Path(__file__).resolve().parent.parent
MAIN = "from mmvae_bench.cli import main; main()"  # when the console script is not beside python
runner = CliRunner()
TINY = [*TINY_QUICK, *TINY_NETS]  # the README model has no flows


def readme_plugin() -> str:
    """The plugin module of the README's "Write your own model" section (its first python block)."""
    text = (ROOT / "README.md").read_text()
    section = text.split("## Write your own model", 1)[1].split("\n## ", 1)[0]
    return section.split("```python\n", 1)[1].split("```", 1)[0]


def _package(root: Path, dist: str, module: str, entry_point: str, code: str) -> Path:
    """Write a one-module package with an entry point and pip-install it into ``root/site``."""
    src = root / "src"
    src.mkdir(parents=True)
    (src / f"{module}.py").write_text(code)
    (src / "pyproject.toml").write_text(
        textwrap.dedent(
            f"""
            [build-system]
            requires = ["setuptools>=68"]
            build-backend = "setuptools.build_meta"

            [project]
            name = "{dist}"
            version = "0.1.0"
            dependencies = ["mmvae-bench"]

            [project.entry-points.mmvae_bench]
            {entry_point} = "{module}"

            [tool.setuptools]
            py-modules = ["{module}"]
            """
        )
    )
    site = root / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps"]
        + ["--no-build-isolation", "--no-cache-dir", "--target", str(site), str(src)],
        check=True,
        capture_output=True,
        env={**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"},
    )
    return site


@pytest.fixture(scope="module")
def plugin_site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _package(
        tmp_path_factory.mktemp("poe"), "poe-vae-plugin", "poe_vae", "poe-vae", readme_plugin()
    )


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # circles-squares classifiers, trained once for this module's runs.
    return tmp_path_factory.mktemp("cache")


def mmvae_bench(args: list[str], site: Path | None, cwd: Path) -> subprocess.CompletedProcess:
    """``mmvae-bench ARGS`` in a fresh process, with ``site`` on its path."""
    script = Path(sys.executable).with_name("mmvae-bench")
    cmd = [str(script)] if script.is_file() else [sys.executable, "-c", MAIN]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "COLUMNS": "200"}
    if site is not None:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(site), env.get("PYTHONPATH")]))
    return subprocess.run(
        [*cmd, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300
    )


def test_the_readme_plugin_conforms(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "readme_poe_vae.py"
    path.write_text(readme_plugin())
    spec = importlib.util.spec_from_file_location("readme_poe_vae", path)
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "readme_poe_vae", module)  # dataclasses look it up
    spec.loader.exec_module(module)
    (entry,) = module.mmvae_bench_models()
    assert entry.name == "poe-vae"
    check_model(entry)
    check_model(entry, tiny_dataset(("image32", "image32")))


@pytest.mark.slow
def test_an_installed_package_runs_through_mmvae_bench_run(
    plugin_site: Path, cache_dir: Path, tmp_path: Path
) -> None:
    assert (plugin_site / "poe_vae.py").is_file()
    [dist_info] = plugin_site.glob("poe_vae_plugin-*.dist-info")
    assert "poe-vae = poe_vae" in (dist_info / "entry_points.txt").read_text()

    # Not on the path: not found (the model comes from the package, nothing else).
    res = mmvae_bench(["run", "poe-vae", *TINY], None, tmp_path)
    assert res.returncode == 2 and "unknown model 'poe-vae'" in res.stderr, res.stderr

    res = mmvae_bench(["models"], plugin_site, tmp_path)
    assert res.returncode == 0, res.stderr
    [line] = [x for x in res.stdout.splitlines() if "poe-vae" in x and "README" in x]
    # Its stages, and where it comes from: the distribution and its version.
    assert "│ train " in line and "poe-vae-plugin 0.1.0" in line, line
    assert "jnf" in res.stdout and "joint, unimodal" in res.stdout  # built-ins load beside it

    out = tmp_path / "runs"
    args = ["run", "poe-vae", *TINY, "--out", str(out), "--cache-dir", str(cache_dir)]
    res = mmvae_bench([*args, "--run-id", "ext"], plugin_site, tmp_path)
    assert res.returncode == 0, res.stdout + res.stderr
    record = json.loads((out / "ext" / "results.json").read_text())
    assert record["status"] == "ok" and record["model"] == "poe-vae"
    assert record["config"]["width"] == 4 and record["config"]["epochs"] == 10  # dataset default
    assert set(record["stages"]) == {"train"} and record["stages"]["train"]["epochs"] == 1
    m = record["metrics"]
    assert set(m["conditional_coherence"]) == {"circle", "square"}
    assert 0.0 <= m["joint_coherence"] <= 1.0
    assert (out / "ext" / "checkpoint.pt").is_file()


@pytest.mark.slow
def test_a_plugin_file_runs_through_the_cli(
    cache_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "poe_vae.py"
    path.write_text(readme_plugin())
    # The console reads its width once, at import: widen it so the path fits on one line.
    monkeypatch.setattr(present.console, "_width", 300)
    res = runner.invoke(app, ["models", "--plugin", str(path)])
    assert res.exit_code == 0 and "poe-vae" in res.output, res.output
    [line] = [x for x in res.output.splitlines() if "poe-vae" in x]
    assert "│ train " in line and f"│ {path.resolve()} " in line, line  # stages, the file
    out = tmp_path / "runs"
    args = ["run", "poe-vae", "--plugin", str(path), *TINY, "--out", str(out)]
    res = runner.invoke(app, [*args, "--cache-dir", str(cache_dir), "--run-id", "file"])
    assert res.exit_code == 0, res.output
    record = json.loads((out / "file" / "results.json").read_text())
    assert record["status"] == "ok" and record["model"] == "poe-vae"
    assert 0.0 <= record["metrics"]["joint_coherence"] <= 1.0
    # The record names the plugin file and its content, and the command that ran.
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    assert record["plugins"] == [{"path": str(path.resolve()), "sha256": digest}]
    cmd = record["command"]
    assert cmd[:3] == ["mmvae-bench", "run", "poe-vae"]
    pairs = {tuple(cmd[i : i + 2]) for i in range(3, len(cmd) - 1)}
    assert {("--plugin", str(path)), ("--run-id", "file"), ("--epochs", "1")} <= pairs
    assert "--quick" in cmd
    # evaluate without the plugin says which file to pass; a leaderboard row reproduces with it.
    res = runner.invoke(app, ["evaluate", str(out / "file"), "--no-fid", "--threads", "1"])
    assert res.exit_code == 2 and f"--plugin {path.resolve()}" in res.output, res.output
    res = runner.invoke(app, ["leaderboard", "build", "--runs", str(out), "--out", str(tmp_path)])
    assert res.exit_code == 0, res.output
    board = json.loads((tmp_path / "circles-squares.json").read_text())
    [row] = board["rows"]
    assert f"--plugin {path.resolve()}" in row["reproduce"][0]


def test_an_entry_point_clashing_with_a_builtin_names_both(
    tmp_path_factory: pytest.TempPathFactory, tmp_path: Path
) -> None:
    code = readme_plugin().replace('name="poe-vae"', 'name="jnf"')
    assert 'name="jnf"' in code
    site = _package(tmp_path_factory.mktemp("clash"), "clash-plugin", "clash", "my-clash", code)
    res = mmvae_bench(["models"], site, tmp_path)
    assert res.returncode == 2, res.stdout + res.stderr
    err = " ".join(res.stderr.split())  # rich may wrap the message
    assert "model name 'jnf' registered twice" in err
    assert "plugin 'jnf'" in err and "plugin 'my-clash'" in err
    assert "Traceback" not in res.stderr


def test_an_entry_point_breaking_the_contract_is_listed_as_broken(
    tmp_path_factory: pytest.TempPathFactory, tmp_path: Path
) -> None:
    # The README plugin with its `return` forgotten: the hook returns None.
    code = readme_plugin().replace(
        "    return [\n        ModelEntry(", "    [\n        ModelEntry("
    )
    assert "    [\n        ModelEntry(" in code
    site = _package(tmp_path_factory.mktemp("noret"), "noret-plugin", "noret", "no-return", code)
    res = mmvae_bench(["models"], site, tmp_path)
    assert res.returncode == 0, res.stdout + res.stderr
    out = " ".join(res.stdout.split())
    assert "no-return" in out and "broken" in out and "returned None" in out
    assert "noret-plugin 0.1.0" in out  # where the broken plugin comes from
    assert "jnf" in res.stdout and "poe-vae" not in res.stdout  # the others load, it adds none


@pytest.mark.parametrize(
    ("code", "message"),
    [
        (
            readme_plugin().replace("@hookimpl\n", ""),
            "registers no hooks: decorate its mmvae_bench_models() with @hookimpl",
        ),
        ("import sys\nsys.exit(0)\n", "called sys.exit(0) while importing"),
        ("def broken(:\n", "has a syntax error at line 1"),
    ],
)
def test_a_faulty_plugin_file_is_exit_2_with_one_error_line(
    code: str, message: str, tmp_path: Path
) -> None:
    path = tmp_path / "faulty.py"
    path.write_text(code)
    res = runner.invoke(app, ["models", "--plugin", str(path)])
    assert res.exit_code == 2, res.output
    out = " ".join(res.output.split())  # rich may wrap the message
    assert f"error: plugin file {path} {message}" in out and "Traceback" not in out
    res = runner.invoke(app, ["models", "--plugin", str(tmp_path)])
    assert res.exit_code == 2 and "is a folder" in " ".join(res.output.split())
