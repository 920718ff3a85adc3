"""Hand-written DDPM U-Net, noise scheduler and sampling pipeline that plug into diffusers.

Names are imported on first use (PEP 562), so ``import diffusion.config`` stays free of torch and diffusers.
``ModelMixin``, ``SchedulerMixin`` and ``DiffusionPipeline`` are exported as well: diffusers' loader looks those
base classes up on the top-level module of a component declared as ``["diffusion.unet", "UNet"]``.
The training, data and evaluation modules (``diffusion.train`` etc.) are imported explicitly.
"""
from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "UNet": "diffusion.unet",
    "NoiseScheduler": "diffusion.scheduler",
    "NoiseSchedulerOutput": "diffusion.scheduler",
    "BETA_SCHEDULES": "diffusion.scheduler",
    "make_betas": "diffusion.scheduler",
    "UnconditionalPipeline": "diffusion.pipeline",
    "UnconditionalPipelineOutput": "diffusion.pipeline",
    "ModelMixin": "diffusers.models.modeling_utils",
    "SchedulerMixin": "diffusers.schedulers.scheduling_utils",
    "DiffusionPipeline": "diffusers.pipelines.pipeline_utils",
}
__all__ = list(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'diffusion' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(list(globals()) + __all__)
