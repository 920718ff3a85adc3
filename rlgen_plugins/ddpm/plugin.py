"""Built-in plugin ``rlgen-diffusion``: the hand-written U-Net and DDPM scheduler, plus diffusers' fast samplers.

DDIM and DPM-Solver++ are diffusers' own classes, registered here so that ``--scheduler ddim`` finds them by name.
"""
from registry import Register, hookimpl


@hookimpl
def register_models(register: Register) -> None:
    register("unet", "diffusion:UNet")


@hookimpl
def register_schedulers(register: Register) -> None:
    register("ddpm", "diffusion:NoiseScheduler")
    register("ddim", "diffusers:DDIMScheduler")
    register("dpm-solver++", "diffusers:DPMSolverMultistepScheduler")
