"""``mmvae-bench new-model``: the package it writes installs, passes the kit, and runs.

The end-to-end test installs the way tests/test_external_plugin.py does (``pip install
--target`` into ``tmp_path``, offline, nothing added to the shared environment) and runs the
generated test file and ``mmvae-bench`` in fresh processes with that folder on their path.
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from mmvae_bench.api import BenchError
from mmvae_bench.cli import app
from mmvae_bench.plugins import Registry
from mmvae_bench.scaffold import class_name, module_name, new_model
from tests.test_external_plugin import TINY, mmvae_bench, readme_plugin

runner = CliRunner()
EMPTY = Registry()  # no registered models: the name checks without loading every plugin


def _code(text: str) -> str:
    """The module's code without its strings (docstrings, descriptions, names) and comments."""
    tree = ast.parse(text)
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            node.value = ""
    return ast.dump(tree)


def test_the_new_module_is_the_readme_example_renamed(tmp_path: Path) -> None:
    made = new_model("poe-vae", tmp_path, registry=EMPTY)
    assert (made.module, made.cls) == ("poe_vae", "PoeVae")
    written = (made.path / "poe_vae.py").read_text()
    assert _code(written) == _code(readme_plugin().replace("PoEVAE", "PoeVae"))
    assert 'name="poe-vae"' in written and "class PoeVaeConfig(NetConfig)" in written


def test_names_become_module_and_class() -> None:
    assert module_name("my-jsd-vae") == "my_jsd_vae" and class_name("my-jsd-vae") == "MyJsdVae"
    assert class_name("mmjsd") == "Mmjsd" and class_name("jnf-2") == "Jnf2"


def test_the_package_declares_its_entry_point_and_kit(tmp_path: Path) -> None:
    made = new_model("my-vae", tmp_path, registry=EMPTY)
    assert made.path == tmp_path / "my-vae"
    assert sorted(made.files) == sorted(
        ["pyproject.toml", "my_vae.py", "tests/test_my_vae.py", "README.md"]
    )
    assert all((made.path / f).is_file() for f in made.files)
    pyproject = (made.path / "pyproject.toml").read_text()
    assert '[project.entry-points.mmvae_bench]\nmy-vae = "my_vae"' in pyproject
    assert 'name = "mmvae-bench-my-vae"' in pyproject
    test = (made.path / "tests/test_my_vae.py").read_text()
    assert "check_model(entry)" in test and "from my_vae import mmvae_bench_models" in test
    assert [p.name for p in tmp_path.iterdir()] == ["my-vae"]  # no temporary folder left


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("My-VAE", "is not a registry name: lower-kebab"),
        ("my_vae", "is not a registry name"),
        ("a--b", "is not a registry name"),
        ("../x", "is not a registry name"),
        ("a" * 65, "at most 64 characters"),
        ("2vae", "makes the module name '2vae', which Python cannot import"),
        ("import", "makes the module name 'import', which Python cannot import"),
        ("json", "makes the module name 'json', which is importable already"),
        ("mmvae-bench", "makes the module name 'mmvae_bench', which is importable already"),
    ],
)
def test_a_bad_name_is_refused_and_nothing_is_written(
    name: str, message: str, tmp_path: Path
) -> None:
    with pytest.raises(BenchError, match=message.replace("(", r"\(")):
        new_model(name, tmp_path, registry=EMPTY)
    assert list(tmp_path.iterdir()) == []


def test_a_registered_name_is_refused(tmp_path: Path) -> None:
    with pytest.raises(BenchError, match=r"'mvae' is registered already \(by mmvae-bench "):
        new_model("mvae", tmp_path)  # the real registry: the built-in MVAE
    assert list(tmp_path.iterdir()) == []


def test_an_existing_folder_is_never_overwritten(tmp_path: Path) -> None:
    (tmp_path / "my-vae").mkdir()
    (tmp_path / "my-vae" / "mine.txt").write_text("keep")
    with pytest.raises(BenchError, match="my-vae exists; new-model writes a new folder"):
        new_model("my-vae", tmp_path, registry=EMPTY)
    assert [p.name for p in (tmp_path / "my-vae").iterdir()] == ["mine.txt"]


def test_a_dir_that_is_a_file_is_a_user_error(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    with pytest.raises(BenchError, match=r"cannot create .*my-vae: .*file is not a folder"):
        new_model("my-vae", tmp_path / "file", registry=EMPTY)
    with pytest.raises(BenchError, match=r"cannot create .*my-vae: Not a directory"):
        new_model("my-vae", tmp_path / "file" / "sub", registry=EMPTY)


def test_the_command_writes_the_package_and_refuses_a_second_time(tmp_path: Path) -> None:
    res = runner.invoke(app, ["new-model", "my-vae", "--dir", str(tmp_path / "plugins")])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "plugins" / "my-vae" / "my_vae.py").is_file()
    assert "pip install -e ." in res.output and "mmvae-bench run my-vae" in res.output
    res = runner.invoke(app, ["new-model", "my-vae", "--dir", str(tmp_path / "plugins")])
    assert res.exit_code == 2 and "exists" in res.output
    res = runner.invoke(app, ["new-model", "My_VAE", "--dir", str(tmp_path)])
    assert res.exit_code == 2 and "error: model name 'My_VAE'" in res.output


@pytest.mark.slow
def test_a_new_model_installs_passes_its_kit_and_runs(tmp_path: Path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    seconds: dict[str, float] = {}
    start = time.perf_counter()

    res = runner.invoke(app, ["new-model", "mmjsd", "--dir", str(tmp_path)])
    assert res.exit_code == 0, res.output
    package, site = tmp_path / "mmjsd", tmp_path / "site"
    seconds["scaffold"] = time.perf_counter() - start

    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps"]
        + ["--no-build-isolation", "--no-cache-dir", "--target", str(site), str(package)],
        check=True,
        capture_output=True,
        env=env,
    )
    seconds["install"] = time.perf_counter() - start - sum(seconds.values())

    # The generated tests, as its author runs them: pytest in the package folder.
    kit = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"],
        cwd=package,
        env={**env, "PYTHONPATH": str(site)},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert kit.returncode == 0 and "2 passed" in kit.stdout, kit.stdout + kit.stderr
    seconds["kit"] = time.perf_counter() - start - sum(seconds.values())

    res = mmvae_bench(["models"], site, tmp_path)
    assert res.returncode == 0, res.stderr
    [line] = [x for x in res.stdout.splitlines() if "mmjsd" in x]
    assert "│ train " in line and "mmvae-bench-mmjsd 0.1.0" in line, line
    seconds["models"] = time.perf_counter() - start - sum(seconds.values())
    out = tmp_path / "runs"
    args = ["run", "mmjsd", *TINY, "--out", str(out), "--cache-dir", str(tmp_path / "cache")]
    res = mmvae_bench([*args, "--run-id", "new"], site, tmp_path)
    assert res.returncode == 0, res.stdout + res.stderr
    record = json.loads((out / "new" / "results.json").read_text())
    assert record["status"] == "ok" and record["model"] == "mmjsd"
    assert set(record["stages"]) == {"train"} and 0.0 <= record["metrics"]["joint_coherence"] <= 1
    seconds["run"] = time.perf_counter() - start - sum(seconds.values())
    total = time.perf_counter() - start
    print("new-model path, s:", {k: round(v, 1) for k, v in seconds.items()}, f"total {total:.1f}")
