"""The extension points of mmvae-bench: hook markers and specifications (pluggy ``mmvae_bench``).

This module imports nothing from mmvae-bench at run time (the entry types below are for type
checkers only), so anything can import ``hookimpl`` from it, the data catalog and the plugin
loader included, without an import cycle: pluggy's eggsample layout. Plugins import
``hookimpl`` through :mod:`mmvae_bench.api`; :mod:`mmvae_bench.plugins` loads them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pluggy

if TYPE_CHECKING:
    from mmvae_bench.api import MetricEntry
    from mmvae_bench.data.spec import DatasetEntry
    from mmvae_bench.model import ModelEntry

__all__ = ["PROJECT", "Hookspecs", "hookimpl", "hookspec"]

PROJECT = "mmvae_bench"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


# ---------------------------------------------------------------------------------------------
# Registration hooks: called once when the registry is built. Each returns a list; the loader
# checks every entry, flattens all plugins' lists, sorts them by name and refuses duplicates.
#
# What a violation does, for every hook below: a plugin installed through the ``mmvae_bench``
# entry-point group is reported by name in ``Registry.broken`` (``mmvae-bench models`` lists
# it), contributes nothing, and the other plugins still load; a plugin given as
# ``--plugin FILE`` is the user's own file, so its violation is a ``BenchError`` naming the file.
# A violation is: the hook raising or calling ``sys.exit``, returning anything but a ``list``
# (``None`` included: a forgotten ``return``), an entry of the wrong type, or a bad name. A
# name clash between two plugins is always a ``BenchError`` naming both plugins.
# ---------------------------------------------------------------------------------------------


class Hookspecs:
    """The extension points of mmvae-bench.

    Every registered name (model, dataset, metric) is lower-kebab and a single safe path
    component, because names become file and folder names (run ids, leaderboard files): it
    matches ``^[a-z0-9]+(-[a-z0-9]+)*$`` and has at most 64 characters (``jnf-shared``,
    ``polymnist-lite``).
    """

    @hookspec
    def mmvae_bench_models(self) -> list[ModelEntry]:
        """Register model plugins.

        Called once when the registry is built (every CLI command, ``load_registry()``).

        :return: a ``list`` (possibly empty, never ``None``) of
            :class:`mmvae_bench.api.ModelEntry`, each with a unique lower-kebab ``name`` (see
            the class docstring), ``cls`` a :class:`~mmvae_bench.api.MultimodalVAE` subclass,
            ``config`` a dataclass subclassing :class:`~mmvae_bench.api.ModelConfig`, and
            per-dataset ``defaults``. Any other return, entry or name is a violation (see the
            banner above); a name already registered by another plugin is a
            :class:`~mmvae_bench.api.BenchError` naming both plugins.
        """

    @hookspec
    def mmvae_bench_datasets(self) -> list[DatasetEntry]:
        """Register datasets.

        Called once when the registry is built.

        :return: a ``list`` (possibly empty, never ``None``) of
            :class:`mmvae_bench.api.DatasetEntry` with unique lower-kebab names and a callable
            ``load(options)``, which must raise ``BenchError`` naming any missing file and the
            ``mmvae-bench data fetch`` command. Any other return, entry or name is a violation
            (see the banner above); a clash is a ``BenchError`` naming both plugins.
        """

    @hookspec
    def mmvae_bench_metrics(self) -> list[MetricEntry]:
        """Register extra evaluation metrics.

        Called once when the registry is built.

        :return: a ``list`` (possibly empty, never ``None``) of
            :class:`mmvae_bench.api.MetricEntry` with unique lower-kebab names and a callable
            ``compute(ctx)``; each is computed after the standard protocol on the
            same trained model and its results are stored under ``metrics[name]`` in the run
            record. Any other return, entry or name is a violation (see the banner above); a
            clash is a ``BenchError`` naming both plugins.
        """
