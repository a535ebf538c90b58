"""The evaluation protocol: what is computed, on how many samples, and the metric keys.

One module decides it, so every model is evaluated the same way; a protocol's name and
version go into every record, and results of different protocols never share a leaderboard
row.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any

from mmvae_bench.errors import BenchError
from mmvae_bench.hmc import HMCKind, HMCSettings

__all__ = [
    "COND_COHERENCE",
    "COND_COHERENCE_BY_SIZE",
    "CLASSIFIER_ACCURACY",
    "FID",
    "DEFAULT_HMC",
    "FID_EXTRACTORS",
    "HMC_ACCEPTANCE",
    "HMC_SAMPLERS",
    "JOINT_COHERENCE",
    "JOINT_LABEL_HIST",
    "PROTOCOLS",
    "Protocol",
    "get_protocol",
]

# Metric keys of the run record (``results.json["metrics"]``).
COND_COHERENCE = "conditional_coherence"  # {subset_key: {target: acc, "mean": acc}}
COND_COHERENCE_BY_SIZE = "conditional_coherence_by_size"  # {"1": {"mean", "std", "n"}}
JOINT_COHERENCE = "joint_coherence"  # share of latent-sampler draws all classifiers agree on
JOINT_LABEL_HIST = "joint_label_histogram"  # {modality: [count per class]}
HMC_ACCEPTANCE = "hmc_acceptance"  # {subset_key: mean acceptance}
CLASSIFIER_ACCURACY = "classifier_accuracy"  # {modality: test accuracy}
FID = "fid"  # {extractor: {modality: {"unconditional": v, subset_key: v}}}
FID_EXTRACTORS = "fid_extractors"  # {extractor: {"kind", "label", "layer", sample counts}}


@dataclass(frozen=True, kw_only=True)
class Protocol:
    """Every evaluation setting; recorded verbatim with the results.

    Attributes:
        name: ``full`` or ``quick``.
        version: bumped whenever a setting changes; part of a leaderboard row's identity.
        test_samples: test datapoints used (a fixed-seed subsample); None = the whole test set.
        joint_samples: prior samples for joint coherence.
        hmc: HMC settings for subset posteriors sampled by MCMC; ``hmc.kind`` names the
            sampler (``paper`` or ``adaptive``, see :data:`HMC_SAMPLERS`).
        batch_size: evaluation batch size (results do not depend on it).
        fid_samples: generated samples per FID number; None = as many as test_samples.
        subsample_seed: seed of the test subsample.
        label: shown next to numbers made with this protocol.
    """

    name: str
    version: str
    test_samples: int | None
    joint_samples: int
    hmc: HMCSettings
    batch_size: int = 250
    fid_samples: int | None = None
    subsample_seed: int = 0
    label: str = ""

    def as_record(self) -> dict[str, Any]:
        """The protocol as a JSON-able dict (what the record stores)."""
        return asdict(self)


# The subset-posterior samplers each protocol offers (`--hmc`), as (version, settings). The
# paper's sampler keeps the versions records have always carried, so its results stay in the
# same leaderboard rows; the adaptive one has versions of its own. BENCHMARKS.md ("HMC
# samplers") has the measurements behind the adaptive settings and the default.
HMC_SAMPLERS: dict[str, dict[HMCKind, tuple[str, HMCSettings]]] = {
    "full": {
        "paper": ("full-1", HMCSettings(steps=100, n_leapfrog=10, step_size=0.01)),
        "adaptive": (
            "full-1-hmc-adaptive",
            HMCSettings(
                kind="adaptive", warmup=20, steps=10, n_leapfrog=5, step_size=0.05, adapt="pooled"
            ),
        ),
    },
    "quick": {
        "paper": ("quick-1", HMCSettings(steps=30, n_leapfrog=10, step_size=0.01)),
        "adaptive": (
            "quick-1-hmc-adaptive",
            HMCSettings(
                kind="adaptive", warmup=20, steps=10, n_leapfrog=5, step_size=0.05, adapt="pooled"
            ),
        ),
    },
}
DEFAULT_HMC: HMCKind = "paper"  # the sampler a protocol uses unless --hmc says otherwise

PROTOCOLS: dict[str, Protocol] = {
    # The published settings: whole test set, 10,000 prior samples, HMC 100 x 10 at 0.01.
    "full": Protocol(
        name="full",
        version=HMC_SAMPLERS["full"][DEFAULT_HMC][0],
        test_samples=None,
        joint_samples=10_000,
        hmc=HMC_SAMPLERS["full"][DEFAULT_HMC][1],
    ),
    # CPU smoke runs: numbers are noisy and labelled as such.
    "quick": Protocol(
        name="quick",
        version=HMC_SAMPLERS["quick"][DEFAULT_HMC][0],
        test_samples=500,
        joint_samples=1_000,
        hmc=HMC_SAMPLERS["quick"][DEFAULT_HMC][1],
        fid_samples=500,
        label="quick protocol (CPU smoke run: 500 test points, "
        f"{HMC_SAMPLERS['quick'][DEFAULT_HMC][1].label})",
    ),
}


def get_protocol(name: str, hmc: str | None = None) -> Protocol:
    """The protocol registered as ``name``, with the subset-posterior sampler ``hmc``.

    ``hmc`` (``paper`` or ``adaptive``; None: the protocol's default, :data:`DEFAULT_HMC`)
    picks the settings and the version from :data:`HMC_SAMPLERS`, so runs of different
    samplers never share a leaderboard row. Unknown names list the known ones.
    """
    try:
        base = PROTOCOLS[name]
    except KeyError:
        raise BenchError(f"unknown protocol '{name}'; available: {', '.join(PROTOCOLS)}") from None
    if hmc is None or hmc == base.hmc.kind:
        return base
    samplers = HMC_SAMPLERS[name]
    if hmc not in samplers:
        raise BenchError(f"unknown HMC sampler '{hmc}' (--hmc); available: {', '.join(samplers)}")
    version, settings = samplers[hmc]  # type: ignore[index]
    if base.hmc.label in base.label:
        label = base.label.replace(base.hmc.label, settings.label)
    else:
        label = f"{base.label}; {settings.label}" if base.label else settings.label
    return replace(base, version=version, hmc=settings, label=label)
