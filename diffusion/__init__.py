"""Hand-written DDPM U-Net, noise scheduler and sampling pipeline that plug into diffusers.

``ModelMixin``, ``SchedulerMixin`` and ``DiffusionPipeline`` are re-exported because diffusers' loader looks them up
on this top-level module when it reloads a pipeline whose ``model_index.json`` names ``["diffusion", "UNet"]``.
The training/data/evaluation modules (``diffusion.train`` etc.) are not imported here; import them explicitly.
"""

from diffusers.models.modeling_utils import ModelMixin
from diffusers.pipelines.pipeline_utils import DiffusionPipeline
from diffusers.schedulers.scheduling_utils import SchedulerMixin

from .pipeline import UnconditionalPipeline, UnconditionalPipelineOutput
from .scheduler import BETA_SCHEDULES, NoiseScheduler, NoiseSchedulerOutput, make_betas
from .unet import UNet

__all__ = [
    "UNet",
    "NoiseScheduler",
    "NoiseSchedulerOutput",
    "UnconditionalPipeline",
    "UnconditionalPipelineOutput",
    "BETA_SCHEDULES",
    "make_betas",
    "ModelMixin",
    "SchedulerMixin",
    "DiffusionPipeline",
]
