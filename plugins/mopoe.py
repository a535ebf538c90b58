"""MoPoE: a mixture over every subset of modalities of products of experts.

Sutter, Daunhawer & Vogt, "Generalized Multimodal ELBO", ICLR 2021, arXiv:2105.02470.

Each modality m has a Gaussian expert q_m(z|x_m). For every non-empty subset s of the M
modalities (2^M - 1 of them), q_s = PoE of s's experts, with the prior expert N(0, I) in the
full subset only (as the published code does: ``poe_fusion`` adds it when all modalities are
present). The joint posterior is the uniform mixture ``q(z|X) = 1/(2^M-1) sum_s q_s``. One stage,
``train``, minimises the negative beta-ELBO

    -[ sum_m lambda_m E_q(z|X)[log p(x_m|z)] - beta * 1/(2^M-1) sum_s KL(q_s || N(0, I)) ],

as a batch mean. The mixture's KL has no closed form; as in the paper (Sec. 3, and the code's
``calc_group_divergence_moe``) it is replaced by the mean of the subsets' KLs, an upper bound by
convexity of KL, so the objective stays a lower bound of the ELBO. The expectation under the
mixture is estimated with one sample per datapoint from one subset drawn uniformly at random.
Inference from S samples q_S, the PoE of S's experts (the prior expert only when S is the full
set), as the authors' evaluation code and MultiVae's ``MoPoE.encode`` generate; the mixture over
subsets is the training objective's posterior only. (Until issue 12 ``encode(S)`` sampled the
mixture of the PoEs of every subset of S, which uses q_S once in 2^|S| - 1 draws and lowered
conditional coherence; the GMM sampler is fitted on ``encode(all)`` and changed with it.)

Deliberate deviations from the reference code (thomassutter/MoPoE):
- the subset of each datapoint is drawn at random; the reference assigns contiguous slices of
  the (shuffled) batch to the subsets, which is the same in distribution but ties the
  assignment to batch position and leaves subsets empty when the batch is smaller than 2^M - 1;
- the likelihoods and weights lambda_m are the dataset's (``rescale``), not the reference's
  Laplace decoders with per-experiment rescaling, so every model sees the same p(x|z).
"""

from __future__ import annotations

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

__all__ = ["MoPoE", "MoPoEConfig"]


@dataclass(frozen=True, kw_only=True)
class MoPoEConfig(NetConfig):
    """MoPoE hyperparameters (the fields of ``NetConfig`` and ``ModelConfig`` inherited)."""

    epochs: int = 30  # epochs of the single stage ``train``

    def __post_init__(self) -> None:
        super().__post_init__()
        self.require_at_least(0, "epochs")


# `--preset paper` on PolyMNIST: MultiVae 1.0.3's PolyMNIST benchmark (AgatheSenellart/MultiVae,
# examples/mmnist/training/config2.py and mopoe.py): encoders and decoders as the reference's,
# 16,675,855 parameters.
PAPER_POLYMNIST = {
    "latent_dim": 512,  # config2.py base_config
    "nets": "multivae",  # EncoderConvMMNIST_adapted / DecoderConvMMNIST (nets/published.py)
    "rescale": False,  # no likelihood rescaling (equal modalities: every weight would be 1)
    "batch_size": 256,  # config2.py base_training_config
    "lr": 1e-3,  # Adam, config2.py
    "epochs": 800,  # config2.py num_epochs
    "beta": 2.5,  # mopoe.py: beta=2.5
}

# `--preset paper` on MNIST-SVHN: MultiVae 1.0.3's MNIST-SVHN benchmark (examples/mnist_svhn/
# config1.py and mopoe.py).
PAPER_MNIST_SVHN = {
    "latent_dim": 20,  # config1.py base_model_config
    "nets": "multivae",  # Encoder_VAE_MLP/Decoder_AE_MLP, Encoder_VAE_SVHN/Decoder_VAE_SVHN
    "rescale": True,  # uses_likelihood_rescaling=True: max size / size, as the dataset's
    "beta": 5.0,  # mopoe.py: beta=5
    "batch_size": 256,  # config1.py base_training_config
    "lr": 1e-3,
    "epochs": 200,
}


class MoPoE(MultimodalVAE):
    """MoPoE: uniform mixture of the products of experts of every subset of modalities."""

    config: MoPoEConfig

    def __init__(self, dataset: MultimodalDataset, config: MoPoEConfig) -> None:
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

    @property
    def stages(self) -> list[Stage]:
        c = self.config
        return [Stage(name="train", modules=("experts", "decoders"), epochs=c.epochs, lr=c.lr)]

    def loss(
        self, batch: dict[str, Tensor], stage: str, cached: Mapping[str, Tensor]
    ) -> dict[str, Tensor]:
        if stage == "train":
            return self._loss_train(batch)
        raise self.unknown_stage(stage)

    # -- stage loss ------------------------------------------------------------------------
    def _loss_train(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        _, mus, logvars = self.subset_posteriors(batch, self.modalities)  # (2^M-1, B, D)
        kl = kl_std_normal(mus, logvars).mean(0)  # the mean of the subsets' KLs, (B,)
        z = reparameterize(*self._pick(mus, logvars, 1))[0]  # one subset per datapoint
        nll = {
            m: -log_likelihood(self.specs[m], dec(z), batch[m]) for m, dec in self.decoders.items()
        }
        recon = sum(-self.weights[m] * v for m, v in nll.items())
        loss = -(recon - self.config.beta * kl).mean()
        return {"loss": loss, "kl": kl.mean(), **{f"nll_{m}": v.mean() for m, v in nll.items()}}

    # -- inference -------------------------------------------------------------------------
    def subsets(self, within: Subset | None = None) -> list[Subset]:
        """The mixture's components: every non-empty subset of ``within`` (default: all)."""
        return all_subsets(within if within is not None else self.modalities)

    def subset_posteriors(
        self, batch: dict[str, Tensor], within: Subset
    ) -> tuple[list[Subset], Tensor, Tensor]:
        """The PoE q_s of every non-empty subset s of ``within``.

        Returns:
            The subsets, and mu, logvar of each q_s, ``(len(subsets), B, D)``. The prior
            expert is in q_s only when s is the full set of the model's modalities.
        """
        experts = {m: self.experts[m](batch[m]) for m in within}  # each encoder runs once
        subsets = self.subsets(within)
        full = len(self.specs)
        mus, logvars = [], []
        for s in subsets:
            mu, logvar = gaussian_poe(
                torch.stack([experts[m][0] for m in s]),
                torch.stack([experts[m][1] for m in s]),
                prior=len(s) == full,
            )
            mus.append(mu)
            logvars.append(logvar)
        return subsets, torch.stack(mus), torch.stack(logvars)

    def posterior(self, batch: dict[str, Tensor], subset: Subset) -> tuple[Tensor, Tensor]:
        """mu, logvar of q_S, the PoE of S's experts (and N(0, I) when S is every modality).

        The mixture component of S in the training objective, and what ``encode(S)`` samples.
        """
        subset = self.check_subset(subset)
        experts = [self.experts[m](batch[m]) for m in subset]
        return gaussian_poe(
            torch.stack([e[0] for e in experts]),
            torch.stack([e[1] for e in experts]),
            prior=len(subset) == len(self.specs),
        )

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

    @staticmethod
    def _pick(mus: Tensor, logvars: Tensor, n: int) -> tuple[Tensor, Tensor]:
        """One mixture component drawn uniformly per (sample, datapoint): (n, B, D) each."""
        k, b, d = mus.shape
        pick = torch.randint(k, (n, b), device=mus.device)[..., None].expand(n, b, d)
        return mus.gather(0, pick), logvars.gather(0, pick)


@hookimpl
def mmvae_bench_models() -> list[ModelEntry]:
    return [
        ModelEntry(
            name="mopoe",
            cls=MoPoE,
            config=MoPoEConfig,
            description="MoPoE: mixture over all subsets of products of experts, beta-ELBO",
            defaults={
                # beta = 2.5: the published PolyMNIST setting.
                "polymnist-lite": {"lr": 2e-3, "epochs": 20, "beta": 2.5},
                "circles-squares": {"epochs": 30},
            },
            presets={"paper": {"polymnist": PAPER_POLYMNIST, "mnist-svhn": PAPER_MNIST_SVHN}},
        )
    ]
