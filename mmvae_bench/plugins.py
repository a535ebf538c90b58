"""Loading plugins and building the registry (pluggy, project ``mmvae_bench``).

The hooks are specified in :mod:`mmvae_bench.hookspecs`. Built-in plugins (``plugins/`` in the
repository) are found through the same entry-point group ``mmvae_bench`` as third-party ones;
``--plugin path.py`` loads a module from a file. Every plugin is loaded, registered and checked
on its own (torch-fidelity's registry checks, pluggy's ``check_pending``): a broken entry point
is recorded in ``Registry.broken`` and the others still load; a broken ``--plugin`` file is the
user's error (:class:`BenchError`).
"""

from __future__ import annotations

import dataclasses
import importlib.machinery
import importlib.metadata
import importlib.util
import logging
import re
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import pluggy

from mmvae_bench.data import catalog
from mmvae_bench.data.spec import DatasetEntry
from mmvae_bench.errors import BenchError
from mmvae_bench.eval.metric import MetricEntry
from mmvae_bench.hookspecs import PROJECT, Hookspecs
from mmvae_bench.model import ModelConfig, ModelEntry, MultimodalVAE

__all__ = [
    "BUILTIN_ORIGIN",
    "ENTRY_POINT_GROUP",
    "NAME_MAX_LEN",
    "NAME_PATTERN",
    "Registry",
    "load_registry",
]

ENTRY_POINT_GROUP = "mmvae_bench"
# Registered names become file and folder names (run ids, leaderboard files): lower-kebab
# words of [a-z0-9], so a name is one safe path component on every OS (README.md, "What the
# suite trusts").
NAME_PATTERN = re.compile(r"[a-z0-9]+(?:-[a-z0-9]+)*")
NAME_MAX_LEN = 64
log = logging.getLogger(__name__)

# (registry table, hook name, entry type), in the order the hooks are called.
_KINDS: tuple[tuple[str, str, type], ...] = (
    ("models", "mmvae_bench_models", ModelEntry),
    ("datasets", "mmvae_bench_datasets", DatasetEntry),
    ("metrics", "mmvae_bench_metrics", MetricEntry),
)
_HOOKS = tuple(hook for _, hook, _ in _KINDS)
_IMPORTING = "while importing"
BUILTIN_ORIGIN = "mmvae-bench (built-in)"  # the framework's own datasets (data/catalog.py)


@dataclass
class Registry:
    """The loaded plugins: models, datasets and metrics by name, and broken plugins.

    Attributes:
        models, datasets, metrics: the entries by registered name, sorted.
        sources: the plugin that registered each entry, ``{(kind, name): plugin name}`` (an
            entry point's name, ``file:PATH`` for ``--plugin``, a module's name).
        origins: where each plugin (loaded or broken) comes from, by plugin name: an entry
            point's distribution and version (``"mmvae-bench 0.1.0"``), a ``--plugin`` file's
            absolute path, :data:`BUILTIN_ORIGIN` for the built-in datasets.
        broken: entry points that failed to load, by name, with the reason.
    """

    models: dict[str, ModelEntry] = field(default_factory=dict)
    datasets: dict[str, DatasetEntry] = field(default_factory=dict)
    metrics: dict[str, MetricEntry] = field(default_factory=dict)
    sources: dict[tuple[str, str], str] = field(default_factory=dict)
    origins: dict[str, str] = field(default_factory=dict)
    broken: dict[str, str] = field(default_factory=dict)

    def origin(self, kind: str, name: str) -> str:
        """Where the plugin that registered entry ``name`` of ``kind`` (``"models"``) comes from."""
        return self.origins[self.sources[(kind, name)]]

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


class _PluginError(Exception):
    """A plugin broke the contract; the message is a predicate ("failed to import: ...") that
    the caller puts after the plugin's name, or files under it in ``Registry.broken``."""


def _entry_point_origin(ep: importlib.metadata.EntryPoint) -> str:
    """The distribution that declares ``ep`` and its version (``"mmvae-bench 0.1.0"``)."""
    dist = getattr(ep, "dist", None)
    if dist is None:  # an entry point made by hand, not read from installed metadata
        return f"entry point {ep.name} = {ep.value}"
    return f"{dist.name} {dist.version}"


def _plugin_manager() -> pluggy.PluginManager:
    pm = pluggy.PluginManager(PROJECT)
    pm.add_hookspecs(Hookspecs)
    return pm


class _SourceOnlyLoader(importlib.machinery.SourceFileLoader):
    """Imports a ``--plugin`` file without writing ``__pycache__`` beside it: the user's folder
    is not ours to write (nothing is written outside ``--out``)."""

    def set_data(self, path: str, data: bytes, *, _mode: int = 0o666) -> None:
        pass  # where SourceFileLoader caches the compiled file


def _load_module_from_file(path: Path) -> ModuleType:
    """Import a ``--plugin`` file; a path that is no .py file is a BenchError naming it."""
    resolved = path.expanduser().resolve()
    if resolved.is_dir():
        raise BenchError(f"--plugin {path} is a folder; give the plugin's .py file")
    if not resolved.is_file():
        raise BenchError(f"plugin file not found: {resolved}")
    if resolved.suffix != ".py":
        raise BenchError(f"plugin file {path} is not a .py file")
    mod_name = f"mmvae_bench_plugin_{resolved.stem}"
    loader = _SourceOnlyLoader(mod_name, str(resolved))
    spec = importlib.util.spec_from_file_location(mod_name, resolved, loader=loader)
    if spec is None or spec.loader is None:
        raise BenchError(f"cannot load plugin file {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[mod_name] = module  # dataclasses look their module up while it executes
    try:
        _guarded(lambda: spec.loader.exec_module(module), _IMPORTING, source=resolved)
    except _PluginError:
        sys.modules.pop(mod_name, None)
        raise
    return module


def _guarded(call: Callable[[], Any], during: str, *, source: Path | None = None) -> Any:
    """``call()``, with anything it raises (``sys.exit`` included) as a :class:`_PluginError`.

    ``during`` says when: ``"while importing"`` (then ``source`` is the file, for syntax
    errors) or ``"in mmvae_bench_models()"``. ``KeyboardInterrupt`` is not caught: Ctrl-C still
    stops the command.
    """
    try:
        return call()
    except SyntaxError as e:
        where = f"line {e.lineno}"
        if source is None or Path(e.filename or "") != source:
            where = f"{e.filename}, {where}"
        raise _PluginError(f"has a syntax error at {where}: {e.msg}") from None
    except SystemExit as e:  # a BaseException: `except Exception` would let it end the CLI
        raise _PluginError(f"called sys.exit({e.code!r}) {during}") from None
    except Exception as e:
        if during == _IMPORTING:
            raise _PluginError(f"failed to import: {type(e).__name__}: {e}") from None
        raise _PluginError(f"raised {type(e).__name__} {during}: {e}") from None


def _register(pm: pluggy.PluginManager, plugin: object, name: str) -> None:
    """Register ``plugin`` as ``name`` if its hooks are well-formed; else nothing changes."""
    try:
        pm.register(plugin, name=name)
    except pluggy.PluginValidationError as e:  # e.g. an argument the hook does not have
        detail = " ".join(str(e).split())  # pluggy's message spans lines
        raise _PluginError(f"does not match the hook specification: {detail}") from None
    callers = pm.get_hookcallers(plugin) or []
    unknown = sorted(c.name for c in callers if not c.has_spec())
    # A hook function without @hookimpl is silently not a hook to pluggy: name it.
    undecorated = [
        f"{hook}()"
        for hook in _HOOKS
        if callable(getattr(plugin, hook, None)) and pm.parse_hookimpl_opts(plugin, hook) is None
    ]
    if not (unknown or undecorated or not callers):
        return
    pm.unregister(plugin)
    decorate = "with @hookimpl from mmvae_bench.api"
    if unknown:
        hooks = ", ".join(f"{h}()" for h in _HOOKS)
        raise _PluginError(f"defines unknown hook(s) {', '.join(unknown)}; the hooks: {hooks}")
    if callers:
        raise _PluginError(f"does not register {', '.join(undecorated)}: decorate it {decorate}")
    if undecorated:
        raise _PluginError(f"registers no hooks: decorate its {', '.join(undecorated)} {decorate}")
    hooks = " or ".join(f"{h}()" for h in _HOOKS)
    raise _PluginError(f"registers no hooks: define {hooks} {decorate}")


def _check_name(kind: str, hook: str, name: object) -> None:
    if not isinstance(name, str) or len(name) > NAME_MAX_LEN or not NAME_PATTERN.fullmatch(name):
        raise _PluginError(
            f"registered the bad {kind} name {name!r} in {hook}(): a name is lower-kebab "
            f"(a-z, 0-9, words joined by '-', like 'jnf-shared'), at most {NAME_MAX_LEN} "
            "characters, because it becomes a file name"
        )


def _check_entry(kind: str, hook: str, entry: Any) -> None:
    """The checks beyond the name: the parts the framework calls or builds."""
    name = entry.name
    if isinstance(entry, ModelEntry):
        if not (isinstance(entry.cls, type) and issubclass(entry.cls, MultimodalVAE)):
            raise _PluginError(
                f"registered model '{name}' in {hook}() with cls={entry.cls!r}, "
                "which is not a MultimodalVAE subclass"
            )
        config = entry.config
        if not (
            isinstance(config, type)
            and dataclasses.is_dataclass(config)
            and issubclass(config, ModelConfig)
        ):
            raise _PluginError(
                f"registered model '{name}' in {hook}() with config={config!r}, "
                "which is not a dataclass subclassing ModelConfig"
            )
    elif isinstance(entry, DatasetEntry) and not callable(entry.load):
        raise _PluginError(
            f"registered dataset '{name}' in {hook}() with a load that is not callable"
        )
    elif isinstance(entry, MetricEntry) and not callable(entry.compute):
        raise _PluginError(
            f"registered metric '{name}' in {hook}() with a compute that is not callable"
        )


def _collect(pm: pluggy.PluginManager, plugin: object) -> list[tuple[str, Any]]:
    """Call ``plugin``'s registration hooks and check what they return: ``[(kind, entry)]``."""
    out: list[tuple[str, Any]] = []
    for kind, hook, entry_type in _KINDS:
        expected = f"a list of {entry_type.__name__}"
        seen: set[str] = set()
        for impl in getattr(pm.hook, hook).get_hookimpls():
            if impl.plugin is not plugin:
                continue
            # Called one plugin at a time, so every failure is charged to its plugin.
            items = _guarded(impl.function, f"in {hook}()")
            if items is None:
                raise _PluginError(f"returned None from {hook}(), expected {expected} (no return?)")
            if not isinstance(items, list):
                raise _PluginError(
                    f"returned a {type(items).__name__} from {hook}(), expected {expected}"
                )
            for i, entry in enumerate(items):
                if not isinstance(entry, entry_type):
                    raise _PluginError(
                        f"returned a {type(entry).__name__} at index {i} of {hook}(), "
                        f"expected {expected}"
                    )
                _check_name(kind[:-1], hook, entry.name)
                _check_entry(kind, hook, entry)
                if entry.name in seen:
                    raise _PluginError(f"registered {kind[:-1]} '{entry.name}' twice in {hook}()")
                seen.add(entry.name)
                out.append((kind, entry))
    return out


def load_registry(
    plugin_files: Sequence[Path] = (),
    *,
    modules: Sequence[ModuleType] = (),
    entry_points: bool = True,
) -> Registry:
    """Load every plugin and build the registry.

    Entry points of group ``mmvae_bench`` are loaded, registered and called one at a time: one
    that fails to import, registers no hooks or breaks the contract of
    :class:`~mmvae_bench.hookspecs.Hookspecs` (a bad name or entry, a non-list return, a hook
    raising or calling ``sys.exit``) is recorded in ``Registry.broken`` with the reason, adds
    nothing, and the others still load. The same fault in a plugin given by file
    (``--plugin``) or in ``modules`` raises :class:`BenchError` naming it, as does a name that
    two plugins register (naming both).
    """
    pm = _plugin_manager()
    reg = Registry()
    labels: dict[str, str] = {}  # plugins whose faults are BenchErrors, by registered name

    def broken(name: str, e: _PluginError) -> None:
        reg.broken[name] = str(e)
        log.warning("plugin %s is broken: %s", name, e)

    if entry_points:
        eps = sorted(importlib.metadata.entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name)
        for ep in eps:
            reg.origins[ep.name] = _entry_point_origin(ep)
            try:
                plugin = _guarded(ep.load, _IMPORTING)
                if not pm.is_registered(plugin):
                    _register(pm, plugin, ep.name)
            except _PluginError as e:  # a broken third-party plugin must not stop the others
                broken(ep.name, e)

    # The framework's own datasets go through the same hook as any plugin's.
    named = [("mmvae_bench.data", catalog)] + [(m.__name__, m) for m in modules]
    for name, module in named:
        labels[name] = f"plugin '{name}'"
        reg.origins[name] = BUILTIN_ORIGIN if module is catalog else f"module {name}"
        if pm.is_registered(module):  # also an entry point
            continue
        try:
            _register(pm, module, name)
        except _PluginError as e:
            raise BenchError(f"{labels[name]} {e}") from None
    for path in map(Path, plugin_files):
        name = f"file:{path}"
        if name in labels:
            raise BenchError(f"--plugin {path} is given twice")
        labels[name] = f"plugin file {path}"
        reg.origins[name] = str(path.expanduser().resolve())
        try:
            _register(pm, _load_module_from_file(path), name)
        except _PluginError as e:
            raise BenchError(f"{labels[name]} {e}") from None
    pm.check_pending()  # _register refused unknown hooks already; this keeps pluggy's word

    contributions: dict[str, list[tuple[str, Any]]] = {}
    for name, plugin in pm.list_name_plugin():  # registration order: first come, first named
        try:
            contributions[name] = _collect(pm, plugin)
        except _PluginError as e:
            if name in labels:
                raise BenchError(f"{labels[name]} {e}") from None
            pm.unregister(plugin)
            broken(name, e)

    for name, entries in contributions.items():
        for kind, entry in entries:
            table: dict[str, Any] = getattr(reg, kind)
            if entry.name in table:
                first = reg.sources[(kind, entry.name)]
                raise BenchError(
                    f"{kind[:-1]} name '{entry.name}' registered twice: by plugin '{first}' "
                    f"and by plugin '{name}'"
                )
            table[entry.name] = entry
            reg.sources[(kind, entry.name)] = name
    for kind, _, _ in _KINDS:
        setattr(reg, kind, dict(sorted(getattr(reg, kind).items())))
    return reg
