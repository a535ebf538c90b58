"""Every registered model passes the plugin conformance check (``mmvae_bench.testing``)."""

from __future__ import annotations

import dataclasses
from functools import cache

import pytest
import torch

from mmvae_bench.api import BenchError, DataOptions, MultimodalDataset, NetConfig
from mmvae_bench.plugins import load_registry
from mmvae_bench.testing import check_model, tiny_dataset

REGISTRY = load_registry()

# Model-specific sizes, applied only where a config has the field: small flows, few samples.
SMALL = {"flow_hidden": 16, "flow_layers": 1, "k": 3, "k_subsets": 2}


@cache
def circles_squares(n: int = 8) -> MultimodalDataset:
    """The real circles-squares dataset, cut to ``n`` samples (its defaults then apply)."""
    ds = REGISTRY.dataset("circles-squares").load(DataOptions())
    head = ds.train.subset(torch.arange(n))
    return dataclasses.replace(ds, train=head, test=head)


def _overrides(name: str) -> dict:
    fields = {f.name for f in dataclasses.fields(REGISTRY.model(name).config)}
    return {k: v for k, v in SMALL.items() if k in fields}


def test_every_registered_model_is_checked() -> None:
    assert not REGISTRY.broken, f"plugins failed to load: {REGISTRY.broken}"
    assert {"jnf", "mvae", "mmvae", "mopoe"} <= set(REGISTRY.models)


@pytest.mark.parametrize("name", sorted(REGISTRY.models))
def test_conformance_circles_squares(name: str) -> None:
    check_model(REGISTRY.model(name), circles_squares(), overrides=_overrides(name))


@pytest.mark.parametrize("name", sorted(REGISTRY.models))
def test_conformance_three_modalities(name: str) -> None:
    ds = tiny_dataset(("image28", "image32", "vector"), n=8)
    check_model(REGISTRY.model(name), ds, overrides=_overrides(name))


@pytest.mark.parametrize("name", sorted(REGISTRY.models))
def test_net_config_fields_are_shared_and_checked(name: str) -> None:
    # Every built-in model builds its nets from NetConfig's width/features/rescale.
    cls = REGISTRY.model(name).config
    assert issubclass(cls, NetConfig), f"{name}: config does not subclass NetConfig"
    for field in ("width", "features"):
        with pytest.raises(BenchError, match=field):
            cls(latent_dim=2, **{field: 0})


def test_conformance_with_a_stage_that_is_passed_the_epoch() -> None:
    # MVAE with KL annealing declares ``pass_epoch``: the check hands its loss ``epoch=``.
    entry = REGISTRY.model("mvae")
    model = check_model(entry, circles_squares(), overrides={"anneal_epochs": 2.0})
    assert model.stages[0].pass_epoch


# -- the check itself can fail: broken models are caught with a message naming the fault --------
def _broken(base: str, cls_name: str, **methods) -> object:
    entry = REGISTRY.model(base)
    cls = type(cls_name, (entry.cls,), methods)
    return dataclasses.replace(entry, name=f"broken-{base}", cls=cls)


def test_check_catches_a_loss_that_moves_state_outside_its_stage() -> None:
    def __init__(self, dataset, config):
        REGISTRY.model("mvae").cls.__init__(self, dataset, config)
        self.counter = torch.nn.Module()
        self.counter.register_buffer("steps", torch.zeros(()))

    def loss(self, batch, stage, cached):
        self.counter.steps += 1  # a side effect in loss(): the contract forbids it
        return REGISTRY.model("mvae").cls.loss(self, batch, stage, cached)

    entry = _broken("mvae", "CountingMVAE", __init__=__init__, loss=loss)
    with pytest.raises(AssertionError, match=r"changed tensors outside.*counter\.steps"):
        check_model(entry, tiny_dataset(("vector", "vector"), n=4))


def test_check_catches_an_encoder_reading_modalities_outside_the_subset() -> None:
    mvae = REGISTRY.model("mvae").cls

    def encode(self, batch, subset, n=1, *, hmc=None):
        return mvae.encode(self, batch, self.modalities, n)  # ignores the subset

    entry = _broken("mvae", "PeekingMVAE", encode=encode)
    with pytest.raises(AssertionError, match=r"subset m0: encode/generate .* KeyError"):
        check_model(entry, tiny_dataset(("vector", "vector"), n=4))


def test_check_catches_wrong_latent_shapes() -> None:
    mopoe = REGISTRY.model("mopoe").cls

    def encode(self, batch, subset, n=1, *, hmc=None):
        ls = mopoe.encode(self, batch, subset, n)
        return type(ls)(ls.z[0])  # drops the sample dim

    entry = _broken("mopoe", "FlatMoPoE", encode=encode)
    with pytest.raises(AssertionError, match=r"encode z has shape \(4, 4\), expected \(2, 4, 4\)"):
        check_model(entry, tiny_dataset(("vector", "vector"), n=4))


def test_check_rejects_a_config_outside_model_config() -> None:
    # (A non-frozen subclass of the frozen ModelConfig cannot exist: dataclasses refuse it.)
    base = REGISTRY.model("mvae")
    loose = dataclasses.make_dataclass("LooseConfig", [("epochs", int, 1)])
    with pytest.raises(AssertionError, match="dataclass subclassing ModelConfig"):
        check_model(dataclasses.replace(base, config=loose))


# -- a fault inside the model's own code is an AssertionError naming model, stage and rule ------
def test_check_names_model_and_stage_when_loss_misspells_a_declared_stage() -> None:
    # The plugin author's typo: loss() compares with "trian", so the declared "train" reaches
    # unknown_stage(); the model's BenchError must not surface bare.
    mopoe = REGISTRY.model("mopoe").cls

    def loss(self, batch, stage, cached):
        if stage == "trian":
            return mopoe._loss_train(self, batch)
        raise self.unknown_stage(stage)

    entry = _broken("mopoe", "TypoMoPoE", loss=loss)
    with pytest.raises(AssertionError) as e:
        check_model(entry, tiny_dataset(("vector", "vector"), n=4))
    msg = str(e.value)
    assert msg.startswith("broken-mopoe, stage 'train': loss() raised BenchError: "), msg
    assert "called with stage 'train', which it declares (stages: ['train'])" in msg
    assert "(a typo?)" in msg and isinstance(e.value.__cause__, BenchError)


def test_check_names_the_rule_when_an_undeclared_stage_does_not_raise_bench_error() -> None:
    mvae = REGISTRY.model("mvae").cls

    def loss(self, batch, stage, cached):
        return {"train": mvae._loss_train}[stage](self, batch, 1.0)  # KeyError, not BenchError

    entry = _broken("mvae", "KeyErrorMVAE", loss=loss)
    rule = (
        r"broken-mvae, stage 'no-such-stage' \(not declared\): loss\(\) must raise BenchError "
        r"for an undeclared stage \(raise self.unknown_stage\(stage\)\); it raised KeyError"
    )
    with pytest.raises(AssertionError, match=rule):
        check_model(entry, tiny_dataset(("vector", "vector"), n=4))


def test_check_names_the_rule_when_loss_returns_no_scalar_loss() -> None:
    mvae = REGISTRY.model("mvae").cls

    def loss(self, batch, stage, cached):
        out = mvae.loss(self, batch, stage, cached)
        return {**out, "loss": out["loss"].expand(3)}  # not a batch mean

    entry = _broken("mvae", "VectorLossMVAE", loss=loss)
    with pytest.raises(AssertionError) as e:
        check_model(entry, tiny_dataset(("vector", "vector"), n=4))
    assert str(e.value) == (
        "broken-mvae, stage 'train': loss() must return a dict with a scalar 'loss' (a batch "
        "mean) and named scalar parts; part 'loss' is (3,)"
    )


def test_check_names_the_model_when_building_it_raises() -> None:
    def __init__(self, dataset, config):
        raise ValueError("no nets for this dataset")

    entry = _broken("mvae", "UnbuildableMVAE", __init__=__init__)
    with pytest.raises(AssertionError, match=r"^broken-mvae: building UnbuildableMVAE\(dataset"):
        check_model(entry, tiny_dataset(("vector", "vector"), n=4))


@pytest.mark.parametrize(
    ("stage", "message"),
    [
        (
            "jiont",
            "was called with stage 'jiont', which it does not declare; declared stages: "
            "['joint', 'unimodal']; did you mean 'joint'?",
        ),
        (
            "unimodal ",
            "stage 'unimodal ', which it does not declare; declared stages: "
            "['joint', 'unimodal']; did you mean 'unimodal'?",
        ),
        ("stage-2", "declared stages: ['joint', 'unimodal']"),
        (
            "joint",
            "was called with stage 'joint', which it declares (stages: ['joint', "
            "'unimodal']), yet raised unknown_stage",
        ),
    ],
)
def test_unknown_stage_shows_the_stage_called_and_the_declared_ones(
    stage: str, message: str
) -> None:
    entry = REGISTRY.model("jnf")
    model = entry.cls(tiny_dataset(("vector", "vector"), n=4), entry.config(latent_dim=2))
    err = model.unknown_stage(stage)
    assert isinstance(err, BenchError) and str(err).startswith("JNF ")
    assert message in str(err), str(err)
    if stage == "stage-2":
        assert "did you mean" not in str(err)
