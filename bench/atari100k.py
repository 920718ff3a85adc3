"""Atari 100k on CPU: the data-efficient Rainbow preset (``der``) on a few Atari games and several seeds, run as one
``rlgen train`` grid and reported by ``rlgen report``, human-normalised, beside a random policy and the published
data-efficient Rainbow scores at 100k agent steps (van Hasselt et al. 2019, Table: "DE-Rainbow").

Steps, each resumable (rerun the same command and it goes on where it stopped):

1. a uniformly random policy's return per game, on the evaluation seeds ``rlgen train`` uses (``random_scores.json``);
2. ``rlgen train der --env <Game>NoFrameskip-v4 ... --seeds S --timesteps T --output RUNS`` (the grid skips finished
   runs and resumes checkpointed ones);
3. ``rlgen report RUNS --output REPORT`` (Atari ids are human-normalised by the report's own table).

Prints JSON lines: ``{"bench": "atari100k_random", ...}`` per game, then ``{"bench": "atari100k_summary", ...}`` with
the per-game means beside the published figures, the IQM of the human-normalised score with its 95% interval, and
whether the budget was the benchmark's 100k agent steps.

    python bench/atari100k.py --timesteps 100000 --seeds 0-2 --jobs 2
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.grid_bench import (
    bench_parser,
    parse_plan,
    random_scores,
    report_and_summary,
    rlgen,
)

GAMES = ("Pong", "Breakout", "Boxing")
#: Data-efficient Rainbow at 100k agent steps, van Hasselt, Hessel & Aslanides (2019).
PUBLISHED_DER_100K = {"Pong": -19.3, "Breakout": 1.9, "Boxing": 0.2, "RoadRunner": 9600.0}
BENCHMARK_STEPS = 100_000


def env_id(game: str) -> str:
    return f"{game}NoFrameskip-v4"


def make_atari(env: str, seed: int) -> Any:
    """The evaluation env ``rlgen train der`` builds: SB3's Atari wrappers, 4 stacked frames, 108k-frame games."""
    from rlgen_plugins.cli.envs import make_env

    return make_env(env, seed=seed, frame_stack=4, env_kwargs={"max_episode_steps": 108_000})


def summary(report: dict[str, Any], args: argparse.Namespace, env_ids: list[str]) -> dict[str, Any]:
    """The per-game and aggregate figures of ``rlgen report``'s report.json, beside the published ones."""
    per_game = {env: data["configs"].get("der", {}).get("raw", {}).get("mean") for env, data in report["envs"].items()}
    agg = report["aggregate"]
    iqm = agg["configs"].get("der", {}).get("metrics", {}).get("IQM") if agg["computed"] else None
    published = {env_id(game): score for game, score in PUBLISHED_DER_100K.items()}
    return {"bench": "atari100k_summary", "timesteps": args.timesteps, "seeds": args.seeds,
            "at_benchmark_budget": args.timesteps >= BENCHMARK_STEPS, "per_game_mean": per_game,
            "published_der_100k": {env: published.get(env) for env in env_ids}, "iqm_human_normalised": iqm}


def main(argv: list[str] | None = None) -> int:
    parser = bench_parser(__doc__, GAMES, BENCHMARK_STEPS, 25_000, "atari100k")
    parser.add_argument("--save-freq", type=int, default=25_000, help="checkpoint period (a checkpoint holds the buffer)")
    parser.add_argument("-p", "--param", action="append", default=[], help="passed to rlgen train (KEY=VALUE)")
    args, env_ids, seeds = parse_plan(parser, argv, env_id)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    randoms = random_scores(env_ids, seeds, args.eval_episodes, out / "random_scores.json", make_atari, "atari100k")
    envs = [arg for env in env_ids for arg in ("--env", env)]
    params = [arg for p in args.param for arg in ("-p", p)]
    failed = rlgen("train", "der", *envs, "--seeds", args.seeds, "--timesteps", str(args.timesteps),
                   "--eval-freq", str(args.eval_freq), "--eval-episodes", str(args.eval_episodes),
                   "--save-freq", str(args.save_freq), "--keep-checkpoints", "1", "--jobs", str(args.jobs),
                   *params, "--output", args.runs)  # runs in RUNS/der/ENV/seed_S
    status = report_and_summary(args, [], randoms, lambda report: summary(report, args, env_ids))
    return failed or status


if __name__ == "__main__":
    sys.exit(main())
