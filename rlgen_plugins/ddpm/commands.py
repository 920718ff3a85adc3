"""`rlgen diffusion train | sample | evaluate`: the diffusion model from the command line.

Nothing heavy is imported here at module level (torch, diffusers and datasets load inside the handlers), so
`rlgen --help` stays fast and torch-free. Handlers return the exit status; bad input raises `UsageError`.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from rlgen_plugins.cli.errors import UsageError

SCHEDULER_HELP = "ddpm | ddim | dpm-solver++ (or a scheduler registered by a plugin)"
DEFAULT_STEPS = {"ddim": 50, "dpm-solver++": 20}
EXIT_FAULT, EXIT_INTERRUPTED = 1, 130


def add_diffusion_commands(subparsers: argparse._SubParsersAction) -> None:
    """Add the `diffusion` command with its `train`, `sample` and `evaluate` subcommands."""
    parser = subparsers.add_parser("diffusion", help="train, sample and evaluate the DDPM image model",
                                   description="Train, sample and evaluate the hand-written DDPM.")
    parser.set_defaults(func=_missing_subcommand)
    sub = parser.add_subparsers(dest="diffusion_command", metavar="{train,sample,evaluate}")

    t = sub.add_parser("train", help="train on images (offline default: sklearn's digits)",
                       description="Train a DDPM; writes checkpoints, sample grids, TensorBoard logs and a "
                                   "save_pretrained pipeline under --output.")
    t.add_argument("--dataset", help="hub name, local image folder, or 'digits' (offline default)")
    t.add_argument("--image-size", type=int, help="square image side (default 16)")
    t.add_argument("--channels", type=int, choices=(1, 3), help="1 grayscale, 3 RGB (default 1)")
    length = t.add_mutually_exclusive_group()
    length.add_argument("--steps", type=int, help="optimizer steps (default 2000)")
    length.add_argument("--epochs", type=float, help="passes over the training images")
    t.add_argument("--time-budget", type=float, metavar="SECONDS", help="stop after this much training time")
    t.add_argument("--batch-size", type=int, help="images per step (default 64)")
    t.add_argument("--lr", type=float, help="AdamW learning rate (default 1e-3)")
    t.add_argument("--lr-schedule", choices=("constant", "cosine", "linear"),
                   help="learning rate after warm-up: constant, or decayed to lr x --lr-end-ratio by the end of "
                        "--steps/--epochs or of --time-budget, whichever comes first (default constant)")
    t.add_argument("--lr-end-ratio", type=float, help="final lr as a fraction of --lr for cosine/linear (default 0)")
    t.add_argument("--warmup-steps", type=int, help="linear learning-rate warm-up steps (default 100)")
    t.add_argument("--ema-decay", type=float, help="largest EMA decay (default 0.999)")
    t.add_argument("--ema-warmup", action="store_true", default=None,
                   help="EMA decay 1 - (1 + step / --ema-inv-gamma) ** -(--ema-power), capped at --ema-decay")
    t.add_argument("--ema-power", type=float, help="EMA warm-up power (default 2/3)")
    t.add_argument("--ema-inv-gamma", type=float, help="EMA warm-up inverse gamma (default 1)")
    t.add_argument("--schedule", help="beta schedule: linear, cosine, quadratic, sigmoid (default linear)")
    t.add_argument("--prediction-type", choices=("epsilon", "v_prediction", "sample"), help="training target")
    t.add_argument("--loss", choices=("huber", "l1", "l2"), help="loss on the target (default huber)")
    t.add_argument("--timesteps", type=int, help="diffusion timesteps (default 1000)")
    t.add_argument("--dim", type=int, help="U-Net base width (default 32)")
    t.add_argument("--dim-mults", help="comma-separated width multipliers (default 1,2,2)")
    t.add_argument("--random-flip", action="store_true", default=None, help="random horizontal flips")
    t.add_argument("--seed", type=int, help="seed (default 0)")
    t.add_argument("--mixed-precision", choices=("no", "fp16", "bf16"), help="accelerate mixed precision")
    t.add_argument("--checkpoint-every", type=int, help="steps between checkpoints (default 500)")
    t.add_argument("--sample-every", type=int, help="steps between sample grids, 0 = never (default 1000)")
    t.add_argument("--output", default="runs/diffusion", help="run folder (default runs/diffusion)")
    t.add_argument("--resume", metavar="latest|CHECKPOINT", help="continue the run in --output")
    t.add_argument("--no-progress", action="store_true", help="no progress bar")
    t.set_defaults(func=_train)

    s = sub.add_parser("sample", help="generate a PNG grid from a trained model")
    s.add_argument("model_dir", metavar="MODEL_DIR", help="run folder or its pipeline/ folder")
    s.add_argument("--scheduler", default="dpm-solver++", help=f"{SCHEDULER_HELP} (default dpm-solver++)")
    s.add_argument("--steps", type=int, help="inference steps (default: ddpm all, ddim 50, dpm-solver++ 20)")
    s.add_argument("--n", type=int, default=64, help="number of images (default 64)")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--gif", action="store_true", help="also write the denoising trajectory as a GIF")
    s.add_argument("--output", help="PNG path (default MODEL_DIR/samples/sample-<scheduler>-<steps>.png)")
    s.add_argument("--no-progress", action="store_true")
    s.set_defaults(func=_sample)

    e = sub.add_parser("evaluate", help="domain FID/KID of samples next to the real-vs-real floor")
    e.add_argument("model_dir", metavar="MODEL_DIR", help="run folder or its pipeline/ folder")
    e.add_argument("--n", type=int, default=500, help="samples and real images per set (default 500)")
    e.add_argument("--scheduler", default="dpm-solver++", help=f"{SCHEDULER_HELP} (default dpm-solver++)")
    e.add_argument("--steps", type=int, help="inference steps (default: ddpm all, ddim 50, dpm-solver++ 20)")
    e.add_argument("--seed", type=int, default=0)
    e.add_argument("--dataset", help="real images to compare with (default: the run's training data)")
    e.add_argument("--json", action="store_true", help="print the report as one JSON line")
    e.add_argument("--no-progress", action="store_true")
    e.set_defaults(func=_evaluate)


def _missing_subcommand(args: argparse.Namespace) -> int:
    raise UsageError("choose a diffusion command: train, sample or evaluate (see rlgen diffusion --help)")


# ----------------------------------------------------------------------------- train
_TRAIN_OPTIONS = {  # argparse dest -> TrainConfig field
    "dataset": "dataset", "image_size": "image_size", "channels": "channels", "steps": "steps", "epochs": "epochs",
    "time_budget": "time_budget_s", "batch_size": "batch_size", "lr": "lr", "schedule": "beta_schedule",
    "prediction_type": "prediction_type", "loss": "loss", "timesteps": "num_train_timesteps", "dim": "dim",
    "dim_mults": "dim_mults", "random_flip": "random_flip", "seed": "seed", "mixed_precision": "mixed_precision",
    "checkpoint_every": "checkpoint_every", "sample_every": "sample_every", "lr_schedule": "lr_schedule",
    "lr_end_ratio": "lr_end_ratio", "warmup_steps": "warmup_steps", "ema_decay": "ema_decay",
    "ema_warmup": "ema_warmup", "ema_power": "ema_power", "ema_inv_gamma": "ema_inv_gamma",
}


def build_train_config(args: argparse.Namespace) -> Any:
    """TrainConfig from the options given; a resumed run starts from its saved settings."""
    from diffusion.train import TrainConfig, read_run_config

    base = TrainConfig()
    if args.resume:
        saved = read_run_config(args.output)
        if saved is None:
            raise UsageError(f"--resume: {args.output} is not a training run (no training_config.json)")
        base = saved
    values = base.to_json()
    for dest, name in _TRAIN_OPTIONS.items():
        value = getattr(args, dest, None)
        if value is None:
            continue
        if dest == "dim_mults":
            try:
                value = [int(v) for v in str(value).split(",") if v.strip()]
            except ValueError:
                raise UsageError(f"--dim-mults must be comma-separated integers, got {args.dim_mults!r}") from None
        values[name] = value
    if args.steps is not None:
        values["epochs"] = None
    if args.epochs is not None:
        values["steps"] = None
    values.update(output_dir=args.output, resume=args.resume, progress=not args.no_progress)
    try:
        return TrainConfig.from_json(values)  # validates
    except ValueError as exc:
        raise UsageError(str(exc)) from None


def _train(args: argparse.Namespace) -> int:
    from diffusion.data import DataError
    from diffusion.train import CheckpointError, NonFiniteLossError, train

    config = build_train_config(args)
    try:
        result = train(config)
    except DataError as exc:
        raise UsageError(str(exc)) from None
    except (CheckpointError, NonFiniteLossError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAULT
    except KeyboardInterrupt:
        print(f"\naborted; checkpoints are in {Path(config.output_dir) / 'checkpoints'}", file=sys.stderr)
        return EXIT_INTERRUPTED
    except ValueError as exc:  # bad model/scheduler settings (e.g. an unknown beta schedule)
        raise UsageError(str(exc)) from None
    if result.interrupted:
        print(f"interrupted at step {result.step}; checkpoint {result.checkpoint}", file=sys.stderr)
        print(f"continue with: rlgen diffusion train --output {config.output_dir} --resume latest", file=sys.stderr)
        return EXIT_INTERRUPTED
    print(f"trained {result.step} steps, last loss {result.last_loss:.4f}" if result.last_loss is not None
          else f"trained {result.step} steps")
    for path in [result.pipeline_dir, result.checkpoint, *result.outputs[-2:], Path(config.output_dir) / "logs"]:
        if path is not None:
            print(path)
    return 0


# ----------------------------------------------------------------------------- sample / evaluate
def _scheduler_and_steps(name: str, steps: int | None, pipe: Any) -> tuple[Any, int]:
    from diffusion.sampling import UnknownSchedulerError, sampling_scheduler

    try:
        scheduler = sampling_scheduler(pipe.scheduler, name)
    except UnknownSchedulerError as exc:
        raise UsageError(str(exc)) from None
    total = pipe.scheduler.config.num_train_timesteps
    steps = steps if steps is not None else DEFAULT_STEPS.get(name, total)
    if not 1 <= steps <= total:
        raise UsageError(f"--steps must be between 1 and {total} (the model's training timesteps), got {steps}")
    return scheduler, steps


def _check_scheduler_name(name: str) -> None:
    if name == "ddpm":
        return
    from diffusion.sampling import UnknownSchedulerError, _scheduler_class

    try:
        _scheduler_class(name, None)
    except UnknownSchedulerError as exc:
        raise UsageError(str(exc)) from None


def _load(model_dir: str) -> Any:
    from diffusion.train import load_pipeline

    try:
        return load_pipeline(model_dir)
    except FileNotFoundError as exc:
        raise UsageError(str(exc)) from None


def _sample(args: argparse.Namespace) -> int:
    _check_scheduler_name(args.scheduler)
    if args.n < 1:
        raise UsageError(f"--n must be at least 1, got {args.n}")
    import torch

    from diffusion.sampling import generate, save_gif, save_grid

    pipe = _load(args.model_dir)
    scheduler, steps = _scheduler_and_steps(args.scheduler, args.steps, pipe)
    out = Path(args.output) if args.output else _run_folder(args.model_dir) / "samples" / f"sample-{args.scheduler}-{steps}.png"
    g = torch.Generator().manual_seed(args.seed)
    images, frames = generate(pipe.unet, scheduler, args.n, steps, generator=g, keep_trajectory=24 if args.gif else 0,
                              progress=not args.no_progress)
    print(save_grid(images, out))
    if args.gif:
        print(save_gif(frames, out.with_suffix(".gif")))
    return 0


def _run_folder(model_dir: str) -> Path:
    path = Path(model_dir)
    return path.parent if path.name == "pipeline" else path


def _evaluate(args: argparse.Namespace) -> int:
    _check_scheduler_name(args.scheduler)
    if args.n < 2:
        raise UsageError(f"--n must be at least 2, got {args.n}")
    from diffusion.data import DataError
    from diffusion.evaluate import evaluate_model, format_report

    pipe = _load(args.model_dir)
    _, steps = _scheduler_and_steps(args.scheduler, args.steps, pipe)
    try:
        report = evaluate_model(args.model_dir, n=args.n, scheduler=args.scheduler, steps=steps, seed=args.seed,
                                dataset=args.dataset, progress=not args.no_progress, pipeline=pipe)
    except DataError as exc:
        raise UsageError(str(exc)) from None
    out = _run_folder(args.model_dir) / f"evaluation-{args.scheduler}-{steps}.json"
    from rlgen_plugins.cli.files import write_text_atomically

    write_text_atomically(out, json.dumps(report.to_json(), indent=2))
    print(json.dumps(report.to_json()) if args.json else format_report(report))
    print(out)
    return 0
