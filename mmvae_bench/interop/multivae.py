"""MultiVae models as suite runs: read a saved folder, convert its weights, write a run folder.

MultiVae (AgatheSenellart/MultiVae, 1.0.3) saves a model as a folder: ``model_config.json``
(the config, ``"name": "<Class>Config"``), ``model.pt`` (``{"model_state_dict": ...}``, tensors
only), ``environment.json``, and, for user-given networks, ``encoders.pkl``/``decoders.pkl``
(``flows.pkl``, ...): cloudpickled modules. The pickles are never read here (unpickling runs
arbitrary code): the architecture is the suite's ``multivae`` nets
(:mod:`mmvae_bench.nets.published`: MultiVae's PolyMNIST and MNIST-SVHN benchmark nets, by
data shape), and every tensor of ``model.pt`` is shape-checked against it, so a model built
from other networks is refused, not guessed.

The conversion maps a MultiVae ``JNF``, ``MVAE``, ``MMVAE`` or ``MoPoE`` state dict onto the
built-in model of the same name, each source tensor used exactly once:

- an encoder (``EncoderConvMMNIST_adapted``, ``Encoder_VAE_SVHN``, ``Encoder_VAE_MLP``) is
  our trunk and a Gaussian head whose weight is its mean and log-variance layers stacked (a
  4x4 convolution on a 4x4 map flattened: it is a linear map of the flattened map); a decoder
  (``DecoderConvMMNIST``, ``Decoder_VAE_SVHN``, ``Decoder_AE_MLP``) is ours layer for layer;
- JNF's ``MultipleHeadJointEncoder``: its copies of the encoders are ``joint_encoders`` and
  ``joint_heads`` (only the means are read by either library), ``enc`` the merging MLP and
  ``fc1``/``fc2`` its Gaussian head; its MAF flows (pythae) are our flows with
  ``flow_affine="multivae"``: even blocks as they are, odd blocks with inputs and outputs in
  reverse order (pythae flips the latent between blocks, we reverse the block's order
  instead); the masks are compared, not copied;
- MMVAE's prior: ``prior_log_var`` is our prior's logits (scale ``softmax * D``), and
  ``prior_mean`` must be zero (ours is).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from mmvae_bench.data.spec import MultimodalDataset
from mmvae_bench.errors import BenchError
from mmvae_bench.io import load_tensors
from mmvae_bench.model import MultimodalVAE

if TYPE_CHECKING:
    from mmvae_bench.plugins import Registry
    from mmvae_bench.results import RunRecord

__all__ = [
    "CONFIG_FILE",
    "SUPPORTED",
    "WEIGHTS_FILE",
    "MultiVaeFolder",
    "config_values",
    "convert_state_dict",
    "import_folder",
    "read_folder",
]

CONFIG_FILE = "model_config.json"
WEIGHTS_FILE = "model.pt"
#: MultiVae model class -> the built-in model it converts to.
SUPPORTED = {"JNF": "jnf", "MVAE": "mvae", "MMVAE": "mmvae", "MoPoE": "mopoe"}
# MultiVae's decoder distributions -> ours, and the scale MultiVae uses when none is given.
_LIKELIHOODS = {"normal": "gaussian", "laplace": "laplace", "bernoulli": "bernoulli"}
_DEFAULT_SCALE = 1.0


@dataclass(frozen=True)
class MultiVaeFolder:
    """A MultiVae saved model, read without unpickling anything.

    Attributes:
        path: the folder, absolute.
        model_class: MultiVae's class name (``"MoPoE"``).
        config: ``model_config.json`` as parsed.
        state_dict: ``model.pt``'s ``model_state_dict``.
        files: ``{file name: sha256}`` of the two files read.
        unread: pickled files in the folder that were not read (their names).
    """

    path: Path
    model_class: str
    config: dict[str, Any]
    state_dict: dict[str, Tensor]
    files: dict[str, str]
    unread: tuple[str, ...]


def read_folder(path: Path) -> MultiVaeFolder:
    """Read a MultiVae saved folder: the config JSON and the tensors of ``model.pt``.

    Raises:
        BenchError: not a folder, a missing or malformed file, an unsupported model class or
            a weights file holding anything but tensors; the message names the file.
    """
    from mmvae_bench.results import file_sha256

    folder = Path(path).expanduser().resolve()
    if not folder.is_dir():
        raise BenchError(f"{path} is not a folder (a MultiVae model is saved as a folder)")
    config_path = folder / CONFIG_FILE
    if not config_path.is_file():
        raise BenchError(
            f"{config_path} not found: a MultiVae saved model has {CONFIG_FILE} and "
            f"{WEIGHTS_FILE} (model.save(DIR))"
        )
    try:
        config = json.loads(config_path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise BenchError(f"{config_path} is not readable JSON: {e}") from None
    name = config.get("name") if isinstance(config, dict) else None
    if not isinstance(name, str) or not name.endswith("Config"):
        raise BenchError(f"{config_path} has no 'name' of a MultiVae config (e.g. 'JNFConfig')")
    model_class = name.removesuffix("Config")
    if model_class not in SUPPORTED:
        raise BenchError(
            f"{config_path}: MultiVae model {model_class!r} cannot be imported; supported: "
            f"{', '.join(SUPPORTED)}"
        )
    weights_path = folder / WEIGHTS_FILE
    if not weights_path.is_file():
        raise BenchError(f"weights file {weights_path} not found (MultiVae saves {WEIGHTS_FILE})")
    # weights_only: a pickled object in model.pt is refused by torch.load, reported as corrupt.
    blob = load_tensors(weights_path, what="MultiVae weights file")
    state = blob.get("model_state_dict") if isinstance(blob, dict) else None
    if not isinstance(state, dict) or not all(
        isinstance(k, str) and isinstance(v, Tensor) for k, v in state.items()
    ):
        raise BenchError(
            f"{weights_path} is not a MultiVae weights file (expected a dict with "
            "'model_state_dict' of tensors)"
        )
    return MultiVaeFolder(
        path=folder,
        model_class=model_class,
        config=config,
        state_dict=dict(state),
        files={f.name: file_sha256(f) for f in (config_path, weights_path)},
        unread=tuple(sorted(p.name for p in folder.glob("*.pkl"))),
    )


# -- the config ------------------------------------------------------------------------------
def config_values(folder: MultiVaeFolder, dataset: MultimodalDataset) -> dict[str, Any]:
    """Our model config values for ``folder``'s model on ``dataset`` (checked against it).

    Raises:
        BenchError: the modalities, shapes, likelihoods or options of ``model_config.json``
            do not match ``dataset`` or have no counterpart in the built-in model.
    """
    c = folder.config
    where = folder.path / CONFIG_FILE

    def need(ok: bool, what: str) -> None:
        if not ok:
            raise BenchError(f"{where}: {what}")

    dims = c.get("input_dims") or {}
    need(
        isinstance(dims, dict) and set(dims) == set(dataset.specs),
        f"modalities {sorted(dims)} are not dataset {dataset.name!r}'s {sorted(dataset.specs)}",
    )
    dists = c.get("decoders_dist") or {}
    params = c.get("decoder_dist_params") or {}
    for m, spec in dataset.specs.items():
        need(
            tuple(dims[m]) == tuple(spec.shape),
            f"input_dims[{m!r}] = {dims[m]}, dataset {dataset.name!r} has {list(spec.shape)}",
        )
        dist = dists.get(m, "normal")
        need(
            _LIKELIHOODS.get(dist) == spec.likelihood,
            f"decoders_dist[{m!r}] = {dist!r}; dataset {dataset.name!r} models {m} with "
            f"{spec.likelihood!r}",
        )
        scale = (params.get(m) or {}).get("scale", _DEFAULT_SCALE)
        need(
            spec.likelihood == "bernoulli" or float(scale) == spec.scale,
            f"decoder_dist_params[{m!r}].scale = {scale}; dataset {dataset.name!r} uses "
            f"{spec.scale}",
        )
    rescale = bool(c.get("uses_likelihood_rescaling"))
    factors = c.get("rescale_factors")
    # MultiVae's default factors are the largest modality's size over each one's, as ours.
    need(
        not rescale or factors is None or factors == dataset.likelihood_weights(),
        f"rescale_factors = {factors}; the dataset's likelihood weights are "
        f"{dataset.likelihood_weights()} (or give none: the same default)",
    )
    need(int(c.get("n_modalities", -1)) == len(dataset.specs), "n_modalities mismatch")
    values: dict[str, Any] = {
        "latent_dim": int(c["latent_dim"]),
        "nets": "multivae",
        "rescale": rescale,
    }
    kind = folder.model_class
    if kind == "JNF":
        values.update(
            beta=float(c.get("beta", 1.0)),
            epochs_joint=0,
            epochs_unimodal=0,
            joint_heads=True,
            flow_affine="multivae",
            **_jnf_shapes(folder),
        )
    elif kind == "MVAE":
        values.update(
            beta=float(c.get("beta", 1.0)),
            epochs=0,
            k_subsets=int(c.get("k", 0)),
            anneal_epochs=float(c.get("warmup", 0)),
        )
    elif kind == "MMVAE":
        need(
            c.get("prior_and_posterior_dist") == "laplace_with_softmax",
            f"prior_and_posterior_dist = {c.get('prior_and_posterior_dist')!r}; the built-in "
            "MMVAE has Laplace posteriors and prior ('laplace_with_softmax')",
        )
        estimator = {"dreg_looser": "dreg", "iwae_looser": "iwae"}.get(c.get("loss"))
        need(estimator is not None, f"loss = {c.get('loss')!r}: dreg_looser or iwae_looser")
        values.update(
            epochs=0, k=int(c.get("K", 10)), estimator=estimator, learn_prior=bool(c["learn_prior"])
        )
    else:  # MoPoE
        need(not c.get("modalities_specific_dim"), "modality-specific latents are not supported")
        values.update(beta=float(c.get("beta", 1.0)), epochs=0)
    return values


def _jnf_shapes(folder: MultiVaeFolder) -> dict[str, Any]:
    """The joint MLP's and the flows' sizes, read from the weights' shapes."""
    sd = folder.state_dict
    layers = sum(1 for k in sd if k.startswith("joint_encoder.enc.") and k.endswith(".0.weight"))
    first_flow = next((k for k in sd if k.startswith("flows.")), None)
    if layers == 0 or first_flow is None:
        raise BenchError(
            f"{folder.path / WEIGHTS_FILE} lacks MultipleHeadJointEncoder or MAF flow weights"
        )
    m = first_flow.split(".")[1]
    blocks = {k.split(".")[3] for k in sd if k.startswith(f"flows.{m}.net.")}
    made = [k for k in sd if k.startswith(f"flows.{m}.net.0.net.") and k.endswith(".weight")]
    return {
        "joint_layers": layers,
        "joint_hidden": int(sd["joint_encoder.enc.0.0.weight"].shape[0]),
        "flow_depth": len(blocks),
        "flow_layers": len(made) - 1,
        "flow_hidden": int(sd[f"flows.{m}.net.0.net.0.weight"].shape[0]),
    }


# -- the weights -----------------------------------------------------------------------------
class _Source:
    """The source tensors; each may be taken once."""

    def __init__(self, state: dict[str, Tensor], where: Path) -> None:
        self.state, self.where, self.used = state, where, set[str]()

    def take(self, key: str) -> Tensor:
        if key not in self.state:
            raise BenchError(f"{self.where}: no tensor {key!r} (not the expected architecture)")
        if key in self.used:
            raise BenchError(f"{self.where}: tensor {key!r} mapped twice (a converter bug)")
        self.used.add(key)
        return self.state[key]

    def head(self, prefix: str, mu: str, logvar: str) -> tuple[Tensor, Tensor]:
        """An encoder's mean and log-variance layers (linear, or 4x4 convolutions on a 4x4
        map) as one linear map, mean rows first."""
        mu_w, lv_w = self.take(f"{prefix}.{mu}.weight"), self.take(f"{prefix}.{logvar}.weight")
        mu_b, lv_b = self.take(f"{prefix}.{mu}.bias"), self.take(f"{prefix}.{logvar}.bias")
        weight = torch.cat([mu_w.reshape(mu_w.shape[0], -1), lv_w.reshape(lv_w.shape[0], -1)])
        return weight, torch.cat([mu_b, lv_b])


Mapping_ = dict[str, Tensor]


# Per data shape, MultiVae's benchmark nets (nets/published.py): the encoder's layers
# (theirs -> ours, weight and bias each), its mean/log-variance layer names, the decoder's.
_ENCODERS: dict[tuple[int, ...], tuple[list[tuple[str, str]], tuple[str, str]]] = {
    (3, 28, 28): (  # EncoderConvMMNIST_adapted
        [(f"shared_encoder.{i}", f"net.{i}") for i in (0, 2, 4)],
        ("class_mu", "class_logvar"),
    ),
    (3, 32, 32): ([(f"enc.{i}", f"net.{i}") for i in (0, 2, 4)], ("c1", "c2")),  # _VAE_SVHN
    (1, 28, 28): ([("layers.0.0", "net.1"), ("layers.1.0", "net.3")], ("embedding", "log_var")),
}
_DECODERS: dict[tuple[int, ...], list[tuple[str, str]]] = {
    (3, 28, 28): [(f"decoder.{i}", f"net.{i}") for i in (0, 3, 5, 7)],  # DecoderConvMMNIST
    (3, 32, 32): [(f"dec.{i}", f"net.{i + 1}") for i in (0, 2, 4, 6)],  # Decoder_VAE_SVHN
    (1, 28, 28): [("layers.0.0", "net.0"), ("layers.1.0", "net.2")],  # Decoder_AE_MLP
}
Shapes = dict[str, tuple[int, ...]]


def _layers(src: _Source, pairs: list[tuple[str, str]], prefix: str, to: str) -> Mapping_:
    return {
        f"{to}.{ours}.{p}": src.take(f"{prefix}.{theirs}.{p}")
        for theirs, ours in pairs
        for p in ("weight", "bias")
    }


def _encoder(src: _Source, shapes: Shapes, m: str, prefix: str, to: str, head: str) -> Mapping_:
    """The trunk of ``prefix`` (an encoder of modality ``m``) to ``to``, its head to ``head``."""
    pairs, (mu, logvar) = _ENCODERS[shapes[m]]
    return _layers(src, pairs, prefix, to) | _linear(head, src.head(prefix, mu, logvar))


def _decoders(src: _Source, shapes: Shapes) -> Mapping_:
    out: Mapping_ = {}
    for m, shape in shapes.items():
        out |= _layers(src, _DECODERS[shape], f"decoders.{m}", f"decoders.{m}")
    return out


def _linear(to: str, wb: tuple[Tensor, Tensor]) -> Mapping_:
    return {f"{to}.weight": wb[0], f"{to}.bias": wb[1]}


def _experts(src: _Source, shapes: Shapes, trunk: str, head: str) -> Mapping_:
    out: Mapping_ = {}
    for m in shapes:
        to = f"experts.{m}"
        out |= _encoder(src, shapes, m, f"encoders.{m}", f"{to}.{trunk}", f"{to}.{head}")
    return out


def _map_mvae(src: _Source, shapes: Shapes, ours: Mapping_) -> Mapping_:
    return _experts(src, shapes, "0", "1.linear") | _decoders(src, shapes)


def _map_mmvae(src: _Source, shapes: Shapes, ours: Mapping_) -> Mapping_:
    mean = src.take("prior_mean")
    if bool(mean.abs().max() > 0):
        raise BenchError(f"{src.where}: prior_mean is not zero; the built-in MMVAE's prior is")
    out = _experts(src, shapes, "encoder", "head") | _decoders(src, shapes)
    return out | {"prior.logits": src.take("prior_log_var").reshape(-1)}


def _map_jnf(src: _Source, shapes: Shapes, ours: Mapping_) -> Mapping_:
    out: Mapping_ = {}
    for m in shapes:
        joint = f"joint_encoder.encoders.{m}"
        out |= _encoder(src, shapes, m, joint, f"joint_encoders.{m}", f"joint_heads.{m}.linear")
        uni, base = f"unimodal_encoders.{m}", f"posteriors.{m}.base.linear"
        out |= _encoder(src, shapes, m, f"encoders.{m}", uni, base)
        out |= _flows(src, m, ours)
    n = sum(1 for k in src.state if k.startswith("joint_encoder.enc.") and k.endswith(".0.weight"))
    for i in range(n):
        for p in ("weight", "bias"):
            out[f"joint_merge.{2 * i}.{p}"] = src.take(f"joint_encoder.enc.{i}.0.{p}")
    fc = [src.take(f"joint_encoder.fc{j}.{p}") for j in (1, 2) for p in ("weight", "bias")]
    out |= _linear(f"joint_merge.{2 * n}.linear", (torch.cat(fc[0::2]), torch.cat(fc[1::2])))
    return out | _decoders(src, shapes)


def _flows(src: _Source, m: str, ours: Mapping_) -> Mapping_:
    """pythae MAF blocks -> our MADE blocks (``hyper`` layers; masks compared, not copied).

    pythae's MADE outputs ``[mu (D); s (D)]``; zuko's interleaves ``(mu_i, s_i)``. pythae flips
    the latent after each block; our odd blocks read it in reverse order instead, so their
    first layer's inputs and last layer's outputs are reversed.
    """
    out: Mapping_ = {}
    block = 0
    while f"flows.{m}.net.{block}.net.0.weight" in src.state:
        layers = sorted(
            int(k.split(".")[5])
            for k in src.state
            if k.startswith(f"flows.{m}.net.{block}.net.") and k.endswith(".weight")
        )
        reverse = block % 2 == 1
        for j, layer in enumerate(layers):
            base = f"flows.{m}.net.{block}.net.{layer}"
            to = f"posteriors.{m}.transforms.{block}.hyper.{2 * j}"
            w, b, mask = (src.take(f"{base}.{p}") for p in ("weight", "bias", "mask"))
            if j == len(layers) - 1:  # [mu; s] rows -> interleaved, reversed on odd blocks
                d = w.shape[0] // 2
                order = torch.arange(d).flip(0) if reverse else torch.arange(d)
                rows = torch.stack([order, order + d], dim=1).reshape(-1)
                w, b, mask = w[rows], b[rows], mask[rows]
            if j == 0 and reverse:
                w, mask = w.flip(1), mask.flip(1)
            if not torch.equal(mask.bool(), ours[f"{to}.mask"].bool()):
                raise BenchError(
                    f"{src.where}: the MADE mask of {base} differs from ours (not a sequential "
                    "MADE as MultiVae's default MAF builds)"
                )
            out[f"{to}.weight"], out[f"{to}.bias"] = w, b
        block += 1
    return out


_MAPPERS: dict[str, Callable[[_Source, Shapes, Mapping_], Mapping_]] = {
    "JNF": _map_jnf,
    "MVAE": _map_mvae,
    "MMVAE": _map_mmvae,
    "MoPoE": _map_mvae,
}


def convert_state_dict(folder: MultiVaeFolder, model: MultimodalVAE) -> dict[str, Tensor]:
    """``model``'s state dict with every parameter taken from ``folder``'s weights.

    Raises:
        BenchError: a source tensor left unused, a parameter of ours left unset, or a shape
            that differs; the message names the weights file and the tensors.
    """
    where = folder.path / WEIGHTS_FILE
    ours = model.state_dict()
    src = _Source(folder.state_dict, where)
    shapes = {m: tuple(spec.shape) for m, spec in model.specs.items()}
    unknown = {m: s for m, s in shapes.items() if s not in _ENCODERS}
    if unknown:
        raise BenchError(
            f"{where}: no MultiVae benchmark nets for the shapes {unknown}; known: "
            f"{', '.join('x'.join(map(str, s)) for s in _ENCODERS)}"
        )
    mapped = _MAPPERS[folder.model_class](src, shapes, ours)
    unused = sorted(set(folder.state_dict) - src.used)
    if unused:
        raise BenchError(
            f"{where}: {len(unused)} tensor(s) have no place in the built-in "
            f"{SUPPORTED[folder.model_class]} (first: {unused[:3]}): not the expected architecture"
        )
    params = {name for name, _ in model.named_parameters()}
    missing = sorted(params - set(mapped))
    if missing:
        raise BenchError(f"{where}: no source for our parameter(s) {missing[:3]}")
    out = dict(ours)
    for key, value in mapped.items():
        if key not in ours:
            raise BenchError(f"{where}: mapped onto {key!r}, which the model does not have")
        if tuple(value.shape) != tuple(ours[key].shape):
            raise BenchError(
                f"{where}: {key} has shape {tuple(value.shape)} in the source, "
                f"{tuple(ours[key].shape)} in the built-in model (a different architecture)"
            )
        out[key] = value.detach().to(ours[key].dtype).clone()
    return out


def import_folder(
    source: Path,
    registry: Registry,
    *,
    dataset: str,
    data_dir: Path | None,
    cache_dir: Path,
    out: Path,
    run_id: str | None = None,
    command: list[str] | None = None,
) -> RunRecord:
    """Import a MultiVae saved folder as the run ``<out>/<run-id>/`` (status ``trained``).

    The run holds a checkpoint of the built-in model with the converted weights and a record
    marked ``imported`` (source folder, class, sha256 of the files read); ``evaluate``, the
    samplers and ``leaderboard build`` treat it as any trained run. Its stages ran 0 epochs
    here. Everything is checked before the run folder is claimed.
    """
    from mmvae_bench.config import RunConfig
    from mmvae_bench.eval.protocol import get_protocol
    from mmvae_bench.results import (
        SCHEMA_VERSION,
        ImportRecord,
        RunRecord,
        StageRecord,
        environment,
        jsonable,
        now,
    )
    from mmvae_bench.rundir import CHECKPOINT_FILE, claim_run_dir
    from mmvae_bench.runner import load_dataset, resolve_model_config, save_checkpoint

    folder = read_folder(source)
    name = SUPPORTED[folder.model_class]
    entry = registry.model(name)
    data = load_dataset(registry, dataset, data_dir=data_dir, cache_dir=cache_dir, seed=0)
    config = resolve_model_config(entry, data, {}, config_values(folder, data))
    model = entry.cls(data, config)
    state = convert_state_dict(folder, model)
    model.load_state_dict(state)
    cfg = RunConfig(
        model=name,
        dataset=dataset,
        out=Path(out),
        data_dir=data_dir,
        cache_dir=Path(cache_dir),
        run_id=run_id or f"{name}-{dataset}-multivae-{uuid.uuid4().hex[:8]}",
        evaluate=False,
    )
    stages = [s.name for s in model.stages]
    record = RunRecord(
        schema=SCHEMA_VERSION,
        run_id=str(cfg.run_id),
        status="trained",
        model=name,
        dataset=dataset,
        seed=0,
        config=jsonable(asdict(config)),
        run=jsonable(asdict(cfg)),
        protocol=get_protocol("full").as_record(),
        environment=environment(torch.device("cpu"), torch.get_num_threads()),
        created=now(),
        epochs={s: 0 for s in stages},
        stages={s: StageRecord(s, 0, 0, 0, 0.0, 0.0, {}) for s in stages},
        timings={"train_s": 0.0},
        uid=uuid.uuid4().hex,
        command=command,
        dataset_info={"train": len(data.train), "test": len(data.test), **data.info},
        imported=ImportRecord(
            source="multivae",
            path=str(folder.path),
            model_class=folder.model_class,
            files=dict(folder.files),
        ),
    )
    claimed = claim_run_dir(Path(out), record.run_id, "new")
    try:
        save_checkpoint(claimed.path / CHECKPOINT_FILE, model, record, stages)
        record.save(claimed.path)
    finally:
        claimed.release()
    return record
