"""Hook specifications and the plugin manager (pluggy, project ``mmvae_bench``).

Built-in plugins (``plugins/`` in the repository) are found through the same entry-point group
``mmvae_bench`` as third-party ones; ``--plugin path.py`` loads a module from a file.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

import pluggy

from mmvae_bench.errors import BenchError

if TYPE_CHECKING:
    from mmvae_bench.data.spec import DatasetEntry
    from mmvae_bench.eval.metric import MetricEntry
    from mmvae_bench.model import ModelEntry

__all__ = ["ENTRY_POINT_GROUP", "PROJECT", "Registry", "hookimpl", "hookspec", "load_registry"]

PROJECT = "mmvae_bench"
ENTRY_POINT_GROUP = "mmvae_bench"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)
log = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------------
# Registration hooks: called once when the registry is built. Each returns a list; the manager
# flattens all plugins' lists, sorts them by name and refuses duplicate names.
# ---------------------------------------------------------------------------------------------


class Hookspecs:
    """The extension points of mmvae-bench."""

    @hookspec
    def mmvae_bench_models(self) -> list[ModelEntry]:
        """Register model plugins.

        Called once when the registry is built (every CLI command, ``load_registry()``).

        :return: a list of :class:`mmvae_bench.api.ModelEntry`, each with a unique lower-kebab
            ``name``, the :class:`~mmvae_bench.api.MultimodalVAE` subclass, its config
            dataclass and per-dataset defaults. A name already registered by another plugin is
            a :class:`~mmvae_bench.api.BenchError` naming both plugins.
        """

    @hookspec
    def mmvae_bench_datasets(self) -> list[DatasetEntry]:
        """Register datasets.

        Called once when the registry is built.

        :return: a list of :class:`mmvae_bench.api.DatasetEntry` with unique lower-kebab
            names; ``load(options)`` must raise ``BenchError`` naming any missing file and the
            ``mmvae-bench data fetch`` command. A clash is an error naming both plugins.
        """

    @hookspec
    def mmvae_bench_metrics(self) -> list[MetricEntry]:
        """Register extra evaluation metrics.

        Called once when the registry is built.

        :return: a list of :class:`mmvae_bench.api.MetricEntry` with unique names; each is
            computed after the standard protocol on the same trained model and its results
            are stored under ``metrics[name]`` in the run record. A clash is an error.
        """


@dataclass
class Registry:
    """The loaded plugins: models, datasets and metrics by name, and broken plugins."""

    models: dict[str, ModelEntry] = field(default_factory=dict)
    datasets: dict[str, DatasetEntry] = field(default_factory=dict)
    metrics: dict[str, MetricEntry] = field(default_factory=dict)
    sources: dict[tuple[str, str], str] = field(default_factory=dict)
    broken: dict[str, str] = field(default_factory=dict)

    def model(self, name: str) -> ModelEntry:
        """The model registered as ``name``; an unknown name lists the known ones."""
        return _lookup("model", name, self.models)

    def dataset(self, name: str) -> DatasetEntry:
        """The dataset registered as ``name``; an unknown name lists the known ones."""
        return _lookup("dataset", name, self.datasets)


def _lookup(kind: str, name: str, table: dict[str, Any]) -> Any:
    try:
        return table[name]
    except KeyError:
        known = ", ".join(sorted(table)) or "(none)"
        raise BenchError(f"unknown {kind} '{name}'; available: {known}") from None


def _plugin_manager() -> pluggy.PluginManager:
    pm = pluggy.PluginManager(PROJECT)
    pm.add_hookspecs(Hookspecs)
    return pm


def _load_module_from_file(path: Path) -> ModuleType:
    path = path.expanduser().resolve()
    if not path.is_file():
        raise BenchError(f"plugin file not found: {path}")
    mod_name = f"mmvae_bench_plugin_{path.stem}"
    spec = importlib.util.spec_from_file_location(mod_name, path)
    if spec is None or spec.loader is None:
        raise BenchError(f"cannot load plugin file {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[mod_name] = module
    spec.loader.exec_module(module)
    return module


def load_registry(
    plugin_files: list[Path] | tuple[Path, ...] = (),
    *,
    modules: list[ModuleType] | tuple[ModuleType, ...] = (),
    entry_points: bool = True,
) -> Registry:
    """Load every plugin and build the registry.

    Entry points of group ``mmvae_bench`` are loaded one at a time: one that fails to import
    is recorded in ``Registry.broken`` with its error and the others still load. A plugin given
    by file (``--plugin``) that fails is the user's error and raises ``BenchError``.
    """
    pm = _plugin_manager()
    reg = Registry()
    if entry_points:
        eps = sorted(importlib.metadata.entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name)
        for ep in eps:
            try:
                module = ep.load()
            except Exception as e:  # a broken third-party plugin must not stop the others
                reg.broken[ep.name] = f"{type(e).__name__}: {e}"
                log.warning("plugin %s failed to load: %s", ep.name, e)
                continue
            if pm.is_registered(module):
                continue
            pm.register(module, name=ep.name)
    # The framework's own datasets go through the same hook as any plugin's.
    from mmvae_bench.data import catalog

    pm.register(catalog, name="mmvae_bench.data")
    for module in modules:
        pm.register(module, name=getattr(module, "__name__", None))
    for path in plugin_files:
        try:
            module = _load_module_from_file(Path(path))
        except BenchError:
            raise
        except Exception as e:
            raise BenchError(
                f"plugin file {path} failed to import: {type(e).__name__}: {e}"
            ) from None
        pm.register(module, name=f"file:{Path(path)}")
    pm.check_pending()

    for kind, hook in (
        ("models", pm.hook.mmvae_bench_models),
        ("datasets", pm.hook.mmvae_bench_datasets),
        ("metrics", pm.hook.mmvae_bench_metrics),
    ):
        table: dict[str, Any] = getattr(reg, kind)
        for impl in hook.get_hookimpls():
            try:
                items = impl.function()
            except Exception as e:
                reg.broken[impl.plugin_name] = f"{kind} hook raised {type(e).__name__}: {e}"
                continue
            for item in items or []:
                name = item.name
                if name in table:
                    first = reg.sources[(kind, name)]
                    raise BenchError(
                        f"{kind[:-1]} name '{name}' registered twice: by plugin '{first}' "
                        f"and by plugin '{impl.plugin_name}'"
                    )
                table[name] = item
                reg.sources[(kind, name)] = impl.plugin_name
        setattr(reg, kind, dict(sorted(table.items())))
    return reg
