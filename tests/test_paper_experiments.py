"""The JNF paper's experiments as benchmark files (issue 12 item 5): E1's figure, E2/E3 sweeps."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from typer.testing import CliRunner

from mmvae_bench import sweep as sweeps
from mmvae_bench.cli import app
from mmvae_bench.plugins import load_registry
from tests.benchmark_scripts import load_script
from tests.data.test_run_published import write_mnist_svhn_labelled

ROOT = Path(__file__).resolve().parents[1]
E2 = ROOT / "benchmarks" / "paper_e2_flow_depth.toml"
E3 = ROOT / "benchmarks" / "paper_e3_projectors.toml"


@pytest.mark.slow
def test_e1_writes_the_latent_map_figure_and_its_numbers(tmp_path: Path) -> None:
    e1 = load_script("e1_latent_maps")
    out = tmp_path / "e1" / "maps.png"
    argv = ["--epochs-joint", "1", "--epochs-unimodal", "1", "--train-limit", "128"]
    summary = e1.main([*argv, "--points", "30", "--samples", "3", "--out", str(out)])
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 10_000
    assert not list(out.parent.glob(".*.tmp")), "a temp file was left behind"
    written = json.loads(out.with_suffix(".json").read_text())
    assert written == json.loads(json.dumps(summary))
    assert written["settings"]["latent_dim"] == 2 and written["settings"]["train_samples"] == 128
    nll = written["test_nll_q_j"]
    assert set(nll) == {"gaussian_k0", "flow_k2"}
    assert all(set(v) == {"circle", "square"} for v in nll.values())
    assert all(math.isfinite(x) for v in nll.values() for x in v.values())


def test_e1_gaussian_twin_shares_the_joint_part_and_has_no_flow() -> None:
    import torch

    from mmvae_bench.testing import tiny_dataset

    e1 = load_script("e1_latent_maps")
    entry = load_registry().model("jnf")
    ds = tiny_dataset(("image28", "vector"), n=8)
    cfg = entry.config(latent_dim=2, flow_depth=2, flow_hidden=8, flow_layers=1, width=2)
    model = entry.cls(ds, cfg)
    twin = e1.gaussian_twin(model, ds)
    a, b = model.state_dict(), twin.state_dict()
    joint = tuple(f"{m}." for m in model.stages[0].modules)
    assert all(torch.equal(a[k], b[k]) for k in a if k.startswith(joint))
    assert all(len(q.transforms) == 0 for q in twin.posteriors.values())
    enc = [k for k in a if k.startswith("unimodal_encoders.")]
    assert any(not torch.equal(a[k], b[k]) for k in enc), "stage-2 encoders were copied"
    batch = ds.train.batch(slice(0, 3))
    assert twin.unimodal_posterior(batch, "m0").rsample((4,)).shape == (4, 3, 2)


@pytest.fixture(scope="module")
def mnist_svhn_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    data_dir = tmp_path_factory.mktemp("mnist-svhn")
    write_mnist_svhn_labelled(data_dir, 2)
    return data_dir


@pytest.mark.parametrize(
    ("path", "model", "grid", "trials"),
    [
        (E2, "jnf", {"flow_depth": (1, 2, 3, 4), "beta": (0.5, 1.0, 2.5)}, 36),
        (
            E3,
            "jnf-shared",
            {"projector": ("contrastive", "dcca", "random"), "beta": (1.0, 2.5)},
            18,
        ),
    ],
    ids=["e2", "e3"],
)
def test_paper_sweep_files_validate_against_generated_data(
    path: Path, model: str, grid: dict, trials: int, mnist_svhn_dir: Path, tmp_path: Path
) -> None:
    registry = load_registry()
    values = sweeps.load_sweep_file(path)
    over = {"data_dir": str(mnist_svhn_dir), "cache_dir": str(tmp_path / "cache")}
    cfg = sweeps.sweep_config(sweeps.merge_sweep_values(values, over), registry)
    assert cfg.run.model == model and cfg.run.dataset == "mnist-svhn"
    assert dict(cfg.grid) == grid and len(cfg.trials()) == trials
    assert cfg.heatmap == tuple(grid) and cfg.run.fid == "classifier"
    assert cfg.run.protocol == "full" and len(cfg.seeds) == 3
    sweeps.check_sweep_inputs(cfg, registry)  # the dataset loads, every grid point builds


def test_sweep_check_accepts_e3_and_starts_no_ray(mnist_svhn_dir: Path, tmp_path: Path) -> None:
    args = ["sweep", "--config", str(E3), "--data-dir", str(mnist_svhn_dir), "--check"]
    args += ["--cache-dir", str(tmp_path / "cache"), "--storage", str(tmp_path / "sweeps")]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "jnf-shared-mnist-svhn-e3-projectors: 18 trials checked" in result.output
    assert not (tmp_path / "sweeps" / "jnf-shared-mnist-svhn-e3-projectors").exists()


def test_sweep_check_names_a_missing_dataset_folder(tmp_path: Path) -> None:
    args = ["sweep", "--config", str(E2), "--data-dir", str(tmp_path / "nowhere"), "--check"]
    result = CliRunner().invoke(app, [*args, "--cache-dir", str(tmp_path / "cache")])
    assert result.exit_code == 2
    assert "error:" in result.output and "nowhere" in result.output
