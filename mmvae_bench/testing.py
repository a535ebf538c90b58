"""Conformance checks for model plugins, meant to be called from a pytest suite.

A plugin author checks a model against the contract of :class:`~mmvae_bench.api.MultimodalVAE`
(README.md, "Write your own model"; each method's rules are in its docstring in
:mod:`mmvae_bench.model`) with one call per test::

    from mmvae_bench.testing import check_model, tiny_dataset
    from my_plugin import mmvae_bench_models

    def test_conforms():
        (entry,) = mmvae_bench_models()
        check_model(entry)                                   # 3 tiny modalities
        check_model(entry, tiny_dataset(("image32", "image32")))

What is checked, on one small batch (a failure raises ``AssertionError`` naming the model, the
stage or subset, and the rule broken, also when the model's own code raises: e.g.
``poe-vae, stage 'train': loss() raised BenchError ...``):

- the entry: ``cls`` subclasses ``MultimodalVAE``, ``config`` is a frozen dataclass subclassing
  ``ModelConfig``, and the per-dataset defaults (when the dataset has an entry) build a config;
- stages: at least one, unique names; each takes one Adam step after
  :func:`mmvae_bench.train.freeze_for_stage` with a finite scalar ``loss`` (every entry of the
  loss dict a finite scalar; a ``pass_epoch`` stage is given ``epoch=0.5``), some parameter of
  the stage's modules changes and every other tensor of the ``state_dict`` (buffers included)
  stays bit-identical; an undeclared stage raises ``BenchError`` (``self.unknown_stage``);
- inference: every non-empty subset S encodes, from a batch holding *only* S's modalities, to
  ``z`` of shape ``(n, B, latent_dim)`` and generates every modality as ``(n, B, *shape)``;
  ``prior_sample(n)`` is ``(n, latent_dim)`` and ``sample(n)`` gives ``(n, *shape)``;
- checkpoints: the ``state_dict`` saved with ``torch.save`` and loaded with
  ``weights_only=True`` into a freshly built model decodes the same ``z`` to identical outputs.

Keep the model tiny: :data:`TINY_OVERRIDES` applies to the config fields it names that the
config has; pass model-specific ones (flow sizes, sample counts) as ``overrides``.
"""

from __future__ import annotations

import dataclasses
import io
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from mmvae_bench.config import make_config
from mmvae_bench.data.spec import ModalitySpec, MultimodalDataset, Split
from mmvae_bench.errors import BenchError
from mmvae_bench.hmc import HMCSettings
from mmvae_bench.model import (
    LatentSample,
    ModelConfig,
    ModelEntry,
    MultimodalVAE,
    Stage,
    all_subsets,
    subset_key,
)
from mmvae_bench.train import freeze_for_stage

__all__ = ["TINY_OVERRIDES", "TINY_MODALITIES", "check_model", "stage_names", "tiny_dataset"]

# Applied to whichever of these fields a config has (the conv nets' width, the encoders'
# feature size): enough to run every code path in well under a second per model.
TINY_OVERRIDES: dict[str, Any] = {"latent_dim": 4, "batch_size": 8, "width": 4, "features": 16}

# A few steps suffice to check the shapes of HMC-sampled subset posteriors.
_TINY_HMC = HMCSettings(steps=2, n_leapfrog=2, step_size=0.01)

TINY_MODALITIES: dict[str, dict[str, Any]] = {
    # PolyMNIST-like: 3x28x28 colour image, Gaussian likelihood.
    "image28": {
        "shape": (3, 28, 28),
        "kind": "image",
        "likelihood": "gaussian",
        "scale": 0.15,
        "encoder": "conv28",
        "decoder": "conv28",
        "classifier": "cnn28",
        "fid": True,
    },
    # circles-squares-like: 1x32x32 binary image, Bernoulli likelihood.
    "image32": {
        "shape": (1, 32, 32),
        "kind": "image",
        "likelihood": "bernoulli",
        "encoder": "conv32",
        "decoder": "conv32",
        "classifier": "cnn32",
        "fid": True,
    },
    # A feature vector, Gaussian likelihood, MLP nets.
    "vector": {"shape": (6,), "kind": "vector", "likelihood": "gaussian", "scale": 0.5},
}


def tiny_dataset(
    modalities: Sequence[str] = ("image28", "image28", "vector"), n: int = 16, *, seed: int = 0
) -> MultimodalDataset:
    """A small random dataset for model tests: modalities ``m0, m1, ...`` of the given kinds.

    Args:
        modalities: one kind per modality, each a key of :data:`TINY_MODALITIES`.
        n: samples in each split (train and test share them).
        seed: seed of the generated data and labels (3 classes).

    Returns:
        A :class:`MultimodalDataset` named ``"tiny"``; Bernoulli modalities hold 0/1 values,
        the others uniform values in [0, 1]; the vector modality (if any) has lambda = 2 so
        likelihood weights are exercised.
    """
    unknown = [k for k in modalities if k not in TINY_MODALITIES]
    if unknown or len(modalities) < 2:
        raise BenchError(
            f"tiny_dataset needs >= 2 modalities of kinds {sorted(TINY_MODALITIES)}, "
            f"got {list(modalities)}"
        )
    g = torch.Generator().manual_seed(seed)
    specs = {
        f"m{i}": ModalitySpec(name=f"m{i}", **TINY_MODALITIES[kind])
        for i, kind in enumerate(modalities)
    }
    x = {}
    for m, s in specs.items():
        u = torch.rand(n, *s.shape, generator=g)
        x[m] = (u > 0.5).float() if s.likelihood == "bernoulli" else u
    y = torch.randint(0, 3, (n,), generator=g)
    rescale = {m: 2.0 for m, s in specs.items() if s.kind == "vector"}
    split = Split(x, y)
    return MultimodalDataset(
        name="tiny",
        specs=specs,
        train=split,
        test=split,
        n_classes=3,
        latent_dim=4,
        rescale=rescale,
        info={"source": "mmvae_bench.testing.tiny_dataset"},
    )


def stage_names(entry: ModelEntry) -> list[str]:
    """The names of ``entry``'s training stages, in order (what ``mmvae-bench models`` lists).

    Stages are declared by an instance (their epochs and learning rates come from the config),
    so the names are read from one: the entry's config with the :data:`TINY_OVERRIDES` it has
    fields for, built on the default :func:`tiny_dataset`, which is what :func:`check_model`
    builds first, so every model that passes the kit builds here too, in milliseconds. A
    class-level list of names would be a second declaration that can drift from ``stages``.
    The global RNG is left as it was.

    Raises:
        Whatever building the model or reading its stages raises (the caller shows it).
    """
    fields = {f.name for f in dataclasses.fields(entry.config)}
    config = make_config(entry.config, {k: v for k, v in TINY_OVERRIDES.items() if k in fields})
    with torch.random.fork_rng(devices=[]):
        model = entry.cls(tiny_dataset(), config)
        return [s.name for s in model.stages]


def check_model(
    entry: ModelEntry,
    dataset: MultimodalDataset | None = None,
    *,
    overrides: Mapping[str, Any] | None = None,
    batch_size: int = 4,
    n: int = 2,
) -> MultimodalVAE:
    """Run every conformance check on ``entry`` (see the module docstring).

    Args:
        entry: the model as its plugin registers it.
        dataset: where to check it; default :func:`tiny_dataset` (three modalities). Only the
            first ``batch_size`` training samples are used.
        overrides: config values on top of the entry's per-dataset defaults and of the
            :data:`TINY_OVERRIDES` the config has fields for.
        batch_size: datapoints in the checked batch.
        n: samples per datapoint for ``encode``/``generate``/``sample``.

    Returns:
        The model after its stages' steps (in eval mode), for further checks.

    Raises:
        AssertionError: a check failed; the message names the model, stage or subset.
    """
    dataset = dataset if dataset is not None else tiny_dataset()
    name = entry.name
    config = _check_config(entry, dataset, overrides or {})
    torch.manual_seed(0)
    model = _build(entry, dataset, config)
    batch = dataset.train.batch(slice(0, batch_size))
    stages = _stages(name, model)
    for stage in stages:
        _check_stage(name, model, stage, batch)
    _check_undeclared_stage(name, model, batch)
    model.eval()
    model.requires_grad_(False)
    with torch.no_grad():
        _check_inference(name, model, batch, n)
    _check_round_trip(entry, dataset, config, model, n)
    return model


# -- the checks -------------------------------------------------------------------------------
def _check_config(
    entry: ModelEntry, dataset: MultimodalDataset, overrides: Mapping[str, Any]
) -> ModelConfig:
    """The entry's config class is a frozen ModelConfig dataclass; build the tiny config."""
    cls = entry.config
    assert isinstance(entry.cls, type) and issubclass(entry.cls, MultimodalVAE), (
        f"{entry.name}: ModelEntry.cls must subclass MultimodalVAE, got {entry.cls!r}"
    )
    assert dataclasses.is_dataclass(cls) and issubclass(cls, ModelConfig), (
        f"{entry.name}: ModelEntry.config must be a dataclass subclassing ModelConfig"
    )
    assert cls.__dataclass_params__.frozen, f"{entry.name}: {cls.__name__} must be frozen"
    fields = {f.name for f in dataclasses.fields(cls)}
    values = dict(entry.defaults.get(dataset.name, {}))
    values.update({k: v for k, v in TINY_OVERRIDES.items() if k in fields})
    values.update(overrides)
    try:
        return make_config(cls, values)
    except BenchError as e:
        raise AssertionError(f"{entry.name}: config {values} rejected: {e}") from None


def _check_stage(name: str, model: MultimodalVAE, stage: Stage, batch: dict[str, Tensor]) -> None:
    """One Adam step of ``stage`` changes its modules and nothing else."""
    where = f"{name}, stage '{stage.name}'"
    try:
        params = freeze_for_stage(model, stage)
    except BenchError as e:
        raise AssertionError(f"{where}: {e}") from None
    assert params, f"{where}: no parameters to train in modules {stage.modules}"
    before = {k: v.detach().clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        cached = _call(where, "precompute()", lambda: model.precompute(batch, stage.name))
    # Mid-schedule for a stage that anneals: the weights it ramps are neither 0 nor final.
    kwargs = {"epoch": 0.5} if stage.pass_epoch else {}
    out = _call(where, "loss()", lambda: model.loss(batch, stage.name, cached, **kwargs))
    rule = "loss() must return a dict with a scalar 'loss' (a batch mean) and named scalar parts"
    assert isinstance(out, Mapping) and "loss" in out, (
        f"{where}: {rule}; got {type(out).__name__}"
        + (f" with keys {sorted(out)}" if isinstance(out, Mapping) else "")
    )
    for key, value in out.items():
        assert isinstance(value, Tensor) and value.dim() == 0, (
            f"{where}: {rule}; part '{key}' is "
            f"{tuple(value.shape) if isinstance(value, Tensor) else type(value).__name__}"
        )
        assert bool(torch.isfinite(value)), (
            f"{where}: loss() must be finite on the tiny batch; part '{key}' is {value.item()}"
        )
    assert out["loss"].requires_grad, f"{where}: 'loss' does not depend on the stage's parameters"
    opt = torch.optim.Adam(params, lr=stage.lr)
    opt.zero_grad(set_to_none=True)
    out["loss"].backward()
    opt.step()
    after = model.state_dict()
    prefixes = tuple(f"{m}." for m in stage.modules)
    own = [k for k in before if k.startswith(prefixes)]
    others = [k for k in before if not k.startswith(prefixes)]
    assert any(not torch.equal(before[k], after[k]) for k in own), (
        f"{where}: one optimizer step changed no parameter of modules {stage.modules}"
    )
    changed = [k for k in others if not torch.equal(before[k], after[k])]
    assert not changed, f"{where}: changed tensors outside its modules {stage.modules}: {changed}"


def _build(entry: ModelEntry, dataset: MultimodalDataset, config: ModelConfig) -> MultimodalVAE:
    """``entry.cls(dataset, config)``; anything it raises names the model."""
    cls = getattr(entry.cls, "__name__", repr(entry.cls))
    model = _call(
        entry.name, f"building {cls}(dataset, config)", lambda: entry.cls(dataset, config)
    )
    assert isinstance(model, MultimodalVAE), f"{entry.name}: {entry.cls} is not a MultimodalVAE"
    return model


def _stages(name: str, model: MultimodalVAE) -> list[Stage]:
    """The declared stages: a non-empty list of :class:`Stage` with unique names."""
    stages = _call(name, "stages", lambda: model.stages)
    assert isinstance(stages, Sequence) and stages, (
        f"{name}: stages must be a non-empty list of Stage, got {stages!r}"
    )
    wrong = [s for s in stages if not isinstance(s, Stage)]
    assert not wrong, f"{name}: stages must be a list of Stage, got {wrong!r}"
    names = [s.name for s in stages]
    assert len(set(names)) == len(names), f"{name}: stage names repeat: {names}"
    return list(stages)


def _call(where: str, what: str, call: Callable[[], Any]) -> Any:
    """``call()``; an exception in the model's code becomes an AssertionError naming ``where``.

    The original stays chained (``from``), so its traceback still shows the line.
    """
    try:
        return call()
    except Exception as e:
        raise AssertionError(f"{where}: {what} raised {type(e).__name__}: {e}") from e


def _check_undeclared_stage(name: str, model: MultimodalVAE, batch: dict[str, Tensor]) -> None:
    """``loss()`` with a stage the model does not declare raises :class:`BenchError`."""
    stage = "no-such-stage"
    where = f"{name}, stage {stage!r} (not declared)"
    rule = "loss() must raise BenchError for an undeclared stage (raise self.unknown_stage(stage))"
    try:
        model.loss(batch, stage, {})
    except BenchError:
        return
    except Exception as e:
        raise AssertionError(f"{where}: {rule}; it raised {type(e).__name__}: {e}") from e
    raise AssertionError(f"{where}: {rule}; it returned")


def _check_inference(name: str, model: MultimodalVAE, batch: dict[str, Tensor], n: int) -> None:
    """Every subset encodes and generates with the right shapes; prior sampling too."""
    b = next(iter(batch.values())).shape[0]
    d = model.latent_dim
    for subset in all_subsets(model.modalities):
        where = f"{name}, subset {subset_key(subset)}"
        only = {m: batch[m] for m in subset}  # the model must not read other modalities
        try:
            ls = model.encode(only, subset, n, hmc=_TINY_HMC)
            generated = model.generate(only, subset, n, hmc=_TINY_HMC)
        except Exception as e:
            raise AssertionError(
                f"{where}: encode/generate from a batch of only {list(subset)} raised "
                f"{type(e).__name__}: {e}"
            ) from e
        assert isinstance(ls, LatentSample), f"{where}: encode must return a LatentSample"
        assert tuple(ls.z.shape) == (n, b, d), (
            f"{where}: encode z has shape {tuple(ls.z.shape)}, expected {(n, b, d)}"
        )
        assert bool(torch.isfinite(ls.z).all()), f"{where}: encode gave non-finite z"
        _check_outputs(f"{where}, generate", model, generated, (n, b))
    z = model.prior_sample(n)
    assert tuple(z.shape) == (n, d), f"{name}: prior_sample(n) has shape {tuple(z.shape)}"
    _check_outputs(f"{name}, sample", model, model.sample(n), (n,))


def _check_outputs(
    where: str, model: MultimodalVAE, out: Mapping[str, Tensor], lead: tuple
) -> None:
    assert set(out) == set(model.modalities), (
        f"{where}: returned modalities {sorted(out)}, expected {sorted(model.modalities)}"
    )
    for m, t in out.items():
        want = (*lead, *model.specs[m].shape)
        assert tuple(t.shape) == want, f"{where}: '{m}' has shape {tuple(t.shape)}, expected {want}"
        assert bool(torch.isfinite(t).all()), f"{where}: '{m}' has non-finite values"


def _check_round_trip(
    entry: ModelEntry,
    dataset: MultimodalDataset,
    config: ModelConfig,
    model: MultimodalVAE,
    n: int,
) -> None:
    """torch.save(state_dict) -> torch.load(weights_only=True) into a fresh model: same decode."""
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    buf.seek(0)
    fresh = _build(entry, dataset, config)
    try:
        fresh.load_state_dict(torch.load(buf, weights_only=True))
    except Exception as e:
        raise AssertionError(f"{entry.name}: checkpoint round trip failed: {e}") from None
    fresh.eval()
    with torch.no_grad():
        z = model.prior_sample(n)
        a, b = model.decode(z), fresh.decode(z)
    diff = [m for m in a if not torch.equal(a[m], b[m])]
    assert not diff, f"{entry.name}: decoded outputs differ after a save/load round trip: {diff}"
