"""The model interface every plugin implements: stages, losses, subset inference."""

from __future__ import annotations

import difflib
import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any, Literal

import torch
from torch import Tensor, nn

from mmvae_bench.data.spec import MultimodalDataset
from mmvae_bench.errors import BenchError
from mmvae_bench.hmc import HMCSettings

__all__ = [
    "LatentSample",
    "ModelConfig",
    "ModelEntry",
    "MultimodalVAE",
    "NetConfig",
    "Stage",
    "Subset",
    "all_subsets",
    "subset_key",
]

Batch = dict[str, Tensor]
Subset = tuple[str, ...]


def subset_key(subset: Sequence[str]) -> str:
    """The results key of a subset: sorted names joined by ``+`` (``"image+sound"``)."""
    return "+".join(sorted(subset))


def all_subsets(modalities: Sequence[str], *, proper: bool = False) -> list[Subset]:
    """Every non-empty subset (sorted tuples), by size then name; ``proper`` drops the full set."""
    names = sorted(modalities)
    top = len(names) - 1 if proper else len(names)
    out: list[Subset] = []
    for k in range(1, top + 1):
        out.extend(itertools.combinations(names, k))
    return out


@dataclass(frozen=True, kw_only=True)
class Stage:
    """One training stage, declared by the model.

    The trainer optimises the parameters of ``modules`` (attribute names of submodules) with
    Adam at ``lr`` for ``epochs`` epochs; every other submodule is frozen with
    ``requires_grad_(False)`` and put in ``eval()`` mode for the stage.

    A stage whose loss depends on how far training has got (KL annealing, warm-ups) sets
    ``pass_epoch``: the trainer then calls ``loss(batch, stage, cached, epoch=e)`` with ``e``
    the epochs completed in this stage as a float (``step / steps_per_epoch``, 0 at the first
    step). The schedule is a pure function of ``e``: no step counter inside the model.
    """

    name: str
    modules: tuple[str, ...]
    epochs: int
    lr: float
    batch_size: int | None = None  # None: the model config's batch_size
    pass_epoch: bool = False  # the trainer passes ``epoch=`` (float) to ``loss``

    def __post_init__(self) -> None:
        if self.epochs < 0:
            raise BenchError(f"stage '{self.name}': epochs must be >= 0, got {self.epochs}")


@dataclass(frozen=True, kw_only=True)
class ModelConfig:
    """Fields every model config has; a plugin's config subclasses it.

    ``None`` for ``latent_dim`` means "the dataset's default", resolved before the model is
    built, so the recorded config always holds the value that ran.
    """

    latent_dim: int | None = None  # None: the dataset's latent_dim
    batch_size: int = 64
    lr: float = 1e-3
    beta: float = 1.0  # weight of the KL term

    def require_at_least(self, minimum: float, *names: str) -> None:
        """Raise :class:`BenchError` naming the first field in ``names`` below ``minimum``.

        ``None`` values (fields meaning "use the default") are skipped.
        """
        for name in names:
            value = getattr(self, name)
            if value is not None and value < minimum:
                raise BenchError(f"{name} must be >= {minimum}, got {value}")

    def require_positive(self, *names: str) -> None:
        """Raise :class:`BenchError` naming the first field in ``names`` not > 0 (None skipped)."""
        for name in names:
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise BenchError(f"{name} must be > 0, got {value}")

    def __post_init__(self) -> None:
        for f in fields(self):  # inf/nan reach no loss: refused where they enter, named
            value = getattr(self, f.name)
            if isinstance(value, float) and not math.isfinite(value):
                raise BenchError(f"{f.name} must be a finite number, got {value}")
        if self.latent_dim is not None and self.latent_dim < 1:
            raise BenchError(f"latent_dim must be >= 1, got {self.latent_dim}")
        if self.batch_size < 1:
            raise BenchError(f"batch_size must be >= 1, got {self.batch_size}")
        if not self.lr > 0:
            raise BenchError(f"lr must be > 0, got {self.lr}")
        if not self.beta >= 0:
            raise BenchError(f"beta must be >= 0, got {self.beta}")


@dataclass(frozen=True, kw_only=True)
class NetConfig(ModelConfig):
    """:class:`ModelConfig` plus the fields of a model built from the built-in nets.

    ``width`` and ``features`` size :func:`mmvae_bench.nets.build_encoder` and
    ``build_decoder``; ``rescale`` weights each modality's log-likelihood by the dataset's
    ``likelihood_weights`` (on in every built-in model, so they all see the same objective
    scale); ``nets`` picks the family of encoders and decoders: ``suite`` (sized by ``width``
    and ``features``) or ``multivae`` (the published runs' layers, ReLU, ``features`` fixed
    by the net; :mod:`mmvae_bench.nets.published`). A config that subclasses this gets the
    fields, their defaults and their checks.
    """

    width: int = 16  # base channel count of the conv nets (16/32/64)
    features: int = 128  # size of each modality's encoder features
    rescale: bool = True  # weight log-likelihoods by the dataset's lambda_j
    nets: Literal["suite", "multivae"] = "suite"  # encoder/decoder family (nets.NetFamily)

    def __post_init__(self) -> None:
        super().__post_init__()
        self.require_at_least(1, "width", "features")
        if self.nets not in ("suite", "multivae"):
            raise BenchError(f"nets must be one of ['suite', 'multivae'], got {self.nets!r}")


@dataclass
class LatentSample:
    """Latent samples from a (subset) posterior.

    Attributes:
        z: ``(n, batch, latent_dim)`` samples.
        info: diagnostics, e.g. ``{"hmc_acceptance": 0.83}``.
    """

    z: Tensor
    info: dict[str, float] = field(default_factory=dict)


class MultimodalVAE(nn.Module):
    """Base class of every model plugin.

    Subclasses build their submodules in ``__init__(dataset, config)`` (no I/O, no device
    moves), declare ``stages``, and implement ``loss``, ``encode`` and ``decode``.
    ``generate`` and ``sample`` have default implementations in terms of those.

    Attributes:
        specs: modality specs keyed by name (from the dataset).
        config: the resolved config dataclass.
        latent_dim: size of z.
    """

    def __init__(self, dataset: MultimodalDataset, config: ModelConfig) -> None:
        super().__init__()
        self.specs = dict(dataset.specs)
        self.config = config
        if config.latent_dim is None:
            raise BenchError("latent_dim must be resolved before building a model")
        self.latent_dim = int(config.latent_dim)
        self.likelihood_weights = dataset.likelihood_weights()

    @property
    def modalities(self) -> tuple[str, ...]:
        """Modality names in canonical order."""
        return tuple(self.specs)

    # -- training -------------------------------------------------------------------------
    @property
    def stages(self) -> list[Stage]:
        """The ordered training stages."""
        raise NotImplementedError

    def loss(self, batch: Batch, stage: str, cached: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """Loss of one batch in ``stage``.

        Args:
            batch: modality tensors ``(batch, *shape)``.
            stage: name of a declared stage; an unknown name raises ``BenchError``.
            cached: per-sample tensors from :meth:`precompute` for this batch (may be empty).

        A stage declared with ``pass_epoch=True`` also receives ``epoch=`` (a float, epochs
        completed in the stage); give it a default meaning "training finished" so the loss
        can be evaluated outside the trainer.

        Returns:
            ``{"loss": scalar, **parts}``, every entry a batch mean.
        """
        raise NotImplementedError

    def precompute(self, batch: Batch, stage: str) -> dict[str, Tensor]:
        """Per-sample tensors computed once when ``stage`` starts, from frozen parts.

        Called under ``torch.no_grad()`` over the training set in batches; the trainer slices
        the result alongside each batch and passes it to :meth:`loss` as ``cached``. Returns
        ``{}`` by default (nothing cached).
        """
        return {}

    # -- inference ------------------------------------------------------------------------
    def encode(
        self, batch: Batch, subset: Subset, n: int = 1, *, hmc: HMCSettings | None = None
    ) -> LatentSample:
        """Sample z from the posterior given the modalities in ``subset``.

        Args:
            batch: must hold at least the modalities of ``subset``, each ``(B, *shape)``.
            subset: non-empty tuple of modality names.
            n: samples per datapoint.
            hmc: MCMC settings for models that sample subset posteriors with HMC (the
                evaluation protocol passes its own); ``None``: the model's config.

        Returns:
            :class:`LatentSample` with ``z`` of shape ``(n, B, latent_dim)``.
        """
        raise NotImplementedError

    def encode_subsets(
        self,
        batch: Batch,
        subsets: Sequence[Subset],
        n: int = 1,
        *,
        hmc: HMCSettings | None = None,
    ) -> list[LatentSample]:
        """:meth:`encode` for several subsets of one batch: one :class:`LatentSample` each.

        The evaluation calls this once per subset size with every subset of that size, so a
        model can share work between them (JNF: each encoder runs once, and one HMC call
        samples every subset's chains). ``batch`` holds the modalities of all the subsets:
        the sample for a subset must use only that subset's modalities, distributed as
        ``encode(batch, subset, n, hmc=hmc)`` (the random draws may differ). Default: one
        :meth:`encode` per subset, given only that subset's modalities.
        """
        return [
            self.encode({m: batch[m] for m in subset}, subset, n, hmc=hmc) for subset in subsets
        ]

    def decode(self, z: Tensor) -> dict[str, Tensor]:
        """Means of p(x_m | z) for every modality; ``z`` is ``(..., latent_dim)``."""
        raise NotImplementedError

    def prior_sample(self, n: int) -> Tensor:
        """``(n, latent_dim)`` samples of the prior p(z); N(0, I) by default."""
        p = next(self.parameters())
        return torch.randn(n, self.latent_dim, device=p.device, dtype=p.dtype)

    def generate(
        self, batch: Batch, subset: Subset, n: int = 1, *, hmc: HMCSettings | None = None
    ) -> dict[str, Tensor]:
        """Decode posterior samples given ``subset``: ``{m: (n, B, *shape)}``."""
        return self.decode(self.encode(batch, subset, n, hmc=hmc).z)

    def sample(self, n: int) -> dict[str, Tensor]:
        """Decode ``n`` prior samples: ``{m: (n, *shape)}``."""
        return self.decode(self.prior_sample(n))

    # -- helpers for subclasses -------------------------------------------------------------
    def check_subset(self, subset: Subset) -> Subset:
        """Validate ``subset`` (non-empty, known names) and return it sorted."""
        if not subset:
            raise BenchError("a subset of modalities must be non-empty")
        unknown = [m for m in subset if m not in self.specs]
        if unknown:
            raise BenchError(f"unknown modalities {unknown}; known: {sorted(self.specs)}")
        return tuple(sorted(subset))

    def unknown_stage(self, stage: str) -> BenchError:
        """The error for a stage ``loss()`` does not handle: ``raise self.unknown_stage(stage)``.

        It names the stage the model was called with and the declared ones, both as ``repr``
        (a stray space or capital shows), with the closest declared name. When ``stage`` *is*
        declared, the model's own code compared it with a misspelt name, and it says so.
        """
        cls = type(self).__name__
        names = [s.name for s in self.stages]
        if stage in names:
            return BenchError(
                f"{cls} was called with stage {stage!r}, which it declares (stages: {names!r}), "
                "yet raised unknown_stage: a stage name that its loss() or precompute() "
                "compares with is not one of the declared ones (a typo?)"
            )
        close = difflib.get_close_matches(stage, names, n=1) if isinstance(stage, str) else []
        hint = f"; did you mean {close[0]!r}?" if close else ""
        return BenchError(
            f"{cls} was called with stage {stage!r}, which it does not declare; "
            f"declared stages: {names!r}{hint}"
        )


@dataclass(frozen=True, kw_only=True)
class ModelEntry:
    """A model as registered by a plugin (``mmvae_bench_models`` hook).

    Attributes:
        name: unique lower-kebab registry name (``"jnf"``, ``"jnf-shared"``).
        cls: the :class:`MultimodalVAE` subclass, built as ``cls(dataset, config)``.
        config: the config dataclass (a :class:`ModelConfig` subclass).
        defaults: per-dataset config overrides, ``{dataset_name: {field: value}}``.
        description: one line for ``mmvae-bench models``.
        presets: named published settings, ``{preset: {dataset: {field: value}}}`` (``run
            --preset NAME``): they replace ``defaults`` for that dataset; the plugin says in
            comments where each value comes from.
    """

    name: str
    cls: type[MultimodalVAE]
    config: type[ModelConfig]
    defaults: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    description: str = ""
    presets: Mapping[str, Mapping[str, Mapping[str, Any]]] = field(default_factory=dict)
