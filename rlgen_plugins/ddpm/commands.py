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

import registry
from rlgen_plugins.cli.errors import UsageError

DEFAULT_STEPS = {"ddim": 50, "dpm-solver++": 20}
EXIT_FAULT, EXIT_INTERRUPTED = 1, 130


def scheduler_name(name: str) -> str:
    """``--scheduler``'s type: a name any plugin registered, else a usage error listing them all (imports nothing)."""
    try:
        registry.default_registry().check("schedulers", name)
    except registry.UnknownComponentError as exc:
        raise UsageError(f"--scheduler: {exc}") from None
    return name


def add_diffusion_commands(subparsers: argparse._SubParsersAction) -> None:
    """Add the `diffusion` command with its `train`, `sample` and `evaluate` subcommands."""
    scheduler_help = f"a registered scheduler: {', '.join(registry.names('schedulers'))} (default dpm-solver++)"
    parser = subparsers.add_parser("diffusion", help="train, sample and evaluate the DDPM image model",
                                   description="Train, sample and evaluate the hand-written DDPM.")
    parser.set_defaults(func=_missing_subcommand)
    sub = parser.add_subparsers(dest="diffusion_command", metavar="{train,sample,evaluate}")

    t = sub.add_parser("train", help="train on images (offline default: sklearn's digits)",
                       description="Train a DDPM; writes checkpoints, sample grids, TensorBoard logs and a "
                                   "self-contained diffusers pipeline folder under --output. Several processes: "
                                   "accelerate launch --multi_gpu --num_processes N (on CPUs with "
                                   "ACCELERATE_USE_CPU=True).")
    add_train_options(t)
    t.add_argument("--no-progress", action="store_true", help="no progress bar")
    t.set_defaults(func=_train)

    s = sub.add_parser("sample", help="generate a PNG grid from a trained model")
    s.add_argument("model_dir", metavar="MODEL_DIR", help="run folder or its pipeline/ folder")
    s.add_argument("--scheduler", default="dpm-solver++", type=scheduler_name, help=scheduler_help)
    s.add_argument("--steps", type=int, help="inference steps (default: ddpm all, ddim 50, dpm-solver++ 20)")
    s.add_argument("--n", type=int, default=64, help="number of images (default 64)")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--gif", action="store_true", help="also write the denoising trajectory as a GIF")
    where = s.add_mutually_exclusive_group()
    where.add_argument("--output", help="grid PNG path (default MODEL_DIR/samples/sample-<scheduler>-<steps>.png)")
    where.add_argument("--output-dir", "--output_dir", dest="output_dir",
                       help="folder for the grid (grid.png) and every image as its own PNG (00000.png, ...)")
    s.add_argument("--no-progress", action="store_true")
    s.set_defaults(func=_sample)

    e = sub.add_parser("evaluate", help="domain FID/KID of samples next to the real-vs-real floor")
    e.add_argument("model_dir", metavar="MODEL_DIR", help="run folder or its pipeline/ folder")
    e.add_argument("--n", type=int, default=500, help="samples and real images per set (default 500)")
    e.add_argument("--scheduler", default="dpm-solver++", type=scheduler_name, help=scheduler_help)
    e.add_argument("--steps", type=int, help="inference steps (default: ddpm all, ddim 50, dpm-solver++ 20)")
    e.add_argument("--seed", type=int, default=0)
    e.add_argument("--dataset", help="real images to compare with (default: the run's training data)")
    e.add_argument("--json", action="store_true", help="print the report as one JSON line")
    e.add_argument("--no-progress", action="store_true")
    e.set_defaults(func=_evaluate)


def _missing_subcommand(args: argparse.Namespace) -> int:
    raise UsageError("choose a diffusion command: train, sample or evaluate (see rlgen diffusion --help)")


# ----------------------------------------------------------------------------- train
_LENGTH = ("steps", "epochs")  # mutually exclusive


def _option_type(annotation: str) -> Any:
    kind = annotation.split("|")[0].strip()
    return {"int": int, "float": float}.get(kind, str)


def add_train_options(parser: argparse.ArgumentParser) -> None:
    """One option per `TrainConfig` field with flags in its metadata; defaults and choices come from the dataclass."""
    import dataclasses

    from diffusion.config import TrainConfig

    defaults = TrainConfig()
    length = parser.add_mutually_exclusive_group()
    for f in dataclasses.fields(TrainConfig):
        meta = f.metadata
        if not meta.get("cli", True) or not meta.get("flags"):
            continue
        default = getattr(defaults, f.name)
        shown = ",".join(map(str, default)) if isinstance(default, tuple) else default
        help_text = meta["help"] + ("" if default is None else f" (default {shown})")
        target = length if f.name in _LENGTH else parser
        kwargs: dict[str, Any] = {"dest": f.name, "default": None, "help": help_text}
        if f.type == "bool":
            kwargs["action"] = argparse.BooleanOptionalAction
        else:
            kwargs["type"] = _option_type(f.type) if not str(f.type).startswith("tuple") else str
            if meta.get("choices"):
                kwargs["choices"] = meta["choices"]
        if f.name == "resume":
            kwargs["metavar"] = "latest|CHECKPOINT"
        target.add_argument(*meta["flags"], **kwargs)


def build_train_config(args: argparse.Namespace) -> Any:
    """TrainConfig from the options given; a resumed run starts from its saved settings."""
    import dataclasses

    from diffusion.checkpoints import read_run_config
    from diffusion.config import TrainConfig

    output = args.output_dir or TrainConfig().output_dir
    base = TrainConfig()
    if args.resume:
        saved = read_run_config(output)
        if saved is None:
            raise UsageError(f"--resume: {output} is not a training run (no training_config.json)")
        base = saved
    values = base.to_json()
    for f in dataclasses.fields(TrainConfig):
        value = getattr(args, f.name, None)
        if value is None:
            continue
        if f.name == "dim_mults":
            try:
                value = [int(v) for v in str(value).split(",") if v.strip()]
            except ValueError:
                raise UsageError(f"--dim-mults must be comma-separated integers, got {args.dim_mults!r}") from None
        values[f.name] = value
    if args.steps is not None:
        values["epochs"] = None
    if args.epochs is not None:
        values["steps"] = None
    values.update(output_dir=output, resume=args.resume, progress=not args.no_progress)
    try:
        config = TrainConfig.from_json(values)  # validates; train() checks the scheduler names
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    return config


def _train(args: argparse.Namespace) -> int:
    from diffusion.data import DataError
    from diffusion import train as dtrain
    from diffusion.checkpoints import CheckpointError, LaunchError, NonFiniteLossError
    from diffusion.pipeline import NonFiniteSampleError

    config = build_train_config(args)
    try:
        result = dtrain.train(config)
    except (DataError, LaunchError) as exc:
        raise UsageError(str(exc)) from None
    except (CheckpointError, NonFiniteLossError, NonFiniteSampleError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAULT
    except KeyboardInterrupt:
        print(f"\naborted; checkpoints are in {Path(config.output_dir) / 'checkpoints'}", file=sys.stderr)
        return EXIT_INTERRUPTED
    except ValueError as exc:  # bad model/scheduler settings (e.g. an unknown beta schedule)
        raise UsageError(str(exc)) from None
    if not result.is_main_process:
        return 0  # the main process reports what it wrote
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


def _load(model_dir: str) -> Any:
    """The pipeline of MODEL_DIR, its weights checked finite; any problem with the folder is a usage error."""
    from diffusion.export import PipelineFolderError, load_pipeline
    from diffusion.pipeline import NonFiniteSampleError, check_finite_weights

    try:
        pipe = load_pipeline(model_dir)
        check_finite_weights(pipe.unet)
    except (FileNotFoundError, PipelineFolderError) as exc:
        raise UsageError(str(exc)) from None
    except NonFiniteSampleError as exc:
        raise UsageError(f"{model_dir}: {exc}") from None
    return pipe


def _sample(args: argparse.Namespace) -> int:
    if args.n < 1:
        raise UsageError(f"--n must be at least 1, got {args.n}")
    import torch

    from diffusion.sampling import generate, save_gif, save_grid, save_images

    pipe = _load(args.model_dir)
    scheduler, steps = _scheduler_and_steps(args.scheduler, args.steps, pipe)
    if args.output_dir:
        out = Path(args.output_dir) / "grid.png"
    elif args.output:
        out = Path(args.output)
    else:
        out = _run_folder(args.model_dir) / "samples" / f"sample-{args.scheduler}-{steps}.png"
    from diffusion.pipeline import NonFiniteSampleError

    g = torch.Generator().manual_seed(args.seed)
    try:
        images, frames = generate(pipe.unet, scheduler, args.n, steps, generator=g,
                                  keep_trajectory=24 if args.gif else 0, progress=not args.no_progress)
    except NonFiniteSampleError as exc:  # nothing is written
        raise UsageError(str(exc)) from None
    print(save_grid(images, out))
    if args.output_dir:
        written = save_images(images, args.output_dir)
        print(f"{len(written)} images: {written[0].name} .. {written[-1].name} in {args.output_dir}")
    if args.gif:
        print(save_gif(frames, out.with_suffix(".gif")))
    return 0


def _run_folder(model_dir: str) -> Path:
    path = Path(model_dir)
    return path.parent if path.name == "pipeline" else path


def _evaluate(args: argparse.Namespace) -> int:
    if args.n < 2:
        raise UsageError(f"--n must be at least 2, got {args.n}")
    from diffusion.data import DataError
    from diffusion.evaluate import evaluate_model, format_report
    from diffusion.pipeline import NonFiniteSampleError

    pipe = _load(args.model_dir)
    _, steps = _scheduler_and_steps(args.scheduler, args.steps, pipe)
    try:
        report = evaluate_model(args.model_dir, n=args.n, scheduler=args.scheduler, steps=steps, seed=args.seed,
                                dataset=args.dataset, progress=not args.no_progress, pipeline=pipe)
    except (DataError, NonFiniteSampleError) as exc:
        raise UsageError(str(exc)) from None
    out = _run_folder(args.model_dir) / f"evaluation-{args.scheduler}-{steps}.json"
    from diffusion.checkpoints import read_run_config
    from diffusion.export import update_model_card
    from diffusion.files import write_text_atomically

    write_text_atomically(out, json.dumps(report.to_json(), indent=2))
    update_model_card(args.model_dir, read_run_config(args.model_dir), report.to_json(), pipe=pipe)
    print(json.dumps(report.to_json()) if args.json else format_report(report))
    print(out)
    return 0
