"""Our JNF against MultiVae's in one process, at equal size (``bench --preset paper``).

Both models are built at MultiVae 1.0.3's PolyMNIST benchmark configuration: ours from the
``paper`` preset (:mod:`mmvae_bench.presets`), MultiVae's ``JNF`` with
``EncoderConvMMNIST_adapted`` encoders, ``DecoderConvMMNIST`` decoders, its default joint
encoder and MAF flows, latent 512 and Laplace likelihoods of scale 0.75. The record holds both
parameter counts, which are equal at full size.

Three things are timed on the same random PolyMNIST-shaped batches (float32 in [0, 1), the
dtype both models read): one stage-1 (joint) training step, one stage-2 (unimodal flows) step,
and sampling the |S| = 2 subset posterior with HMC (both: the same chains, iterations, leapfrog
steps and step size). The two sides alternate, ours then theirs, repetition after repetition,
after one untimed call of each, so a change in machine load during the run falls on both;
every ratio is of medians measured in this one run.

What each side's step is:

- ours: the trainer's step (``model.loss`` of the stage, backward, fused Adam over the stage's
  parameters as :func:`~mmvae_bench.train.make_adam` builds it). Stage 2 reads the joint
  posterior precomputed once per stage, as the trainer does; that precompute is timed
  separately (``precompute_s_per_sample``) and is not in the step.
- MultiVae: its trainer's step (``model(inputs, epoch=e)``, backward, ``torch.optim.Adam``
  over all parameters, as its ``BaseTrainer`` builds it). In stage 2 (``epoch > warmup``) its
  forward still runs the joint encoder and decoders each step.
- sampling: ours is ``model.encode(batch, subset, 1, hmc=...)``; MultiVae's is
  ``JNF.encode(inputs, cond_mod=subset, N=1, mcmc_steps=..., n_lf=..., eps_lf=...)``.
  At fewer iterations than the paper's 100 the seconds per 128 samples are also given
  extrapolated linearly in gradient evaluations (which scales the fixed costs, encoders and
  the start, as well: an overestimate for both sides).
"""

from __future__ import annotations

import importlib.util
import logging
import os
import statistics
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor

from mmvae_bench.config import make_config
from mmvae_bench.errors import BenchError
from mmvae_bench.hmc import HMCSettings
from mmvae_bench.model import MultimodalVAE
from mmvae_bench.perf.archs import get_arch
from mmvae_bench.perf.timing import Timing, sync
from mmvae_bench.plugins import Registry
from mmvae_bench.presets import preset_values
from mmvae_bench.train import freeze_for_stage, make_adam

__all__ = ["MISSING", "CompareSettings", "available", "compare", "reference_jnf"]

MISSING = "multivae is not installed: pip install -e '.[reference]' (make install does)"
LAPLACE_SCALE = 0.75  # MultiVae's PolyMNIST benchmark: decoder_dist_params scale
PAPER_HMC = HMCSettings()  # the paper's 100 x 10 at 0.01: what extrapolations scale to


def available() -> bool:
    """Whether MultiVae can be imported (the ``reference`` extra)."""
    return importlib.util.find_spec("multivae") is not None


@dataclass(frozen=True, kw_only=True)
class CompareSettings:
    """Sizes and repetitions of the same-process comparison.

    Attributes:
        latent_dim: latent size of both models (the preset's 512; smaller only for smoke runs).
        batch_size: training batch (the preset's 256).
        train_steps: training steps per timed call (one call = one repetition of one side).
        chains: HMC chains, one per datapoint (|S| = 2, the first two modalities).
        hmc_steps: HMC iterations per sampling call (fewer than the paper's 100: extrapolated).
        n_leapfrog: leapfrog steps per iteration.
        repeats: timed calls per side and measurement, alternating ours and theirs.
        seed: seeds both models' initialisation and the data.
    """

    latent_dim: int = 512
    batch_size: int = 256
    train_steps: int = 3
    chains: int = 128
    hmc_steps: int = 10
    n_leapfrog: int = 10
    repeats: int = 5
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("latent_dim", "batch_size", "train_steps", "chains", "n_leapfrog"):
            if getattr(self, name) < 1:
                raise BenchError(f"reference comparison: {name} must be >= 1")
        if self.hmc_steps < 1 or self.repeats < 1:
            raise BenchError("reference comparison: hmc_steps and repeats must be >= 1")

    @property
    def hmc(self) -> HMCSettings:
        """Our sampler's settings: the paper's kind and step size, these iterations."""
        return HMCSettings(steps=self.hmc_steps, n_leapfrog=self.n_leapfrog)


def reference_jnf(modalities: list[str], latent_dim: int, warmup: int) -> torch.nn.Module:
    """MultiVae's JNF at its PolyMNIST benchmark architecture (needs the ``reference`` extra)."""
    from multivae.models import JNF, JNFConfig
    from multivae.models.nn.mmnist import DecoderConvMMNIST, EncoderConvMMNIST_adapted
    from pythae.models.base.base_config import BaseAEConfig

    shape = (3, 28, 28)
    config = JNFConfig(
        n_modalities=len(modalities),
        latent_dim=latent_dim,
        input_dims={m: shape for m in modalities},
        decoders_dist={m: "laplace" for m in modalities},
        decoder_dist_params={m: {"scale": LAPLACE_SCALE} for m in modalities},
        warmup=warmup,
    )
    net = BaseAEConfig(latent_dim=latent_dim, style_dim=0, input_dim=shape)
    return JNF(
        config,
        encoders={m: EncoderConvMMNIST_adapted(net) for m in modalities},
        decoders={m: DecoderConvMMNIST(net) for m in modalities},
    )


def _count(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _ours(registry: Registry, latent_dim: int, batch_size: int) -> MultimodalVAE:
    entry = registry.model("jnf")
    arch = get_arch("polymnist")
    values = preset_values(entry, arch.name, "paper", registry.models)
    values.update(latent_dim=latent_dim, batch_size=batch_size)
    return entry.cls(arch.dataset(1, n_test=1), make_config(entry.config, values))


def _alternate(
    sides: dict[str, Callable[[], Any]], repeats: int, device: torch.device
) -> dict[str, list[float]]:
    """One untimed call of each side, then ``repeats`` timed rounds of A B (in that order)."""
    for fn in sides.values():
        fn()
    sync(device)
    times: dict[str, list[float]] = {name: [] for name in sides}
    for _ in range(repeats):
        for name, fn in sides.items():
            t0 = time.perf_counter()
            fn()
            sync(device)
            times[name].append(time.perf_counter() - t0)
    return times


def _summary(times: list[float], units: float) -> dict[str, Any]:
    timing = Timing.of(times)
    return {"s_per_call": timing.as_dict(), "per_s": timing.rate(units), "times_s": times}


def _ratio(ours: list[float], theirs: list[float]) -> dict[str, float]:
    """Theirs / ours in time (> 1: ours is faster): of the medians, and over the rounds."""
    per_round = [t / o for o, t in zip(ours, theirs, strict=True)]
    return {
        "speedup": statistics.median(theirs) / statistics.median(ours),
        "per_round_min": min(per_round),
        "per_round_max": max(per_round),
    }


def compare(
    settings: CompareSettings,
    registry: Registry,
    device: torch.device,
    say: Callable[[str], None] = lambda msg: None,
) -> dict[str, Any]:
    """Time our JNF and MultiVae's side by side; the record's ``reference`` section.

    Raises:
        BenchError: MultiVae is not installed (the message says how to install it).
    """
    if not available():
        raise BenchError(f"bench --preset paper compares against MultiVae, but {MISSING}")
    from multivae.data import MultimodalBaseDataset

    s = settings
    mods = list(get_arch("polymnist").specs)
    torch.manual_seed(s.seed)
    ours = _ours(registry, s.latent_dim, s.batch_size).to(device)
    torch.manual_seed(s.seed)
    theirs = reference_jnf(mods, s.latent_dim, warmup=1).to(device)
    g = torch.Generator().manual_seed(s.seed)
    n = max(s.train_steps * s.batch_size, s.chains)
    data = {m: torch.rand(n, 3, 28, 28, generator=g).to(device) for m in mods}

    def batch(i: int) -> dict[str, Tensor]:
        return {m: x[i * s.batch_size : (i + 1) * s.batch_size] for m, x in data.items()}

    batches = [batch(i) for i in range(s.train_steps)]
    ref_batches = [MultimodalBaseDataset(data=b, labels=None) for b in batches]
    samples = s.train_steps * s.batch_size
    out: dict[str, Any] = {
        "settings": asdict(s),
        "parameters": {"ours": _count(ours), "reference": _count(theirs)},
        "data": "torch.rand float32 in [0, 1), PolyMNIST shapes (5 x 3x28x28)",
        "order": "one untimed call each, then rounds of ours then reference",
        "load_average": {"start": list(os.getloadavg())},
        "training": {},
    }

    # Stage 1 (joint), then stage 2 (unimodal flows) on the same two models, as in training.
    for stage, epoch in (("joint", 1), ("unimodal", 2)):  # MultiVae: epoch > warmup = stage 2
        st = {x.name: x for x in ours.stages}[stage]
        ours.train()
        opt = make_adam(freeze_for_stage(ours, st), st.lr or 1e-3)
        t0 = time.perf_counter()
        with torch.no_grad():
            cached = [ours.precompute(b, stage) for b in batches]
        sync(device)
        precompute_s = time.perf_counter() - t0
        theirs.train()
        ref_opt = torch.optim.Adam(theirs.parameters(), lr=1e-3)

        def ours_steps(opt=opt, cached=cached, stage=stage) -> None:
            for b, c in zip(batches, cached, strict=True):
                loss = ours.loss(b, stage, c)["loss"]
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()

        def ref_steps(ref_opt=ref_opt, epoch=epoch) -> None:
            for b in ref_batches:
                loss = theirs(b, epoch=epoch).loss
                ref_opt.zero_grad(set_to_none=True)
                loss.backward()
                ref_opt.step()

        say(f"reference comparison: stage {stage}, {s.repeats} rounds of ours / MultiVae")
        times = _alternate({"ours": ours_steps, "reference": ref_steps}, s.repeats, device)
        out["training"][stage] = {
            "samples_per_call": samples,
            "ours": _summary(times["ours"], samples),
            "reference": _summary(times["reference"], samples),
            "ours_precompute_s_per_sample": precompute_s / samples if cached[0] else None,
            "ratio": _ratio(times["ours"], times["reference"]),
        }

    # |S| = 2 subset posterior sampling, the same chains and HMC settings on both sides.
    ours.eval().requires_grad_(False)
    theirs.eval()
    subset = mods[:2]
    chains = {m: x[: s.chains] for m, x in data.items()}
    ref_chains = MultimodalBaseDataset(data=chains, labels=None)
    hmc = s.hmc

    def ours_sample() -> Tensor:
        with torch.no_grad():
            return ours.encode(chains, tuple(subset), 1, hmc=hmc).z

    def ref_sample() -> Tensor:
        # MultiVae logs a line per call and warns about a deprecated resize: kept quiet.
        quiet = logging.getLogger(type(theirs).__module__)  # it sets its own level
        level = quiet.level
        quiet.setLevel(logging.WARNING)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)
                return theirs.encode(
                    ref_chains,
                    cond_mod=subset,
                    N=1,
                    mcmc_steps=hmc.steps,
                    n_lf=hmc.n_leapfrog,
                    eps_lf=hmc.step_size,
                ).z
        finally:
            quiet.setLevel(level)

    say(f"reference comparison: |S|=2 HMC {hmc.steps}x{hmc.n_leapfrog}, {s.repeats} rounds")
    times = _alternate({"ours": ours_sample, "reference": ref_sample}, s.repeats, device)
    evals = hmc.steps * hmc.n_leapfrog + 1
    paper_evals = PAPER_HMC.steps * PAPER_HMC.n_leapfrog + 1
    row: dict[str, Any] = {
        "subset_size": 2,
        "chains": s.chains,
        "hmc": {"steps": hmc.steps, "n_leapfrog": hmc.n_leapfrog, "step_size": hmc.step_size},
        "gradient_evaluations": evals,
        "ratio": _ratio(times["ours"], times["reference"]),
        # Whether our product of experts ran in closed form (flows.ProductOfFlows); MultiVae's
        # affine map (the paper preset's flow_affine) has no closed form there: autograd.
        "ours_closed_form_product": all(
            q.structure() is not None for q in ours.posteriors.values()
        ),
    }
    for side in ("ours", "reference"):
        per_128 = statistics.median(times[side]) * 128 / s.chains
        row[side] = {
            **_summary(times[side], s.chains),
            "s_per_128_samples": per_128,
            "s_per_128_samples_at_paper_hmc": per_128 * paper_evals / evals,
        }
    row["extrapolated_to_paper_hmc"] = evals != paper_evals
    out["hmc"] = row
    out["load_average"]["end"] = list(os.getloadavg())
    return out
