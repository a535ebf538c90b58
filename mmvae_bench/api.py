"""The public surface of mmvae-bench: everything a model, dataset or metric plugin imports.

A plugin module imports only this module (plus torch and zuko), defines its model class and
config, and registers them with ``@hookimpl def mmvae_bench_models()``: README.md, "Write your
own model", walks through a complete one (``mmvae-bench new-model NAME`` writes it as a package),
``plugins/`` holds the built-in models and :mod:`mmvae_bench.testing` the conformance check.

Every name in ``__all__`` has an example that the test suite runs
(``tests/test_api_doctests.py``): in its own docstring, or, for names whose docstrings live in
modules without one yet, under its name in ``__test__`` below (doctest's standard place for
extra examples; ``python -m doctest`` and ``doctest.testmod`` run them too).
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
    kl_normal_diag,
    kl_std_normal,
    log_normal_diag,
    log_std_normal,
    reparameterize,
)
from mmvae_bench.errors import BenchError, NonFiniteLossError
from mmvae_bench.eval.metric import MetricContext, MetricEntry
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
from mmvae_bench.nets import build_classifier, build_decoder, build_encoder, encoder_features

__all__ = [
    "BenchError",
    "DataOptions",
    "DatasetEntry",
    "FlowPosterior",
    "GaussianHead",
    "HMCResult",
    "HMCSettings",
    "LatentSample",
    "MetricContext",
    "MetricEntry",
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
    "encoder_features",
    "gaussian_poe",
    "hmc_sample",
    "hookimpl",
    "iter_batches",
    "kl_normal_diag",
    "kl_std_normal",
    "likelihood_mean",
    "log_likelihood",
    "log_normal_diag",
    "log_std_normal",
    "reparameterize",
    "subset_key",
]

# Examples of the names whose own docstrings have none, keyed by name (see the module
# docstring). Tiny and deterministic: seeded where they draw random numbers.
__test__ = {
    "BenchError": """
    A user error: the CLI prints ``error: <message>`` and exits with code 2.

    >>> from mmvae_bench.api import BenchError, ModelConfig
    >>> try:
    ...     ModelConfig(lr=0.0)
    ... except BenchError as e:
    ...     print(e)
    lr must be > 0, got 0.0
    """,
    "NonFiniteLossError": """
    >>> from mmvae_bench.api import BenchError, NonFiniteLossError
    >>> e = NonFiniteLossError("train", epoch=3, step=17, value=float("nan"))
    >>> isinstance(e, BenchError), e.stage
    (True, 'train')
    >>> print(e)  # doctest: +NORMALIZE_WHITESPACE
    non-finite loss (nan) in stage 'train', epoch 3, step 17; lower the learning rate or
    check the config
    """,
    "ModalitySpec": """
    >>> from mmvae_bench.api import ModalitySpec
    >>> spec = ModalitySpec(
    ...     name="image", shape=(1, 32, 32), kind="image", likelihood="bernoulli",
    ...     encoder="conv32", decoder="conv32", classifier="cnn32", fid=True,
    ... )
    >>> spec.size
    1024
    """,
    "Split": """
    >>> import torch
    >>> from mmvae_bench.api import Split
    >>> split = Split({"a": torch.zeros(4, 2), "b": torch.ones(4, 3)}, y=torch.arange(4))
    >>> len(split), split.subset(torch.tensor([0, 2])).y
    (4, tensor([0, 2]))
    >>> Split({"a": torch.zeros(3, 2)}, y=torch.arange(4))
    Traceback (most recent call last):
    ...
    mmvae_bench.errors.BenchError: modality 'a' has 3 samples, labels have 4

    Images are stored as uint8 with their divisor; a paired modality stores each unique row
    once and an index per sample; batches come out as float32:

    >>> pixels = torch.tensor([[0, 255], [51, 102]], dtype=torch.uint8)  # 2 unique rows
    >>> split = Split(
    ...     {"img": pixels, "v": torch.zeros(3, 1)}, y=torch.arange(3),
    ...     divisor={"img": 255.0}, index={"img": torch.tensor([1, 0, 1])},
    ... )
    >>> split.batch(torch.tensor([0, 1]))["img"]
    tensor([[0.2000, 0.4000],
            [0.0000, 1.0000]])
    >>> split.nbytes  # 4 pixel bytes, 3 floats, 3 + 3 int64 (index, labels)
    64
    """,
    "MultimodalDataset": """
    >>> import torch
    >>> from mmvae_bench.api import ModalitySpec, MultimodalDataset, Split
    >>> specs = {m: ModalitySpec(name=m, shape=(2,), kind="vector") for m in ("a", "b")}
    >>> split = Split({m: torch.zeros(4, 2) for m in specs}, y=torch.zeros(4, dtype=torch.long))
    >>> ds = MultimodalDataset(
    ...     name="pairs", specs=specs, train=split, test=split, n_classes=2, rescale={"a": 2.0}
    ... )
    >>> ds.modalities, ds.likelihood_weights()
    (('a', 'b'), {'a': 2.0, 'b': 1.0})
    """,
    "DataOptions": """
    >>> from pathlib import Path
    >>> from mmvae_bench.api import DataOptions
    >>> options = DataOptions(cache_dir=Path(".cache/mmvae-bench"), seed=1)
    >>> options.data_dir is None, options.seed
    (True, 1)
    """,
    "DatasetEntry": """
    A dataset plugin returns these from ``@hookimpl def mmvae_bench_datasets()``.

    >>> from mmvae_bench.api import DataOptions, DatasetEntry
    >>> from mmvae_bench.testing import tiny_dataset
    >>> entry = DatasetEntry(
    ...     name="my-pairs",
    ...     load=lambda options: tiny_dataset(("vector", "vector"), seed=options.seed),
    ...     description="two random vectors",
    ...     builtin=True,
    ... )
    >>> entry.load(DataOptions()).modalities
    ('m0', 'm1')
    """,
    "iter_batches": """
    >>> import torch
    >>> from mmvae_bench.api import iter_batches
    >>> x = {"a": torch.arange(5), "b": torch.arange(5) * 10}
    >>> [batch["b"].tolist() for batch, _ in iter_batches(x, 2, shuffle=False)]
    [[0, 10], [20, 30], [40]]
    >>> g = torch.Generator().manual_seed(0)
    >>> sorted(i for b, _ in iter_batches(x, 2, shuffle=True, generator=g) for i in b["a"].tolist())
    [0, 1, 2, 3, 4]
    """,
    "GaussianHead": """
    >>> import torch
    >>> from mmvae_bench.api import GaussianHead
    >>> mu, logvar = GaussianHead(features=16, latent_dim=4)(torch.zeros(3, 16))
    >>> mu.shape, logvar.shape
    (torch.Size([3, 4]), torch.Size([3, 4]))
    """,
    "HMCSettings": """
    >>> from mmvae_bench.api import HMCSettings
    >>> s = HMCSettings()
    >>> s.kind, s.steps, s.n_leapfrog, s.step_size, s.gradient_evaluations
    ('paper', 100, 10, 0.01, 1001)
    >>> HMCSettings(kind="adaptive", warmup=20, steps=10, n_leapfrog=5).gradient_evaluations
    151
    >>> HMCSettings(n_leapfrog=0)
    Traceback (most recent call last):
    ...
    mmvae_bench.errors.BenchError: HMC needs steps >= 0 and n_leapfrog >= 1, got 100, 0
    """,
    "HMCResult": """
    >>> import torch
    >>> from mmvae_bench.api import HMCResult
    >>> result = HMCResult(z=torch.zeros(5, 3, 2), acceptance=0.8)
    >>> result.z.shape, result.acceptance
    (torch.Size([5, 3, 2]), 0.8)
    """,
    "hmc_sample": """
    200 chains on N(0, I) in 2-d, started far away, all in one tensor:

    >>> import torch
    >>> from mmvae_bench.api import HMCSettings, hmc_sample
    >>> def log_prob(z):  # (*chains, D) -> (*chains)
    ...     return -0.5 * z.pow(2).sum(-1)
    >>> g = torch.Generator().manual_seed(0)
    >>> settings = HMCSettings(steps=30, n_leapfrog=5, step_size=0.3)
    >>> out = hmc_sample(log_prob, torch.full((200, 2), 3.0), settings, generator=g)
    >>> out.z.shape, 0.5 < out.acceptance <= 1.0, out.z.mean().abs().item() < 0.3
    (torch.Size([200, 2]), True, True)
    """,
    "hookimpl": """
    Marks a plugin's hook functions (``mmvae_bench_models``, ``mmvae_bench_datasets``,
    ``mmvae_bench_metrics``; their contracts are in :mod:`mmvae_bench.hookspecs`). A function
    without it is not a hook, and loading the plugin says so.

    >>> import types
    >>> from mmvae_bench.api import ModelConfig, ModelEntry, MultimodalVAE, hookimpl
    >>> from mmvae_bench.plugins import load_registry
    >>> @hookimpl
    ... def mmvae_bench_models():
    ...     return [ModelEntry(name="my-vae", cls=MultimodalVAE, config=ModelConfig)]
    >>> plugin = types.ModuleType("my_plugin")
    >>> plugin.mmvae_bench_models = mmvae_bench_models
    >>> list(load_registry(modules=[plugin], entry_points=False).models)
    ['my-vae']
    """,
    "likelihood_mean": """
    >>> import torch
    >>> from mmvae_bench.api import ModalitySpec, likelihood_mean
    >>> binary = ModalitySpec(name="b", shape=(2,), kind="vector", likelihood="bernoulli")
    >>> likelihood_mean(binary, torch.zeros(1, 2))  # decoder logits -> probabilities
    tensor([[0.5000, 0.5000]])
    >>> real = ModalitySpec(name="r", shape=(3,), kind="vector")  # Gaussian, values in [0, 1]
    >>> likelihood_mean(real, torch.tensor([[-1.0, 0.5, 2.0]]))
    tensor([[0.0000, 0.5000, 1.0000]])
    """,
    "log_likelihood": """
    >>> import torch
    >>> from mmvae_bench.api import ModalitySpec, log_likelihood
    >>> spec = ModalitySpec(name="b", shape=(2,), kind="vector", likelihood="bernoulli")
    >>> x = torch.tensor([[0.0, 1.0], [1.0, 1.0], [0.0, 0.0]])  # (B, *shape)
    >>> log_likelihood(spec, torch.zeros(3, 2), x)  # logits 0: 2 log(1/2) per sample
    tensor([-1.3863, -1.3863, -1.3863])
    >>> log_likelihood(spec, torch.zeros(5, 3, 2), x).shape  # (n, B, *shape) decoder outputs
    torch.Size([5, 3])
    """,
    "build_encoder": """
    >>> import torch
    >>> from mmvae_bench.api import ModalitySpec, build_encoder
    >>> spec = ModalitySpec(name="v", shape=(6,), kind="vector")  # encoder "mlp"
    >>> build_encoder(spec, out_features=16, width=4)(torch.zeros(3, 6)).shape
    torch.Size([3, 16])
    """,
    "build_decoder": """
    >>> import torch
    >>> from mmvae_bench.api import ModalitySpec, build_decoder
    >>> spec = ModalitySpec(
    ...     name="image", shape=(1, 32, 32), kind="image", encoder="conv32", decoder="conv32"
    ... )
    >>> build_decoder(spec, latent_dim=4, width=4)(torch.zeros(5, 3, 4)).shape
    torch.Size([5, 3, 1, 32, 32])
    """,
    "build_classifier": """
    >>> import torch
    >>> from mmvae_bench.api import ModalitySpec, build_classifier
    >>> spec = ModalitySpec(name="v", shape=(6,), kind="vector")  # classifier "mlp"
    >>> build_classifier(spec, n_classes=10)(torch.zeros(3, 6)).shape
    torch.Size([3, 10])
    """,
    "LatentSample": """
    >>> import torch
    >>> from mmvae_bench.api import LatentSample
    >>> ls = LatentSample(torch.zeros(2, 8, 4), info={"hmc_acceptance": 0.8})
    >>> ls.z.shape  # (n, batch, latent_dim)
    torch.Size([2, 8, 4])
    """,
    "ModelConfig": """
    A plugin's config subclasses it (or :class:`NetConfig`): a frozen, keyword-only dataclass.

    >>> from dataclasses import dataclass
    >>> from mmvae_bench.api import ModelConfig
    >>> @dataclass(frozen=True, kw_only=True)
    ... class MyConfig(ModelConfig):
    ...     epochs: int = 20  # epochs of the single stage "train"
    ...     def __post_init__(self):
    ...         super().__post_init__()
    ...         self.require_at_least(0, "epochs")
    >>> c = MyConfig(latent_dim=8)
    >>> c.latent_dim, c.batch_size, c.lr, c.beta, c.epochs
    (8, 64, 0.001, 1.0, 20)
    >>> MyConfig(epochs=-1)
    Traceback (most recent call last):
    ...
    mmvae_bench.errors.BenchError: epochs must be >= 0, got -1
    """,
    "NetConfig": """
    >>> from mmvae_bench.api import NetConfig
    >>> c = NetConfig()
    >>> c.width, c.features, c.rescale
    (16, 128, True)
    >>> NetConfig(width=0)
    Traceback (most recent call last):
    ...
    mmvae_bench.errors.BenchError: width must be >= 1, got 0
    """,
    "Stage": """
    >>> from mmvae_bench.api import Stage
    >>> stage = Stage(name="joint", modules=("encoders", "decoders"), epochs=20, lr=1e-3)
    >>> stage.batch_size is None, stage.pass_epoch  # the config's batch size; no epoch= passed
    (True, False)
    >>> Stage(name="joint", modules=("encoders",), epochs=-1, lr=1e-3)
    Traceback (most recent call last):
    ...
    mmvae_bench.errors.BenchError: stage 'joint': epochs must be >= 0, got -1
    """,
    "Subset": """
    A subset of modalities: a tuple of modality names (sorted where the framework makes one).

    >>> from mmvae_bench.api import Subset, subset_key
    >>> subset: Subset = ("image", "sound")
    >>> subset_key(subset)
    'image+sound'
    """,
    "all_subsets": """
    >>> from mmvae_bench.api import all_subsets
    >>> all_subsets(("b", "a", "c"))
    [('a',), ('b',), ('c',), ('a', 'b'), ('a', 'c'), ('b', 'c'), ('a', 'b', 'c')]
    >>> all_subsets(("a", "b"), proper=True)
    [('a',), ('b',)]
    """,
    "subset_key": """
    >>> from mmvae_bench.api import subset_key
    >>> subset_key(("sound", "image"))
    'image+sound'
    """,
    "ModelEntry": """
    A model plugin returns these from ``@hookimpl def mmvae_bench_models()``.

    >>> from mmvae_bench.api import ModelEntry, MultimodalVAE, NetConfig
    >>> entry = ModelEntry(
    ...     name="my-vae",
    ...     cls=MultimodalVAE,  # your MultimodalVAE subclass
    ...     config=NetConfig,  # your config class
    ...     description="one line for mmvae-bench models",
    ...     defaults={"circles-squares": {"beta": 2.0}},  # per-dataset config defaults
    ... )
    >>> entry.defaults["circles-squares"]
    {'beta': 2.0}
    """,
    "MultimodalVAE": """
    The smallest model the contract allows (README.md, "Write your own model", has a real
    one): z is read from nothing, each modality is decoded by one linear layer.

    >>> import torch
    >>> from torch import nn
    >>> from mmvae_bench.api import BenchError, LatentSample, ModelConfig, MultimodalVAE, Stage
    >>> from mmvae_bench.testing import tiny_dataset
    >>> class Decoders(MultimodalVAE):
    ...     def __init__(self, dataset, config):
    ...         super().__init__(dataset, config)
    ...         self.decoders = nn.ModuleDict(
    ...             {m: nn.Linear(self.latent_dim, s.size) for m, s in self.specs.items()}
    ...         )
    ...     @property
    ...     def stages(self):
    ...         return [Stage(name="train", modules=("decoders",), epochs=1, lr=1e-3)]
    ...     def loss(self, batch, stage, cached):
    ...         if stage != "train":
    ...             raise self.unknown_stage(stage)
    ...         z = self.encode(batch, self.modalities).z[0]
    ...         err = sum((self.decode(z)[m] - x).pow(2).sum(-1) for m, x in batch.items())
    ...         return {"loss": err.mean()}
    ...     def encode(self, batch, subset, n=1, *, hmc=None):
    ...         b = len(batch[self.check_subset(subset)[0]])
    ...         return LatentSample(torch.zeros(n, b, self.latent_dim))
    ...     def decode(self, z):
    ...         return {m: dec(z) for m, dec in self.decoders.items()}
    >>> data = tiny_dataset(("vector", "vector"))
    >>> model = Decoders(data, ModelConfig(latent_dim=2))
    >>> model.modalities, [s.name for s in model.stages]
    (('m0', 'm1'), ['train'])
    >>> {m: x.shape for m, x in model.generate(data.train.batch(), ("m1",), n=3).items()}
    {'m0': torch.Size([3, 16, 6]), 'm1': torch.Size([3, 16, 6])}
    >>> try:  # doctest: +NORMALIZE_WHITESPACE
    ...     model.loss(data.train.batch(), "trian", {})
    ... except BenchError as e:
    ...     print(e)
    Decoders was called with stage 'trian', which it does not declare; declared stages:
    ['train']; did you mean 'train'?
    """,
    "MetricContext": """
    What a metric's ``compute(ctx)`` receives, after the standard protocol has run.

    >>> import dataclasses
    >>> from mmvae_bench.api import MetricContext
    >>> [f.name for f in dataclasses.fields(MetricContext)]
    ['model', 'dataset', 'test', 'protocol', 'classifiers', 'device']
    """,
    "MetricEntry": """
    A metric plugin returns these from ``@hookimpl def mmvae_bench_metrics()``; the result of
    ``compute(ctx)`` (JSON-able) is stored under ``metrics[name]`` in the run record.

    >>> import types
    >>> import torch
    >>> from mmvae_bench.api import MetricEntry, Split
    >>> def test_size(ctx):  # ctx: a MetricContext
    ...     return {"points": len(ctx.test), "classes": int(ctx.test.y.max()) + 1}
    >>> entry = MetricEntry(name="test-size", compute=test_size, description="test points")
    >>> ctx = types.SimpleNamespace(test=Split({"a": torch.zeros(4, 2)}, y=torch.arange(4)))
    >>> entry.compute(ctx)
    {'points': 4, 'classes': 4}
    """,
}
