"""JNF: Joint encoder + Normalizing-Flow unimodal posteriors.

Senellart & Allassonnière, "Bridging the inference gap in Multimodal Variational
Autoencoders", 2025, arXiv:2502.03952.

Two stages. ``joint``: a joint VAE q(z|X), p(x_j|z) on the beta-ELBO
``sum_j lambda_j E_q[log p(x_j|z)] - beta KL(q(z|X) || N(0,I))``. ``unimodal``: with stage 1
frozen, one flow posterior q_j(z|x_j) per modality, trained on
``L_uni = -sum_j E_{z~q(z|X)} log q_j(z|x_j)`` (one joint sample shared by all j).
Inference from a subset S: the joint encoder when S is every modality, q_j when |S| = 1, and
for |S| >= 2 HMC on the product of experts ``sum_{j in S} log q_j(z|x_j) - (|S|-1) log p(z)``.

Deliberate deviations from the reference code (MultiVae):
- the prior is divided out |S|-1 times (the paper's Eq. 12); the reference divides once,
  which is wrong for |S| > 2;
- HMC starts from a sample of one random expert of S (its flow applied); the reference starts
  from that expert's base Gaussian, which is not the expert. The ``adaptive`` sampler
  (``HMCSettings.kind``) starts from the Gaussian product of the experts' moments instead
  and adapts the step size during a warm-up;
- the experts' encoders run once per HMC call, not at each of the 1,100 gradient evaluations,
  and the experts' flows run as one batched pass with a closed-form gradient
  (``ProductOfFlows``);
- stage 2 computes no joint ELBO and no decoder pass: the frozen joint encoder's mean and
  log-variance are computed once per stage (``precompute``) and only sampled per step;
- the trainer puts frozen stage-1 modules in ``eval()`` as well as ``requires_grad_(False)``,
  so BatchNorm statistics cannot drift in stage 2.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn

from mmvae_bench.api import (
    FlowPosterior,
    GaussianHead,
    HMCSettings,
    LatentSample,
    ModelEntry,
    MultimodalDataset,
    MultimodalVAE,
    NetConfig,
    ProductOfFlows,
    Stage,
    Subset,
    build_decoder,
    build_encoder,
    encoder_features,
    hmc_sample,
    hookimpl,
    kl_std_normal,
    likelihood_mean,
    log_likelihood,
    reparameterize,
)

__all__ = ["JNF", "JNFConfig"]


@dataclass(frozen=True, kw_only=True)
class JNFConfig(NetConfig):
    """JNF hyperparameters (the fields of ``NetConfig`` and ``ModelConfig`` inherited)."""

    epochs_joint: int = 20  # stage 1: joint VAE epochs
    epochs_unimodal: int = 10  # stage 2: unimodal flow epochs
    lr_unimodal: float | None = None  # None: same as lr
    flow_depth: int = 2  # K MADE blocks per unimodal posterior
    flow_hidden: int = 128  # width of each MADE hidden layer
    flow_layers: int = 3  # MADE hidden layers
    flow_context: bool = False  # condition the MADE blocks on the encoder features
    # The MADE blocks' affine map: zuko's monotonic map (fast inference paths) or MultiVae's
    # u = (z - mu) exp(-s) (pythae's MAF; needed for imported weights, see api.FlowPosterior).
    flow_affine: Literal["zuko", "multivae"] = "zuko"
    hmc_steps: int = 100  # HMC iterations for |S| >= 2 (the paper's setting)
    hmc_leapfrog: int = 10  # leapfrog steps per iteration
    hmc_step_size: float = 0.01
    joint_hidden: int | None = None  # width of the joint encoder's merging MLP; None: 2 * features
    joint_layers: int = 1  # hidden layers of the merging MLP
    # Each modality's joint-encoder branch ends in a Gaussian head whose mean (latent_dim) is
    # what the MLP merges, as in MultiVae's MultipleHeadJointEncoder (copies of the unimodal
    # encoders, their means concatenated). The heads' log-variance rows are never run: they
    # exist so that the reference's weights load one to one.
    joint_heads: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        self.require_at_least(0, "epochs_joint", "epochs_unimodal")
        self.require_at_least(1, "flow_depth", "flow_hidden", "flow_layers", "joint_layers")
        self.require_at_least(1, "joint_hidden")
        self.require_positive("lr_unimodal")
        self.hmc  # noqa: B018 - validates the HMC fields

    @property
    def hmc(self) -> HMCSettings:
        """The HMC settings of this config."""
        return HMCSettings(
            steps=self.hmc_steps, n_leapfrog=self.hmc_leapfrog, step_size=self.hmc_step_size
        )


# `--preset paper` on PolyMNIST: MultiVae 1.0.3's PolyMNIST benchmark (AgatheSenellart/MultiVae,
# examples/mmnist/training/config2.py and jnf.py), 32,040,015 parameters as the reference's.
PAPER_POLYMNIST = {
    "latent_dim": 512,  # config2.py base_config
    "nets": "multivae",  # EncoderConvMMNIST_adapted / DecoderConvMMNIST (nets/published.py)
    "joint_heads": True,  # MultipleHeadJointEncoder: copies of the encoders, means merged
    "joint_hidden": 512,  # MultipleHeadJointEncoder defaults: hidden_dim=512,
    "joint_layers": 2,  # n_hidden_layers=2, ReLU
    "flow_depth": 2,  # JNFConfig defaults: MAF of 2 MADE blocks
    "flow_hidden": 128,  # x 3 hidden layers x 128
    "flow_layers": 3,
    "flow_affine": "multivae",  # pythae's MAF: u = (z - mu) exp(-s) (zuko's fast paths off)
    "rescale": False,  # no likelihood rescaling (equal modalities: every weight would be 1)
    "beta": 1.0,  # JNFConfig default
    "batch_size": 256,  # config2.py base_training_config
    "lr": 1e-3,  # Adam, config2.py
    "epochs_joint": 400,  # the published JNF run: 600 epochs, the first 400 joint (warmup)
    "epochs_unimodal": 200,
}

# `--preset paper` on MNIST-SVHN: MultiVae 1.0.3's MNIST-SVHN benchmark (examples/mnist_svhn/
# config1.py and jnf.py): MLP nets for MNIST, convolutional ones for SVHN, latent 20.
PAPER_MNIST_SVHN = {
    "latent_dim": 20,  # config1.py base_model_config
    "nets": "multivae",  # Encoder_VAE_MLP/Decoder_AE_MLP, Encoder_VAE_SVHN/Decoder_VAE_SVHN
    "joint_heads": True,  # MultipleHeadJointEncoder defaults, as on PolyMNIST
    "joint_hidden": 512,
    "joint_layers": 2,
    "flow_depth": 2,  # JNFConfig default flows
    "flow_hidden": 128,
    "flow_layers": 3,
    "flow_affine": "multivae",
    "rescale": True,  # uses_likelihood_rescaling=True: max size / size, as the dataset's
    "beta": 1.0,
    "batch_size": 256,  # config1.py base_training_config
    "lr": 1e-3,
    "epochs_joint": 100,  # num_epochs=200, warmup=100 (jnf.py)
    "epochs_unimodal": 100,
}


class JNF(MultimodalVAE):
    """JNF: a joint VAE, then flow posteriors per modality combined by product of experts."""

    config: JNFConfig

    def __init__(self, dataset: MultimodalDataset, config: JNFConfig) -> None:
        super().__init__(dataset, config)
        c, d = config, self.latent_dim
        self.joint_encoders = nn.ModuleDict(
            {m: build_encoder(s, c.features, c.width, c.nets) for m, s in self.specs.items()}
        )
        # Each modality's encoder features (fixed per net with nets="multivae").
        sizes = {m: encoder_features(s, c.features, c.nets) for m, s in self.specs.items()}
        branches = sum(sizes.values())
        if c.joint_heads:
            self.joint_heads = nn.ModuleDict({m: GaussianHead(sizes[m], d) for m in self.specs})
            branches = d * len(self.specs)
        hidden = c.joint_hidden or 2 * c.features
        act = nn.ReLU if c.nets == "multivae" else nn.SiLU
        layers: list[nn.Module] = [nn.Linear(branches, hidden), act()]
        for _ in range(c.joint_layers - 1):
            layers += [nn.Linear(hidden, hidden), act()]
        self.joint_merge = nn.Sequential(*layers, GaussianHead(hidden, d))
        self.decoders = nn.ModuleDict(
            {m: build_decoder(s, d, c.width, c.nets) for m, s in self.specs.items()}
        )
        self.unimodal_encoders = nn.ModuleDict(
            {m: build_encoder(s, c.features, c.width, c.nets) for m, s in self.specs.items()}
        )
        self.posteriors = nn.ModuleDict(
            {
                m: FlowPosterior(
                    sizes[m],
                    d,
                    depth=c.flow_depth,
                    hidden=c.flow_hidden,
                    layers=c.flow_layers,
                    context=c.flow_context,
                    affine=c.flow_affine,
                )
                for m in self.specs
            }
        )
        weights = self.likelihood_weights if c.rescale else {}
        self.weights = {m: float(weights.get(m, 1.0)) for m in self.specs}

    @property
    def stages(self) -> list[Stage]:
        c = self.config
        return [
            Stage(
                name="joint",
                modules=self._joint_modules,
                epochs=c.epochs_joint,
                lr=c.lr,
            ),
            Stage(
                name="unimodal",
                modules=("unimodal_encoders", "posteriors"),
                epochs=c.epochs_unimodal,
                lr=c.lr_unimodal or c.lr,
            ),
        ]

    @property
    def _joint_modules(self) -> tuple[str, ...]:
        heads = ("joint_heads",) if self.config.joint_heads else ()
        return ("joint_encoders", *heads, "joint_merge", "decoders")

    def loss(
        self, batch: dict[str, Tensor], stage: str, cached: Mapping[str, Tensor]
    ) -> dict[str, Tensor]:
        if stage == "joint":
            return self._loss_joint(batch)
        if stage == "unimodal":
            return self._loss_unimodal(batch, cached)
        raise self.unknown_stage(stage)

    def precompute(self, batch: dict[str, Tensor], stage: str) -> dict[str, Tensor]:
        # Stage 1 is frozen in stage 2: its posterior parameters are computed once per epoch
        # set, so a stage-2 step costs only the unimodal encoders and flows.
        if stage != "unimodal":
            return {}
        mu, logvar = self.joint_posterior(batch)
        return {"joint_mu": mu, "joint_logvar": logvar}

    # -- stage losses ----------------------------------------------------------------------
    def _loss_joint(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        mu, logvar = self.joint_posterior(batch)
        z = reparameterize(mu, logvar)
        parts: dict[str, Tensor] = {}
        recon = torch.zeros_like(mu[:, 0])
        for m, dec in self.decoders.items():
            ll = log_likelihood(self.specs[m], dec(z), batch[m])
            parts[f"nll_{m}"] = -ll.mean()
            recon = recon + self.weights[m] * ll
        kl = kl_std_normal(mu, logvar)
        loss = -(recon - self.config.beta * kl).mean()
        return {"loss": loss, "kl": kl.mean(), **parts}

    def _loss_unimodal(
        self, batch: dict[str, Tensor], cached: Mapping[str, Tensor]
    ) -> dict[str, Tensor]:
        if "joint_mu" in cached:
            mu, logvar = cached["joint_mu"], cached["joint_logvar"]
        else:
            with torch.no_grad():
                mu, logvar = self.joint_posterior(batch)
        z = reparameterize(mu, logvar).detach()  # one joint sample shared by all j
        parts = {
            f"nll_q_{m}": -self.unimodal_posterior(batch, m).log_prob(z).mean() for m in self.specs
        }
        return {"loss": sum(parts.values()), **parts}

    # -- inference -------------------------------------------------------------------------
    def joint_posterior(self, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        """mu, logvar of q(z | X), each (B, latent_dim)."""
        branches = [self.joint_encoders[m](batch[m]) for m in self.specs]
        if self.config.joint_heads:
            branches = [
                self.joint_heads[m].mean(h) for m, h in zip(self.specs, branches, strict=True)
            ]
        return self.joint_merge(torch.cat(branches, dim=-1))

    def unimodal_posterior(
        self, batch: dict[str, Tensor], m: str
    ) -> torch.distributions.Distribution:
        """q_m(z | x_m): batch shape (B,), event (latent_dim,)."""
        return self.posteriors[m](self.unimodal_encoders[m](batch[m]))

    def encode(
        self,
        batch: dict[str, Tensor],
        subset: Subset,
        n: int = 1,
        *,
        hmc: HMCSettings | None = None,
    ) -> LatentSample:
        subset = self.check_subset(subset)
        if len(subset) == len(self.specs):
            mu, logvar = self.joint_posterior(batch)
            return LatentSample(reparameterize(mu, logvar, n))
        experts = [self.unimodal_posterior(batch, m) for m in subset]
        if len(experts) == 1:
            return LatentSample(experts[0].rsample((n,)))
        return self._sample_poe(experts, n, hmc or self.config.hmc)

    def encode_subsets(
        self,
        batch: dict[str, Tensor],
        subsets: Sequence[Subset],
        n: int = 1,
        *,
        hmc: HMCSettings | None = None,
    ) -> list[LatentSample]:
        # Each unimodal encoder runs once for all subsets, and the subsets of each size share
        # one HMC call: one target whose rows are (subset, datapoint) pairs, each expert's
        # flow evaluated once on the rows of every subset holding it.
        subsets = [self.check_subset(s) for s in subsets]
        settings = hmc or self.config.hmc
        full = len(self.specs)
        used = sorted({m for s in subsets if len(s) < full for m in s})
        experts = {m: self.unimodal_posterior(batch, m) for m in used}
        out: list[LatentSample | None] = [None] * len(subsets)
        by_size: dict[int, list[int]] = {}
        for i, s in enumerate(subsets):
            if len(s) == full:
                out[i] = self.encode(batch, s, n)
            elif len(s) == 1:
                out[i] = LatentSample(experts[s[0]].rsample((n,)))
            else:
                by_size.setdefault(len(s), []).append(i)
        for k, idx in by_size.items():
            mods = sorted({m for i in idx for m in subsets[i]})
            target = ProductOfFlows(
                [experts[m] for m in mods],
                prior_power=k - 1,
                subsets=[[mods.index(m) for m in subsets[i]] for i in idx],
            )
            # Adaptation pools acceptances within a subset, never across subsets.
            rows = experts[mods[0]].batch_shape[0]
            groups = torch.arange(len(idx)).repeat_interleave(rows)
            z, rates = self._sample_target(target, n, settings, groups)
            z = z.unflatten(1, (len(idx), -1))  # (n, S, B, D)
            rates = rates.unflatten(1, (len(idx), -1)).mean((0, 2)).tolist()
            for j, i in enumerate(idx):
                out[i] = LatentSample(z[:, j], {"hmc_acceptance": rates[j]})
        return out  # type: ignore[return-value]

    def _sample_poe(self, experts: list, n: int, settings: HMCSettings) -> LatentSample:
        # Eq. 12: log pi(z) = sum_j log q_j(z|x_j) - (|S|-1) log p(z). The experts were built
        # once above; the target runs only the flows (all experts' MADE blocks in one batched
        # pass, gradient in closed form).
        target = ProductOfFlows(experts, prior_power=len(experts) - 1)
        z, rates = self._sample_target(target, n, settings)
        return LatentSample(z, {"hmc_acceptance": float(rates.mean())})

    def _sample_target(
        self,
        target: ProductOfFlows,
        n: int,
        settings: HMCSettings,
        groups: Tensor | None = None,
    ) -> tuple[Tensor, Tensor]:
        """HMC samples (n, rows, D) of ``target`` and each chain's acceptance (n, rows)."""
        if settings.kind == "paper":
            # Start each chain from a sample of one expert of S chosen at random per chain.
            z0 = target.sample_experts(n)
            result = hmc_sample(target, z0, settings)
        else:
            # Start from the Gaussian product of the experts' moments (near the target's bulk,
            # where an expert's sample lies in the product's tail), optionally preconditioned
            # by its deviations (BENCHMARKS.md, "HMC samplers": measured, it is not a win).
            mean, std = target.gaussian_product()
            z0 = mean + std * torch.randn((n, *mean.shape), dtype=mean.dtype, device=mean.device)
            scale = std if settings.precondition else None
            result = hmc_sample(target, z0, settings, scale=scale, groups=groups)
        rates = result.chain_acceptance
        if rates is None:  # a sampler that reports only the mean
            rates = torch.full(result.z.shape[:-1], result.acceptance, device=result.z.device)
        return result.z, rates

    def decode(self, z: Tensor) -> dict[str, Tensor]:
        return {m: likelihood_mean(self.specs[m], dec(z)) for m, dec in self.decoders.items()}


@hookimpl
def mmvae_bench_models() -> list[ModelEntry]:
    return [
        ModelEntry(
            name="jnf",
            cls=JNF,
            config=JNFConfig,
            description="JNF: joint VAE + normalizing-flow unimodal posteriors, PoE with HMC",
            defaults={
                # The demo budget (issue 2): `make demo` on the 2-core CPU reaches one-input
                # conditional coherence 0.56 with 20 + 20 epochs; every shorter budget measured
                # (batch 32/64/128, cosine or constant rate, stage 1 at batch 32 over three
                # seeds: BENCHMARKS.md, "make demo") reached less.
                "polymnist-lite": {"lr": 2e-3, "epochs_joint": 20, "epochs_unimodal": 20},
                "circles-squares": {"epochs_joint": 30, "epochs_unimodal": 20},
            },
            presets={"paper": {"polymnist": PAPER_POLYMNIST, "mnist-svhn": PAPER_MNIST_SVHN}},
        )
    ]
