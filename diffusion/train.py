"""Train the hand-written DDPM U-Net on an image dataset with `accelerate`.

One call, `train(TrainConfig(...))`, does the whole run: data through `diffusion.data`, Huber/L1/L2 loss on the
epsilon, v or x0 target, diffusers' `EMAModel`, gradient clipping, a tqdm bar with the loss, periodic PNG sample
grids, TensorBoard scalars (plus `logs/scalars.jsonl`), single-file checkpoints written atomically, and at the end
a `save_pretrained` pipeline folder (EMA weights) and a denoising GIF. `accelerate launch` works unchanged.

Faults never lose work: `resume="latest"` continues the same run (weights, optimizer, EMA, step, data order and
RNG state); an unreadable checkpoint raises `CheckpointError` instead of starting over; a non-finite loss stops
with `NonFiniteLossError` before it reaches the weights; Ctrl-C finishes the current step, checkpoints and returns
with ``interrupted=True`` (a second Ctrl-C aborts at once).
"""
from __future__ import annotations

import copy
import dataclasses
import json
import math
import os
import random
import shutil
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F

from .files import replace_atomically, write_text_atomically

from .data import load_training_data
from .sampling import generate, sampling_scheduler, save_gif, save_grid

LOSSES = ("huber", "l1", "l2")
PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")
LR_SCHEDULES = ("constant", "cosine", "linear")
CHECKPOINT_FORMAT = 1
CONFIG_FILE = "training_config.json"
# Fields that define the run; a resumed run must match the checkpoint on every one of them.
RUN_FIELDS = (
    "dataset", "image_size", "channels", "random_flip", "holdout_fraction", "split_seed", "batch_size",
    "beta_schedule", "num_train_timesteps", "prediction_type", "loss", "dim", "dim_mults", "resnet_block_groups",
    "attention_heads", "attention_head_dim", "seed",
)


class TrainingError(RuntimeError):
    """A training run that cannot go on; the message says where the last good state is."""


class CheckpointError(TrainingError):
    """A checkpoint that cannot be used for resuming (missing, unreadable, or from a different run)."""


class NonFiniteLossError(TrainingError):
    """The loss became NaN or infinite; raised before the bad step touches the weights."""

    def __init__(self, message: str, step: int, last_finite_loss: float | None, checkpoint: Path | None):
        super().__init__(message)
        self.step, self.last_finite_loss, self.checkpoint = step, last_finite_loss, checkpoint


@dataclass
class TrainConfig:
    """Everything that defines a training run (saved as training_config.json next to the outputs)."""

    output_dir: str = "runs/diffusion"
    dataset: str = "digits"
    image_size: int = 16
    channels: int = 1
    random_flip: bool = False
    holdout_fraction: float = 0.3  # kept out of training: evaluation's real-vs-real floor uses it
    split_seed: int = 0
    steps: int | None = None  # optimizer steps; or give epochs
    epochs: float | None = None
    # Stop (checkpoint + final outputs) once this much training wall time is spent; counted over the whole run, so
    # a resumed run gets what is left of it (the checkpoint stores the time spent).
    time_budget_s: float | None = None
    batch_size: int = 64
    lr: float = 1e-3
    warmup_steps: int = 100
    # Learning rate after warm-up: constant, or decayed to lr * lr_end_ratio over the run (cosine or linear); the
    # run's length is the larger progress of steps / total steps and, with time_budget_s, elapsed / budget.
    lr_schedule: str = "constant"
    lr_end_ratio: float = 0.0
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    loss: str = "huber"
    prediction_type: str = "epsilon"
    beta_schedule: str = "linear"
    num_train_timesteps: int = 1000
    dim: int = 32
    dim_mults: tuple[int, ...] = (1, 2, 2)
    resnet_block_groups: int = 4
    attention_heads: int = 2
    attention_head_dim: int = 16
    ema_decay: float = 0.999
    # EMA warm-up (diffusers' EMAModel): decay at optimizer step k is min(ema_decay, 1 - (1 + k / ema_inv_gamma) **
    # -ema_power); without it, EMAModel's default min(ema_decay, (1 + k) / (10 + k)).
    ema_warmup: bool = False
    ema_inv_gamma: float = 1.0
    ema_power: float = 2 / 3
    seed: int = 0
    mixed_precision: str = "no"
    checkpoint_every: int = 500
    keep_checkpoints: int = 2
    sample_every: int = 1000  # 0 disables periodic grids
    num_preview: int = 36
    preview_scheduler: str = "ddim"
    preview_steps: int = 50
    gif_frames: int = 24
    log_every: int = 20
    tensorboard: bool = True
    progress: bool = True
    resume: str | None = None  # "latest" or a checkpoint file

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Reject bad values with one clear message each (also run at construction)."""
        if self.loss not in LOSSES:
            raise ValueError(f"unknown loss {self.loss!r}; choose one of {', '.join(LOSSES)}")
        if self.prediction_type not in PREDICTION_TYPES:
            raise ValueError(f"unknown prediction type {self.prediction_type!r}; choose one of {', '.join(PREDICTION_TYPES)}")
        if self.steps is not None and self.epochs is not None:
            raise ValueError("give either steps or epochs, not both")
        for name in ("image_size", "batch_size", "num_train_timesteps", "checkpoint_every", "log_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.steps is not None and self.steps < 1:
            raise ValueError(f"steps must be >= 1, got {self.steps}")
        if self.epochs is not None and self.epochs <= 0:
            raise ValueError(f"epochs must be > 0, got {self.epochs}")
        if self.lr <= 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if self.channels not in (1, 3):
            raise ValueError(f"channels must be 1 or 3, got {self.channels}")
        if self.lr_schedule not in LR_SCHEDULES:
            raise ValueError(f"unknown lr_schedule {self.lr_schedule!r}; choose one of {', '.join(LR_SCHEDULES)}")
        if not 0.0 <= self.lr_end_ratio <= 1.0:
            raise ValueError(f"lr_end_ratio must be in [0, 1], got {self.lr_end_ratio}")
        if self.warmup_steps < 0:
            raise ValueError(f"warmup_steps must be >= 0, got {self.warmup_steps}")
        if self.time_budget_s is not None and self.time_budget_s <= 0:
            raise ValueError(f"time_budget_s must be > 0, got {self.time_budget_s}")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"ema_decay must be in [0, 1), got {self.ema_decay}")
        if self.ema_inv_gamma <= 0:
            raise ValueError(f"ema_inv_gamma must be > 0, got {self.ema_inv_gamma}")
        if self.ema_power <= 0:
            raise ValueError(f"ema_power must be > 0, got {self.ema_power}")

    def to_json(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["dim_mults"] = list(self.dim_mults)
        return d

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "TrainConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        d = {k: v for k, v in data.items() if k in known}
        if "dim_mults" in d:
            d["dim_mults"] = tuple(d["dim_mults"])
        return cls(**d)


@dataclass
class TrainResult:
    """What a run left behind."""

    output_dir: Path
    step: int
    last_loss: float | None
    checkpoint: Path | None
    pipeline_dir: Path | None = None
    interrupted: bool = False
    outputs: list[Path] = field(default_factory=list)


def build_unet(config: TrainConfig):
    """The hand-written U-Net sized from the config."""
    from diffusion import UNet

    return UNet(
        sample_size=config.image_size, in_channels=config.channels, out_channels=config.channels, dim=config.dim,
        dim_mults=tuple(config.dim_mults), resnet_block_groups=config.resnet_block_groups,
        attention_heads=config.attention_heads, attention_head_dim=config.attention_head_dim,
    )


def build_scheduler(config: TrainConfig):
    """The DDPM noise scheduler; 'trailing' spacing so few-step DDIM/DPM-Solver++ start at the last timestep."""
    from diffusion import NoiseScheduler

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
    ``step / total_steps`` or, with ``time_budget_s``, ``elapsed_s / time_budget_s`` if that is further along (a
    time-budgeted run cannot know its step count in advance, so its learning rate follows the clock and reaches the
    end value as the budget runs out). Cosine: ``end + (1 - end) * (1 + cos(pi p)) / 2``; linear:
    ``end + (1 - end) * (1 - p)``; ``end`` is ``lr_end_ratio``.
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


# Clock of the time budget and of time-based schedules (a function so tests can substitute a fake clock).
_clock = time.monotonic


# ----------------------------------------------------------------------------- checkpoints
def checkpoint_dir(output_dir: str | os.PathLike) -> Path:
    return Path(output_dir) / "checkpoints"


def list_checkpoints(output_dir: str | os.PathLike) -> list[Path]:
    """Complete checkpoints of a run, oldest first (temp files of an interrupted write are ignored)."""
    folder = checkpoint_dir(output_dir)
    if not folder.is_dir():
        return []
    found = [p for p in folder.glob("step-*.pt") if p.stem[5:].isdigit()]
    return sorted(found, key=lambda p: int(p.stem[5:]))


def _rng_state() -> dict[str, Any]:
    np_state = np.random.get_state()
    return {
        "python": random.getstate(),
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]],
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def _set_rng_state(state: dict[str, Any]) -> None:
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    npv = state["numpy"]
    np.random.set_state((npv[0], npv[1].numpy().astype(np.uint32), *npv[2:]))
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Read a checkpoint; any damage raises `CheckpointError` naming the file (never a silent fresh start)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - truncated zip, bad pickle, wrong file: all "corrupt"
        raise CheckpointError(f"checkpoint {path} is corrupt or unreadable ({type(exc).__name__}: {exc})") from exc
    needed = {"format", "step", "model", "optimizer", "ema", "rng", "noise_rng", "config"}
    if not isinstance(state, dict) or not needed <= set(state):
        missing = sorted(needed - set(state)) if isinstance(state, dict) else sorted(needed)
        raise CheckpointError(f"checkpoint {path} is incomplete (missing {', '.join(missing)})")
    if state["format"] != CHECKPOINT_FORMAT:
        raise CheckpointError(f"checkpoint {path} has format {state['format']}, expected {CHECKPOINT_FORMAT}")
    return state


def resolve_resume(output_dir: str | os.PathLike, resume: str) -> Path:
    """Map ``"latest"`` (or a file path) to the checkpoint to resume from; errors say what exists instead."""
    if resume != "latest":
        return Path(resume)
    found = list_checkpoints(output_dir)
    if not found:
        raise CheckpointError(
            f"--resume latest: no checkpoint in {checkpoint_dir(output_dir)}; "
            "drop --resume to start a new run there, or point --output at the run to continue"
        )
    return found[-1]


def _check_same_run(saved: dict[str, Any], config: TrainConfig, path: Path) -> None:
    now = config.to_json()
    diffs = [f"{k}: {saved.get(k)!r} in the checkpoint, {now[k]!r} now" for k in RUN_FIELDS if saved.get(k) != now[k]]
    if diffs:
        raise CheckpointError(f"cannot resume from {path}: the run settings differ ({'; '.join(diffs)})")


# ----------------------------------------------------------------------------- data order
class _Batches:
    """Deterministic, resumable batch order: epoch e is a permutation seeded by (seed, e)."""

    def __init__(self, n: int, batch_size: int, seed: int, rank: int = 0, world: int = 1):
        self.n, self.bs, self.seed, self.rank, self.world = n, batch_size, seed, rank, world
        global_bs = batch_size * world
        self.per_epoch = max(1, n // global_bs)
        self.global_bs = min(global_bs, n)

    def indices(self, step: int) -> torch.Tensor:
        epoch, i = divmod(step, self.per_epoch)
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        perm = torch.randperm(self.n, generator=g)
        chunk = perm[i * self.global_bs:(i + 1) * self.global_bs]
        share = max(1, len(chunk) // self.world)
        return chunk[self.rank * share:(self.rank + 1) * share]


def _flat_hparams(config: TrainConfig) -> dict[str, Any]:
    return {k: (v if isinstance(v, (int, float, str, bool)) else str(v)) for k, v in config.to_json().items()}


class _StopFlag:
    """First Ctrl-C asks the loop to stop at the next step boundary; a second one aborts at once."""

    def __init__(self) -> None:
        self.requested = False
        self._previous: Any = None

    def __enter__(self) -> "_StopFlag":
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


# ----------------------------------------------------------------------------- training
def train(config: TrainConfig, on_step: Callable[[int, float], None] | None = None) -> TrainResult:
    """Run (or resume) training as configured; returns where everything was written."""
    from accelerate import Accelerator
    from accelerate.utils import ProjectConfiguration
    from diffusers.training_utils import EMAModel
    from tqdm.auto import tqdm

    config.validate()
    out = Path(config.output_dir)
    existing = list_checkpoints(out)
    if config.resume is None and existing:
        raise CheckpointError(
            f"{out} already holds checkpoints (latest {existing[-1].name}); pass --resume latest to continue "
            "that run, or choose another --output"
        )
    resume_state = None
    resume_path = None
    if config.resume is not None:
        resume_path = resolve_resume(out, config.resume)
        resume_state = load_checkpoint(resume_path)
        _check_same_run(resume_state["config"], config, resume_path)

    log_with = None
    if config.tensorboard:
        try:
            import tensorboard  # noqa: F401

            log_with = "tensorboard"
        except ImportError:
            pass
    accelerator = Accelerator(
        mixed_precision=config.mixed_precision, log_with=log_with,
        project_config=ProjectConfiguration(project_dir=str(out), logging_dir=str(out / "logs")),
    )
    main = accelerator.is_main_process
    if main:
        out.mkdir(parents=True, exist_ok=True)
        write_text_atomically(out / CONFIG_FILE, json.dumps(config.to_json(), indent=2))
    if log_with:
        accelerator.init_trackers("tensorboard", config=_flat_hparams(config))

    # Data: small deterministic datasets are decoded once into one tensor; others go through the transform per batch.
    train_ds, _ = load_training_data(
        config.dataset, config.image_size, config.channels, config.random_flip, config.holdout_fraction,
        config.split_seed,
    )
    n = len(train_ds)
    cached = None
    if not config.random_flip and n * config.channels * config.image_size ** 2 * 4 < 512 * 2 ** 20:
        cached = torch.stack(train_ds[:]["pixel_values"])
    order = _Batches(n, config.batch_size, config.seed, accelerator.process_index, accelerator.num_processes)
    if config.steps is not None:
        total_steps = config.steps
    elif config.epochs is not None:
        total_steps = max(1, math.ceil(config.epochs * order.per_epoch))
    else:
        total_steps = 10_000 if config.time_budget_s else 2_000

    torch.manual_seed(config.seed)
    model = build_unet(config)
    scheduler = build_scheduler(config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    ema = EMAModel(
        model.parameters(), decay=config.ema_decay, use_ema_warmup=config.ema_warmup, inv_gamma=config.ema_inv_gamma,
        power=config.ema_power, model_cls=type(model), model_config=model.config,
    )
    noise_gen = torch.Generator().manual_seed(config.seed + 1)
    step, last_loss, last_ckpt = 0, None, None
    elapsed_before = 0.0  # training time spent by earlier invocations of this run (budget and schedule go on)
    if resume_state is not None:
        try:
            model.load_state_dict(resume_state["model"])
            optimizer.load_state_dict(resume_state["optimizer"])
            ema.load_state_dict(resume_state["ema"])
        except (RuntimeError, ValueError, KeyError) as exc:
            raise CheckpointError(f"checkpoint {resume_path} does not fit this model: {exc}") from exc
        step, last_loss, last_ckpt = int(resume_state["step"]), resume_state.get("last_loss"), resume_path
        elapsed_before = float(resume_state.get("elapsed_s", 0.0))
        noise_gen.set_state(resume_state["noise_rng"])
        _set_rng_state(resume_state["rng"])
    model, optimizer = accelerator.prepare(model, optimizer)
    ema.to(accelerator.device)
    unwrapped = accelerator.unwrap_model(model)
    timesteps_n = scheduler.config.num_train_timesteps

    def save_checkpoint() -> Path:
        nonlocal last_ckpt
        path = checkpoint_dir(out) / f"step-{step:08d}.pt"
        accelerator.wait_for_everyone()
        if main:
            state = {
                "format": CHECKPOINT_FORMAT, "step": step, "last_loss": last_loss, "config": config.to_json(),
                "model": {k: v.detach().cpu() for k, v in accelerator.unwrap_model(model).state_dict().items()},
                "optimizer": optimizer.state_dict(), "ema": ema.state_dict(), "rng": _rng_state(),
                "noise_rng": noise_gen.get_state(), "elapsed_s": elapsed(),
            }
            replace_atomically(path, lambda tmp: torch.save(state, tmp), fsync=True)
            for old in list_checkpoints(out)[:-max(1, config.keep_checkpoints)]:
                old.unlink(missing_ok=True)
        last_ckpt = path
        return path

    def ema_copy() -> torch.nn.Module:
        copy_model = copy.deepcopy(unwrapped).eval()
        ema.copy_to(copy_model.parameters())
        return copy_model

    def preview(name: str, frames: int = 0) -> list[Path]:
        g = torch.Generator().manual_seed(config.seed + 2)
        sched = sampling_scheduler(scheduler, config.preview_scheduler)
        steps = min(config.preview_steps, timesteps_n)
        images, traj = generate(ema_copy(), sched, config.num_preview, steps, generator=g, keep_trajectory=frames)
        written = [save_grid(images, out / "samples" / f"{name}.png")]
        if frames:
            written.append(save_gif(traj, out / "samples" / "denoising.gif"))
        return written

    scalars = None
    if main:
        (out / "logs").mkdir(parents=True, exist_ok=True)
        scalars = open(out / "logs" / "scalars.jsonl", "a")
    outputs: list[Path] = []
    interrupted = False
    consistent = True  # False while an optimizer update is half applied
    start_time = _clock()

    def elapsed() -> float:
        return elapsed_before + _clock() - start_time

    bar = tqdm(total=total_steps, initial=step, desc="training", unit="step", disable=not (config.progress and main))
    try:
        with _StopFlag() as stop:
            while step < total_steps:
                now_s = elapsed()
                if config.time_budget_s is not None and now_s >= config.time_budget_s:
                    break
                idx = order.indices(step)
                if cached is not None:
                    clean = cached[idx]
                else:
                    clean = torch.stack(train_ds[idx.tolist()]["pixel_values"])
                clean = clean.to(accelerator.device)
                noise = torch.randn(clean.shape, generator=noise_gen).to(accelerator.device)
                t = torch.randint(0, timesteps_n, (clean.shape[0],), generator=noise_gen).to(accelerator.device)
                noisy = scheduler.add_noise(clean, noise, t)
                with accelerator.autocast():
                    pred = model(noisy, t).sample
                loss = diffusion_loss(pred, training_target(scheduler, clean, noise, t), config.loss)
                mean_loss = accelerator.gather(loss.detach()[None]).mean().item()
                if not math.isfinite(mean_loss):
                    # The weights are still those of the last finite step: keep them if they are themselves finite.
                    if step > 0 and all(torch.isfinite(p).all() for p in unwrapped.parameters()):
                        if last_ckpt is None or Path(last_ckpt).stem != f"step-{step:08d}":
                            save_checkpoint()
                    where = f"last good checkpoint: {last_ckpt}" if last_ckpt else "no checkpoint was written yet"
                    last = f"{last_loss:.6g}" if last_loss is not None else "none"
                    raise NonFiniteLossError(
                        f"loss became {mean_loss} at step {step + 1}; last finite loss {last}; {where}. "
                        "Lower --lr or check the data, then resume from the checkpoint.",
                        step + 1, last_loss, last_ckpt,
                    )
                consistent = False
                for group in optimizer.param_groups:
                    group["lr"] = config.lr * lr_factor(config, step, total_steps, now_s)
                accelerator.backward(loss)
                grad_norm = None
                if accelerator.sync_gradients and config.grad_clip > 0:
                    grad_norm = accelerator.clip_grad_norm_(model.parameters(), config.grad_clip)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                ema.step(unwrapped.parameters())
                step += 1
                last_loss = mean_loss
                consistent = True

                bar.update(1)
                bar.set_postfix(loss=f"{mean_loss:.4f}")
                if step % config.log_every == 0 or step == total_steps:
                    logs = {"loss": mean_loss, "lr": optimizer.param_groups[0]["lr"], "ema_decay": ema.cur_decay_value or 0.0}
                    if grad_norm is not None:
                        logs["grad_norm"] = float(grad_norm)
                    accelerator.log(logs, step=step)
                    if scalars:
                        scalars.write(json.dumps({"step": step, **logs}) + "\n")
                        scalars.flush()
                if on_step is not None:
                    on_step(step, mean_loss)
                if stop.requested:
                    interrupted = True
                    break
                if step % config.checkpoint_every == 0:
                    save_checkpoint()
                if config.sample_every and step % config.sample_every == 0 and main:
                    outputs += preview(f"step-{step:08d}")
    except KeyboardInterrupt:
        # A second Ctrl-C (or one outside the handler): keep what is consistent, then let it propagate.
        if consistent and step > 0 and (last_ckpt is None or last_ckpt.stem != f"step-{step:08d}"):
            save_checkpoint()
        bar.close()
        raise
    finally:
        bar.close()
        if scalars:
            scalars.close()

    if last_ckpt is None or Path(last_ckpt).stem != f"step-{step:08d}":
        if step > 0:
            save_checkpoint()
    result = TrainResult(out, step, last_loss, last_ckpt, interrupted=interrupted, outputs=outputs)
    if interrupted:
        accelerator.end_training()
        return result
    if main:
        result.pipeline_dir = save_pipeline(ema_copy(), scheduler, out / "pipeline")
        result.outputs += preview("final", frames=config.gif_frames)
    accelerator.end_training()
    return result


def save_pipeline(unet: torch.nn.Module, scheduler: Any, path: str | os.PathLike) -> Path:
    """`save_pretrained` the pipeline into ``path`` atomically (written beside it, then swapped in)."""
    from diffusion import UnconditionalPipeline

    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    old = path.with_name(f".{path.name}.old")
    for p in (tmp, old):
        if p.exists():
            shutil.rmtree(p)
    UnconditionalPipeline(unet=unet, scheduler=scheduler).save_pretrained(str(tmp))
    if path.exists():
        os.replace(path, old)
    os.replace(tmp, path)
    if old.exists():
        shutil.rmtree(old)
    return path


def load_pipeline(model_dir: str | os.PathLike):
    """Load a trained pipeline from a run folder (or its `pipeline/` subfolder)."""
    from diffusion import UnconditionalPipeline

    model_dir = Path(model_dir)
    if not (model_dir / "model_index.json").is_file() and (model_dir / "pipeline" / "model_index.json").is_file():
        model_dir = model_dir / "pipeline"
    if not (model_dir / "model_index.json").is_file():
        raise FileNotFoundError(
            f"{model_dir} is not a trained pipeline (no model_index.json); pass the --output folder of "
            "`rlgen diffusion train` or its pipeline/ subfolder"
        )
    return UnconditionalPipeline.from_pretrained(str(model_dir))


def read_run_config(model_dir: str | os.PathLike) -> TrainConfig | None:
    """The training config saved in a run folder (looked up next to or above a pipeline folder)."""
    model_dir = Path(model_dir)
    for folder in (model_dir, model_dir.parent):
        f = folder / CONFIG_FILE
        if f.is_file():
            return TrainConfig.from_json(json.loads(f.read_text()))
    return None
