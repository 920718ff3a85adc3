"""The ``register_commands`` hook: the commands plugins add to ``rlgen`` (torch-free, run on every invocation)."""
from __future__ import annotations

import argparse
from typing import Any

import registry


class CommandGuard:
    """argparse's subparsers as one plugin sees them: a name already taken is an error naming its owner."""

    def __init__(self, subparsers: argparse._SubParsersAction, owners: dict[str, str], plugin: str) -> None:
        self._subparsers = subparsers
        self._owners = owners
        self._plugin = plugin
        self.added: list[str] = []

    def add_parser(self, name: str, **kwargs: Any) -> argparse.ArgumentParser:
        for alias in (name, *kwargs.get("aliases", ())):
            owner = self._owners.get(alias) or (self._plugin if alias in self.added else None)
            if owner is not None:
                raise ValueError(f"command {alias!r} is already provided by {owner!r}")
        parser = self._subparsers.add_parser(name, **kwargs)
        self.added.append(name)
        return parser

    def undo(self) -> None:
        """Take back the commands this plugin added before its hook failed (argparse has no public way)."""
        for name in self.added:
            self._subparsers._name_parser_map.pop(name, None)
        self._subparsers._choices_actions[:] = [a for a in self._subparsers._choices_actions
                                                 if a.dest not in self.added]
        self.added.clear()

    def __getattr__(self, attribute: str) -> Any:
        return getattr(self._subparsers, attribute)


def add_plugin_commands(subparsers: argparse._SubParsersAction,
                        reg: registry.Registry | None = None) -> dict[str, str]:
    """Call every loaded plugin's ``register_commands`` (built-ins first); return command -> owner.

    The commands already in ``subparsers`` belong to ``rlgen``. A hook that raises or takes a name in use warns
    (:class:`registry.PluginWarning`) and adds none of its commands; the others are listed as the plugin's
    ``commands`` in ``rlgen plugins``.
    """
    reg = reg or registry.default_registry()
    infos = {info.name: info for info in reg.plugins()}
    owners = {name: "rlgen" for name in subparsers.choices}
    impls = sorted(reg.plugin_manager.hook.register_commands.get_hookimpls(),
                   key=lambda impl: registry.builtins_first(impl.plugin_name))
    for impl in impls:
        info = infos.get(impl.plugin_name)
        if info is None or info.status != "loaded":
            continue
        guard = CommandGuard(subparsers, owners, info.name)
        try:
            impl.function(**({"subparsers": guard} if "subparsers" in impl.argnames else {}))
        except Exception as exc:  # a broken plugin must not take the command line down
            guard.undo()
            reg.report_failure(info.name, "raised in its register_commands hook", exc)
            continue
        owners.update((name, info.name) for name in guard.added)
        if guard.added:
            info.provides["commands"] = list(guard.added)
    return owners
