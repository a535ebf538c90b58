"""MVAE: a product of Gaussian experts with the prior expert.

Wu & Goodman, "Multimodal Generative Models for Scalable Weakly-Supervised Learning", 2018,
arXiv:1802.05335.

Each modality m has a Gaussian expert q_m(z|x_m) = N(mu_m, diag sigma_m^2); the posterior given
a subset S is the product of its experts and the prior expert N(0, I), computed in precision
space (``gaussian_poe``): ``q(z|X_S) ∝ p(z) prod_{m in S} q_m(z|x_m)``. One stage, ``train``,
minimises the sub-sampled objective of the paper (Sec. 3.1)

    -[ELBO(X) + sum_m ELBO(x_m) + sum_{j=1..k} ELBO(X_{S_j})],
    ELBO(X_S) = sum_{m in S} lambda_m E_q(z|X_S)[log p(x_m|z)] - beta KL(q(z|X_S) || N(0, I)),

where each subset's ELBO reconstructs only its own modalities and S_1..S_k are drawn afresh each
step, uniformly without replacement among the subsets with 2 <= |S| < M (none exist for M = 2).
Every term is a batch mean. Inference from S samples the product of S's experts and the prior.

Optional KL annealing (``anneal_epochs`` > 0, off by default): the KL weight ramps linearly
from 0 to ``beta`` over the first ``anneal_epochs`` epochs, per step, as in the reference code
(mhw32/multimodal-vae-public, which anneals over 20 epochs). The stage declares
``pass_epoch=True`` so the trainer hands ``loss`` the fractional epoch; the weight is a pure
function of it.

Deliberate deviations from the reference code:
- the likelihood weights lambda_m are the dataset's (``rescale``), not per-experiment constants
  (the reference uses lambda_text = 50 on MNIST), so every model sees the same weighting;
- the k random subsets are drawn with torch's RNG among subsets not already in the objective
  (the full set and the singletons), so a draw never repeats a term.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from mmvae_bench.api import (
    GaussianHead,
    HMCSettings,
    LatentSample,
    ModelEntry,
    MultimodalDataset,
    MultimodalVAE,
    NetConfig,
    Stage,
    Subset,
    all_subsets,
    build_decoder,
    build_encoder,
    encoder_features,
    gaussian_poe,
    hookimpl,
    kl_std_normal,
    likelihood_mean,
    log_likelihood,
    reparameterize,
)

__all__ = ["MVAE", "MVAEConfig"]


@dataclass(frozen=True, kw_only=True)
class MVAEConfig(NetConfig):
    """MVAE hyperparameters (the fields of ``NetConfig`` and ``ModelConfig`` inherited)."""

    epochs: int = 30  # epochs of the single stage ``train``
    k_subsets: int = 1  # random subsets with 2 <= |S| < M added to the objective per step
    anneal_epochs: float = 0.0  # KL weight ramps 0 -> beta over these epochs; 0: no annealing

    def __post_init__(self) -> None:
        super().__post_init__()
        self.require_at_least(0, "epochs", "k_subsets", "anneal_epochs")


# `--preset paper` on PolyMNIST: MultiVae 1.0.3's PolyMNIST benchmark (AgatheSenellart/MultiVae,
# examples/mmnist/training/config2.py and mvae.py): encoders and decoders as the reference's,
# 16,675,855 parameters.
PAPER_POLYMNIST = {
    "latent_dim": 512,  # config2.py base_config
    "nets": "multivae",  # EncoderConvMMNIST_adapted / DecoderConvMMNIST (nets/published.py)
    "rescale": False,  # no likelihood rescaling (equal modalities: every weight would be 1)
    "batch_size": 256,  # config2.py base_training_config
    "lr": 1e-3,  # Adam, config2.py
    "epochs": 800,  # config2.py num_epochs
    "beta": 1.0,  # mvae.py: beta=1
    "anneal_epochs": 0.0,  # mvae.py: warmup=0 (no KL annealing)
    "k_subsets": 0,  # MultiVae's MVAE adds no random subsets (k=0)
}


class MVAE(MultimodalVAE):
    """MVAE: Gaussian unimodal experts multiplied with the prior expert."""

    config: MVAEConfig

    def __init__(self, dataset: MultimodalDataset, config: MVAEConfig) -> None:
        super().__init__(dataset, config)
        c, d = config, self.latent_dim
        self.experts = nn.ModuleDict(
            {
                m: nn.Sequential(
                    build_encoder(s, c.features, c.width, c.nets),
                    GaussianHead(encoder_features(s, c.features, c.nets), d),
                )
                for m, s in self.specs.items()
            }
        )
        self.decoders = nn.ModuleDict(
            {m: build_decoder(s, d, c.width, c.nets) for m, s in self.specs.items()}
        )
        weights = self.likelihood_weights if c.rescale else {}
        self.weights = {m: float(weights.get(m, 1.0)) for m in self.specs}
        # The subsets a random draw chooses from: neither the full set nor a singleton, which
        # the objective always contains.
        self.extra_subsets = [
            s for s in all_subsets(self.modalities) if 1 < len(s) < len(self.specs)
        ]

    @property
    def stages(self) -> list[Stage]:
        c = self.config
        return [
            Stage(
                name="train",
                modules=("experts", "decoders"),
                epochs=c.epochs,
                lr=c.lr,
                pass_epoch=c.anneal_epochs > 0,
            )
        ]

    def kl_weight(self, epoch: float) -> float:
        """The KL weight after ``epoch`` (fractional) epochs: ``beta``, ramped when annealing."""
        c = self.config
        if c.anneal_epochs <= 0:
            return c.beta
        return c.beta * min(1.0, max(0.0, epoch) / c.anneal_epochs)

    def loss(
        self,
        batch: dict[str, Tensor],
        stage: str,
        cached: Mapping[str, Tensor],
        epoch: float = math.inf,  # outside training: the annealed (final) weight
    ) -> dict[str, Tensor]:
        if stage == "train":
            return self._loss_train(batch, self.kl_weight(epoch))
        raise self.unknown_stage(stage)

    # -- stage loss ------------------------------------------------------------------------
    def _loss_train(self, batch: dict[str, Tensor], kl_weight: float) -> dict[str, Tensor]:
        experts = {m: self.experts[m](batch[m]) for m in self.specs}  # each encoder runs once
        joint, kl_joint, nll = self._elbo(batch, experts, self.modalities, kl_weight)
        single = sum(self._elbo(batch, experts, (m,), kl_weight)[0] for m in self.specs)
        parts = {
            "nelbo_joint": -joint.mean(),
            "nelbo_unimodal": -single.mean(),
            "kl_joint": kl_joint.mean(),
            **{f"nll_{m}": v.mean() for m, v in nll.items()},
        }
        total = joint + single
        k = min(self.config.k_subsets, len(self.extra_subsets))
        if k > 0:
            # Drawn on the CPU generator: indices only, no device sync.
            picks = torch.randperm(len(self.extra_subsets))[:k].tolist()
            extra = sum(
                self._elbo(batch, experts, self.extra_subsets[i], kl_weight)[0] for i in picks
            )
            parts["nelbo_subsets"] = -extra.mean()
            total = total + extra
        return {"loss": -total.mean(), **parts}

    def _elbo(
        self,
        batch: dict[str, Tensor],
        experts: Mapping[str, tuple[Tensor, Tensor]],
        subset: Subset,
        kl_weight: float,
    ) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
        """Per-sample ELBO(X_S) reconstructing only S, its KL, and each -log p(x_m|z), (B,)."""
        mu, logvar = self._poe(experts, subset)
        z = reparameterize(mu, logvar)
        nll = {m: -log_likelihood(self.specs[m], self.decoders[m](z), batch[m]) for m in subset}
        kl = kl_std_normal(mu, logvar)
        recon = sum(-self.weights[m] * v for m, v in nll.items())
        return recon - kl_weight * kl, kl, nll

    def _poe(
        self, experts: Mapping[str, tuple[Tensor, Tensor]], subset: Subset
    ) -> tuple[Tensor, Tensor]:
        """mu, logvar of p(z) prod_{m in S} q_m(z|x_m), each (B, latent_dim)."""
        mus = torch.stack([experts[m][0] for m in subset])
        logvars = torch.stack([experts[m][1] for m in subset])
        return gaussian_poe(mus, logvars, prior=True)

    # -- inference -------------------------------------------------------------------------
    def posterior(self, batch: dict[str, Tensor], subset: Subset) -> tuple[Tensor, Tensor]:
        """mu, logvar of q(z|X_S), the product of S's experts and N(0, I), each (B, D)."""
        subset = self.check_subset(subset)
        return self._poe({m: self.experts[m](batch[m]) for m in subset}, subset)

    def encode(
        self,
        batch: dict[str, Tensor],
        subset: Subset,
        n: int = 1,
        *,
        hmc: HMCSettings | None = None,
    ) -> LatentSample:
        mu, logvar = self.posterior(batch, subset)  # closed form: ``hmc`` is not needed
        return LatentSample(reparameterize(mu, logvar, n))

    def decode(self, z: Tensor) -> dict[str, Tensor]:
        return {m: likelihood_mean(self.specs[m], dec(z)) for m, dec in self.decoders.items()}


@hookimpl
def mmvae_bench_models() -> list[ModelEntry]:
    return [
        ModelEntry(
            name="mvae",
            cls=MVAE,
            config=MVAEConfig,
            description="MVAE: product of Gaussian experts with the prior, sub-sampled ELBOs",
            defaults={
                "polymnist-lite": {"lr": 2e-3, "epochs": 20},  # JNF's joint-stage budget
                "circles-squares": {"epochs": 30},
            },
            presets={"paper": {"polymnist": PAPER_POLYMNIST}},
        )
    ]
