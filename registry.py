"""rlgen's plugin registry: algorithms, policies, buffers, models and schedulers contributed by pluggy plugins.

A plugin is a module (or any object) with ``@hookimpl`` functions, advertised through the ``rlgen`` entry-point
group of its distribution::

    # pyproject.toml of the plugin
    [project.entry-points.rlgen]
    my-plugin = "my_package.rlgen_plugin"

    # my_package/rlgen_plugin.py
    from registry import hookimpl

    @hookimpl
    def register_algorithms(register):
        register("my-dqn", "my_package.algo:MyDQN")   # an import path, resolved on first use

Each component hook receives a ``register(name, obj)`` callback. ``obj`` is the component itself or an import path
``"module:attribute"`` that is imported and type-checked on the first :func:`get`, so listing plugins never
imports torch or diffusers. ``register_presets(register)`` takes ``register(algo, source)`` (a YAML file in
rl-zoo3's layout, or a mapping of environment ids to hyperparameters), and ``register_commands(subparsers)`` adds
``rlgen`` subcommands to argparse's subparsers. Plugins load on first use; ``RLGEN_DISABLE_PLUGINS=a,b`` blocks
plugins by name. A plugin with a hook whose name is no rlgen hook, or a function named like one without
``@hookimpl``, fails as a whole (:func:`registry_hooks.hook_problems`).

The hook specification, kinds and errors live in :mod:`registry_hooks`; import them from here.
"""
from __future__ import annotations

import difflib
import importlib.metadata as metadata
import os
import threading
import warnings
from pathlib import Path
from typing import Any, Iterable, Mapping

import pluggy

from registry_hooks import (BUILTIN_PLUGINS, DISABLE_ENV_VAR, ENTRY_POINT_GROUP, KINDS, PROJECT,  # noqa: F401
                            ComponentImportError, ComponentTypeError, DuplicateComponentError, Kind, PluginInfo,
                            PluginWarning, PresetSource, Register, RegistryError, RlgenHookSpecs, SearchSpaceSource,
                            UnknownComponentError, UnknownKindError, _check_type, _Entry, _normalize_kind,
                            _split_import_path, builtins_first, hook_problems, hookimpl, hookspec, import_path)

__all__ = [
    "ENTRY_POINT_GROUP",
    "KINDS",
    "ComponentImportError",
    "ComponentTypeError",
    "DuplicateComponentError",
    "PluginInfo",
    "PluginWarning",
    "PresetSource",
    "SearchSpaceSource",
    "Registry",
    "RegistryError",
    "UnknownComponentError",
    "UnknownKindError",
    "builtins_first",
    "hook_problems",
    "get",
    "hookimpl",
    "hookspec",
    "import_path",
    "names",
    "plugins",
    "presets",
    "register_plugin",
    "reset",
    "search_spaces",
    "unregister_plugin",
]


def _blocked_from_env() -> set[str]:
    return {name.strip() for name in os.environ.get(DISABLE_ENV_VAR, "").split(",") if name.strip()}


def _distribution_of(entry_point: metadata.EntryPoint) -> tuple[str | None, str | None]:
    dist = getattr(entry_point, "dist", None)
    if dist is None:
        return None, None
    return dist.metadata["Name"], dist.version


class Registry:
    """A pluggy ``PluginManager("rlgen")`` plus the components its plugins registered, loaded on first use."""

    def __init__(self, entry_point_group: str | None = ENTRY_POINT_GROUP) -> None:
        self.plugin_manager = pluggy.PluginManager(PROJECT)
        self.plugin_manager.add_hookspecs(RlgenHookSpecs)
        self._group = entry_point_group
        self._entries: dict[str, dict[str, _Entry]] = {kind: {} for kind in KINDS}
        self._conflicts: dict[tuple[str, str], list[str]] = {}
        self._presets: list[PresetSource] = []
        self._search_spaces: list[PresetSource] = []  # register_search_spaces, as register_presets
        self._plugins: dict[str, PluginInfo] = {}
        self._loaded = False
        self._lock = threading.RLock()

    # -- loading -------------------------------------------------------------------------------------------------
    def load(self) -> None:
        """Load every entry-point plugin once (later calls do nothing)."""
        with self._lock:
            if self._loaded:
                return
            self._loaded = True
            if self._group is None:
                return
            blocked = _blocked_from_env()
            for entry_point in sorted(metadata.entry_points(group=self._group), key=lambda ep: ep.name):
                if entry_point.name in self._plugins:
                    continue  # the same distribution seen twice on sys.path
                distribution, version = _distribution_of(entry_point)
                info = PluginInfo(entry_point.name, distribution, version)
                self._plugins[entry_point.name] = info
                if entry_point.name in blocked:
                    info.status = "disabled"
                    self.plugin_manager.set_blocked(entry_point.name)
                    continue
                try:
                    plugin = entry_point.load()
                except Exception as exc:  # a broken plugin must not take the others down
                    self._fail(info, "could not be imported", exc)
                    continue
                self._add(plugin, info)

    def register_plugin(self, plugin: Any, name: str | None = None, distribution: str | None = None,
                        version: str | None = None) -> PluginInfo:
        """Register a plugin object directly (tests, notebooks, applications embedding rlgen)."""
        with self._lock:
            self.load()
            name = name or self.plugin_manager.get_canonical_name(plugin)
            if name in self._plugins and self._plugins[name].status != "failed":
                raise ValueError(f"a plugin named {name!r} is already registered")
            info = PluginInfo(name, distribution, version)
            self._plugins[name] = info
            if name in _blocked_from_env():
                info.status = "disabled"
                return info
            self._add(plugin, info)
            return info

    def unregister_plugin(self, name: str) -> None:
        """Forget a plugin and everything it registered."""
        with self._lock:
            if self.plugin_manager.has_plugin(name):
                self.plugin_manager.unregister(name=name)
            self._plugins.pop(name, None)
            for kind, entries in self._entries.items():
                for component in [n for n, e in entries.items() if e.plugin == name]:
                    del entries[component]
            self._presets = [p for p in self._presets if p.plugin != name]
            self._search_spaces = [p for p in self._search_spaces if p.plugin != name]
            for key, owners in list(self._conflicts.items()):
                if name in owners:
                    owners.remove(name)
                    if len(owners) < 2:
                        del self._conflicts[key]

    def report_failure(self, plugin: str, what: str, exc: BaseException) -> None:
        """Mark a plugin failed and warn (for hooks the application calls itself, e.g. ``register_commands``)."""
        self._fail(self._plugins[plugin], what, exc)

    def _fail(self, info: PluginInfo, what: str, exc: BaseException) -> None:
        info.status = "failed"
        info.error = f"{type(exc).__name__}: {exc}"
        origin = f" (distribution {info.distribution} {info.version})" if info.distribution else ""
        warnings.warn(f"rlgen plugin {info.name!r}{origin} {what} and was skipped: {info.error}", PluginWarning,
                      stacklevel=3)

    def _add(self, plugin: Any, info: PluginInfo) -> None:
        try:
            self.plugin_manager.register(plugin, name=info.name)
        except Exception as exc:  # pluggy rejects malformed hook implementations
            self._fail(info, "has invalid hooks", exc)
            return
        problems = hook_problems(self.plugin_manager, plugin)
        if problems:  # a misspelt or unmarked hook: the whole plugin fails, loudly, rather than provide less
            self.plugin_manager.unregister(plugin)
            self._fail(info, "does not match rlgen's hook specification",
                       pluggy.PluginValidationError(plugin, "; ".join(problems)))
            return
        for kind in KINDS.values():
            caller = getattr(self.plugin_manager.hook, kind.hook)
            for impl in caller.get_hookimpls():
                if impl.plugin_name == info.name:
                    self._call_hook(kind, impl, info)
        for hook, what, cls, store in (("register_presets", "presets", PresetSource, self._presets),
                                       ("register_search_spaces", "search space", SearchSpaceSource,
                                        self._search_spaces)):
            for impl in getattr(self.plugin_manager.hook, hook).get_hookimpls():
                if impl.plugin_name == info.name:
                    self._call_sources_hook(impl, info, hook, what, cls, store)

    def _call_sources_hook(self, impl: pluggy.HookImpl, info: PluginInfo, hook: str, what: str,
                           cls: type[PresetSource], store: list[PresetSource]) -> None:
        """Run one plugin's ``register_presets`` or ``register_search_spaces`` (``what``: "presets", "search space");
        commit its files / mappings (as ``cls``) into ``store`` only if the hook completes."""
        staged: list[PresetSource] = []

        def register(algo: str, source: Any) -> None:
            if not isinstance(algo, str) or not algo.strip():
                raise ValueError(f"a {what}'s algorithm name must be a non-empty string, got {algo!r}")
            if isinstance(source, (str, os.PathLike)):
                source = Path(source)
                if not source.is_file():
                    raise FileNotFoundError(f"{what} file {source} for {algo!r} does not exist")
            elif not isinstance(source, Mapping):
                raise TypeError(f"{what} for {algo!r} must be a YAML file path or a mapping, got {source!r}")
            if any(p.algo == algo for p in staged):
                raise ValueError(f"{what} for {algo!r} were registered twice by plugin {info.name!r}")
            staged.append(cls(algo, source, info.name))

        try:
            impl.function(**({"register": register} if "register" in impl.argnames else {}))
        except Exception as exc:
            self._fail(info, f"raised in its {hook} hook", exc)
            return
        store.extend(staged)
        if staged:
            info.provides.setdefault("presets" if what == "presets" else "search spaces", []).extend(
                p.algo for p in staged)

    def _call_hook(self, kind: Kind, impl: pluggy.HookImpl, info: PluginInfo) -> None:
        """Run one plugin's hook; commit its registrations only if the hook completes."""
        staged: dict[str, Any] = {}

        def register(name: str, obj: Any) -> None:
            if not isinstance(name, str) or not name.strip():
                raise ValueError(f"a {kind.singular} name must be a non-empty string, got {name!r}")
            if name in staged:
                raise ValueError(f"{kind.singular} {name!r} was registered twice by plugin {info.name!r}")
            if isinstance(obj, str):
                _split_import_path(obj)
            else:
                _check_type(kind, name, obj, info.name)
            staged[name] = obj

        try:
            impl.function(**({"register": register} if "register" in impl.argnames else {}))
        except Exception as exc:
            self._fail(info, f"raised in its {kind.hook} hook", exc)
            return
        for name, obj in staged.items():
            existing = self._entries[kind.name].get(name)
            if existing is not None and existing.plugin != info.name:
                owners = self._conflicts.setdefault((kind.name, name), [existing.plugin])
                owners.append(info.name)
                warnings.warn(
                    f"{kind.singular} {name!r} is registered by both plugin {existing.plugin!r} and plugin "
                    f"{info.name!r}; disable one with {DISABLE_ENV_VAR}", PluginWarning, stacklevel=3)
                continue
            self._entries[kind.name][name] = _Entry(kind.name, name, obj, info.name)
            info.provides.setdefault(kind.name, []).append(name)

    # -- queries -------------------------------------------------------------------------------------------------
    def get(self, kind: str, name: str) -> Any:
        """The component registered as ``name``; import paths are imported and type-checked here, once."""
        kind = _normalize_kind(kind)
        with self._lock:
            self.load()
            if (kind, name) in self._conflicts:
                first, *others = self._conflicts[(kind, name)]
                raise DuplicateComponentError(
                    f"{KINDS[kind].singular} {name!r} is registered by both plugin {first!r} and plugin "
                    f"{' and '.join(repr(o) for o in others)}; disable one with {DISABLE_ENV_VAR}=<plugin>")
            entry = self._entries[kind].get(name)
            if entry is None:
                raise UnknownComponentError(self._unknown_message(kind, name))
            if not entry.is_resolved:
                entry.resolved = self._resolve(entry)
                entry.is_resolved = True
            return entry.resolved

    def _resolve(self, entry: _Entry) -> Any:
        kind = KINDS[entry.kind]
        if not isinstance(entry.target, str):
            return entry.target
        try:
            obj = import_path(entry.target)
        except Exception as exc:
            raise ComponentImportError(
                f"plugin {entry.plugin!r} registered {kind.singular} {entry.name!r} as {entry.target!r}, which could "
                f"not be imported: {type(exc).__name__}: {exc}") from exc
        _check_type(kind, entry.name, obj, entry.plugin, origin=f" (import path {entry.target!r})")
        return obj

    def _unknown_message(self, kind: str, name: str) -> str:
        available = self.names(kind)
        by_lower = {n.lower(): n for n in available}
        close = [by_lower[c] for c in difflib.get_close_matches(str(name).lower(), list(by_lower), n=3, cutoff=0.5)]
        message = f"unknown {KINDS[kind].singular} {name!r}"
        message += f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else "."
        message += f" Available {kind}: {', '.join(available) if available else '(none registered)'}"
        return message

    def names(self, kind: str) -> list[str]:
        """The sorted names registered for a kind (no import happens)."""
        kind = _normalize_kind(kind)
        with self._lock:
            self.load()
            return sorted(self._entries[kind])

    def plugins(self) -> list[PluginInfo]:
        """Every plugin seen: its name, distribution, version, status and what it registered."""
        with self._lock:
            self.load()
            return [self._plugins[name] for name in sorted(self._plugins)]

    def check(self, kind: str, name: str) -> None:
        """Raise :class:`UnknownComponentError` (listing the names) unless ``name`` is registered; imports nothing."""
        kind = _normalize_kind(kind)
        if name not in self.names(kind):
            raise UnknownComponentError(self._unknown_message(kind, name))

    def presets(self, algo: str) -> list[PresetSource]:
        """Every plugin's presets for ``algo``: the built-in plugins' first, then the others by plugin name."""
        return self._by_algo(self._presets, algo)

    def search_spaces(self, algo: str | None = None) -> list[PresetSource]:
        """Every plugin's search spaces for ``algo`` (``None``: for every algorithm), in :meth:`presets`' order."""
        return self._by_algo(self._search_spaces, algo)

    def _by_algo(self, store: list[PresetSource], algo: str | None) -> list[PresetSource]:
        with self._lock:
            self.load()
            found = [p for p in store if algo is None or p.algo == algo]
        return sorted(found, key=lambda p: builtins_first(p.plugin))

    def owner(self, kind: str, name: str) -> str:
        """The plugin that registered a component (for attribution in messages)."""
        kind = _normalize_kind(kind)
        self.get(kind, name)
        return self._entries[kind][name].plugin


_default: Registry | None = None
_default_lock = threading.Lock()


def default_registry() -> Registry:
    """The process-wide registry used by the module-level functions."""
    global _default
    with _default_lock:
        if _default is None:
            _default = Registry()
        return _default


def reset() -> None:
    """Drop the process-wide registry; the next call loads plugins again (tests, or after installing a plugin)."""
    global _default
    with _default_lock:
        _default = None


def get(kind: str, name: str) -> Any:
    """The component of ``kind`` (e.g. ``"algorithms"``) registered as ``name``."""
    return default_registry().get(kind, name)


def names(kind: str) -> list[str]:
    """The names registered for ``kind``."""
    return default_registry().names(kind)


def plugins() -> list[PluginInfo]:
    """Every plugin with its distribution, version and what it registered."""
    return default_registry().plugins()


def presets(algo: str) -> list[PresetSource]:
    """The plugins' preset sources for ``algo``, built-ins first."""
    return default_registry().presets(algo)


def search_spaces(algo: str | None = None) -> list[PresetSource]:
    """The plugins' search-space sources (``rlgen tune``) for ``algo``, or for every algorithm, built-ins first."""
    return default_registry().search_spaces(algo)


def register_plugin(plugin: Any, name: str | None = None) -> PluginInfo:
    """Register a plugin object at run time, as pytest's ``pluginmanager.register`` does."""
    return default_registry().register_plugin(plugin, name=name)


def unregister_plugin(name: str) -> None:
    """Remove a plugin registered at run time and its components."""
    default_registry().unregister_plugin(name)


def describe(kinds: Iterable[str] = KINDS) -> dict[str, list[str]]:
    """Every registered name, by kind."""
    return {kind: names(kind) for kind in kinds}
