"""Ex-post latent samplers: where unconditional generation draws its z from (``--sampler``).

With a tight likelihood the aggregate posterior q(z) = E_X q(z|X) drifts far from the prior
N(0, I) (KL of 170-215 nats measured on polymnist-lite, issue 3), and decoding prior draws gives
incoherent samples. The fix the JNF paper (Senellart & Allassonnière, arXiv 2502.03952) leaves
open is to fit a density to the training set's joint embeddings once training is done and to
sample from it instead. Three kinds, for every model:

* ``prior``: the model's own :meth:`~mmvae_bench.model.MultimodalVAE.prior_sample` (the
  default; nothing is fitted).
* ``gmm``: a Gaussian mixture fitted by EM (scikit-learn) to the embeddings; its parameters are
  stored as tensors and sampled with torch.
* ``flow``: a zuko masked autoregressive flow (MAF, or a neural spline flow) fitted by maximum
  likelihood to the standardised embeddings for a few epochs.

The embeddings are one sample z ~ q(z|X) per training point, from
``model.encode(batch, all modalities, 1)`` (batched, no grad): a sample rather than the
posterior mean, because the model API exposes only samples, and because the density of
samples is the aggregate posterior itself, the distribution decoding should see.

A sampler is fitted once per run (seeded by the run's seed, on the caller's RNG left alone),
saved as ``<run>/sampler.pt`` (tensors, strings and numbers only: loadable with
``weights_only=True``) and described in the record's top-level ``sampler`` entry.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal, get_args

import torch
import zuko
from torch import Tensor, nn

from mmvae_bench.config import SamplerKind, make_config
from mmvae_bench.data.spec import Split, iter_batches
from mmvae_bench.errors import BenchError
from mmvae_bench.io import atomic_torch_save, load_tensors
from mmvae_bench.model import MultimodalVAE
from mmvae_bench.rundir import SAMPLER_FILE
from mmvae_bench.threads import native_threads

__all__ = [
    "SAMPLER_FILE",
    "SAMPLER_KINDS",
    "FlowSampler",
    "FlowSettings",
    "GMMSampler",
    "GMMSettings",
    "LatentSampler",
    "PriorSampler",
    "PriorSettings",
    "build_sampler",
    "fit_sampler",
    "joint_embeddings",
    "load_or_fit_sampler",
    "load_sampler",
    "save_sampler",
]

log = logging.getLogger(__name__)

SAMPLER_KINDS: tuple[str, ...] = get_args(SamplerKind)
_FORMAT = 1  # version of the sampler.pt layout


# -- settings --------------------------------------------------------------------------------
@dataclass(frozen=True, kw_only=True)
class PriorSettings:
    """The prior sampler has no settings."""


@dataclass(frozen=True, kw_only=True)
class GMMSettings:
    """Gaussian mixture fitted by EM (``sklearn.mixture.GaussianMixture``)."""

    components: int = 10  # mixture components (capped at the number of embeddings)
    covariance: Literal["full", "diag"] = "full"  # covariance of each component
    max_iter: int = 200  # EM iterations
    reg_covar: float = 1e-6  # added to every covariance diagonal (scikit-learn's default)

    def __post_init__(self) -> None:
        if self.components < 1:
            raise BenchError(f"gmm components must be >= 1, got {self.components}")
        if self.max_iter < 1:
            raise BenchError(f"gmm max_iter must be >= 1, got {self.max_iter}")
        if not self.reg_covar >= 0:
            raise BenchError(f"gmm reg_covar must be >= 0, got {self.reg_covar}")


@dataclass(frozen=True, kw_only=True)
class FlowSettings:
    """A zuko flow fitted by maximum likelihood (Adam) on the standardised embeddings."""

    flow: Literal["maf", "nsf"] = "maf"  # zuko.flows.MAF or zuko.flows.NSF
    transforms: int = 3  # autoregressive transforms
    hidden: int = 64  # width of each MADE hidden layer
    layers: int = 2  # MADE hidden layers
    epochs: int = 20  # passes over the embeddings
    batch_size: int = 256
    lr: float = 3e-3  # Adam; on a 2-D toy mixture it matched the covariance 2x closer than 1e-3

    def __post_init__(self) -> None:
        for name in ("transforms", "hidden", "layers", "epochs", "batch_size"):
            if getattr(self, name) < 1:
                raise BenchError(f"flow {name} must be >= 1, got {getattr(self, name)}")
        if not self.lr > 0:
            raise BenchError(f"flow lr must be > 0, got {self.lr}")


# -- samplers --------------------------------------------------------------------------------
class LatentSampler(nn.Module):
    """Draws latent codes for unconditional generation (joint coherence, unconditional FID).

    Lifecycle: built by :func:`build_sampler`, fitted once on the training set's joint
    embeddings by :func:`fit_sampler` (kinds with ``needs_fit``), saved with
    :func:`save_sampler` and loaded back with :func:`load_sampler`. Its parameters are
    buffers or submodules, so ``state_dict()`` holds everything a load needs beyond ``kind``,
    ``settings`` and ``latent_dim``.

    Attributes:
        kind: registry name (``prior``, ``gmm``, ``flow``).
        needs_fit: whether :meth:`fit` must run before :meth:`sample`.
        latent_dim: D, the size of z.
        settings: the kind's settings dataclass.
        info: what the record stores about the fit (kind, settings, times, log-likelihood).
    """

    kind: ClassVar[str]
    settings_cls: ClassVar[type]
    needs_fit: ClassVar[bool] = True

    def __init__(self, latent_dim: int, settings: Any) -> None:
        super().__init__()
        self.latent_dim = int(latent_dim)
        self.settings = settings
        self.info: dict[str, Any] = {}

    def fit(self, z: Tensor, *, seed: int) -> dict[str, Any]:
        """Fit to embeddings ``z`` ``(N, D)``; returns fit details for the record."""
        raise NotImplementedError

    def sample(self, n: int) -> Tensor:
        """``(n, D)`` latent draws on the sampler's device (global torch RNG)."""
        raise NotImplementedError

    def log_prob(self, z: Tensor) -> Tensor:
        """log density of ``z`` ``(N, D)`` under the fitted sampler, ``(N,)``."""
        raise NotImplementedError

    def load_state(self, state: Mapping[str, Tensor]) -> None:
        """Load tensors saved from ``state_dict()`` of a sampler of the same kind and settings."""
        self.load_state_dict(state)


class PriorSampler(LatentSampler):
    """The model's prior: ``model.prior_sample``. Nothing to fit or store."""

    kind = "prior"
    settings_cls = PriorSettings
    needs_fit = False

    def __init__(
        self, latent_dim: int, settings: PriorSettings, draw: Callable[[int], Tensor]
    ) -> None:
        super().__init__(latent_dim, settings)
        self._draw = draw  # a bound method, not a submodule: the model is not saved with it

    def sample(self, n: int) -> Tensor:
        return self._draw(n)


class GMMSampler(LatentSampler):
    """A Gaussian mixture: ``weights (K,)``, ``means (K, D)``, ``scale_tril (K, D, D)``.

    Fitted by scikit-learn's EM (seeded ``random_state``); sampled and evaluated with
    ``torch.distributions`` so that draws follow torch's RNG like the rest of the evaluation.
    """

    kind = "gmm"
    settings_cls = GMMSettings
    settings: GMMSettings

    def __init__(self, latent_dim: int, settings: GMMSettings) -> None:
        super().__init__(latent_dim, settings)
        d = self.latent_dim
        self.register_buffer("weights", torch.empty(0))
        self.register_buffer("means", torch.empty(0, d))
        self.register_buffer("scale_tril", torch.empty(0, d, d))

    def fit(self, z: Tensor, *, seed: int) -> dict[str, Any]:
        from sklearn.mixture import GaussianMixture  # ~1 s of imports: only when fitting

        s = self.settings
        x = z.detach().double().cpu().numpy()
        k = min(s.components, len(x))
        gm = GaussianMixture(
            n_components=k,
            covariance_type=s.covariance,
            max_iter=s.max_iter,
            reg_covar=s.reg_covar,
            random_state=seed,
        )
        with native_threads():  # unlimited, EM was 3.3x slower here, far more under load
            gm.fit(x)
        cov = torch.as_tensor(gm.covariances_, dtype=torch.float64)
        tril = torch.linalg.cholesky(cov) if s.covariance == "full" else cov.sqrt().diag_embed()
        like = {"device": z.device, "dtype": torch.float32}
        self.weights = torch.as_tensor(gm.weights_).to(**like)
        self.means = torch.as_tensor(gm.means_).to(**like)
        self.scale_tril = tril.to(**like)
        return {"components": k, "converged": bool(gm.converged_), "em_iterations": gm.n_iter_}

    def load_state(self, state: Mapping[str, Tensor]) -> None:
        # K is only known after fitting: take the saved shapes, checking them against D.
        d = self.latent_dim
        w, mu, tril = state["weights"], state["means"], state["scale_tril"]
        k = len(w)
        if w.shape != (k,) or mu.shape != (k, d) or tril.shape != (k, d, d):
            raise BenchError(
                f"gmm sampler tensors have shapes {tuple(w.shape)}, {tuple(mu.shape)}, "
                f"{tuple(tril.shape)}; expected (K,), (K, {d}), (K, {d}, {d})"
            )
        self.weights, self.means, self.scale_tril = w.clone(), mu.clone(), tril.clone()

    def _distribution(self) -> torch.distributions.Distribution:
        if len(self.weights) == 0:
            raise RuntimeError("gmm sampler used before fit()")
        return torch.distributions.MixtureSameFamily(
            torch.distributions.Categorical(probs=self.weights),
            torch.distributions.MultivariateNormal(self.means, scale_tril=self.scale_tril),
        )

    def sample(self, n: int) -> Tensor:
        return self._distribution().sample((n,))

    def log_prob(self, z: Tensor) -> Tensor:
        return self._distribution().log_prob(z.to(self.means))


class FlowSampler(LatentSampler):
    """A zuko MAF/NSF on standardised embeddings: ``z = shift + scale * u``, ``u ~ flow``.

    Standardising first puts the embeddings where the flow's N(0, I) base and its MADE
    initialisation (near identity) start, whatever scale the latent space drifted to; the
    log-density includes the affine map's ``-sum log scale``.
    """

    kind = "flow"
    settings_cls = FlowSettings
    settings: FlowSettings

    def __init__(self, latent_dim: int, settings: FlowSettings) -> None:
        super().__init__(latent_dim, settings)
        cls = {"maf": zuko.flows.MAF, "nsf": zuko.flows.NSF}[settings.flow]
        self.flow = cls(
            features=self.latent_dim,
            transforms=settings.transforms,
            hidden_features=[settings.hidden] * settings.layers,
        )
        self.register_buffer("shift", torch.zeros(self.latent_dim))
        self.register_buffer("scale", torch.ones(self.latent_dim))

    def fit(self, z: Tensor, *, seed: int) -> dict[str, Any]:
        s = self.settings
        z = z.detach().float()
        self.to(z.device)
        self.shift = z.mean(0)
        self.scale = z.std(0).clamp_min(1e-6)
        u = (z - self.shift) / self.scale
        gen = torch.Generator().manual_seed(seed)
        opt = torch.optim.Adam(self.flow.parameters(), lr=s.lr)
        nll = math.nan
        self.flow.train()
        with torch.enable_grad():  # callers evaluate under no_grad
            for _ in range(s.epochs):
                total = torch.zeros((), device=u.device)
                for batch, _ in iter_batches({"u": u}, s.batch_size, shuffle=True, generator=gen):
                    loss = -self.flow().log_prob(batch["u"]).mean()
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
                    total += loss.detach() * len(batch["u"])
                nll = (total / len(u)).item()  # one host sync per epoch
                if not math.isfinite(nll):
                    raise BenchError(f"flow sampler fit diverged (nll {nll}); try --sampler gmm")
        self.flow.eval()
        self.flow.requires_grad_(False)
        return {"final_epoch_nll_standardised": nll}

    def sample(self, n: int) -> Tensor:
        return self.shift + self.scale * self.flow().sample((n,))

    def log_prob(self, z: Tensor) -> Tensor:
        u = (z.to(self.shift) - self.shift) / self.scale
        return self.flow().log_prob(u) - self.scale.log().sum()


_SAMPLERS: dict[str, type[LatentSampler]] = {
    cls.kind: cls for cls in (PriorSampler, GMMSampler, FlowSampler)
}


def _sampler_class(kind: str) -> type[LatentSampler]:
    try:
        return _SAMPLERS[kind]
    except KeyError:
        raise BenchError(
            f"unknown latent sampler '{kind}'; available: {', '.join(SAMPLER_KINDS)}"
        ) from None


# -- building, fitting, saving ---------------------------------------------------------------
def build_sampler(
    kind: str, model: MultimodalVAE, settings: Mapping[str, Any] | None = None
) -> LatentSampler:
    """An unfitted sampler of ``kind`` for ``model``; ``settings`` override the kind's defaults."""
    cls = _sampler_class(kind)
    typed = make_config(cls.settings_cls, dict(settings or {}))
    if cls is PriorSampler:
        return PriorSampler(model.latent_dim, typed, model.prior_sample)
    return cls(model.latent_dim, typed)


@torch.no_grad()
def joint_embeddings(
    model: MultimodalVAE, split: Split, *, device: torch.device | str, batch_size: int = 500
) -> Tensor:
    """``(N, D)``: one z ~ q(z | X) per datapoint of ``split``, given every modality."""
    model.eval()
    mods = tuple(model.modalities)
    out = []
    for batch, _ in iter_batches(split.select(mods), batch_size, shuffle=False, device=device):
        out.append(model.encode(batch, mods, 1).z[0].float())
    return torch.cat(out)


def _embedding_stats(z: Tensor) -> dict[str, Any]:
    """How far the embeddings are from N(0, I): moments and a moment-matched Gaussian's KL."""
    z = z.double()
    mean = z.mean(0)
    cov = torch.cov(z.T).reshape(z.shape[1], z.shape[1])
    sign, logdet = torch.linalg.slogdet(cov)
    d = z.shape[1]
    # KL(N(m, S) || N(0, I)) = (tr S + |m|^2 - D - log det S) / 2 (None when S is singular).
    kl = 0.5 * (cov.trace() + mean.pow(2).sum() - d - logdet)
    std = cov.diagonal().sqrt()
    return {
        "n": len(z),
        "mean_norm": mean.norm().item(),
        "std_min": std.min().item(),
        "std_max": std.max().item(),
        "gaussian_kl_to_std_normal": kl.item() if sign > 0 and torch.isfinite(kl) else None,
    }


def fit_sampler(
    kind: str,
    model: MultimodalVAE,
    train: Split,
    *,
    device: torch.device | str,
    seed: int,
    settings: Mapping[str, Any] | None = None,
    batch_size: int = 500,
) -> LatentSampler:
    """Build a sampler of ``kind`` and fit it to ``train``'s joint embeddings.

    Seeded by ``seed`` inside a forked RNG: the fit is reproducible and the caller's RNG stream
    is left as it was. ``sampler.info`` gets ``kind``, ``settings``, ``latent_dim``,
    ``embed_s``, ``fit_s``, ``train_log_likelihood`` (mean log-density of the embeddings in
    nats; None for ``prior``, whose density the model API does not expose), ``embeddings``
    (moments and the KL of a moment-matched Gaussian to N(0, I)) and the kind's fit details.
    """
    device = torch.device(device)
    cls = _sampler_class(kind)
    make_config(cls.settings_cls, dict(settings or {}))  # bad settings fail before any encoding
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        # Embeddings first, then the sampler's initialisation: every kind fitted with one seed
        # sees the same embeddings.
        t0 = time.perf_counter()
        if cls.needs_fit:
            z = joint_embeddings(model, train, device=device, batch_size=batch_size)
        t1 = time.perf_counter()
        sampler = build_sampler(kind, model, settings).to(device)
        info: dict[str, Any] = {
            "kind": sampler.kind,
            "settings": dataclasses.asdict(sampler.settings),
            "latent_dim": sampler.latent_dim,
            "seed": seed,
            "embed_s": 0.0,
            "fit_s": 0.0,
            "train_log_likelihood": None,
        }
        if cls.needs_fit:
            details = sampler.fit(z, seed=seed)
            with torch.no_grad():
                ll = sampler.log_prob(z).mean().item()
            info.update(
                embed_s=t1 - t0,
                fit_s=time.perf_counter() - t1,
                train_log_likelihood=ll,
                embeddings=_embedding_stats(z),
                **details,
            )
            log.info("%s sampler: train log-likelihood %.3f nats", kind, ll)
    sampler.info = info
    return sampler


def save_sampler(path: Path, sampler: LatentSampler) -> Path:
    """Atomically write ``sampler`` (kind, settings, tensors, info) for a weights_only load."""
    return atomic_torch_save(
        path,
        {
            "format": _FORMAT,
            "kind": sampler.kind,
            "settings": dataclasses.asdict(sampler.settings),
            "latent_dim": sampler.latent_dim,
            "state_dict": {k: v.detach().cpu() for k, v in sampler.state_dict().items()},
            "info": sampler.info,
        },
    )


def load_sampler(path: Path, model: MultimodalVAE, *, device: torch.device | str) -> LatentSampler:
    """Read a sampler saved by :func:`save_sampler` (``torch.load(weights_only=True)``)."""
    fix = "refit it with `mmvae-bench evaluate RUN_DIR --refit-sampler`"
    blob = load_tensors(path, what="latent sampler", fix=fix)
    if not isinstance(blob, dict) or blob.get("format") != _FORMAT:
        raise BenchError(f"latent sampler {path} has an unknown format; {fix}")
    if blob["latent_dim"] != model.latent_dim:
        raise BenchError(
            f"latent sampler {path} is for latent_dim {blob['latent_dim']}, the model has "
            f"{model.latent_dim}; {fix}"
        )
    sampler = build_sampler(blob["kind"], model, blob["settings"])
    sampler.load_state(blob["state_dict"])
    sampler.info = dict(blob["info"])
    return sampler.to(device)


def load_or_fit_sampler(
    path: Path,
    kind: str,
    model: MultimodalVAE,
    train: Split,
    *,
    device: torch.device | str,
    seed: int,
    refit: bool = False,
) -> tuple[LatentSampler, bool]:
    """The saved sampler at ``path`` when it is of ``kind`` with the current default settings;
    otherwise (or with ``refit``) a newly fitted one, saved to ``path``.

    Returns ``(sampler, fitted)``, ``fitted`` True when it was fitted now.
    """
    path = Path(path)
    cls = _sampler_class(kind)
    if path.is_file() and not refit:
        sampler = load_sampler(path, model, device=device)
        wanted = dataclasses.asdict(cls.settings_cls())
        if sampler.kind == kind and dataclasses.asdict(sampler.settings) == wanted:
            return sampler, False
        log.info("%s holds a %s sampler; fitting a %s sampler", path, sampler.kind, kind)
    sampler = fit_sampler(kind, model, train, device=device, seed=seed)
    save_sampler(path, sampler)
    return sampler, True
