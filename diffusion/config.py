"""`TrainConfig`: the one description of a training run, shared by the Python API, the CLI and the run folder.

Each field carries its command-line flags and help in ``metadata`` (``rlgen diffusion train`` builds its options
from it), its default here, and its accepted values in `validate`; the run folder saves it as training_config.json.
Flags in diffusers' ``train_unconditional.py`` spelling (``--resolution``, ``--checkpointing_steps``, ...) are
accepted beside rlgen's own.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

LOSSES = ("huber", "l1", "l2")
PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")
LR_SCHEDULES = ("constant", "cosine", "linear")
MIXED_PRECISION = ("no", "fp16", "bf16")
CHANNELS = (1, 3)
CONFIG_FILE = "training_config.json"
# Fields that define the run; a resumed run must match the checkpoint on every one of them.
RUN_FIELDS = (
    "dataset", "image_size", "channels", "random_flip", "center_crop", "holdout_fraction", "split_seed",
    "batch_size", "gradient_accumulation_steps", "beta_schedule", "num_train_timesteps", "prediction_type", "loss",
    "dim", "dim_mults", "resnet_block_groups", "attention_heads", "attention_head_dim", "seed",
)


def _opt(help: str, *flags: str, choices: tuple | None = None, cli: bool = True) -> Any:
    return {"help": help, "flags": flags, "choices": choices, "cli": cli}


def _f(default: Any, help: str, *flags: str, choices: tuple | None = None, cli: bool = True) -> Any:
    if isinstance(default, tuple):
        return field(default_factory=lambda: default, metadata=_opt(help, *flags, choices=choices, cli=cli))
    return field(default=default, metadata=_opt(help, *flags, choices=choices, cli=cli))


@dataclass
class TrainConfig:
    """Everything that defines a training run (saved as training_config.json next to the outputs)."""

    output_dir: str = _f("runs/diffusion", "run folder", "--output", "--output_dir")
    dataset: str = _f("digits", "hub name, local image folder, or 'digits' (offline default)", "--dataset")
    image_size: int = _f(16, "square image side", "--image-size", "--resolution")
    channels: int = _f(1, "1 grayscale, 3 RGB", "--channels", choices=CHANNELS)
    random_flip: bool = _f(False, "random horizontal flips", "--random-flip", "--random_flip")
    center_crop: bool = _f(True, "cut the square from the centre (--no-center_crop: at random)", "--center_crop")
    holdout_fraction: float = _f(0.3, "images kept out of training for evaluation's real-vs-real floor",
                                 "--holdout-fraction")
    split_seed: int = _f(0, "seed of the held-out split", "--split-seed")
    steps: int | None = _f(None, "optimizer steps (default 2000; or give --epochs)", "--steps", "--max_train_steps")
    epochs: float | None = _f(None, "passes over the training images", "--epochs", "--num_epochs")
    # Counted over the whole run: a resumed run gets what is left of it (the checkpoint stores the time spent).
    time_budget_s: float | None = _f(None, "stop after this much training time (seconds)", "--time-budget")
    batch_size: int = _f(64, "images per step and process", "--batch-size", "--train_batch_size")
    gradient_accumulation_steps: int = _f(1, "micro-batches per optimizer step", "--gradient_accumulation_steps")
    lr: float = _f(1e-3, "AdamW learning rate", "--lr", "--learning_rate")
    warmup_steps: int = _f(100, "linear learning-rate warm-up steps", "--warmup-steps", "--lr_warmup_steps")
    # After warm-up: constant, or decayed to lr * lr_end_ratio by the end of the steps or of the time budget,
    # whichever progress is further along.
    lr_schedule: str = _f("constant", "learning rate after warm-up", "--lr-schedule", choices=LR_SCHEDULES)
    lr_end_ratio: float = _f(0.0, "final lr as a fraction of --lr for cosine/linear", "--lr-end-ratio")
    weight_decay: float = _f(0.0, "AdamW weight decay", "--weight-decay", "--adam_weight_decay")
    grad_clip: float = _f(1.0, "gradient norm clip, 0 = none", "--grad-clip", "--max_grad_norm")
    loss: str = _f("huber", "loss on the target", "--loss", choices=LOSSES)
    prediction_type: str = _f("epsilon", "training target", "--prediction-type", "--prediction_type",
                              choices=PREDICTION_TYPES)
    beta_schedule: str = _f("linear", "beta schedule: linear, cosine, quadratic, sigmoid, ...", "--schedule",
                            "--ddpm_beta_schedule")
    num_train_timesteps: int = _f(1000, "diffusion timesteps", "--timesteps", "--ddpm_num_steps")
    dim: int = _f(32, "U-Net base width", "--dim")
    dim_mults: tuple[int, ...] = _f((1, 2, 2), "comma-separated width multipliers", "--dim-mults")
    resnet_block_groups: int = _f(4, "GroupNorm groups", "--resnet-block-groups")
    attention_heads: int = _f(2, "attention heads", "--attention-heads")
    attention_head_dim: int = _f(16, "width per attention head", "--attention-head-dim")
    gradient_checkpointing: bool = _f(False, "recompute activations in the backward pass (less memory)",
                                      "--gradient_checkpointing")
    ema_decay: float = _f(0.999, "largest EMA decay", "--ema-decay", "--ema_max_decay")
    # diffusers' EMAModel warm-up: decay at optimizer step k is min(ema_decay, 1 - (1 + k / ema_inv_gamma) **
    # -ema_power); without it, EMAModel's default min(ema_decay, (1 + k) / (10 + k)).
    ema_warmup: bool = _f(False, "EMA decay 1 - (1 + step / inv_gamma) ** -power, capped at --ema-decay",
                          "--ema-warmup")
    ema_inv_gamma: float = _f(1.0, "EMA warm-up inverse gamma", "--ema-inv-gamma", "--ema_inv_gamma")
    ema_power: float = _f(2 / 3, "EMA warm-up power", "--ema-power", "--ema_power")
    seed: int = _f(0, "seed", "--seed")
    mixed_precision: str = _f("no", "accelerate mixed precision", "--mixed-precision", "--mixed_precision",
                              choices=MIXED_PRECISION)
    dataloader_num_workers: int = _f(0, "data-loading worker processes (images decoded per batch)",
                                     "--dataloader_num_workers")
    checkpoint_every: int = _f(500, "steps between checkpoints (a new run's first comes at a tenth of "
                                         "the steps or after 10 minutes, if earlier)", "--checkpoint-every", "--checkpointing_steps")
    keep_checkpoints: int = _f(2, "checkpoints kept (oldest removed first)", "--keep-checkpoints",
                               "--checkpoints_total_limit")
    sample_every: int = _f(1000, "steps between sample grids, 0 = never", "--sample-every", "--save_images_steps")
    num_preview: int = _f(36, "images per sample grid", "--num-preview")
    preview_scheduler: str = _f("ddim", "scheduler of the sample grids (a registered name)", "--preview-scheduler")
    preview_steps: int = _f(50, "inference steps of the sample grids", "--preview-steps")
    gif_frames: int = _f(24, "frames of the final denoising GIF", "--gif-frames")
    log_every: int = _f(20, "steps between logged scalars", "--log-every", "--logging_steps")
    tensorboard: bool = _f(True, "TensorBoard scalars", cli=False)
    progress: bool = _f(True, "progress bar", cli=False)
    resume: str | None = _f(None, "continue the run in --output from 'latest' or a checkpoint file", "--resume",
                            "--resume_from_checkpoint")

    def __post_init__(self) -> None:
        self.dim_mults = tuple(self.dim_mults)
        self.validate()

    def validate(self) -> None:
        """Reject bad values with one message each naming the field and what it accepts (run at construction)."""
        for f in dataclasses.fields(self):
            choices = f.metadata.get("choices")
            if choices and getattr(self, f.name) not in choices:
                raise ValueError(f"{f.name}={getattr(self, f.name)!r} is not supported; choose one of "
                                 f"{', '.join(str(c) for c in choices)}")
        if self.steps is not None and self.epochs is not None:
            raise ValueError("give either steps or epochs, not both")
        for f in dataclasses.fields(self):  # NaN passes every comparison below: refuse it (and inf) first
            value = getattr(self, f.name)
            if f.type.startswith(("int", "float")) and value is not None:
                if isinstance(value, bool) or not isinstance(value, (int, float)):
                    raise ValueError(f"{f.name} must be a number, got {value!r}")
                if not math.isfinite(value):
                    raise ValueError(f"{f.name} must be a finite number, got {value!r}")
                if f.type.startswith("int") and value != int(value):
                    raise ValueError(f"{f.name} must be a whole number, got {value!r}")
        if not 0.0 <= self.holdout_fraction < 1.0:
            raise ValueError(f"holdout_fraction must be in [0, 1), got {self.holdout_fraction}")
        if not self.dim_mults or not all(isinstance(m, int) and not isinstance(m, bool) and m >= 1
                                         for m in self.dim_mults):
            raise ValueError(f"dim_mults must be a non-empty list of positive ints, got {list(self.dim_mults)}")
        for name in ("image_size", "batch_size", "num_train_timesteps", "checkpoint_every", "log_every",
                     "gradient_accumulation_steps", "keep_checkpoints", "preview_steps", "num_preview", "dim",
                     "resnet_block_groups", "attention_heads", "attention_head_dim"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("warmup_steps", "dataloader_num_workers", "sample_every", "gif_frames", "weight_decay",
                     "grad_clip"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.steps is not None and self.steps < 1:
            raise ValueError(f"steps must be >= 1, got {self.steps}")
        if self.epochs is not None and self.epochs <= 0:
            raise ValueError(f"epochs must be > 0, got {self.epochs}")
        if self.lr <= 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if not 0.0 <= self.lr_end_ratio <= 1.0:
            raise ValueError(f"lr_end_ratio must be in [0, 1], got {self.lr_end_ratio}")
        if self.time_budget_s is not None and self.time_budget_s <= 0:
            raise ValueError(f"time_budget_s must be > 0, got {self.time_budget_s}")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"ema_decay must be in [0, 1), got {self.ema_decay}")
        if self.ema_inv_gamma <= 0:
            raise ValueError(f"ema_inv_gamma must be > 0, got {self.ema_inv_gamma}")
        if self.ema_power <= 0:
            raise ValueError(f"ema_power must be > 0, got {self.ema_power}")

    def check_scheduler_names(self) -> None:
        """``preview_scheduler`` must be a scheduler registered by name (the registry's check, which lists them)."""
        import registry

        try:
            registry.default_registry().check("schedulers", self.preview_scheduler)
        except registry.UnknownComponentError as exc:
            raise ValueError(f"preview_scheduler={self.preview_scheduler!r} is not registered: {exc}") from None

    def to_json(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["dim_mults"] = list(self.dim_mults)
        return d

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "TrainConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})
