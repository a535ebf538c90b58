"""`--preset paper`: the published runs' sizes (parameter counts per module equal to MultiVae
1.0.3's at its PolyMNIST benchmark configuration), the training half, errors, identity."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from mmvae_bench.cli import app
from mmvae_bench.config import RunConfig, make_config
from mmvae_bench.data import mnist_svhn
from mmvae_bench.data.polymnist import SPECS
from mmvae_bench.data.spec import MultimodalDataset, Split
from mmvae_bench.errors import BenchError
from mmvae_bench.plugins import load_registry
from mmvae_bench.presets import TRAINING, preset_values
from mmvae_bench.runner import resolve_training, train_settings

REFERENCE = "multivae is not installed: pip install -e '.[reference]' (make install does)"
HAS_MULTIVAE = importlib.util.find_spec("multivae") is not None


def polymnist_specs_only() -> MultimodalDataset:
    """PolyMNIST's specs over two blank samples: enough to build a model at its sizes."""
    x = {m: torch.zeros(2, *s.shape) for m, s in SPECS.items()}
    split = Split(x, torch.zeros(2, dtype=torch.long))
    return MultimodalDataset(
        name="polymnist", specs=dict(SPECS), train=split, test=split, n_classes=10, latent_dim=512
    )


def mnist_svhn_specs_only() -> MultimodalDataset:
    """MNIST-SVHN's specs and likelihood weights over two blank samples."""
    specs = dict(mnist_svhn.SPECS)
    x = {m: torch.zeros(2, *s.shape) for m, s in specs.items()}
    split = Split(x, torch.zeros(2, dtype=torch.long))
    weights = {"mnist": specs["svhn"].size / specs["mnist"].size, "svhn": 1.0}
    return MultimodalDataset(
        name="mnist-svhn",
        specs=specs,
        train=split,
        test=split,
        n_classes=10,
        latent_dim=20,
        rescale=weights,
    )


def _count(module: torch.nn.Module, *prefixes: str) -> int:
    return sum(p.numel() for n, p in module.named_parameters() if n.startswith(tuple(prefixes)))


# Our modules per MultiVae module: the reference's encoder heads (4x4 convolutions to the
# latent mean and log-variance) are our Gaussian heads, which JNF keeps beside its flows.
OURS = {
    "jnf": {
        "joint_encoder": ("joint_encoders.", "joint_heads.", "joint_merge."),
        "decoders": ("decoders.",),
        "encoders": ("unimodal_encoders.", *(f"posteriors.m{i}.base." for i in range(5))),
        "flows": tuple(f"posteriors.m{i}.transforms." for i in range(5)),
    },
    **{
        name: {"encoders": ("experts.",), "decoders": ("decoders.",)}
        for name in ("mvae", "mmvae", "mopoe")
    },
}


def _reference_mnist_svhn(name: str) -> torch.nn.Module:
    from multivae.models import JNF, JNFConfig, MoPoE, MoPoEConfig
    from multivae.models.nn.default_architectures import Decoder_AE_MLP, Encoder_VAE_MLP
    from multivae.models.nn.svhn import Decoder_VAE_SVHN, Encoder_VAE_SVHN
    from pythae.models.base.base_config import BaseAEConfig

    base = {
        "n_modalities": 2,
        "input_dims": {"mnist": (1, 28, 28), "svhn": (3, 32, 32)},
        "latent_dim": 20,
        "uses_likelihood_rescaling": True,
        "decoders_dist": {"mnist": "laplace", "svhn": "laplace"},
    }
    net = {m: BaseAEConfig(latent_dim=20, input_dim=d) for m, d in base["input_dims"].items()}
    encoders = {"mnist": Encoder_VAE_MLP(net["mnist"]), "svhn": Encoder_VAE_SVHN(net["svhn"])}
    decoders = {"mnist": Decoder_AE_MLP(net["mnist"]), "svhn": Decoder_VAE_SVHN(net["svhn"])}
    if name == "jnf":
        return JNF(JNFConfig(**base, warmup=100), encoders=encoders, decoders=decoders)
    return MoPoE(MoPoEConfig(**base, beta=5), encoders=encoders, decoders=decoders)


def _reference(name: str) -> torch.nn.Module:
    from multivae.models import (
        JNF,
        MMVAE,
        MVAE,
        JNFConfig,
        MMVAEConfig,
        MoPoE,
        MoPoEConfig,
        MVAEConfig,
    )
    from multivae.models.nn.mmnist import DecoderConvMMNIST, EncoderConvMMNIST_adapted
    from pythae.models.base.base_config import BaseAEConfig

    mods = list(SPECS)
    base = {
        "n_modalities": 5,
        "latent_dim": 512,
        "input_dims": {m: (3, 28, 28) for m in mods},
        "decoders_dist": {m: "laplace" for m in mods},
        "decoder_dist_params": {m: {"scale": 0.75} for m in mods},
    }
    net = BaseAEConfig(latent_dim=512, style_dim=0, input_dim=(3, 28, 28))
    cls, config = {
        "jnf": (JNF, JNFConfig(**base, warmup=400)),
        "mvae": (MVAE, MVAEConfig(**base, warmup=0, beta=1)),
        "mmvae": (MMVAE, MMVAEConfig(**base, K=1, learn_prior=False)),
        "mopoe": (MoPoE, MoPoEConfig(**base, beta=2.5)),
    }[name]
    encoders = {m: EncoderConvMMNIST_adapted(net) for m in mods}
    decoders = {m: DecoderConvMMNIST(net) for m in mods}
    return cls(config, encoders=encoders, decoders=decoders)


@pytest.mark.reference
@pytest.mark.parametrize("name", ["jnf", "mopoe"])
def test_paper_preset_on_mnist_svhn_has_the_reference_parameter_counts(name: str) -> None:
    if not HAS_MULTIVAE:
        pytest.skip(REFERENCE)
    registry = load_registry()
    entry = registry.model(name)
    values = preset_values(entry, "mnist-svhn", "paper", registry.models)
    ours = entry.cls(mnist_svhn_specs_only(), make_config(entry.config, values))
    ref = _reference_mnist_svhn(name)
    prefixes = dict(OURS[name])
    if name == "jnf":
        prefixes["encoders"] = (
            "unimodal_encoders.",
            "posteriors.mnist.base.",
            "posteriors.svhn.base.",
        )
        prefixes["flows"] = ("posteriors.mnist.transforms.", "posteriors.svhn.transforms.")
    for module, prefix in prefixes.items():
        assert _count(ours, *prefix) == _count(ref, f"{module}."), module
    total = sum(p.numel() for p in ours.parameters())
    assert total == sum(p.numel() for p in ref.parameters())
    assert total == {"jnf": 2_952_475, "mopoe": 1_552_163}[name]


@pytest.mark.reference
@pytest.mark.slow
@pytest.mark.parametrize("name", ["jnf", "mvae", "mmvae", "mopoe"])
def test_paper_preset_has_the_reference_parameter_counts(name: str) -> None:
    if not HAS_MULTIVAE:
        pytest.skip(REFERENCE)
    registry = load_registry()
    entry = registry.model(name)
    config = make_config(entry.config, preset_values(entry, "polymnist", "paper", registry.models))
    ours = entry.cls(polymnist_specs_only(), config)
    ref = _reference(name)
    for module, prefixes in OURS[name].items():
        assert _count(ours, *prefixes) == _count(ref, f"{module}."), module
    ref_total = sum(p.numel() for p in ref.parameters())
    ours_total = sum(p.numel() for p in ours.parameters())
    if name == "mmvae":
        # MultiVae's MMVAE registers its prior's mean and log-variance (latent 512 each) as
        # parameters; with learn_prior False ours holds the fixed prior as a buffer.
        assert ref_total - ours_total == 2 * 512
    else:
        assert ours_total == ref_total
    if name == "jnf":
        assert ours_total == 32_040_015  # the figure measured in issue 12


def test_the_jnf_paper_sizes_without_the_reference() -> None:
    """The published JNF's module sizes, from the figures measured on MultiVae 1.0.3."""
    registry = load_registry()
    entry = registry.model("jnf")
    config = make_config(entry.config, preset_values(entry, "polymnist", "paper", registry.models))
    ours = entry.cls(polymnist_specs_only(), config)
    for module, size in {
        "joint_encoder": 13_056_320,
        "decoders": 5_718_735,
        "encoders": 10_957_120,
        "flows": 2_307_840,
    }.items():
        assert _count(ours, *OURS["jnf"][module]) == size, module


def test_a_pair_without_the_preset_is_an_error_naming_it() -> None:
    out = CliRunner().invoke(
        app, ["run", "mvae", "--dataset", "circles-squares", "--preset", "paper", "--threads", "1"]
    )
    assert out.exit_code == 2, out.output
    assert "no preset 'paper' for (mvae, circles-squares)" in out.output
    assert "mvae on polymnist" in out.output and "jnf on polymnist" in out.output
    registry = load_registry()
    with pytest.raises(BenchError, match="unknown preset 'papers'; known: paper"):
        preset_values(registry.model("jnf"), "polymnist", "papers", registry.models)


def test_the_training_half_resolves_from_the_preset_and_can_be_overridden() -> None:
    paper = resolve_training(RunConfig(model="jnf", dataset="polymnist", preset="paper"))
    t = TRAINING["paper"]["polymnist"]
    assert (
        (paper.validation, paper.validation_seed, paper.lr_patience, paper.keep_best)
        == (
            t.validation,
            t.validation_seed,
            t.lr_patience,
            t.keep_best,
        )
        == (0.1, 42, 30, True)
    )
    settings = train_settings(paper, {"joint": 1}, progress=False)
    assert settings.validation == 0.1 and settings.keep_best and settings.lr_patience == 30
    plain = resolve_training(RunConfig(model="jnf"))
    assert (plain.validation, plain.lr_patience, plain.keep_best) == (0.0, None, False)
    mine = resolve_training(
        RunConfig(model="jnf", dataset="polymnist", preset="paper", lr_patience=5, validation=0.2)
    )
    assert (mine.validation, mine.lr_patience, mine.keep_best) == (0.2, 5, True)
    with pytest.raises(BenchError, match="--keep-best needs a validation split"):
        resolve_training(RunConfig(model="jnf", keep_best=True))


def test_a_preset_run_is_recorded_and_apart_on_the_leaderboard(tmp_path: Path) -> None:
    from mmvae_bench.leaderboard.runs import config_id, config_identity
    from mmvae_bench.results import SCHEMA_VERSION, RunRecord

    base = {
        "schema": 3,
        "run_id": "r",
        "status": "ok",
        "model": "jnf",
        "dataset": "polymnist",
        "seed": 0,
        "config": {"latent_dim": 512},
        "run": {"precision": "no", "validation": 0.0, "validation_seed": 42, "keep_best": False},
        "protocol": {"version": "1"},
        "environment": {},
        "created": "2026-12-03T00:00:00Z",
        "epochs": {},
        "stages": {},
        "metrics": {},
        "timings": {},
    }
    old = RunRecord.from_json({**base, "schema": 2, "run": {"precision": "no"}})
    plain = RunRecord.from_json(base)
    paper = RunRecord.from_json(
        {**base, "preset": "paper", "run": {**base["run"], "validation": 0.1, "keep_best": True}}
    )
    assert old.preset is None and old.schema == SCHEMA_VERSION  # schema 2 migrates
    # A run without a preset or held-out data keeps the id older records had.
    assert config_id(config_identity(plain)) == config_id(config_identity(old))
    identity = config_identity(paper)
    assert identity["preset"] == "paper" and identity["validation"] == 0.1
    assert config_id(identity) != config_id(config_identity(plain))
    # A cosine schedule is another row; "constant" is what every run without one did.
    for schedule, apart in (("cosine", True), ("constant", False)):
        run = RunRecord.from_json({**base, "run": {**base["run"], "lr_schedule": schedule}})
        assert (config_id(config_identity(run)) != config_id(config_identity(plain))) is apart
