"""Train the hand-written DDPM U-Net with `accelerate`, on one process or several.

``train(TrainConfig(...))`` runs (or resumes) one run: Huber/L1/L2 loss on the epsilon, v or x0 target, diffusers'
`EMAModel`, gradient accumulation and clipping, TensorBoard and ``logs/scalars.jsonl`` scalars, periodic sample
grids, checkpoints (`diffusion.checkpoints`) and at the end a self-contained pipeline folder (`diffusion.export`).

Several processes (``accelerate launch --multi_gpu --num_processes N``; on CPUs with ``ACCELERATE_USE_CPU=True``, or
``torchrun``) make one run: each process takes its share of every global batch, gradients are averaged, and only
the main process writes and prints. Noise and timesteps are drawn for the whole global batch from one stream seeded
by ``seed`` and each process keeps its share, so N processes at batch B train exactly like one process at N x B;
augmentations use per-process streams (``set_seed(seed, device_specific=True)``).

Faults never lose work: ``resume="latest"`` continues the same run; an unreadable checkpoint raises
`CheckpointError`; a non-finite loss stops with `NonFiniteLossError` before it reaches the weights; Ctrl-C
finishes the current step, checkpoints and returns with ``interrupted=True`` (a second Ctrl-C aborts at once);
the first checkpoint comes early (`FIRST_CHECKPOINT_S`, a tenth of the steps); no checkpoint holds non-finite
weights; temp files a killed write left behind are removed when the run starts again.
"""
from __future__ import annotations

import contextlib
import copy
import json
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from .checkpoints import (CheckpointError, NonFiniteLossError, checkpoint_dir, checkpoint_path, last_good_checkpoint,
                          prepare_run_folder, rng_state, set_rng_state, write_checkpoint, write_run_config)
from .config import TrainConfig
from .data import load_training_data
from .export import save_pipeline
from .files import remove_stale_temp_files
from .launch import make_accelerator
from .sampling import generate, sampling_scheduler, save_gif, save_grid
from .training_parts import (BatchOrder, LoaderBatches, StopFlag, build_scheduler, build_unet,
                             diffusion_loss, lr_factor, stack_pixels, training_target)

# Clock of the time budget and of time-based schedules (a function so tests can substitute a fake clock).
_clock = time.monotonic
# A new run writes its first checkpoint early, at the first of: this much training time, a tenth of the time budget,
# or a tenth of the planned steps; then every checkpoint_every steps. A kill before step checkpoint_every keeps it.
FIRST_CHECKPOINT_S = 600.0


@dataclass
class TrainResult:
    """What a run left behind (paths are those the main process wrote)."""

    output_dir: Path
    step: int
    last_loss: float | None
    checkpoint: Path | None
    pipeline_dir: Path | None = None
    interrupted: bool = False
    outputs: list[Path] = field(default_factory=list)
    is_main_process: bool = True
    num_processes: int = 1
    resumed_from: Path | None = None
    resumed_step: int | None = None


class Run:
    """One run on this process: `fit` is the loop, the other methods are its named steps."""

    def __init__(self, config: TrainConfig, accelerator: Any):
        from accelerate.utils import set_seed
        from diffusers.training_utils import EMAModel

        self.config, self.acc = c, acc = config, accelerator
        self.out = Path(c.output_dir)
        self.main, self.rank, self.world = acc.is_main_process, acc.process_index, acc.num_processes
        self.resumed_from, state = prepare_run_folder(c)
        if self.main:
            self.out.mkdir(parents=True, exist_ok=True)
            # Temp files of a write that a SIGKILL interrupted never outlive the next start of the run.
            remove_stale_temp_files(self.out, checkpoint_dir(self.out), self.out / "samples", self.out / "pipeline",
                                    self.out / "logs")
            write_run_config(c)
        self._load_data()
        torch.manual_seed(c.seed)  # the same initial weights on every process
        model = build_unet(c)
        if c.gradient_checkpointing:
            model.enable_gradient_checkpointing()
        self.scheduler = build_scheduler(c)
        optimizer = torch.optim.AdamW(model.parameters(), lr=c.lr, weight_decay=c.weight_decay)
        self.ema = EMAModel(model.parameters(), decay=c.ema_decay, use_ema_warmup=c.ema_warmup,
                            inv_gamma=c.ema_inv_gamma, power=c.ema_power, model_cls=type(model),
                            model_config=model.config)
        set_seed(c.seed, device_specific=True)  # augmentations and data workers: one stream per process
        self.noise_gen = torch.Generator().manual_seed(c.seed + 1)  # shared: noise of the whole global batch
        self.step, self.last_loss, self.last_ckpt, self.elapsed_before = 0, None, None, 0.0
        self.resumed_step = None
        if state is not None:
            self._restore(state, model, optimizer)
        self.model, self.optimizer = acc.prepare(model, optimizer)
        self.ema.to(acc.device)
        self.unwrapped = acc.unwrap_model(self.model)
        self.outputs: list[Path] = []
        self.consistent = True  # False while an optimizer update is half applied
        self.scalars = None
        self._loader = None
        self.start_time = _clock()

    # ------------------------------------------------------------------ set-up
    def _load_data(self) -> None:
        c = self.config
        self.train_ds, _ = load_training_data(c.dataset, c.image_size, c.channels, c.random_flip,
                                              c.holdout_fraction, c.split_seed, c.center_crop)
        n = len(self.train_ds)
        self.cached = None  # small datasets without random augmentation are decoded once into one tensor
        if not c.random_flip and c.center_crop and n * c.channels * c.image_size ** 2 * 4 < 512 * 2 ** 20:
            self.cached = torch.stack(self.train_ds[:]["pixel_values"])
        self.order = BatchOrder(n, c.batch_size, c.seed, self.world)
        accumulate = c.gradient_accumulation_steps
        if c.steps is not None:
            self.total_steps = c.steps
        elif c.epochs is not None:
            self.total_steps = max(1, math.ceil(c.epochs * self.order.per_epoch / accumulate))
        else:
            self.total_steps = 10_000 if c.time_budget_s else 2_000

    def _restore(self, state: dict[str, Any], model: torch.nn.Module, optimizer: Any) -> None:
        from accelerate.utils import set_seed

        try:
            model.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            self.ema.load_state_dict(state["ema"])
        except (RuntimeError, ValueError, KeyError) as exc:
            raise CheckpointError(f"checkpoint {self.resumed_from} does not fit this model: {exc}") from exc
        self.step = self.resumed_step = int(state["step"])
        self.last_loss, self.last_ckpt = state.get("last_loss"), self.resumed_from
        self.elapsed_before = float(state.get("elapsed_s", 0.0))
        self.noise_gen.set_state(state["noise_rng"])
        per_rank = state.get("rng_ranks") or [state["rng"]]
        if self.rank < len(per_rank):
            set_rng_state(per_rank[self.rank])
        else:  # more processes than the checkpoint had: a fresh stream for the new ones
            set_seed(self.config.seed + 7919 * self.step, device_specific=True)

    # ------------------------------------------------------------------ one optimizer step
    def _images(self, micro_batch: int) -> torch.Tensor:
        if self.cached is not None:
            clean = self.cached[self.order.indices(micro_batch, self.rank)]
        elif self.config.dataloader_num_workers:
            if self._loader is None:
                from torch.utils.data import DataLoader

                stop = self.total_steps * self.config.gradient_accumulation_steps
                batches = LoaderBatches(self.order, self.rank, micro_batch, stop)
                self._loader = iter(DataLoader(self.train_ds, batch_sampler=batches, collate_fn=stack_pixels,
                                               num_workers=self.config.dataloader_num_workers))
            clean = next(self._loader)
        else:
            clean = torch.stack(self.train_ds[self.order.indices(micro_batch, self.rank).tolist()]["pixel_values"])
        return clean.to(self.acc.device)

    def _step_noise(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Noise and timesteps of every sample of the coming optimizer step (all micro-batches, all processes).

        Sample ``i`` of process ``r`` in micro-batch ``k`` takes row ``(k * world + r) * share + i``: the row its
        image has in one process's batch of ``batch_size * world * gradient_accumulation_steps``.
        """
        c = self.config
        total = self.order.share * self.world * c.gradient_accumulation_steps
        noise = torch.randn((total, c.channels, c.image_size, c.image_size), generator=self.noise_gen)
        t = torch.randint(0, self.scheduler.config.num_train_timesteps, (total,), generator=self.noise_gen)
        return noise, t

    def _share(self, rows: torch.Tensor, k: int) -> torch.Tensor:
        start = (k * self.world + self.rank) * self.order.share
        return rows[start:start + self.order.share].to(self.acc.device)

    def train_step(self, now_s: float) -> tuple[float, float | None]:
        """Accumulate the micro-batches of one step, average gradients over processes, update weights and EMA."""
        c, acc = self.config, self.acc
        accumulate = c.gradient_accumulation_steps
        for group in self.optimizer.param_groups:
            group["lr"] = c.lr * lr_factor(c, self.step, self.total_steps, now_s)
        local = []
        step_noise, step_t = self._step_noise()
        for k in range(accumulate):
            clean = self._images(self.step * accumulate + k)
            noise, t = self._share(step_noise, k), self._share(step_t, k)
            noisy = self.scheduler.add_noise(clean, noise, t)
            last = k == accumulate - 1
            with contextlib.nullcontext() if last else acc.no_sync(self.model):
                with acc.autocast():
                    pred = self.model(noisy, t).sample
                loss = diffusion_loss(pred, training_target(self.scheduler, clean, noise, t), c.loss)
                acc.backward(loss / accumulate)
            local.append(loss.detach())
        # One gather and one host sync per step: micro-batch k's loss averaged over the processes.
        losses = acc.gather(torch.stack(local)).reshape(self.world, accumulate).mean(dim=0).tolist()
        non_finite = next((x for x in losses if not math.isfinite(x)), None)
        if non_finite is not None:  # before the update: the weights stay those of the last finite step
            self._stop_on_non_finite(f"loss became {non_finite}")
        grad_norm = None
        if c.grad_clip > 0:
            grad_norm = float(acc.clip_grad_norm_(self.model.parameters(), c.grad_clip))
            if not math.isfinite(grad_norm):  # clipping by a NaN/inf norm would poison every weight
                self._stop_on_non_finite(f"gradient norm became {grad_norm} (the loss was finite)")
        self.consistent = False
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.ema.step(self.unwrapped.parameters())
        self.step += 1
        self.last_loss = sum(losses) / accumulate
        self.consistent = True
        return self.last_loss, grad_norm

    def _weights_finite(self) -> bool:
        """Whether the weights and EMA weights hold no NaN or inf (one host sync; equal on every process)."""
        tensors = [p for p in (*self.unwrapped.parameters(), *self.ema.shadow_params) if p.numel()]
        return bool(torch.stack([torch.isfinite(p).all() for p in tensors]).all())

    def _stop_on_non_finite(self, what: str) -> None:
        # The weights are still those of the last finite step: keep them if they are themselves finite.
        finite = self._weights_finite()
        if self.step > 0 and finite and not self._checkpointed_now():
            self.save_checkpoint()
        cause = ("Lower --lr or check the data, then resume from the checkpoint." if finite else
                 "The weights themselves are not finite: resume from the checkpoint with a lower --lr.")
        good = last_good_checkpoint(self.out)
        where = f"last good checkpoint: {good}" if good else "no good checkpoint was written yet"
        last = f"{self.last_loss:.6g}" if self.last_loss is not None else "none"
        raise NonFiniteLossError(f"{what} at step {self.step + 1}; last finite loss {last}; {where}. {cause}",
                                 self.step + 1, self.last_loss, good)

    # ------------------------------------------------------------------ outputs
    def elapsed(self) -> float:
        return self.elapsed_before + _clock() - self.start_time

    def _agree(self, elapsed_s: float, stop: bool) -> tuple[float, bool]:
        """The largest elapsed time and any stop request over all processes (all of them stop together)."""
        if self.world == 1:
            return elapsed_s, stop
        both = self.acc.gather(torch.tensor([[elapsed_s, float(stop)]], device=self.acc.device)).max(dim=0).values
        return float(both[0]), bool(both[1] > 0)

    def _checkpointed_now(self) -> bool:
        return self.last_ckpt is not None and Path(self.last_ckpt) == checkpoint_path(self.out, self.step)

    def _first_checkpoint_due(self, now_s: float) -> bool:
        """A run without a checkpoint yet writes one at the first of FIRST_CHECKPOINT_S, a tenth of the time budget
        or a tenth of the planned steps (``now_s`` is agreed over the processes, so they all decide alike)."""
        if self.last_ckpt is not None:
            return False
        budget = self.config.time_budget_s
        seconds = min(FIRST_CHECKPOINT_S, budget / 10) if budget else FIRST_CHECKPOINT_S
        return self.step >= max(1, self.total_steps // 10) or now_s >= seconds

    def save_checkpoint(self) -> Path:
        """Every process hands in its random state; the main process writes the checkpoint."""
        from accelerate.utils import gather_object

        path = checkpoint_path(self.out, self.step)
        if not self._weights_finite():  # on every process (the weights are equal), so none waits for a write
            good = last_good_checkpoint(self.out)
            raise NonFiniteLossError(
                f"the weights became non-finite by step {self.step} (last loss {self.last_loss}); not writing {path}; "
                f"last good checkpoint: {good or 'none'}. Lower --lr or keep --grad-clip on, then resume from it.",
                self.step, self.last_loss, good,
            )
        rngs = gather_object([rng_state()]) if self.world > 1 else [rng_state()]
        if self.main:
            state = {
                "step": self.step, "last_loss": self.last_loss, "config": self.config.to_json(),
                "model": {k: v.detach().cpu() for k, v in self.unwrapped.state_dict().items()},
                "optimizer": self.optimizer.state_dict(), "ema": self.ema.state_dict(), "rng": rngs[0],
                "rng_ranks": rngs, "noise_rng": self.noise_gen.get_state(), "elapsed_s": self.elapsed(),
                "num_processes": self.world,
            }
            write_checkpoint(self.out, state, self.config.keep_checkpoints)
        self.acc.wait_for_everyone()
        self.last_ckpt = path
        return path

    def ema_copy(self) -> torch.nn.Module:
        model = copy.deepcopy(self.unwrapped).eval()
        self.ema.copy_to(model.parameters())
        return model

    def preview(self, name: str, frames: int = 0) -> list[Path]:
        """A sample grid (and the denoising GIF) from the EMA weights; main process only."""
        c = self.config
        g = torch.Generator().manual_seed(c.seed + 2)
        sched = sampling_scheduler(self.scheduler, c.preview_scheduler)
        steps = min(c.preview_steps, self.scheduler.config.num_train_timesteps)
        images, traj = generate(self.ema_copy(), sched, c.num_preview, steps, generator=g, keep_trajectory=frames)
        written = [save_grid(images, self.out / "samples" / f"{name}.png")]
        if frames:
            written.append(save_gif(traj, self.out / "samples" / "denoising.gif"))
        return written

    def log(self, loss: float, grad_norm: float | None) -> None:
        c = self.config
        if self.step % c.log_every and self.step != self.total_steps:
            return
        logs = {"loss": loss, "lr": self.optimizer.param_groups[0]["lr"], "ema_decay": self.ema.cur_decay_value or 0.0}
        if grad_norm is not None:
            logs["grad_norm"] = grad_norm
        self.acc.log(logs, step=self.step)
        if self.scalars:
            self.scalars.write(json.dumps({"step": self.step, **logs}) + "\n")
            self.scalars.flush()

    # ------------------------------------------------------------------ the loop
    def fit(self, on_step: Callable[[int, float], None] | None = None) -> bool:
        """Train to the configured length, budget or Ctrl-C; returns whether it was interrupted."""
        from tqdm.auto import tqdm

        c = self.config
        if self.main and self.resumed_from is not None:
            print(f"resuming from step {self.resumed_step}: {self.resumed_from}", file=sys.stderr)
        if self.main:
            (self.out / "logs").mkdir(parents=True, exist_ok=True)
            self.scalars = open(self.out / "logs" / "scalars.jsonl", "a")
        bar = tqdm(total=self.total_steps, initial=self.step, desc="training", unit="step",
                   disable=not (c.progress and self.main))
        interrupted = False
        self.start_time = _clock()
        try:
            with StopFlag() as stop:
                now_s, _ = self._agree(self.elapsed(), False)
                while self.step < self.total_steps:
                    if c.time_budget_s is not None and now_s >= c.time_budget_s:
                        break
                    loss, grad_norm = self.train_step(now_s)
                    bar.update(1)
                    bar.set_postfix(loss=f"{loss:.4f}")
                    self.log(loss, grad_norm)
                    if on_step is not None:
                        on_step(self.step, loss)
                    now_s, stop_now = self._agree(self.elapsed(), stop.requested)
                    if stop_now:
                        interrupted = True
                        break
                    if self.step % c.checkpoint_every == 0 or self._first_checkpoint_due(now_s):
                        self.save_checkpoint()
                    if c.sample_every and self.step % c.sample_every == 0 and self.main:
                        self.outputs += self.preview(f"step-{self.step:08d}")
        except KeyboardInterrupt:
            # A second Ctrl-C (or one outside the handler): keep what is consistent, then let it propagate.
            if self.consistent and self.step > 0 and not self._checkpointed_now():
                self.save_checkpoint()
            raise
        finally:
            bar.close()
            if self.scalars:
                self.scalars.close()
        return interrupted

    def finish(self, interrupted: bool) -> TrainResult:
        """Checkpoint the last step; unless interrupted, the final grid, GIF and pipeline folder (main process)."""
        if self.step > 0 and not self._checkpointed_now():
            self.save_checkpoint()
        result = TrainResult(self.out, self.step, self.last_loss, self.last_ckpt, interrupted=interrupted,
                             outputs=self.outputs, is_main_process=self.main, num_processes=self.world,
                             resumed_from=self.resumed_from, resumed_step=self.resumed_step)
        if not interrupted and self.main:
            written = self.preview("final", frames=self.config.gif_frames)
            result.outputs += written
            result.pipeline_dir = save_pipeline(self.ema_copy(), self.scheduler, self.out / "pipeline",
                                                config=self.config, grid=written[0])
        self.acc.wait_for_everyone()
        # Trackers close; the process group stays up, so one launch can train (or resume) more than once.
        for tracker in self.acc.trackers:
            tracker.finish()
        return result


def train(config: TrainConfig, on_step: Callable[[int, float], None] | None = None) -> TrainResult:
    """Run (or resume) training as configured; returns where everything was written."""
    config.validate()
    config.check_scheduler_names()
    accelerator = make_accelerator(config)
    run = Run(config, accelerator)
    interrupted = run.fit(on_step)
    return run.finish(interrupted)
