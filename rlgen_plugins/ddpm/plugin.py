"""Built-in plugin ``rlgen-diffusion``: the hand-written U-Net and DDPM scheduler, diffusers' fast samplers, and the
``rlgen diffusion`` command.

DDIM and DPM-Solver++ are diffusers' own classes, registered here so that ``--scheduler ddim`` finds them by name.
"""
from __future__ import annotations

import argparse
from typing import Any

import registry
from registry import Register, hookimpl


@hookimpl
def register_models(register: Register) -> None:
    register("unet", "diffusion:UNet")


@hookimpl
def register_schedulers(register: Register) -> None:
    register("ddpm", "diffusion:NoiseScheduler")
    register("ddim", "diffusers:DDIMScheduler")
    register("dpm-solver++", "diffusers:DPMSolverMultistepScheduler")


@hookimpl
def register_commands(subparsers: Any) -> None:
    from rlgen_plugins.ddpm.commands import add_diffusion_commands

    add_diffusion_commands(subparsers)
    diffusion = subparsers.choices["diffusion"]
    for command in ("sample", "evaluate"):
        option = _option(_subcommand(diffusion, command), "--scheduler")
        option.type = scheduler_name
        option.help = f"a registered scheduler: {', '.join(registry.names('schedulers'))} (default {option.default})"


def scheduler_name(name: str) -> str:
    """``--scheduler``'s type: a name any plugin registered, else a usage error listing them all."""
    from rlgen_plugins.cli.errors import UsageError

    try:
        registry.default_registry().check("schedulers", name)
    except registry.UnknownComponentError as exc:
        raise UsageError(f"--scheduler: {exc}") from None
    return name


def _subcommand(parser: argparse.ArgumentParser, name: str) -> argparse.ArgumentParser:
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return action.choices[name]


def _option(parser: argparse.ArgumentParser, flag: str) -> argparse.Action:
    return next(a for a in parser._actions if flag in a.option_strings)
