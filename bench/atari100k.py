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
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(_ROOT))

from rlgen_plugins.cli.grid_plan import parse_seeds

GAMES = ("Pong", "Breakout", "Boxing")
#: Data-efficient Rainbow at 100k agent steps, van Hasselt, Hessel & Aslanides (2019).
PUBLISHED_DER_100K = {"Pong": -19.3, "Breakout": 1.9, "Boxing": 0.2, "RoadRunner": 9600.0}
BENCHMARK_STEPS = 100_000
EVAL_SEED_OFFSET = 10_000  # rlgen train evaluates on seed + 10,000


def emit(record: dict[str, Any]) -> None:
    print(json.dumps(record), flush=True)


def env_id(game: str) -> str:
    return f"{game}NoFrameskip-v4"


def random_scores(games: list[str], seeds: list[int], episodes: int, path: Path) -> dict[str, float]:
    """A uniformly random policy's mean return per game (full games, SB3's Atari wrappers, each run's evaluation
    seed); read from ``path`` when it already holds them."""
    done = json.loads(path.read_text()) if path.is_file() else {}
    import numpy as np

    from rlgen_plugins.cli.envs import check_env_id, make_env

    for game in games:
        if env_id(game) in done:
            continue
        check_env_id(env_id(game))  # registers ale-py's ids
        returns = []
        for seed in seeds:
            env = make_env(env_id(game), seed=seed + EVAL_SEED_OFFSET, frame_stack=4,
                           env_kwargs={"max_episode_steps": 108_000})
            env.action_space.seed(seed)
            env.reset()
            while len(returns) < episodes * (seeds.index(seed) + 1):
                _, _, _, infos = env.step(np.array([env.action_space.sample()]))
                if "episode" in infos[0]:  # Monitor's full-game return, beneath the life-loss wrapper
                    returns.append(float(infos[0]["episode"]["r"]))
            env.close()
        done[env_id(game)] = round(float(np.mean(returns)), 4)
        emit({"bench": "atari100k_random", "env": env_id(game), "episodes": len(returns), "mean_return": done[env_id(game)]})
        path.write_text(json.dumps(done, indent=1, sort_keys=True) + "\n")
    return done


def rlgen(*args: str) -> int:
    """Run ``python -m rlgen_plugins.cli ARGS`` with this interpreter; its output goes to ours."""
    return subprocess.call([sys.executable, "-m", "rlgen_plugins.cli", *args], cwd=_ROOT)


def summary(report_json: Path, args: argparse.Namespace, games: list[str]) -> dict[str, Any]:
    """The per-game and aggregate figures from ``rlgen report``'s report.json, beside the published ones."""
    report = json.loads(report_json.read_text())
    per_game = {env: data["configs"].get("der", {}).get("raw", {}).get("mean") for env, data in report["envs"].items()}
    agg = report["aggregate"]
    iqm = agg["configs"].get("der", {}).get("metrics", {}).get("IQM") if agg["computed"] else None
    return {"bench": "atari100k_summary", "timesteps": args.timesteps, "seeds": args.seeds,
            "at_benchmark_budget": args.timesteps >= BENCHMARK_STEPS, "per_game_mean": per_game,
            "published_der_100k": {env_id(g): PUBLISHED_DER_100K.get(g) for g in games}, "iqm_human_normalised": iqm}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--games", default=",".join(GAMES), help="comma-separated (default: Pong,Breakout,Boxing)")
    parser.add_argument("--seeds", default="0-2", help="seeds of each game (default 0-2)")
    parser.add_argument("--timesteps", type=int, default=BENCHMARK_STEPS, help="agent steps per run (100k)")
    parser.add_argument("--eval-freq", type=int, default=25_000)
    parser.add_argument("--eval-episodes", type=int, default=5)
    parser.add_argument("--save-freq", type=int, default=25_000, help="checkpoint period (a checkpoint holds the buffer)")
    parser.add_argument("--jobs", type=int, default=2, help="runs at a time (one core each)")
    parser.add_argument("--runs", default="bench/reports/atari100k/runs",
                        help="the grid's run folders: their records are committed, their models and checkpoints not")
    parser.add_argument("--out", default="bench/reports/atari100k", help="the report folder (committed)")
    parser.add_argument("--reps", type=int, default=2000, help="bootstrap resamples")
    parser.add_argument("-p", "--param", action="append", default=[], help="passed to rlgen train (KEY=VALUE)")
    args = parser.parse_args(argv)
    games, seeds = args.games.split(","), parse_seeds(args.seeds)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    randoms = random_scores(games, seeds, args.eval_episodes, out / "random_scores.json")
    envs = [arg for game in games for arg in ("--env", env_id(game))]
    params = [arg for p in args.param for arg in ("-p", p)]
    failed = rlgen("train", "der", *envs, "--seeds", args.seeds, "--timesteps", str(args.timesteps),
                   "--eval-freq", str(args.eval_freq), "--eval-episodes", str(args.eval_episodes),
                   "--save-freq", str(args.save_freq), "--keep-checkpoints", "1", "--jobs", str(args.jobs),
                   *params, "--output", args.runs)  # runs in RUNS/der/ENV/seed_S
    status = rlgen("report", args.runs, "--output", str(out), "--reps", str(args.reps))
    if status == 0:
        record = summary(out / "report.json", args, games)
        record["random_scores"] = randoms
        emit(record)
        (out / "summary.json").write_text(json.dumps(record, indent=1) + "\n")
    return failed or status


if __name__ == "__main__":
    sys.exit(main())
