"""The parts of a training step: model and scheduler from the config, target, loss, learning rate, data order.

Kept apart from the loop in `diffusion.train` so each is a small function with a test of its own.
"""
from __future__ import annotations

import math
import signal
import threading
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F

from .config import TrainConfig

if TYPE_CHECKING:
    from .scheduler import NoiseScheduler
    from .unet import UNet


def build_unet(config: TrainConfig) -> UNet:
    """The hand-written U-Net sized from the config."""
    from .unet import UNet

    return UNet(
        sample_size=config.image_size, in_channels=config.channels, out_channels=config.channels, dim=config.dim,
        dim_mults=tuple(config.dim_mults), resnet_block_groups=config.resnet_block_groups,
        attention_heads=config.attention_heads, attention_head_dim=config.attention_head_dim,
    )


def build_scheduler(config: TrainConfig) -> NoiseScheduler:
    """The DDPM noise scheduler; 'trailing' spacing so few-step DDIM/DPM-Solver++ start at the last timestep."""
    from .scheduler import NoiseScheduler

    return NoiseScheduler(
        num_train_timesteps=config.num_train_timesteps, beta_schedule=config.beta_schedule,
        prediction_type=config.prediction_type, timestep_spacing="trailing", clip_sample=True,
    )


def diffusion_loss(pred: torch.Tensor, target: torch.Tensor, kind: str) -> torch.Tensor:
    """Mean Huber (delta 1), L1 or L2 loss in fp32."""
    pred, target = pred.float(), target.float()
    if kind == "huber":
        return F.huber_loss(pred, target, delta=1.0)
    if kind == "l1":
        return F.l1_loss(pred, target)
    return F.mse_loss(pred, target)


def training_target(scheduler, clean: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """What the network learns to predict for the scheduler's prediction type."""
    kind = scheduler.config.prediction_type
    if kind == "epsilon":
        return noise
    if kind == "v_prediction":
        return scheduler.get_velocity(clean, noise, t)
    return clean


def lr_factor(config: TrainConfig, step: int, total_steps: int, elapsed_s: float = 0.0) -> float:
    """Multiplier of ``config.lr`` for the update after ``step`` finished steps.

    Linear warm-up over ``warmup_steps`` times the decay of ``lr_schedule`` at progress ``p``: ``p`` is
    ``step / total_steps`` or, with ``time_budget_s``, ``elapsed_s / time_budget_s`` if that is further along.
    Cosine: ``end + (1 - end) * (1 + cos(pi p)) / 2``; linear: ``end + (1 - end) * (1 - p)``; ``end`` is
    ``lr_end_ratio``.
    """
    warm = min(1.0, (step + 1) / config.warmup_steps) if config.warmup_steps > 0 else 1.0
    if config.lr_schedule == "constant":
        return warm
    p = step / max(1, total_steps)
    if config.time_budget_s:
        p = max(p, elapsed_s / config.time_budget_s)
    p = min(1.0, max(0.0, p))
    shape = (1 + math.cos(math.pi * p)) / 2 if config.lr_schedule == "cosine" else 1 - p
    end = config.lr_end_ratio
    return warm * (end + (1 - end) * shape)


class StopFlag:
    """First Ctrl-C asks the loop to stop at the next step boundary; a second one aborts at once."""

    def __init__(self) -> None:
        self.requested = False
        self._previous: Any = None

    def __enter__(self) -> "StopFlag":
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    def __exit__(self, *exc) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)


class BatchOrder:
    """Deterministic, resumable order of global micro-batches: epoch e is a permutation seeded by (seed, e).

    ``indices(m, rank)`` is the share of global micro-batch ``m`` that process ``rank`` of ``world`` trains on;
    together the shares are the batch one process at ``batch_size * world`` would take.
    """

    def __init__(self, n: int, batch_size: int, seed: int, world: int = 1):
        self.n, self.seed, self.world = n, seed, world
        self.global_bs = min(batch_size * world, n)
        self.per_epoch = max(1, n // self.global_bs)
        self.share = max(1, self.global_bs // world)
        self._epoch: int | None = None  # the epoch whose permutation _perm holds
        self._perm = torch.empty(0, dtype=torch.long)

    def permutation(self, epoch: int) -> torch.Tensor:
        """Epoch ``epoch``'s order of the ``n`` samples (the current epoch's is kept; callers must not modify it)."""
        if epoch != self._epoch:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._perm, self._epoch = torch.randperm(self.n, generator=g), epoch
        return self._perm

    def global_indices(self, micro_batch: int) -> torch.Tensor:
        epoch, i = divmod(micro_batch, self.per_epoch)
        perm = self.permutation(epoch)
        return perm[i * self.global_bs:(i + 1) * self.global_bs][: self.share * self.world]

    def indices(self, micro_batch: int, rank: int = 0) -> torch.Tensor:
        return self.global_indices(micro_batch)[rank * self.share:(rank + 1) * self.share]


def stack_pixels(items: list[dict[str, Any]]) -> torch.Tensor:
    """DataLoader collate: the images of a batch as one tensor."""
    return torch.stack([item["pixel_values"] for item in items])


class LoaderBatches:
    """Batch sampler over this process's share of micro-batches ``start, start + 1, ...`` (for a DataLoader)."""

    def __init__(self, order: BatchOrder, rank: int, start: int, stop: int):
        self.order, self.rank, self.start, self.stop = order, rank, start, stop

    def __iter__(self):
        return (self.order.indices(m, self.rank).tolist() for m in range(self.start, self.stop))

    def __len__(self) -> int:
        return self.stop - self.start
