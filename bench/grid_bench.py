"""What the grid benchmarks (``bench/minatar.py``, ``bench/atari100k.py``) share: their common flags, checked before
anything runs; a random policy's scores on the evaluation seeds; ``rlgen`` as a subprocess; and the report-and-summary
step that ends each of them."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from rlgen_plugins.cli.app import positive_int
from rlgen_plugins.cli.envs import check_env_id
from rlgen_plugins.cli.errors import UsageError
from rlgen_plugins.cli.grid_plan import parse_seeds

ROOT = Path(__file__).resolve().parent.parent
EVAL_SEED_OFFSET = 10_000  # rlgen train evaluates on seed + 10,000


def emit(record: dict[str, Any]) -> None:
    """One machine-readable result line."""
    print(json.dumps(record), flush=True)


def bench_parser(doc: str, games: tuple[str, ...], timesteps: int, eval_freq: int, name: str) -> argparse.ArgumentParser:
    """The flags every grid benchmark takes; its runs go in ``bench/reports/NAME/runs``, its report in
    ``bench/reports/NAME``."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--games", default=",".join(games), help=f"comma-separated (default: {','.join(games)})")
    parser.add_argument("--seeds", default="0-2", help="seeds of each game and configuration (default 0-2)")
    parser.add_argument("--timesteps", type=positive_int("--timesteps"), default=timesteps, help=f"steps per run (default {timesteps})")
    parser.add_argument("--eval-freq", type=int, default=eval_freq, help="evaluation period (<= 0: none)")
    parser.add_argument("--eval-episodes", type=positive_int("--eval-episodes"), default=5)
    parser.add_argument("--jobs", type=positive_int("--jobs"), default=2, help="runs at a time (one core each)")
    parser.add_argument("--runs", default=f"bench/reports/{name}/runs",
                        help="the grids' run folders: their records are committed, their models and checkpoints not")
    parser.add_argument("--out", default=f"bench/reports/{name}", help="the report folder (committed)")
    parser.add_argument("--reps", type=positive_int("--reps"), default=2000, help="bootstrap resamples")
    return parser


def parse_plan(parser: argparse.ArgumentParser, argv: list[str] | None,
               env_id: Callable[[str], str]) -> tuple[argparse.Namespace, list[str], list[int]]:
    """The flags, the env ids of ``--games`` and the seeds of ``--seeds``; a bad one is the parser's usage error
    (exit 2) naming the flag or the environment, before any run starts."""
    try:
        args = parser.parse_args(argv)  # positive_int's UsageError too
        seeds = parse_seeds(args.seeds)  # as rlgen train --seeds reads them
        env_ids = [env_id(game.strip()) for game in args.games.split(",")]
        for env in env_ids:
            check_env_id(env)  # also registers ale-py's and MinAtar's ids in this process
    except UsageError as error:
        parser.error(str(error))
    return args, env_ids, seeds


def episode_returns(env: Any, episodes: int) -> list[float]:
    """``episodes`` full-episode returns of a uniformly random policy in a one-env VecEnv, read from its Monitor (so
    an Atari game's return spans all its lives, beneath the life-loss wrapper)."""
    returns: list[float] = []
    env.reset()
    while len(returns) < episodes:
        _, _, _, infos = env.step(np.array([env.action_space.sample()]))
        if "episode" in infos[0]:
            returns.append(float(infos[0]["episode"]["r"]))
    return returns


def random_scores(env_ids: list[str], seeds: list[int], episodes: int, path: Path,
                  make_env: Callable[[str, int], Any], bench: str) -> dict[str, float]:
    """A random policy's mean return per env over ``episodes`` episodes on each run's evaluation seed (the envs
    ``rlgen train``'s evaluations see); envs already in ``path`` are read from it, new ones are added to it."""
    done = json.loads(path.read_text()) if path.is_file() else {}
    for env_id in env_ids:
        if env_id in done:
            continue
        returns = []
        for seed in seeds:
            env = make_env(env_id, seed + EVAL_SEED_OFFSET)
            env.action_space.seed(seed)
            returns += episode_returns(env, episodes)
            env.close()
        done[env_id] = round(float(np.mean(returns)), 4)
        emit({"bench": f"{bench}_random", "env": env_id, "episodes": len(returns), "mean_return": done[env_id]})
        path.write_text(json.dumps(done, indent=1, sort_keys=True) + "\n")
    return done


def rlgen(*args: str) -> int:
    """Run ``python -m rlgen_plugins.cli ARGS`` with this interpreter; its output goes to ours."""
    return subprocess.call([sys.executable, "-m", "rlgen_plugins.cli", *args], cwd=ROOT)


def report_and_summary(args: argparse.Namespace, report_args: list[str], randoms: dict[str, float],
                       summarise: Callable[[dict[str, Any]], dict[str, Any]]) -> int:
    """``rlgen report RUNS --output OUT``, then the benchmark's summary of its report.json, with the random scores,
    printed and written to ``OUT/summary.json``; returns the report's exit status."""
    out = Path(args.out)
    status = rlgen("report", args.runs, "--output", str(out), *report_args, "--reps", str(args.reps))
    if status == 0:
        record = summarise(json.loads((out / "report.json").read_text()))
        record["random_scores"] = randoms
        emit(record)
        (out / "summary.json").write_text(json.dumps(record, indent=1) + "\n")
    return status
