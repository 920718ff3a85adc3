"""Unconditional image sampling that works with our scheduler and with any diffusers scheduler."""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any

import numpy as np
import PIL.Image
import torch
from diffusers.models.modeling_utils import ModelMixin
from diffusers.pipelines.pipeline_utils import DiffusionPipeline
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from diffusers.utils import BaseOutput
from diffusers.utils.torch_utils import randn_tensor

OUTPUT_TYPES = ("pil", "np", "pt")


@dataclass
class UnconditionalPipelineOutput(BaseOutput):
    """Generated images and, when asked for, the whole denoising trajectory (x_T first, final images last)."""

    images: list[PIL.Image.Image] | np.ndarray | torch.Tensor
    trajectory: list[Any] | None = None


class UnconditionalPipeline(DiffusionPipeline):
    """Sample images from ``unet`` with ``scheduler`` (ours, DDPM, DDIM, DPM-Solver, Euler, ...).

    Unlike ``DDPMPipeline`` it scales the start noise by ``init_noise_sigma``, calls ``scale_model_input`` and passes
    ``generator``/``eta`` only to schedulers whose ``step`` accepts them, so Euler-type and PNDM-type samplers work too.
    """

    model_cpu_offload_seq = "unet"

    def __init__(self, unet: ModelMixin, scheduler: SchedulerMixin):
        super().__init__()
        self.register_modules(unet=unet, scheduler=scheduler)

    def _postprocess(self, x: torch.Tensor, output_type: str):
        x = (x.float() / 2 + 0.5).clamp(0, 1)  # [-1, 1] -> [0, 1]
        if output_type == "pt":
            return x.cpu()
        arr = x.cpu().permute(0, 2, 3, 1).numpy()
        return arr if output_type == "np" else self.numpy_to_pil(arr)

    @torch.no_grad()
    def __call__(
        self,
        batch_size: int = 1,
        num_inference_steps: int = 50,
        generator: torch.Generator | list[torch.Generator] | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
        return_trajectory: bool = False,
        eta: float = 0.0,
    ) -> UnconditionalPipelineOutput | tuple:
        """Denoise ``batch_size`` samples of pure noise in ``num_inference_steps`` scheduler steps.

        Returns images as PIL images ("pil"), a (B, H, W, C) float array in [0, 1] ("np") or a (B, C, H, W) tensor in
        [0, 1] ("pt"); with ``return_trajectory`` also every intermediate sample in the same format (for a GIF).
        """
        if output_type not in OUTPUT_TYPES:
            raise ValueError(f"output_type={output_type!r} is not supported; use one of {OUTPUT_TYPES}")
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        max_steps = getattr(self.scheduler.config, "num_train_timesteps", None)
        if not isinstance(num_inference_steps, int) or num_inference_steps < 1 or (
            max_steps is not None and num_inference_steps > max_steps
        ):
            raise ValueError(
                f"num_inference_steps={num_inference_steps!r} must be an int between 1 and the scheduler's "
                f"num_train_timesteps={max_steps}"
            )

        size = self.unet.config.sample_size
        h, w = (size, size) if isinstance(size, int) else tuple(size)
        shape = (batch_size, self.unet.config.in_channels, h, w)
        x = randn_tensor(shape, generator=generator, device=self._execution_device, dtype=self.unet.dtype)
        x = x * self.scheduler.init_noise_sigma

        self.scheduler.set_timesteps(num_inference_steps, device=self._execution_device)
        accepted = inspect.signature(self.scheduler.step).parameters
        step_kwargs = {k: v for k, v in (("generator", generator), ("eta", eta)) if k in accepted}
        trajectory = [self._postprocess(x, output_type)] if return_trajectory else None

        for t in self.progress_bar(self.scheduler.timesteps):
            model_input = self.scheduler.scale_model_input(x, t)
            model_output = self.unet(model_input, t).sample
            x = self.scheduler.step(model_output, t, x, **step_kwargs).prev_sample
            if trajectory is not None:
                trajectory.append(self._postprocess(x, output_type))

        images = self._postprocess(x, output_type)
        self.maybe_free_model_hooks()
        if not return_dict:
            return (images, trajectory) if return_trajectory else (images,)
        return UnconditionalPipelineOutput(images=images, trajectory=trajectory)
