"""Ex-post latent samplers: fit on known embeddings, save/load, and `--sampler` end to end."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import Tensor, nn
from typer.testing import CliRunner

from mmvae_bench.api import BenchError, LatentSample, Split
from mmvae_bench.cli import app
from mmvae_bench.config import RunConfig
from mmvae_bench.samplers import (
    SAMPLER_FILE,
    fit_sampler,
    load_or_fit_sampler,
    load_sampler,
    save_sampler,
)
from tests.tiny import TINY_RUN

runner = CliRunner()
D = 2
# A 3-component mixture far from N(0, I): the mean is ~10 away, component scales ~0.5-0.9 and
# the mixture's covariance has a clear off-diagonal term.
MEANS = torch.tensor([[8.0, 2.0], [4.0, 9.0], [12.0, 7.0]])
MIX = torch.tensor([[0.8, 0.3], [0.0, 0.5]])
# Tolerances: sample mean within 0.3 of the embeddings' mean (their per-axis std is ~3) and the
# covariance within this relative Frobenius error. EM recovers a well-separated mixture almost
# exactly; a 20-epoch MAF measured ~0.05 here, so 0.15 leaves it room without being vacuous
# (N(0, I) samples are off by ~0.9).
COV_TOL = {"gmm": 0.05, "flow": 0.15}
N_DRAWS = 20_000


class EmbeddingModel(nn.Module):
    """A stand-in model whose one modality *is* the embedding: ``encode`` returns it as z."""

    modalities = ("z",)

    def __init__(self) -> None:
        super().__init__()
        self.latent_dim = D
        self.anchor = nn.Parameter(torch.zeros(()))  # so the model has a device

    def encode(self, batch: dict[str, Tensor], subset, n: int = 1, *, hmc=None) -> LatentSample:
        assert tuple(subset) == self.modalities
        return LatentSample(batch["z"].expand(n, -1, -1))

    def prior_sample(self, n: int) -> Tensor:
        return torch.randn(n, D)


@pytest.fixture(scope="module")
def embeddings() -> Tensor:
    g = torch.Generator().manual_seed(0)
    comp = torch.randint(3, (3000,), generator=g)
    return MEANS[comp] + torch.randn(3000, D, generator=g) @ MIX


@pytest.fixture
def split(embeddings: Tensor) -> Split:
    return Split({"z": embeddings}, torch.zeros(len(embeddings), dtype=torch.long))


def _fit(kind: str, split: Split, seed: int = 0):
    settings = {"components": 3} if kind == "gmm" else None
    return fit_sampler(kind, EmbeddingModel(), split, device="cpu", seed=seed, settings=settings)


def _rel_cov_error(x: Tensor, z: Tensor) -> float:
    c = torch.cov(z.T)
    return float((torch.cov(x.T) - c).norm() / c.norm())


@pytest.mark.parametrize("kind", ["gmm", "flow"])
def test_fitted_samplers_match_embeddings_far_from_the_prior(
    kind: str, split: Split, embeddings: Tensor
) -> None:
    sampler = _fit(kind, split)
    x = sampler.sample(N_DRAWS)
    assert x.shape == (N_DRAWS, D)
    assert (x.mean(0) - embeddings.mean(0)).abs().max() < 0.3
    assert _rel_cov_error(x, embeddings) < COV_TOL[kind]
    # Better than the moment-matched Gaussian by a margin: the fit saw the three modes.
    gauss = torch.distributions.MultivariateNormal(embeddings.mean(0), torch.cov(embeddings.T))
    info = sampler.info
    assert info["train_log_likelihood"] > gauss.log_prob(embeddings).mean().item() + 1.0
    assert info["kind"] == kind and info["seed"] == 0
    assert info["embeddings"]["n"] == 3000 and info["embeddings"]["mean_norm"] > 9
    assert info["embeddings"]["gaussian_kl_to_std_normal"] > 40  # the drift, in nats
    assert info["fit_s"] > 0 and info["latent_dim"] == D
    json.dumps(info)  # goes into results.json as is


def test_the_prior_does_not_match_them(split: Split, embeddings: Tensor) -> None:
    sampler = _fit("prior", split)
    x = sampler.sample(N_DRAWS)
    assert (x.mean(0) - embeddings.mean(0)).abs().max() > 5
    assert _rel_cov_error(x, embeddings) > 0.5
    assert sampler.info["train_log_likelihood"] is None and sampler.info["fit_s"] == 0.0
    assert "embeddings" not in sampler.info  # nothing was encoded


@pytest.mark.parametrize("kind", ["gmm", "flow"])
def test_fit_is_seeded_and_leaves_the_callers_rng_alone(kind: str, split: Split) -> None:
    torch.manual_seed(123)
    state = torch.get_rng_state()
    a = _fit(kind, split, seed=5)
    assert torch.equal(torch.get_rng_state(), state)
    b = _fit(kind, split, seed=5)
    torch.manual_seed(1)
    xa = a.sample(100)
    torch.manual_seed(1)
    assert torch.equal(xa, b.sample(100))


@pytest.mark.parametrize("kind", ["prior", "gmm", "flow"])
def test_save_load_round_trip_gives_identical_samples(
    kind: str, split: Split, tmp_path: Path
) -> None:
    model = EmbeddingModel()
    sampler = _fit(kind, split)
    path = save_sampler(tmp_path / SAMPLER_FILE, sampler)
    blob = torch.load(path, weights_only=True)  # tensors, strings and numbers only
    assert blob["kind"] == kind and blob["latent_dim"] == D
    loaded = load_sampler(path, model, device="cpu")
    assert type(loaded) is type(sampler) and loaded.info == sampler.info
    assert loaded.settings == sampler.settings
    torch.manual_seed(7)
    x = sampler.sample(256)
    torch.manual_seed(7)
    assert torch.equal(loaded.sample(256), x)


def test_load_or_fit_reuses_a_matching_file_and_refits_otherwise(
    split: Split, tmp_path: Path
) -> None:
    model, path = EmbeddingModel(), tmp_path / SAMPLER_FILE
    first, fitted = load_or_fit_sampler(path, "gmm", model, split, device="cpu", seed=0)
    assert fitted and path.is_file()
    again, fitted = load_or_fit_sampler(path, "gmm", model, split, device="cpu", seed=0)
    assert not fitted and torch.equal(again.means, first.means)
    other, fitted = load_or_fit_sampler(path, "flow", model, split, device="cpu", seed=0)
    assert fitted and other.kind == "flow"
    assert torch.load(path, weights_only=True)["kind"] == "flow"  # the file follows the record
    _, fitted = load_or_fit_sampler(path, "flow", model, split, device="cpu", seed=0, refit=True)
    assert fitted


def test_bad_files_and_names_are_user_errors(split: Split, tmp_path: Path) -> None:
    model = EmbeddingModel()
    bad = tmp_path / SAMPLER_FILE
    bad.write_bytes(b"not a torch file")
    with pytest.raises(BenchError, match=r"(?s)sampler\.pt is corrupt.*--refit-sampler"):
        load_sampler(bad, model, device="cpu")
    sampler = _fit("gmm", split)
    save_sampler(bad, sampler)
    model.latent_dim = 3
    with pytest.raises(BenchError, match="latent_dim 2, the model has 3"):
        load_sampler(bad, model, device="cpu")
    with pytest.raises(BenchError, match="unknown latent sampler 'vae'.*prior, gmm, flow"):
        fit_sampler("vae", model, split, device="cpu", seed=0)
    with pytest.raises(BenchError, match="components must be >= 1"):
        fit_sampler("gmm", model, split, device="cpu", seed=0, settings={"components": 0})
    with pytest.raises(BenchError, match="sampler must be one of"):
        RunConfig(model="jnf", sampler="vae")  # type: ignore[arg-type]
    res = runner.invoke(app, ["run", "jnf", "--sampler", "vae"])
    assert res.exit_code == 2 and "--sampler must be one of" in res.output


@pytest.mark.slow
def test_cli_run_fits_saves_and_records_the_sampler(tmp_path: Path) -> None:
    out, cache = tmp_path / "runs", tmp_path / "cache"
    args = ["run", "jnf", *TINY_RUN, "--sampler", "gmm", "--out", str(out)]
    args += ["--cache-dir", str(cache)]
    res = runner.invoke(app, [*args, "--run-id", "g"])
    assert res.exit_code == 0, res.output
    run_dir = out / "g"
    record = json.loads((run_dir / "results.json").read_text())
    s = record["sampler"]
    assert s["kind"] == "gmm" and s["file"] == SAMPLER_FILE
    assert s["settings"]["components"] == 10 and s["fit_s"] > 0
    assert isinstance(s["train_log_likelihood"], float)
    assert s["embeddings"]["n"] == record["dataset_info"]["train"]
    assert record["run"]["sampler"] == "gmm" and record["timings"]["sampler_s"] > 0
    assert torch.load(run_dir / SAMPLER_FILE, weights_only=True)["kind"] == "gmm"
    assert "joint coherence (gmm sampler)" in res.output

    # evaluate loads sampler.pt (the run's kind): same seed, same draws, same joint coherence.
    ev = ["evaluate", str(run_dir), "--no-fid", "--threads", "1"]
    res = runner.invoke(app, ev)
    assert res.exit_code == 0, res.output
    again = json.loads((run_dir / "results.json").read_text())
    assert again["metrics"]["joint_coherence"] == record["metrics"]["joint_coherence"]
    assert again["metrics"]["joint_label_histogram"] == record["metrics"]["joint_label_histogram"]
    assert again["evaluations"][-1]["sampler"] == {
        "kind": "gmm",
        "previous": "gmm",
        "fitted": False,
    }

    # Another kind is fitted, saved over sampler.pt and recorded with the metrics it produced.
    res = runner.invoke(app, [*ev, "--sampler", "flow"])
    assert res.exit_code == 0, res.output
    flow = json.loads((run_dir / "results.json").read_text())
    assert flow["sampler"]["kind"] == "flow" and flow["run"]["sampler"] == "gmm"
    assert flow["evaluations"][-1]["sampler"] == {"kind": "flow", "previous": "gmm", "fitted": True}
    assert torch.load(run_dir / SAMPLER_FILE, weights_only=True)["kind"] == "flow"


def test_gmm_fit_holds_native_thread_pools_to_torchs_thread_count(
    split: Split, monkeypatch: pytest.MonkeyPatch
) -> None:
    # scikit-learn's BLAS/OpenMP pools ignore torch.set_num_threads; unlimited, they start a
    # thread per core and made EM 5-20x slower next to a second job.
    from sklearn.mixture import GaussianMixture
    from threadpoolctl import threadpool_info

    seen: list[list[int]] = []
    real_fit = GaussianMixture.fit

    def fit(self, x, y=None):
        seen.append([p["num_threads"] for p in threadpool_info()])
        return real_fit(self, x, y)

    monkeypatch.setattr(GaussianMixture, "fit", fit)
    _fit("gmm", split)
    assert seen and seen[0], "no native thread pool was loaded"
    assert set(seen[0]) == {torch.get_num_threads()}
