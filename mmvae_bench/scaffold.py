"""``mmvae-bench new-model NAME``: write an out-of-tree model plugin package to start from.

The package is the one README.md, "Write your own model", describes, ready to install and test::

    NAME/
      pyproject.toml          distribution mmvae-bench-NAME, entry point NAME (group mmvae_bench)
      <module>.py             the README's example model, renamed: module NAME in snake_case,
                              class in CamelCase, config <Class>Config, registered as NAME
      tests/test_<module>.py  the conformance kit (mmvae_bench.testing) on it
      README.md               the commands that install, test and run it

It installs with pip and passes the kit before its author changes a line; ``tests/test_scaffold.py``
checks both, and that the module is still the README's example in code.
"""

from __future__ import annotations

import importlib.util
import keyword
import shutil
from dataclasses import dataclass
from pathlib import Path
from string import Template

from mmvae_bench.errors import BenchError
from mmvae_bench.plugins import (
    ENTRY_POINT_GROUP,
    NAME_MAX_LEN,
    NAME_PATTERN,
    Registry,
    load_registry,
)

__all__ = ["NewModel", "class_name", "module_name", "new_model"]


@dataclass(frozen=True)
class NewModel:
    """What :func:`new_model` wrote.

    Attributes:
        name: the registry name (also the entry point's).
        module: the Python module: ``name`` in snake_case.
        cls: the model class: ``name`` in CamelCase (its config is ``<cls>Config``).
        path: the package folder.
        files: the files written, relative to ``path``.
    """

    name: str
    module: str
    cls: str
    path: Path
    files: tuple[str, ...]

    @property
    def next_steps(self) -> list[str]:
        """The commands that install, test and run the new package."""
        return [
            f"cd {self.path}",
            "pip install -e .      # in mmvae-bench's environment: registers the entry point",
            "pytest                # the conformance kit",
            f"mmvae-bench models    # lists {self.name}, its stages and this package",
            f"mmvae-bench run {self.name} --dataset circles-squares --quick",
        ]


def module_name(name: str) -> str:
    """The module of registry name ``name``: ``"my-vae"`` -> ``"my_vae"``."""
    return name.replace("-", "_")


def class_name(name: str) -> str:
    """The model class of registry name ``name``: ``"my-vae"`` -> ``"MyVae"``."""
    return "".join(word.capitalize() for word in name.split("-"))


def new_model(name: str, parent: Path, *, registry: Registry | None = None) -> NewModel:
    """Write the plugin package ``parent/name`` (see the module docstring).

    Args:
        name: the model's registry name: lower-kebab like every registered name
            (:data:`mmvae_bench.plugins.NAME_PATTERN`, at most ``NAME_MAX_LEN`` characters),
            and a Python module once ``-`` becomes ``_``: no leading digit, no keyword, and no
            module that is importable already (the plugin would shadow it or be shadowed).
        parent: the folder to create the package in (made if missing).
        registry: the models registered already, so a clash is refused before it is
            installed; default :func:`mmvae_bench.plugins.load_registry`.

    Returns:
        What was written.

    Raises:
        BenchError: a bad or taken name, or ``parent/name`` exists (nothing is overwritten).
            An error while writing removes the folder it had made.
    """
    module, cls = _check_name(name, registry)
    target = Path(parent).expanduser() / name
    files = _files(name, module, cls)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        target.mkdir()  # fails if anything is there: nothing is ever overwritten
    except FileExistsError:
        if not target.parent.is_dir():
            raise BenchError(f"cannot create {target}: {target.parent} is not a folder") from None
        raise BenchError(
            f"{target} exists; new-model writes a new folder (pick another NAME or --dir)"
        ) from None
    except OSError as e:
        raise BenchError(f"cannot create {target}: {e.strerror or e}") from None
    try:
        for rel, text in files.items():
            path = target / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
    except BaseException:
        shutil.rmtree(target, ignore_errors=True)  # the folder is ours: made just above
        raise
    return NewModel(name=name, module=module, cls=cls, path=target, files=tuple(files))


def _check_name(name: str, registry: Registry | None) -> tuple[str, str]:
    """The module and class names of ``name``, or a BenchError saying what is wrong with it."""
    if not isinstance(name, str) or len(name) > NAME_MAX_LEN or not NAME_PATTERN.fullmatch(name):
        raise BenchError(
            f"model name {name!r} is not a registry name: lower-kebab (a-z, 0-9, words joined "
            f"by '-', like 'my-vae'), at most {NAME_MAX_LEN} characters"
        )
    module = module_name(name)
    if module[0].isdigit() or keyword.iskeyword(module):
        raise BenchError(
            f"model name {name!r} makes the module name {module!r}, which Python cannot import "
            "(a leading digit or a keyword); pick another name"
        )
    spec = importlib.util.find_spec(module)
    if spec is not None:
        raise BenchError(
            f"model name {name!r} makes the module name {module!r}, which is importable already "
            f"({spec.origin or 'a namespace package'}); the plugin would shadow it or be "
            "shadowed by it: pick another name"
        )
    registry = registry if registry is not None else load_registry()
    if name in registry.models:
        raise BenchError(
            f"model name {name!r} is registered already (by {registry.origin('models', name)}); "
            "a second one would make every mmvae-bench command refuse the clash"
        )
    return module, class_name(name)


def _files(name: str, module: str, cls: str) -> dict[str, str]:
    """The package's files by path relative to its folder."""
    values = {"name": name, "module": module, "cls": cls, "group": ENTRY_POINT_GROUP}
    return {
        "pyproject.toml": Template(_PYPROJECT).substitute(values),
        f"{module}.py": Template(_MODULE).substitute(values),
        f"tests/test_{module}.py": Template(_TEST).substitute(values),
        "README.md": Template(_README).substitute(values),
    }


# -- the files (string.Template: ${name}, ${module}, ${cls}, ${group}) -------------------------
_PYPROJECT = """\
[build-system]
requires = ["setuptools>=68"]
build-backend = "setuptools.build_meta"

[project]
name = "mmvae-bench-${name}"
version = "0.1.0"
description = "The ${name} model plugin for mmvae-bench"
readme = "README.md"
requires-python = ">=3.10"
dependencies = ["mmvae-bench"]

# mmvae-bench finds the model through this entry point once the package is installed.
[project.entry-points.${group}]
${name} = "${module}"

[tool.setuptools]
py-modules = ["${module}"]

[tool.pytest.ini_options]
testpaths = ["tests"]
pythonpath = ["."]  # the tests import the module from this folder, installed or not
"""

_TEST = '''\
"""The conformance kit of mmvae-bench (``mmvae_bench.testing``) on ${name}: run ``pytest``."""

import importlib.metadata

from mmvae_bench.testing import check_model, tiny_dataset

from ${module} import mmvae_bench_models


def test_${module}_conforms() -> None:
    (entry,) = mmvae_bench_models()
    assert entry.name == "${name}"
    check_model(entry)  # three tiny modalities: two 3x28x28 images and a vector
    check_model(entry, tiny_dataset(("image32", "image32")))  # circles-squares-like


def test_${module}_is_installed_where_mmvae_bench_finds_it() -> None:
    names = {ep.name for ep in importlib.metadata.entry_points(group="${group}")}
    assert "${name}" in names, "not installed: run `pip install -e .` in this folder"
'''

_README = """\
# mmvae-bench-${name}

The `${name}` model plugin for mmvae-bench, written by `mmvae-bench new-model ${name}`. It
starts as mmvae-bench's README example (a product of Gaussian experts) in `${module}.py`:
make it yours.

```
pip install -e .        # in mmvae-bench's environment: registers the entry point ${name}
pytest                  # the conformance kit (mmvae_bench.testing)
mmvae-bench models      # ${name}, its stages, and this package as its source
mmvae-bench run ${name} --dataset circles-squares --quick
```
"""

# The README's example (README.md, "Write your own model"), renamed; tests/test_scaffold.py
# checks that the two stay the same code.
_MODULE = '''\
"""${name}: a multimodal VAE plugin for mmvae-bench, written by ``mmvae-bench new-model``.

It starts as the README's example model (README.md, "Write your own model"), a product of
Gaussian experts: each modality m has a Gaussian expert q_m(z|x_m); the posterior given a
subset S is the product of S's experts and the prior expert N(0, I). One stage, "train",
minimises as a batch mean

    -[ sum_m lambda_m E_q(z|X)[log p(x_m|z)] - beta KL(q(z|X) || N(0, I)) ].

Make it yours: the config's fields, the stages, the loss, encode and decode. ``pytest`` runs
the conformance kit after every change.
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
    build_decoder,
    build_encoder,
    gaussian_poe,
    hookimpl,
    kl_std_normal,
    likelihood_mean,
    log_likelihood,
    reparameterize,
)


@dataclass(frozen=True, kw_only=True)
class ${cls}Config(NetConfig):
    """${name} hyperparameters.

    Inherited from ModelConfig: latent_dim (None: the dataset's), batch_size (64), lr (1e-3),
    beta (1.0, the KL weight); from NetConfig: width (16) and features (128), the built-in
    nets' sizes, and rescale (True: weight each log-likelihood by the dataset's lambda_m).
    """

    epochs: int = 20  # epochs of the single stage "train"

    def __post_init__(self) -> None:
        super().__post_init__()  # checks the inherited fields
        self.require_at_least(0, "epochs")


class ${cls}(MultimodalVAE):
    """One Gaussian expert per modality, multiplied with the N(0, I) prior expert."""

    config: ${cls}Config

    def __init__(self, dataset: MultimodalDataset, config: ${cls}Config) -> None:
        super().__init__(dataset, config)  # sets specs, config, latent_dim, likelihood_weights
        c, d = config, self.latent_dim
        self.experts = nn.ModuleDict(
            {
                m: nn.Sequential(build_encoder(s, c.features, c.width), GaussianHead(c.features, d))
                for m, s in self.specs.items()
            }
        )
        self.decoders = nn.ModuleDict(
            {m: build_decoder(s, d, c.width) for m, s in self.specs.items()}
        )
        # lambda_m: the dataset's likelihood weights with rescale (as in every built-in), else 1.
        weights = self.likelihood_weights if c.rescale else {}
        self.weights = {m: float(weights.get(m, 1.0)) for m in self.specs}

    @property
    def stages(self) -> list[Stage]:
        # The trainer optimises the named submodules and freezes (and eval()s) all others.
        c = self.config
        return [Stage(name="train", modules=("experts", "decoders"), epochs=c.epochs, lr=c.lr)]

    def loss(
        self, batch: dict[str, Tensor], stage: str, cached: Mapping[str, Tensor]
    ) -> dict[str, Tensor]:
        if stage == "train":
            return self._loss_train(batch)
        raise self.unknown_stage(stage)  # names the stage called and the declared ones

    def _loss_train(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        mu, logvar = self._posterior(batch, self.modalities)  # (B, latent_dim) each
        z = reparameterize(mu, logvar)
        nll = {m: -log_likelihood(s, self.decoders[m](z), batch[m]) for m, s in self.specs.items()}
        kl = kl_std_normal(mu, logvar)  # to N(0, I); kl_normal_diag for two diagonal Gaussians
        recon = sum(self.weights[m] * v for m, v in nll.items())
        loss = (recon + self.config.beta * kl).mean()
        return {"loss": loss, "kl": kl.mean(), **{f"nll_{m}": v.mean() for m, v in nll.items()}}

    def encode(
        self,
        batch: dict[str, Tensor],
        subset: Subset,
        n: int = 1,
        *,
        hmc: HMCSettings | None = None,
    ) -> LatentSample:
        mu, logvar = self._posterior(batch, self.check_subset(subset))  # closed form: no HMC
        return LatentSample(reparameterize(mu, logvar, n))  # z: (n, B, latent_dim)

    def decode(self, z: Tensor) -> dict[str, Tensor]:
        return {m: likelihood_mean(self.specs[m], dec(z)) for m, dec in self.decoders.items()}

    def _posterior(self, batch: dict[str, Tensor], subset: Subset) -> tuple[Tensor, Tensor]:
        """mu, logvar of p(z) prod_{m in S} q_m(z | x_m), each (B, latent_dim)."""
        mus, logvars = zip(*(self.experts[m](batch[m]) for m in subset), strict=True)
        return gaussian_poe(torch.stack(mus), torch.stack(logvars), prior=True)


@hookimpl
def mmvae_bench_models() -> list[ModelEntry]:
    return [
        ModelEntry(
            name="${name}",
            cls=${cls},
            config=${cls}Config,
            description="${name}: product of Gaussian experts (new-model's starting point)",
            defaults={"circles-squares": {"epochs": 10}},  # per-dataset config defaults
        )
    ]
'''
