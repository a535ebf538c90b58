"""The public surface of mmvae-bench: everything a model or dataset plugin imports.

A plugin module imports only this module (plus torch and zuko), defines its model class and
config, and registers them with ``@hookimpl def mmvae_bench_models()``. See ``plugins/jnf.py``
for a complete example and ``mmvae_bench.testing`` for the conformance check.
"""

from mmvae_bench.data.spec import (
    DataOptions,
    DatasetEntry,
    ModalitySpec,
    MultimodalDataset,
    Split,
    iter_batches,
)
from mmvae_bench.distributions import (
    gaussian_poe,
    kl_std_normal,
    log_normal_diag,
    log_std_normal,
    reparameterize,
)
from mmvae_bench.errors import BenchError, NonFiniteLossError
from mmvae_bench.flows import FlowPosterior, GaussianHead, ProductOfFlows
from mmvae_bench.hmc import HMCResult, HMCSettings, hmc_sample
from mmvae_bench.hookspecs import hookimpl
from mmvae_bench.likelihoods import likelihood_mean, log_likelihood
from mmvae_bench.model import (
    LatentSample,
    ModelConfig,
    ModelEntry,
    MultimodalVAE,
    NetConfig,
    Stage,
    Subset,
    all_subsets,
    subset_key,
)
from mmvae_bench.nets import build_classifier, build_decoder, build_encoder

__all__ = [
    "BenchError",
    "DataOptions",
    "DatasetEntry",
    "FlowPosterior",
    "GaussianHead",
    "HMCResult",
    "HMCSettings",
    "LatentSample",
    "ModalitySpec",
    "ModelConfig",
    "ModelEntry",
    "MultimodalDataset",
    "MultimodalVAE",
    "NetConfig",
    "NonFiniteLossError",
    "ProductOfFlows",
    "Split",
    "Stage",
    "Subset",
    "all_subsets",
    "build_classifier",
    "build_decoder",
    "build_encoder",
    "gaussian_poe",
    "hmc_sample",
    "hookimpl",
    "iter_batches",
    "kl_std_normal",
    "likelihood_mean",
    "log_likelihood",
    "log_normal_diag",
    "log_std_normal",
    "reparameterize",
    "subset_key",
]
