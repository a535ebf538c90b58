"""JNF-Shared: JNF whose unimodal posteriors see only what the modalities share.

Senellart & Allassonnière, "Bridging the inference gap in Multimodal Variational
Autoencoders", 2025, arXiv:2502.03952 (the "shared" variant of JNF, ``plugins/jnf.py``).

Projectors g_j are pretrained to extract the information the modalities share, frozen, and
each unimodal posterior is then q_j(z | g_j(x_j)): a small MLP on g_j(x_j), then JNF's flow
posterior. Three stages, in order:

- ``projector``, ``contrastive`` (default): multi-positive NT-Xent over all B*M embeddings,
  ``L = -mean_a 1/(M-1) sum_{p in P(a)} log softmax_{k != a}(e_a . e_k / tau)_p``, where P(a) is
  the other modalities of a's tuple and the softmax runs over the rest of the batch;
- ``projector``, ``dcca`` (Andrew et al. 2013, deep CCA):
  ``L = -sum_{i<j} sum_{top k} sv(S_ii^{-1/2} S_ij S_jj^{-1/2})``, S the batch covariances of
  the embeddings, ``r I`` added to S_ii;
- ``projector``, ``random`` (a baseline, not in the paper): no stage; g_j(x_j) = W_j x_j, W_j a
  fixed Gaussian matrix (entries N(0, 1/D), D the size of x_j) drawn at construction and never
  trained, so what the unimodal posteriors see is not chosen for being shared;
- ``joint``: JNF's beta-ELBO ``sum_j lambda_j E_q[log p(x_j|z)] - beta KL(q(z|X) || N(0,I))``;
- ``unimodal``: ``L_uni = -sum_j E_{z~q(z|X)} log q_j(z | g_j(x_j))``, g and stage 1 frozen.

Inference is JNF's (joint encoder for all modalities, q_j for one, HMC on the product of experts
for the rest) with the experts conditioned on g_j(x_j).

Choices and deviations (the reference implementation was not consulted: its licence forbids
redistribution; everything here follows the papers):

- contrastive: g_j(x_j) is the L2-normalised shared representation (``shared_dim``), not the
  common-space features (``common_dim``). The loss acts only after the shared head, so nothing
  pushes the per-modality processors' outputs to drop modality-specific content (the style of a
  PolyMNIST background); conditioning on them would defeat the point of the projector.
- contrastive, M > 2: the multi-positive form averages log-probabilities over the M-1 positives
  (Khosla et al. 2020, "L_out"); for M = 2 it is NT-Xent exactly (Chen et al. 2020). The
  denominator holds every other embedding of the batch, positives included, as in NT-Xent.
- dcca: each view's net ends with a linear layer to ``dcca_dim`` and a BatchNorm without affine
  parameters. CCA is invariant to per-dimension shifts and scales, so this changes only the
  regulariser's meaning: ``r`` becomes relative to unit variance, where otherwise the net could
  grow its output scale to make ``r I`` negligible. Frozen (eval mode) from stage ``joint`` on,
  it standardises g_j(x_j) with its running statistics for the MLP on top.
- dcca: S^{-1/2} is replaced by the inverse Cholesky factor L^{-1} (S = L L^T). The two differ by
  an orthogonal factor on the left, so T has the same singular values, but eigh's backward
  divides by eigenvalue gaps: it gave NaN gradients here for exactly white embeddings (S = I),
  and gaps vanish too when the batch is smaller than ``dcca_dim`` (eigenvalue r repeated).
  Cholesky's backward has no such term; ``r > 0`` keeps S positive definite, so no eigenvalue
  clamping is needed. The loss runs in float64 with autocast off, then casts back.
- random: W_j is a buffer, not a parameter: no optimizer can move it, and the checkpoint holds
  it, so a reloaded model projects as the trained one did. Its output is not normalised: at
  entries N(0, 1/D) it has about the input's root-mean-square scale per dimension.
- g_j(x_j) for the training set is computed once when stage ``unimodal`` starts, alongside the
  joint posterior (``precompute``): a stage-2 step runs only the MLPs and flows.
- JNF's constructor builds conv unimodal encoders that are replaced here by MLPs on g_j (a
  few milliseconds at construction; JNF exposes no hook to build them differently).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from mmvae_bench.api import (
    BenchError,
    ModelEntry,
    MultimodalDataset,
    Stage,
    build_encoder,
    hookimpl,
    reparameterize,
)
from plugins.jnf import JNF, JNFConfig

__all__ = [
    "JNFShared",
    "JNFSharedConfig",
    "RandomProjection",
    "dcca_correlation",
    "multi_positive_nt_xent",
]

Projector = Literal["contrastive", "dcca", "random"]
PROJECTORS = ("contrastive", "dcca", "random")


@dataclass(frozen=True, kw_only=True)
class JNFSharedConfig(JNFConfig):
    """JNF-Shared hyperparameters; JNF's (``epochs_joint``, ``flow_depth``, ...) inherited.

    ``features`` is the width of the MLP on g_j(x_j) that feeds each flow posterior.
    """

    projector: Projector = "contrastive"  # how g_j is made (random: fixed, no stage)
    epochs_projector: int = 20  # stage ``projector`` epochs
    lr_projector: float | None = None  # None: same as lr
    projector_batch_size: int | None = None  # None: 500 for dcca, batch_size for contrastive
    common_dim: int = 64  # processors' output: contrastive's common space, dcca's hidden layer
    shared_dim: int = 10  # contrastive: size of the L2-normalised shared representation g_j
    temperature: float = 0.1  # contrastive: NT-Xent temperature tau
    dcca_dim: int = 20  # dcca: size of each view's embedding g_j
    dcca_top_k: int | None = None  # dcca: canonical correlations summed; None: all dcca_dim
    dcca_reg: float = 1e-3  # dcca: r added to each view's covariance diagonal
    random_dim: int = 20  # random: size of each fixed random projection g_j

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.projector not in PROJECTORS:
            raise BenchError(f"projector must be one of {list(PROJECTORS)}, got {self.projector!r}")
        self.require_at_least(0, "epochs_projector")
        self.require_at_least(1, "common_dim", "shared_dim", "dcca_dim", "random_dim")
        self.require_positive("lr_projector", "temperature", "dcca_reg")
        if self.projector_batch_size is not None and self.projector_batch_size < 2:
            # Both losses compare samples within a batch: one sample has nothing to compare.
            raise BenchError(f"projector_batch_size must be >= 2, got {self.projector_batch_size}")
        if self.dcca_top_k is not None and not 1 <= self.dcca_top_k <= self.dcca_dim:
            raise BenchError(
                f"dcca_top_k must be in [1, dcca_dim={self.dcca_dim}], got {self.dcca_top_k}"
            )

    @property
    def projector_dim(self) -> int:
        """Size of g_j(x_j)."""
        sizes = {"contrastive": self.shared_dim, "dcca": self.dcca_dim, "random": self.random_dim}
        return sizes[self.projector]


class JNFShared(JNF):
    """JNF with unimodal posteriors conditioned on frozen, pretrained shared projections."""

    config: JNFSharedConfig

    def __init__(self, dataset: MultimodalDataset, config: JNFSharedConfig) -> None:
        super().__init__(dataset, config)
        c = config
        if c.projector == "contrastive":
            self.processors = nn.ModuleDict(
                {m: build_encoder(s, c.common_dim, c.width) for m, s in self.specs.items()}
            )
            # One head for every modality: it maps each common space to the same shared one.
            self.shared_head = nn.Sequential(
                nn.Linear(c.common_dim, c.common_dim),
                nn.SiLU(),
                nn.Linear(c.common_dim, c.shared_dim),
            )
        elif c.projector == "random":
            self.processors = nn.ModuleDict(
                {
                    m: RandomProjection(math.prod(s.shape), c.random_dim)
                    for m, s in self.specs.items()
                }
            )
        else:
            self.processors = nn.ModuleDict(
                {
                    m: nn.Sequential(
                        build_encoder(s, c.common_dim, c.width),
                        nn.Linear(c.common_dim, c.dcca_dim),
                        nn.BatchNorm1d(c.dcca_dim, affine=False),
                    )
                    for m, s in self.specs.items()
                }
            )
        # Replaces JNF's encoders of x_j: the flows' features now come from g_j(x_j) only.
        self.unimodal_encoders = nn.ModuleDict(
            {
                m: nn.Sequential(
                    nn.Linear(c.projector_dim, c.features),
                    nn.SiLU(),
                    nn.Linear(c.features, c.features),
                    nn.SiLU(),
                )
                for m in self.specs
            }
        )

    @property
    def stages(self) -> list[Stage]:
        c = self.config
        if c.projector == "random":  # nothing to train: g_j is fixed at construction
            return super().stages
        contrastive = c.projector == "contrastive"
        default_batch = c.batch_size if contrastive else 500  # DCCA needs large batches
        projector = Stage(
            name="projector",
            modules=("processors", "shared_head") if contrastive else ("processors",),
            epochs=c.epochs_projector,
            lr=c.lr_projector or c.lr,
            batch_size=c.projector_batch_size or default_batch,
        )
        return [projector, *super().stages]

    def loss(
        self, batch: dict[str, Tensor], stage: str, cached: Mapping[str, Tensor]
    ) -> dict[str, Tensor]:
        if stage == "projector":
            return self._loss_projector(batch)
        return super().loss(batch, stage, cached)  # joint, unimodal; unknown stages raise

    def precompute(self, batch: dict[str, Tensor], stage: str) -> dict[str, Tensor]:
        out = super().precompute(batch, stage)
        if stage == "unimodal":  # the projectors are frozen (or fixed) from stage ``joint`` on
            out.update({f"g_{m}": self.project(batch[m], m) for m in self.specs})
        return out

    # -- stage losses ----------------------------------------------------------------------
    def _loss_projector(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        g = torch.stack([self.project(batch[m], m) for m in self.specs])  # (M, B, dim)
        c = self.config
        if c.projector == "contrastive":
            return {"loss": multi_positive_nt_xent(g, c.temperature)}
        corr = dcca_correlation(g, c.dcca_reg, c.dcca_top_k)  # (pairs,)
        return {"loss": -corr.sum(), "corr_mean": corr.mean().detach()}

    def _loss_unimodal(
        self, batch: dict[str, Tensor], cached: Mapping[str, Tensor]
    ) -> dict[str, Tensor]:
        if "joint_mu" in cached:
            mu, logvar = cached["joint_mu"], cached["joint_logvar"]
            g = {m: cached[f"g_{m}"] for m in self.specs}
        else:
            with torch.no_grad():
                mu, logvar = self.joint_posterior(batch)
                g = {m: self.project(batch[m], m) for m in self.specs}
        z = reparameterize(mu, logvar).detach()  # one joint sample shared by all j
        parts = {f"nll_q_{m}": -self.shared_posterior(g[m], m).log_prob(z).mean() for m in g}
        return {"loss": sum(parts.values()), **parts}

    # -- projections and posteriors ----------------------------------------------------------
    def project(self, x: Tensor, m: str) -> Tensor:
        """g_m(x_m): ``x`` (B, *shape) -> (B, projector_dim), unit norm for ``contrastive``."""
        h = self.processors[m](x)
        if self.config.projector == "contrastive":
            return F.normalize(self.shared_head(h), dim=-1)
        return h

    def shared_posterior(self, g: Tensor, m: str) -> torch.distributions.Distribution:
        """q_m(z | g_m(x_m)) from ``g`` (B, projector_dim): batch shape (B,), event (latent,)."""
        return self.posteriors[m](self.unimodal_encoders[m](g))

    def unimodal_posterior(
        self, batch: dict[str, Tensor], m: str
    ) -> torch.distributions.Distribution:
        """q_m(z | g_m(x_m)): batch shape (B,), event (latent_dim,)."""
        return self.shared_posterior(self.project(batch[m], m), m)


class RandomProjection(nn.Module):
    """x (B, *shape) -> x.flatten(1) @ W^T, W (out, D) drawn once from N(0, 1/D), never trained.

    W is a buffer, so it is saved with the model and no optimizer sees it.
    """

    def __init__(self, in_features: int, out_features: int) -> None:
        super().__init__()
        w = torch.randn(out_features, in_features) / math.sqrt(in_features)
        self.register_buffer("weight", w)

    def forward(self, x: Tensor) -> Tensor:
        return x.flatten(1).to(self.weight.dtype) @ self.weight.T


# -- losses --------------------------------------------------------------------------------------
def multi_positive_nt_xent(e: Tensor, temperature: float) -> Tensor:
    """Multi-positive NT-Xent over ``e`` (M, B, dim), L2-normalised embeddings of B tuples.

    Each of the B*M embeddings is an anchor; its positives are the M-1 other modalities of its
    tuple, the softmax runs over every other embedding of the batch (self excluded).

    Returns:
        The loss: the mean over anchors of their positives' mean log-probability, negated.
        Where tuples share only their label (every built-in dataset), a tuple's partners are
        indistinguishable from other same-class embeddings, so the loss cannot go much below
        log(same-class embeddings in the batch): 4.14 for circles-squares at B = 64, M = 2.
    """
    m, b, _ = e.shape
    flat = e.float().reshape(m * b, -1)
    logits = flat @ flat.T / temperature  # (MB, MB), cosine similarities over tau
    eye = torch.eye(m * b, dtype=torch.bool, device=e.device)
    logits = logits.masked_fill(eye, float("-inf"))
    tuple_id = torch.arange(b, device=e.device).repeat(m)  # row r is tuple r % B
    positive = (tuple_id[:, None] == tuple_id[None, :]) & ~eye
    log_prob = logits - logits.logsumexp(dim=1, keepdim=True)
    loss = -(log_prob.masked_fill(~positive, 0.0).sum(dim=1) / (m - 1)).mean()
    return loss.to(e.dtype)


def dcca_correlation(h: Tensor, reg: float, top_k: int | None = None) -> Tensor:
    """Total canonical correlation of every pair of views (Andrew et al. 2013).

    Args:
        h: (M, B, dim) embeddings of B samples in M views.
        reg: r added to each view's covariance diagonal (> 0).
        top_k: canonical correlations summed per pair; None: all ``dim``.

    Returns:
        (M*(M-1)/2,) the sum of the top-k singular values of S_ii^{-1/2} S_ij S_jj^{-1/2} for
        each pair i < j in ``itertools.combinations`` order; each lies in [0, top_k].
    """
    m, b, d = h.shape
    with torch.autocast(device_type=h.device.type, enabled=False):
        x = h.double()
        x = x - x.mean(dim=1, keepdim=True)
        cov = torch.einsum("ibd,jbe->ijde", x, x) / (b - 1)  # (M, M, dim, dim)
        eye = torch.eye(d, dtype=x.dtype, device=x.device)
        own = cov[torch.arange(m), torch.arange(m)] + reg * eye  # (M, dim, dim)
        # L^-1 whitens like S^-1/2 up to an orthogonal factor: same singular values of T.
        chol, _ = torch.linalg.cholesky_ex(own)
        white = torch.linalg.solve_triangular(chol, eye.expand(m, d, d), upper=False)
        i, j = torch.triu_indices(m, m, offset=1, device=x.device)  # combinations() order
        t = white[i] @ cov[i, j] @ white[j].mT  # (pairs, dim, dim)
        # svdvals raises on non-finite input; zero it there and add back a NaN, so that a
        # diverged net reaches the trainer's NaN stop (which names stage and step) instead.
        finite = torch.isfinite(t)
        sv = torch.linalg.svdvals(torch.where(finite, t, 0.0))  # descending, stable backward
        corr = sv[:, : top_k or d].sum(dim=1)
        corr = torch.where(finite.all(dim=(1, 2)), corr, float("nan"))
    return corr.to(h.dtype)


@hookimpl
def mmvae_bench_models() -> list[ModelEntry]:
    return [
        ModelEntry(
            name="jnf-shared",
            cls=JNFShared,
            config=JNFSharedConfig,
            description="JNF-Shared: JNF with unimodal posteriors on pretrained shared "
            "projections (contrastive or DCCA; random: an untrained baseline)",
            defaults={
                # JNF's budget plus the projector stage (the paper: 100 epochs on PolyMNIST).
                "polymnist-lite": {
                    "lr": 2e-3,
                    "epochs_projector": 10,
                    "epochs_joint": 20,
                    "epochs_unimodal": 20,
                },
                # The modalities share one bit (filled or ring): a few shared dimensions.
                "circles-squares": {
                    "epochs_projector": 10,
                    "epochs_joint": 30,
                    "epochs_unimodal": 20,
                    "shared_dim": 4,
                    "dcca_dim": 4,
                    "random_dim": 4,
                },
            },
        )
    ]
