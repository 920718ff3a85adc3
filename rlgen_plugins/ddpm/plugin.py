"""Built-in plugin ``rlgen-diffusion``: the hand-written U-Net and DDPM scheduler, diffusers' fast samplers, and the
``rlgen diffusion`` command.

DDIM and DPM-Solver++ are diffusers' own classes, registered here so that ``--scheduler ddim`` finds them by name.
"""
from __future__ import annotations

from typing import Any

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
