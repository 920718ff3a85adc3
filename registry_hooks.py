"""The hook specification of rlgen's plugin registry and the types it is built from: the pluggy markers, the hooks,
the component kinds, the errors, what ``rlgen plugins`` shows, and the checks of a plugin against the specification.

Everything here is public through :mod:`registry` (``from registry import hookimpl``); import it from there.
"""
from __future__ import annotations

import difflib
import importlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

import pluggy

PROJECT = "rlgen"
ENTRY_POINT_GROUP = "rlgen"
DISABLE_ENV_VAR = "RLGEN_DISABLE_PLUGINS"
#: The project's own plugins: their presets are looked up before any other plugin's.
BUILTIN_PLUGINS = ("rlgen-rainbow", "rlgen-diffusion")


def builtins_first(plugin: str) -> tuple[bool, str]:
    """Sort key of plugin names: the built-in plugins first, then the others by name (presets, commands)."""
    return plugin not in BUILTIN_PLUGINS, plugin


hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)

Register = Callable[[str, Any], None]


class RlgenHookSpecs:
    """The public hooks of rlgen. Each receives ``register(name, obj)``; ``obj`` may be an import path string."""

    @hookspec
    def register_algorithms(self, register: Register) -> None:
        """Register algorithm classes: subclasses of ``stable_baselines3.common.base_class.BaseAlgorithm``."""

    @hookspec
    def register_policies(self, register: Register) -> None:
        """Register policy classes: subclasses of ``stable_baselines3.common.policies.BasePolicy``."""

    @hookspec
    def register_buffers(self, register: Register) -> None:
        """Register replay buffer classes: subclasses of ``stable_baselines3.common.buffers.BaseBuffer``."""

    @hookspec
    def register_models(self, register: Register) -> None:
        """Register diffusion model classes: subclasses of ``diffusers.ModelMixin``."""

    @hookspec
    def register_schedulers(self, register: Register) -> None:
        """Register noise scheduler classes: subclasses of ``diffusers.SchedulerMixin``."""

    @hookspec
    def register_presets(self, register: Register) -> None:
        """Register hyperparameter presets: ``register(algo, source)`` with ``source`` a YAML file (rl-zoo3 layout:
        environment id -> hyperparameters) or such a mapping. ``rlgen train`` reads the built-ins' first."""

    @hookspec
    def register_search_spaces(self, register: Register) -> None:
        """Register ``rlgen tune``'s hyperparameter search spaces: ``register(algo, source)`` with ``source`` a YAML
        file (parameter name, dotted for nested keys -> ``{type: float|int|categorical, ...}``; docs/tune.md) or such
        a mapping. Specified and implemented as :meth:`register_presets` is; the built-ins' are read first."""

    @hookspec
    def register_commands(self, subparsers: Any) -> None:
        """Add ``rlgen`` subcommands: ``subparsers`` is argparse's, so call ``subparsers.add_parser(name, ...)`` and
        ``set_defaults(func=handler)``; ``handler(args)`` returns the exit status. Import nothing heavy here.
        Called by the application (``rlgen_plugins.cli.plugin_commands``) each time it builds its command line."""


@dataclass(frozen=True)
class Kind:
    """A kind of component: the hook that registers it and the base class every component must derive from."""

    name: str
    hook: str
    base_class: str  # "module.QualName": compared by name along the MRO, so no import is needed to check it

    @property
    def singular(self) -> str:
        return self.name[:-1]


KINDS: dict[str, Kind] = {
    kind.name: kind
    for kind in (
        Kind("algorithms", "register_algorithms", "stable_baselines3.common.base_class.BaseAlgorithm"),
        Kind("policies", "register_policies", "stable_baselines3.common.policies.BasePolicy"),
        Kind("buffers", "register_buffers", "stable_baselines3.common.buffers.BaseBuffer"),
        Kind("models", "register_models", "diffusers.models.modeling_utils.ModelMixin"),
        Kind("schedulers", "register_schedulers", "diffusers.schedulers.scheduling_utils.SchedulerMixin"),
    )
}
_KIND_ALIASES = {**{k: k for k in KINDS}, **{kind.singular: k for k, kind in KINDS.items()}, "policy": "policies"}


class RegistryError(Exception):
    """Base class of the registry's errors."""


class UnknownKindError(RegistryError, LookupError):
    """A kind that is not one of :data:`KINDS`."""


class UnknownComponentError(RegistryError, LookupError):
    """No plugin registered a component of that kind under that name."""


class DuplicateComponentError(RegistryError):
    """Two plugins registered the same name for the same kind."""


class ComponentTypeError(RegistryError, TypeError):
    """A registered object is not of the kind's expected type."""


class ComponentImportError(RegistryError, ImportError):
    """A registered import path could not be imported."""


class PluginWarning(UserWarning):
    """A plugin failed to load or to register; the other plugins are unaffected."""


@dataclass
class PluginInfo:
    """What ``rlgen plugins`` shows for one plugin."""

    name: str
    distribution: str | None = None
    version: str | None = None
    provides: dict[str, list[str]] = field(default_factory=dict)
    status: str = "loaded"  # "loaded", "failed" or "disabled"
    error: str | None = None


@dataclass(frozen=True)
class PresetSource:
    """One plugin's presets for one algorithm: a YAML file or a mapping of environment ids to hyperparameters."""

    algo: str
    source: Path | Mapping[str, Any]
    plugin: str

    def describe(self) -> str:
        where = str(self.source) if isinstance(self.source, Path) else "a mapping"
        return f"plugin {self.plugin!r} ({where})"


@dataclass(frozen=True)
class SearchSpaceSource(PresetSource):
    """One plugin's ``rlgen tune`` search space for one algorithm: a YAML file or the mapping it would hold."""


@dataclass
class _Entry:
    kind: str
    name: str
    target: Any
    plugin: str
    resolved: Any = None
    is_resolved: bool = False


def _qualified_names(cls: type) -> set[str]:
    return {f"{base.__module__}.{base.__qualname__}" for base in cls.__mro__}


def _check_type(kind: Kind, name: str, obj: Any, plugin: str, origin: str = "") -> None:
    if isinstance(obj, type) and kind.base_class in _qualified_names(obj):
        return
    what = f"class {obj.__module__}.{obj.__qualname__}" if isinstance(obj, type) else f"{type(obj).__name__} {obj!r}"
    raise ComponentTypeError(
        f"plugin {plugin!r} registered {kind.singular} {name!r}{origin} as {what}, "
        f"but a {kind.singular} must be a subclass of {kind.base_class}"
    )


def _split_import_path(path: str) -> tuple[str, str]:
    module, sep, attribute = path.partition(":")
    if not sep or not module or not attribute:
        raise ValueError(f"import path {path!r} must look like 'package.module:Attribute'")
    return module, attribute


def import_path(path: str) -> Any:
    """Import ``"package.module:Attribute"`` (dots after the colon walk attributes)."""
    module_name, attribute = _split_import_path(path)
    obj: Any = importlib.import_module(module_name)
    for part in attribute.split("."):
        obj = getattr(obj, part)
    return obj


def _normalize_kind(kind: str) -> str:
    try:
        return _KIND_ALIASES[kind]
    except (KeyError, TypeError):
        raise UnknownKindError(f"unknown component kind {kind!r}; the kinds are: {', '.join(KINDS)}") from None



#: The names of rlgen's hooks.
HOOK_NAMES = tuple(name for name in vars(RlgenHookSpecs) if not name.startswith("_"))


def hook_problems(plugin_manager: pluggy.PluginManager, plugin: Any) -> list[str]:
    """What does not fit the specification in ``plugin`` (registered in ``plugin_manager``), a sentence each.

    Two mistakes pluggy lets through at registration, leaving a plugin that loads and provides nothing: a hook
    implementation whose name is no rlgen hook (``register_algorithm``; pluggy's ``check_pending`` finds these,
    but for every plugin at once: this is its check for one plugin), and a function named like a hook that lacks
    ``@hookimpl`` (pluggy never calls it).
    """
    problems = []
    for caller in plugin_manager.get_hookcallers(plugin) or []:
        if caller.has_spec():
            continue
        for impl in caller.get_hookimpls():
            if impl.plugin is plugin and not impl.optionalhook:
                close = difflib.get_close_matches(caller.name, HOOK_NAMES, n=1, cutoff=0.6)
                hint = f"did you mean {close[0]}?" if close else f"the hooks are {', '.join(HOOK_NAMES)}"
                problems.append(f"{caller.name} is not an rlgen hook ({hint})")
    for name in HOOK_NAMES:
        if callable(getattr(plugin, name, None)) and plugin_manager.parse_hookimpl_opts(plugin, name) is None:
            problems.append(f"{name} lacks the @hookimpl marker (from registry import hookimpl), so it is never called")
    return problems
