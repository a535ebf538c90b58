"""`mmvae-bench import multivae`: MultiVae saved folders as runs, weights converted exactly.

Each test builds a tiny MultiVae model (latent 8, the PolyMNIST benchmark's nets, weights moved
off their initialisation), saves it the reference way (``model.save(DIR)``) and reads it back
through the converter: the built-in model then computes what the reference computes.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from mmvae_bench.cli import app
from mmvae_bench.data.polymnist import SPECS
from mmvae_bench.errors import BenchError
from mmvae_bench.interop.multivae import (
    SUPPORTED,
    config_values,
    convert_state_dict,
    read_folder,
)
from mmvae_bench.plugins import load_registry
from mmvae_bench.runner import resolve_model_config
from tests.test_presets import REFERENCE, mnist_svhn_specs_only, polymnist_specs_only

pytest.importorskip("multivae", reason=REFERENCE)
pytestmark = pytest.mark.reference

LATENT = 8
runner = CliRunner()


def save_multivae(kind: str, folder: Path, dataset: str = "polymnist", **options) -> Path:
    """A tiny MultiVae ``kind`` with a benchmark's nets, saved with ``model.save``.

    ``polymnist``: the PolyMNIST benchmark's nets at latent 8; ``mnist-svhn``: the MNIST-SVHN
    benchmark's (latent 20, likelihood rescaling; Laplace scale 0.75 as the suite's dataset).
    """
    import multivae.models as mv
    from multivae.models.nn.default_architectures import Decoder_AE_MLP, Encoder_VAE_MLP
    from multivae.models.nn.mmnist import DecoderConvMMNIST, EncoderConvMMNIST_adapted
    from multivae.models.nn.svhn import Decoder_VAE_SVHN, Encoder_VAE_SVHN
    from pythae.models.base.base_config import BaseAEConfig

    if dataset == "polymnist":
        dims = {m: (3, 28, 28) for m in SPECS}
        latent, extra = LATENT, {}
        enc = {m: EncoderConvMMNIST_adapted for m in dims}
        dec = {m: DecoderConvMMNIST for m in dims}
    else:
        dims = {"mnist": (1, 28, 28), "svhn": (3, 32, 32)}
        latent, extra = 20, {"uses_likelihood_rescaling": True}
        enc = {"mnist": Encoder_VAE_MLP, "svhn": Encoder_VAE_SVHN}
        dec = {"mnist": Decoder_AE_MLP, "svhn": Decoder_VAE_SVHN}
    base = {
        "n_modalities": len(dims),
        "latent_dim": latent,
        "input_dims": dims,
        "decoders_dist": {m: "laplace" for m in dims},
        "decoder_dist_params": {m: {"scale": 0.75} for m in dims},
        **extra,
        **options,
    }
    nets = {m: BaseAEConfig(latent_dim=latent, style_dim=0, input_dim=d) for m, d in dims.items()}
    torch.manual_seed(0)
    model = getattr(mv, kind)(
        getattr(mv, f"{kind}Config")(**base),
        encoders={m: enc[m](nets[m]) for m in dims},
        decoders={m: dec[m](nets[m]) for m in dims},
    )
    with torch.no_grad():  # off the initialisation, so a swapped tensor shows
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.05 * torch.randn_like(p))
    model.save(str(folder))
    return folder


OPTIONS = {
    "JNF": {"warmup": 1},
    "MVAE": {"warmup": 0},
    "MMVAE": {"K": 2, "learn_prior": True},
    "MoPoE": {"beta": 2.5},
}


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-12))


@pytest.mark.parametrize(
    ("kind", "dataset"),
    [*((k, "polymnist") for k in SUPPORTED), ("JNF", "mnist-svhn"), ("MoPoE", "mnist-svhn")],
)
def test_converted_weights_compute_what_the_reference_computes(
    kind: str, dataset: str, tmp_path: Path
) -> None:
    from multivae.models import AutoModel

    folder = read_folder(save_multivae(kind, tmp_path / kind, dataset, **OPTIONS[kind]))
    assert set(folder.files) == {"model_config.json", "model.pt"}
    assert "encoders.pkl" in folder.unread  # the pickled architectures are never read
    ref = AutoModel.load_from_folder(str(folder.path)).eval()
    ds = polymnist_specs_only() if dataset == "polymnist" else mnist_svhn_specs_only()
    entry = load_registry().model(SUPPORTED[kind])
    ours = entry.cls(ds, resolve_model_config(entry, ds, {}, config_values(folder, ds))).eval()
    ours.load_state_dict(convert_state_dict(folder, ours))
    torch.manual_seed(1)
    batch = {m: torch.rand(4, *s.shape) for m, s in ds.specs.items()}
    z = torch.randn(4, ours.latent_dim)
    with torch.no_grad():
        for m in ds.specs:
            out = ref.encoders[m](batch[m])
            if kind == "JNF":
                mu, logvar = ours.posteriors[m].base(ours.unimodal_encoders[m](batch[m]))
            elif kind == "MMVAE":
                expert = ours.experts[m]
                mu, logvar = expert.head(expert.encoder(batch[m])).chunk(2, -1)
            else:
                mu, logvar = ours.experts[m](batch[m])
            assert _rel(mu, out.embedding) < 1e-5 and _rel(logvar, out.log_covariance) < 1e-5
            assert _rel(ours.decoders[m](z), ref.decoders[m](z).reconstruction) < 1e-6
            if kind == "JNF":  # log q_m(z|x_m): base Gaussian of the flow's image + log|det|
                flow = ref.flows[m](z)
                base = torch.distributions.Normal(out.embedding, (0.5 * out.log_covariance).exp())
                ref_lq = base.log_prob(flow.out).sum(-1) + flow.log_abs_det_jac
                assert _rel(ours.unimodal_posterior(batch, m).log_prob(z), ref_lq) < 1e-5
        if kind == "JNF":
            joint = ref.joint_encoder(batch)
            mu, logvar = ours.joint_posterior(batch)
            assert _rel(mu, joint.embedding) < 1e-5
            assert _rel(logvar, joint.log_covariance) < 1e-5
        if kind == "MMVAE":  # MultiVae's prior scale is softmax * D, as ours
            scale = torch.softmax(ref.prior_log_var, -1) * ours.latent_dim
            assert _rel(ours.prior()[1], scale.reshape(-1)) < 1e-6


def _import(folder: Path, tmp_path: Path, code: int, *extra: str) -> str:
    args = ["import", "multivae", str(folder), "--out", str(tmp_path / "runs")]
    res = runner.invoke(app, [*args, "--cache-dir", str(tmp_path / "cache"), *extra])
    assert res.exit_code == code, res.output
    assert "Traceback" not in res.output
    return " ".join(res.output.split())


def test_bad_folders_are_errors_naming_the_file(tmp_path: Path) -> None:
    good = save_multivae("MoPoE", tmp_path / "good", beta=2.5)
    data = ["--dataset", "polymnist", "--data-dir", str(tmp_path / "nodata")]

    def variant(name: str, edit) -> Path:
        folder = tmp_path / name
        shutil.copytree(good, folder)
        edit(folder)
        return folder

    def config(**changes):
        def edit(folder: Path) -> None:
            path = folder / "model_config.json"
            path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))

        return edit

    cases = {
        "unsupported": (config(name="JMVAEConfig"), "MultiVae model 'JMVAE' cannot be imported"),
        "noweights": (lambda f: (f / "model.pt").unlink(), "weights file"),
        "noconfig": (lambda f: (f / "model_config.json").unlink(), "model_config.json not found"),
        "pickled": (
            lambda f: torch.save({"model_state_dict": {}, "x": object()}, f / "model.pt"),
            "corrupt or unreadable",
        ),
    }
    for name, (edit, message) in cases.items():
        out = _import(variant(name, edit), tmp_path, 2, *data)
        assert "error:" in out and message in out and name in out, (name, out)
    assert not (tmp_path / "runs").exists()
    # A config that does not match the dataset: checked against its specs.
    ds = polymnist_specs_only()
    wrong = read_folder(variant("normal", config(decoders_dist={m: "normal" for m in SPECS})))
    with pytest.raises(BenchError, match=r"model_config.json: decoders_dist\['m0'\] = 'normal'"):
        config_values(wrong, ds)
    two = read_folder(variant("two", config(input_dims={"m0": [3, 28, 28], "m1": [3, 28, 28]})))
    with pytest.raises(BenchError, match="modalities \\['m0', 'm1'\\] are not dataset"):
        config_values(two, ds)


@pytest.mark.slow
def test_import_then_evaluate_and_rank(tmp_path: Path) -> None:
    from tests.data.test_run_published import write_polymnist_labelled

    data, cache = tmp_path / "data", tmp_path / "cache"
    write_polymnist_labelled(data, 6)
    folder = save_multivae("MoPoE", tmp_path / "mopoe", beta=2.5)
    opts = ["--dataset", "polymnist", "--data-dir", str(data)]
    out = _import(folder, tmp_path, 0, *opts, "--run-id", "imported")
    run_dir = tmp_path / "runs" / "imported"
    assert "imported MoPoE as mopoe" in out
    record = json.loads((run_dir / "results.json").read_text())
    assert record["status"] == "trained" and record["model"] == "mopoe"
    imported = record["imported"]
    assert imported["source"] == "multivae" and imported["model_class"] == "MoPoE"
    assert imported["path"] == str(folder.resolve())
    from mmvae_bench.results import file_sha256

    assert imported["files"] == {
        n: file_sha256(folder / n) for n in ("model_config.json", "model.pt")
    }
    assert record["config"]["beta"] == 2.5 and record["config"]["nets"] == "multivae"
    res = runner.invoke(
        app,
        ["classifiers", "train", *opts, "--cache-dir", str(cache), "--epochs", "20"]
        + ["--threads", "1", "--device", "cpu"],
    )
    assert res.exit_code == 0, res.output
    from mmvae_bench.eval.classifiers import classifier_dir
    from tests.data.test_run_published import _load

    weights = classifier_dir(_load("polymnist", data), cache, 20)
    res = runner.invoke(
        app,
        ["evaluate", str(run_dir), "--protocol", "quick", "--no-fid", "--device", "cpu"]
        + ["--threads", "1", "--classifier-weights", str(weights)],
    )
    assert res.exit_code == 0, res.output
    record = json.loads((run_dir / "results.json").read_text())
    assert record["status"] == "ok" and 0.0 <= record["metrics"]["joint_coherence"] <= 1.0
    res = runner.invoke(
        app,
        ["leaderboard", "build", "--runs", str(tmp_path / "runs"), "--out", str(tmp_path / "lb")],
    )
    assert res.exit_code == 0, res.output
    board = json.loads((tmp_path / "lb" / "polymnist.json").read_text())
    assert [r["model"] for r in board["rows"]] == ["mopoe"]
    assert board["rows"][0]["config"]["imported"] == {"source": "multivae", "model_class": "MoPoE"}
