"""Unconditional image sampling that works with our scheduler and with any diffusers scheduler."""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any, Callable, Iterable

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


class NonFiniteSampleError(ValueError):
    """Sampling that would produce NaN or infinite images: non-finite weights, or a reverse process that diverged."""


def check_finite_weights(unet: torch.nn.Module) -> None:
    """Raise `NonFiniteSampleError` naming the first parameters with NaN or infinite values (one host sync)."""
    params = [p for p in unet.parameters() if p.numel()]
    if not params or bool(torch.stack([torch.isfinite(p).all() for p in params]).all()):
        return
    bad = [name for name, p in unet.named_parameters() if p.numel() and not bool(torch.isfinite(p).all())]
    more = f" and {len(bad) - 3} more" if len(bad) > 3 else ""
    raise NonFiniteSampleError(
        f"the U-Net's weights are not finite (NaN or inf in {', '.join(bad[:3])}{more}); sampling it would only "
        "give NaN images: load a checkpoint or pipeline whose weights are finite"
    )


def denoise(
    unet: torch.nn.Module,
    scheduler: SchedulerMixin,
    x: torch.Tensor,
    generator: torch.Generator | list[torch.Generator] | None = None,
    eta: float = 0.0,
    on_step: Callable[[int, torch.Tensor], None] | None = None,
    progress: Callable[[Iterable], Iterable] | None = None,
) -> torch.Tensor:
    """Run the reverse process x_T -> x_0 over ``scheduler.timesteps`` (``set_timesteps`` must have been called).

    Works with any diffusers scheduler: ``scale_model_input`` before the model, and ``generator``/``eta`` passed to
    ``step`` only when it accepts them. ``x`` keeps its dtype; the model sees its own dtype (mixed precision).
    ``on_step(i, x_t)`` is called after every step (trajectories, progress). Non-finite weights (checked before the
    first step) or a non-finite final sample raise `NonFiniteSampleError`, never an image made of NaNs.
    """
    check_finite_weights(unet)
    accepted = inspect.signature(scheduler.step).parameters
    step_kwargs = {k: v for k, v in (("generator", generator), ("eta", eta)) if k in accepted}
    timesteps = scheduler.timesteps if progress is None else progress(scheduler.timesteps)
    for i, t in enumerate(timesteps):
        model_input = scheduler.scale_model_input(x, t).to(unet.dtype)
        model_output = unet(model_input, t).sample.to(x.dtype)
        x = scheduler.step(model_output, t, x, **step_kwargs).prev_sample
        if on_step is not None:
            on_step(i, x)
    if not bool(torch.isfinite(x).all()):
        raise NonFiniteSampleError(
            f"sampling produced non-finite values (NaN or inf) with {type(scheduler).__name__} over "
            f"{len(scheduler.timesteps)} steps although the weights are finite; the model or scheduler diverged: "
            "try another scheduler or step count, or a better-trained checkpoint"
        )
    return x


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
        trajectory = [self._postprocess(x, output_type)] if return_trajectory else None
        on_step = None if trajectory is None else (lambda i, x_t: trajectory.append(self._postprocess(x_t, output_type)))
        x = denoise(self.unet, self.scheduler, x, generator=generator, eta=eta, on_step=on_step,
                    progress=self.progress_bar)

        images = self._postprocess(x, output_type)
        self.maybe_free_model_hooks()
        if not return_dict:
            return (images, trajectory) if return_trajectory else (images,)
        return UnconditionalPipelineOutput(images=images, trajectory=trajectory)
