"""The ``rlgen`` command: list plugins, train and evaluate agents, and the commands plugins add (``rlgen diffusion``
arrives through the ``rlgen-diffusion`` plugin's ``register_commands`` hook).

Only argument parsing lives here, and nothing here imports torch: the work is imported inside each handler.
"""
from __future__ import annotations

import argparse
import logging
import sys
from typing import Callable, Sequence

import registry
from rlgen_plugins.cli.errors import UsageError, one_line
from rlgen_plugins.cli.plugin_commands import add_plugin_commands
from rlgen_plugins.cli.report import add_report_parser
from rlgen_plugins.cli.tune import add_tune_parser

DESCRIPTION = """\
rlgen: Rainbow DQN for Stable-Baselines3 and a hand-written DDPM for diffusers, extended by plugins.

examples:
  rlgen plugins                                   what is installed, and which plugin provides it
  rlgen train rainbow --env CartPole-v1           train with the shipped preset, evaluate, save into runs/
  rlgen train rainbow --env CartPole-v1 -p learning_rate=3e-4 --timesteps 30000 --output runs/lr3e-4
  rlgen evaluate runs/rainbow-CartPole-v1/model.zip --episodes 20
  rlgen train rainbow --env CartPole-v1 --env Acrobot-v1 --seeds 0-4 --output runs/grid    a grid of 10 runs
  rlgen train dqn --env CartPole-v1 --hyperparams rl_zoo3/hyperparams/dqn.yml    an rl-zoo3 file, as it is
  rlgen diffusion train --steps 2000              train the U-Net on the bundled digits (offline)
"""


def cmd_plugins(args: argparse.Namespace) -> int:
    """Print a table of plugins, their distribution and version, and what each registers."""
    rows = [("PLUGIN", "DISTRIBUTION", "VERSION", "STATUS", "PROVIDES")]
    for info in registry.plugins():
        provides = "; ".join(f"{kind}: {', '.join(names)}" for kind, names in info.provides.items()) or "-"
        status = info.status if info.error is None else f"{info.status} ({info.error})"
        rows.append((info.name, info.distribution or "-", info.version or "-", status, provides))
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths)) + "  " + row[4])
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    """Train an algorithm on an environment and report where the outputs went; or a grid of runs (:mod:`.grid`)."""
    from rlgen_plugins.cli import grid

    if grid.is_grid(args):  # several --env, or --seeds: each run is an ``rlgen train`` process of its own
        return grid.run_grid(args, echo=lambda line: print(line, flush=True))
    if args.jobs is not None or args.ray is not None:
        raise UsageError("--jobs and --ray run a grid: give --seeds, or --env more than once")
    args.env = args.env[0]

    import gymnasium as gym

    from rlgen_plugins.cli import runs as rl_run
    from rlgen_plugins.cli.checkpoints import StoppedBySignal

    target = args.target_reward
    if args.until_solved:
        rl_run.check_env_id(args.env)
        target = gym.spec(args.env).reward_threshold
        if target is None:
            raise UsageError(f"environment {args.env!r} defines no reward_threshold; pass --target-reward instead")
    output = args.output or f"runs/{args.algo}-{args.env.replace('/', '_')}"
    # torch.compile (a preset's torch_compile) logs that a CUDA build of torch found no GPU: noise for a CPU run.
    logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
    try:
        result = rl_run.train(
            args.algo, args.env, timesteps=args.timesteps, seed=args.seed, n_envs=args.n_envs,
            hyperparams_file=args.hyperparams, overrides=rl_run.parse_overrides(args.param), output=output,
            eval_freq=args.eval_freq, eval_episodes=args.eval_episodes, target_reward=target,
            progress_bar=not args.no_progress, verbose=args.verbose, device=args.device, threads=args.threads,
            overwrite=args.overwrite, vec_env=args.vec_env, save_freq=args.save_freq,
            keep_checkpoints=args.keep_checkpoints, resume=args.resume, echo=lambda line: print(line, flush=True))
    except StoppedBySignal as exc:
        import signal

        where = f"wrote {exc.checkpoint}; continue with --resume latest" if exc.checkpoint else "no checkpoint written"
        print(f"stopped by {signal.Signals(exc.exit_code - 128).name}: {where}", file=sys.stderr)
        return exc.exit_code
    except rl_run.TrainingInterrupted as exc:
        print(f"interrupted: the model trained so far is in {exc.output / 'model.zip'}", file=sys.stderr)
        return 130
    except KeyboardInterrupt:
        print("interrupted before training started", file=sys.stderr)
        return 130
    except rl_run.TrainingFailed as exc:  # e.g. a NaN that Rainbow stopped before it reached the weights
        print(f"rlgen: error: {exc} (the run record {exc.output / 'rlgen.json'} says failed)", file=sys.stderr)
        return 1
    mean = "n/a" if result.last_mean_reward is None else f"{result.last_mean_reward:.1f}"
    updates = "" if result.gradient_steps is None else f", {result.gradient_steps} gradient steps"
    print(f"trained {result.timesteps} steps{updates} (seed {result.seed}); last evaluation mean return {mean}")
    if result.gradient_steps == 0:
        print(f"warning: no gradient step was taken in {result.timesteps} steps (the run ended before the "
              f"algorithm's learning_starts): the model is untrained", file=sys.stderr)
    if target is not None:
        print(f"solved (>= {target:g}) at step {result.solved_at}" if result.solved_at is not None
              else f"not solved (>= {target:g}) within {result.timesteps} steps")
    print(f"model:          {result.model_path}")
    if result.best_model_path is not None:
        print(f"best model:     {result.best_model_path}")
    print(f"evaluations:    {result.evaluations_path}")
    print(f"learning curve: {result.curve_path}")
    print(f"run info:       {result.info_path}")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    """Print the mean and std of the return of a saved model."""
    from rlgen_plugins.cli import runs as rl_run

    mean, std = rl_run.evaluate(args.model, args.env, episodes=args.episodes, algo=args.algo, seed=args.seed,
                                deterministic=not args.stochastic, device=args.device)
    print(f"mean return {mean:.2f} +/- {std:.2f} over {args.episodes} episodes")
    return 0


def positive_int(flag: str) -> Callable[[str], int]:
    """An argparse ``type`` for ``flag``: a positive integer, else a one-line ``UsageError`` naming ``flag``."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise UsageError(f"{flag} must be a positive integer, got {text!r}") from None
        if value < 1:
            raise UsageError(f"{flag} must be a positive integer, got {value}")
        return value

    return parse


def seeds_list(text: str) -> list[int]:
    """An argparse ``type`` for ``--seeds`` (``0-4``, ``0,2,5``, ``3``); a one-line ``UsageError`` otherwise."""
    from rlgen_plugins.cli.grid import parse_seeds

    return parse_seeds(text)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rlgen", description=DESCRIPTION,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    plugins = sub.add_parser("plugins", help="list plugins and what each registers")
    plugins.set_defaults(func=cmd_plugins)

    train = sub.add_parser("train", help="train an RL algorithm on a gymnasium environment",
                           description="Train ALGO on ENV with the preset a plugin ships for it (see: rlgen "
                                       "plugins), evaluating deterministically every --eval-freq steps. Writes "
                                       "model.zip, best_model.zip, evaluations.csv, learning_curve.png and rlgen.json "
                                       "into --output. --hyperparams also reads rl-zoo3's files (docs/cli.md).")
    train.add_argument("algo", metavar="ALGO", help="a registered algorithm, e.g. rainbow (see: rlgen plugins)")
    train.add_argument("--env", required=True, action="append", metavar="ENV_ID",
                       help="gymnasium id, e.g. CartPole-v1; repeat it for a grid of runs (docs/cli.md)")
    train.add_argument("--seeds", type=seeds_list, metavar="0-4|0,2,5",
                       help="a grid: one run per seed (and --env), each in OUTPUT/ALGO/ENV/seed_S; rerunning the "
                            "command skips finished runs and resumes interrupted ones")
    train.add_argument("--jobs", type=positive_int("--jobs"), metavar="N",
                       help="a grid's runs at a time, one process each (default: one per CPU core)")
    train.add_argument("--ray", nargs="?", const="local", metavar="ADDRESS",
                       help="run a grid's runs as Ray tasks: on a Ray started here, or on the cluster at ADDRESS "
                            "(e.g. auto, or 10.0.0.5:6379); needs pip install -e \".[ray]\"")
    train.add_argument("--timesteps", type=int, help="environment steps (default: the preset's n_timesteps)")
    train.add_argument("--seed", type=int, help="random seed (default: a fresh one, printed and kept in rlgen.json)")
    train.add_argument("--n-envs", type=positive_int("--n-envs"), metavar="K",
                       help="parallel environments (default: the preset's, else 1)")
    train.add_argument("--vec-env", choices=("dummy", "subproc"), default="dummy",
                       help="run the --n-envs environments in this process (dummy, default) or one process each "
                            "(subproc: SB3's SubprocVecEnv, started with forkserver, else spawn)")
    train.add_argument("--hyperparams", metavar="FILE",
                       help="YAML file of hyperparameters overriding the preset (rlgen's or rl-zoo3's layout)")
    train.add_argument("-p", "--param", action="append", default=[], metavar="KEY=VALUE",
                       help="override one hyperparameter (YAML value), repeatable: -p learning_rate=1e-3")
    train.add_argument("--output", metavar="DIR",
                       help="output folder (default: runs/ALGO-ENV, a grid's runs/grid-ALGO); one that holds files "
                            "becomes DIR_1, DIR_2, ...")
    train.add_argument("--overwrite", action="store_true",
                       help="write into an existing --output folder, replacing the previous run's files")
    train.add_argument("--eval-freq", type=int, default=1000,
                       help="evaluate every N steps (default 1000); 0 or negative: never, as in rl-zoo3")
    train.add_argument("--eval-episodes", type=positive_int("--eval-episodes"), default=10, metavar="N",
                       help="episodes per evaluation (default 10)")
    stop = train.add_mutually_exclusive_group()
    stop.add_argument("--until-solved", action="store_true",
                      help="stop once the evaluation reaches the environment's reward_threshold")
    stop.add_argument("--target-reward", type=float, help="stop once the evaluation mean reaches this return")
    train.add_argument("--save-freq", type=positive_int("--save-freq"), metavar="N",
                       help="write a resumable checkpoint into OUTPUT/checkpoints/ every N env steps; "
                            "SIGINT / SIGTERM then write one and exit 130 / 143")
    train.add_argument("--keep-checkpoints", type=positive_int("--keep-checkpoints"), default=2, metavar="K",
                       help="keep the newest K checkpoints (default 2)")
    train.add_argument("--resume", metavar="latest|PATH",
                       help="continue the run in --output (default runs/ALGO-ENV) from its newest checkpoint, or "
                            "from checkpoint PATH, to its planned length; give the same settings")
    train.add_argument("--device", default="auto", help="torch device (default auto)")
    train.add_argument("--threads", type=int, default=1,
                       help="torch CPU threads (default 1, fastest for small policies; 0 = torch's default)")
    train.add_argument("--no-progress", action="store_true", help="no progress bar")
    train.add_argument("-v", "--verbose", type=int, default=0, choices=(0, 1, 2), help="SB3 verbosity")
    train.set_defaults(func=cmd_train)

    evaluate = sub.add_parser("evaluate", help="mean and std of a saved model's return")
    evaluate.add_argument("model", metavar="MODEL_ZIP",
                          help="a model saved by rlgen train (or SB3's save), or a run folder (its model.zip)")
    evaluate.add_argument("--env", metavar="ENV_ID", help="gymnasium id (default: read from rlgen.json beside it)")
    evaluate.add_argument("--episodes", type=positive_int("--episodes"), default=10, metavar="N",
                          help="episodes (default 10)")
    evaluate.add_argument("--algo", help="algorithm that saved it (default: read from rlgen.json beside it)")
    evaluate.add_argument("--seed", type=int, default=0, help="environment seed (default 0)")
    evaluate.add_argument("--stochastic", action="store_true", help="sample actions instead of the greedy ones")
    evaluate.add_argument("--device", default="auto", help="torch device (default auto)")
    evaluate.set_defaults(func=cmd_evaluate)

    add_tune_parser(sub)  # rlgen tune: Optuna studies (rlgen_plugins/cli/tune.py)
    add_report_parser(sub)  # rlgen report: curves and rliable aggregates (rlgen_plugins/cli/report.py)
    add_plugin_commands(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``rlgen`` console script; returns the exit status."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)  # an option's type (e.g. --scheduler) may raise UsageError
        if not getattr(args, "func", None):
            parser.print_help()
            return 2
        return int(args.func(args) or 0)
    except UsageError as exc:
        print(f"rlgen: error: {one_line(exc)}", file=sys.stderr)
        return 2
    except registry.RegistryError as exc:
        print(f"rlgen: error: {one_line(exc)}", file=sys.stderr)
        return 1
    except OSError as exc:  # a folder or file that cannot be written or read: name it, no traceback
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"rlgen: error: {where}{one_line(exc.strerror or exc)}", file=sys.stderr)
        return 1

