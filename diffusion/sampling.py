"""Sampling helpers shared by training previews, `rlgen diffusion sample` and evaluation.

`sampling_scheduler` swaps the trained DDPM scheduler for any registered one (DDIM, DPM-Solver++, ...) through
`from_config` (the same betas and prediction type); `generate` runs the reverse process the way diffusers pipelines do (scale by
`init_noise_sigma`, `scale_model_input`, pass `generator` only where `step` accepts it) and can keep the trajectory
for a denoising GIF. Image helpers turn [-1, 1] tensors into PNG grids and GIFs.
"""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np
import torch
from PIL import Image

from diffusion.pipeline import denoise
from .files import replace_atomically

if TYPE_CHECKING:
    from diffusers import SchedulerMixin

# Settings a scheduler kind gets on top of the trained config (see `sampling_scheduler` for the lambda clip).
_EXTRA_CONFIG = {"dpm-solver++": {"algorithm_type": "dpmsolver++", "solver_order": 2, "lambda_min_clipped": -5.1}}


class UnknownSchedulerError(ValueError):
    """Scheduler name not registered."""


def _scheduler_class(name: str, base: Any) -> type[SchedulerMixin]:
    """The class registered under ``name``; ``"ddpm"`` keeps the trained scheduler's own class."""
    import registry

    if name == "ddpm" and base is not None:
        return type(base)
    try:
        return registry.get("schedulers", name)
    except LookupError as exc:  # the registry's message lists every registered name
        raise UnknownSchedulerError(str(exc)) from exc


def sampling_scheduler(base: Any, name: str = "ddpm") -> SchedulerMixin:
    """A fresh scheduler of kind ``name`` built from the trained scheduler's config (same betas and target).

    DPM-Solver++ gets the two settings that keep it stable where the trained scheduler ends at a very low
    signal-to-noise ratio (the cosine schedule): ``lambda_min_clipped=-5.1`` skips the near-pure-noise training steps
    (log-SNR below -10.2: the last 4 of the cosine schedule; the linear one never gets there), and x0 is clipped
    like DDPM/DDIM's ``clip_sample`` (static thresholding at ``clip_sample_range``). Measured on the digits, cosine
    schedule, 20 steps: FID 27.7 without either, 3.4 with the lambda clip alone, 0.78 with both (DDIM 50: 0.70).
    """
    cls = _scheduler_class(name, base)
    extra = dict(_EXTRA_CONFIG.get(name, {}))
    if name == "dpm-solver++" and base.config.get("clip_sample", False):
        extra.update(thresholding=True, sample_max_value=float(base.config.get("clip_sample_range", 1.0)))
    return cls.from_config(base.config, **extra)


def _image_shape(unet: Any) -> tuple[int, int, int]:
    size = unet.config.sample_size
    h, w = (size, size) if isinstance(size, int) else tuple(size)
    return unet.config.in_channels, h, w


@torch.no_grad()
def generate(
    unet: torch.nn.Module,
    scheduler: Any,
    n: int,
    num_inference_steps: int,
    generator: torch.Generator | None = None,
    batch_size: int = 256,
    keep_trajectory: int = 0,
    progress: bool = False,
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Sample ``n`` images in [-1, 1] (CPU tensor) and, if ``keep_trajectory`` > 0, that many evenly spaced
    intermediate batches of the first batch (predicted x_t, noisy to clean) for a GIF."""
    train_steps = scheduler.config.num_train_timesteps
    if not 1 <= num_inference_steps <= train_steps:
        raise ValueError(f"num_inference_steps must be in [1, {train_steps}] for this model, got {num_inference_steps}")
    device = next(unet.parameters()).device
    c, h, w = _image_shape(unet)
    images: list[torch.Tensor] = []
    frames: list[torch.Tensor] = []
    from tqdm.auto import tqdm

    bar = tqdm(total=n * num_inference_steps, desc="sampling", unit="img-step", disable=not progress, leave=False)
    for start in range(0, n, batch_size):
        b = min(batch_size, n - start)
        scheduler.set_timesteps(num_inference_steps, device=device)
        x = torch.randn((b, c, h, w), generator=generator, dtype=torch.float32).to(device)
        x = x * scheduler.init_noise_sigma
        last = len(scheduler.timesteps) - 1
        keep_at = set()
        if start == 0 and keep_trajectory > 0:
            keep_at = {round(i * last / max(keep_trajectory - 1, 1)) for i in range(keep_trajectory)}

        def on_step(i: int, x_t: torch.Tensor, keep_at: set[int] = keep_at, b: int = b) -> None:
            if i in keep_at:
                frames.append(x_t.clamp(-1, 1).cpu())
            bar.update(b)

        x = denoise(unet, scheduler, x, generator=generator, on_step=on_step)
        images.append(x.clamp(-1, 1).cpu())
    bar.close()
    return torch.cat(images), frames


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """[-1, 1] float images -> uint8 in [0, 255], same shape."""
    return ((images.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)


def make_grid_image(images: torch.Tensor, nrow: int | None = None, scale: int = 1) -> Image.Image:
    """Tile a (N, C, H, W) batch in [-1, 1] into one PIL image (nearest upscaling by ``scale``)."""
    from torchvision.utils import make_grid

    nrow = nrow or max(1, int(math.ceil(math.sqrt(images.shape[0]))))
    grid = make_grid(to_uint8(images), nrow=nrow, padding=1, pad_value=0)
    array = grid.permute(1, 2, 0).numpy()
    img = _to_pil(array[:, :, :1] if images.shape[1] == 1 else array)  # make_grid repeats one channel into three
    return img.resize((img.width * scale, img.height * scale), Image.NEAREST) if scale > 1 else img


def _to_pil(array: np.ndarray) -> Image.Image:
    """An (H, W, 1) or (H, W, 3) uint8 array as a grayscale ("L") or RGB PIL image (the mode follows the shape)."""
    return Image.fromarray(np.ascontiguousarray(array[:, :, 0] if array.shape[2] == 1 else array, dtype=np.uint8))


def save_grid(images: torch.Tensor, path: str | os.PathLike, nrow: int | None = None, scale: int = 4) -> Path:
    """Write a PNG sample grid atomically."""
    img = make_grid_image(images, nrow, scale)
    return replace_atomically(path, lambda tmp: img.save(tmp, format="PNG"), suffix=".png")


def save_images(images: torch.Tensor, folder: str | os.PathLike) -> list[Path]:
    """Write each image of a (N, C, H, W) batch in [-1, 1] as its own PNG (00000.png, ...), atomically."""
    folder = Path(folder)
    written = []
    for i, array in enumerate(to_uint8(images).permute(0, 2, 3, 1).numpy()):
        img = _to_pil(array)
        written.append(replace_atomically(folder / f"{i:05d}.png", lambda tmp, img=img: img.save(tmp, format="PNG"),
                                          suffix=".png"))
    return written


def save_gif(frames: Sequence[torch.Tensor], path: str | os.PathLike, nrow: int | None = None, scale: int = 4,
             duration_ms: int = 120) -> Path:
    """Write a denoising GIF (one grid per frame, last frame held longer) atomically."""
    if not frames:
        raise ValueError("no frames to write")
    imgs = [make_grid_image(f, nrow, scale).convert("P") for f in frames]
    durations = [duration_ms] * (len(imgs) - 1) + [duration_ms * 10]
    return replace_atomically(
        path,
        lambda tmp: imgs[0].save(tmp, format="GIF", save_all=True, append_images=imgs[1:], duration=durations, loop=0),
        suffix=".gif",
    )
