"""The MinAtar benchmark: Rainbow's MinAtar preset against SB3's DQN with the MinAtar paper's settings (the same
CNN), on all five games and several seeds, run as two ``rlgen train`` grids and reported by ``rlgen report``.

Steps, each resumable (rerun the same command and it goes on where it stopped):

1. a uniformly random policy's return per game, on the evaluation seeds ``rlgen train`` uses (``random_scores.json``);
2. ``rlgen train rainbow --env MinAtar/<game>-v1 ... --seeds S --timesteps T --output RUNS`` and the same for ``dqn``
   (the grid skips finished runs and resumes checkpointed ones). DQN's epsilon decays over the first tenth of the
   run (the paper: 100k of 5M frames), so at a small budget it is not still exploring at the end;
3. ``rlgen report RUNS --output REPORT`` with the random scores as 0 and the published DQN figures after 5M frames
   (Young & Tian 2019, read off their figure: approximate) as 1 (``reference_scores.json``).

Prints JSON lines: ``{"bench": "minatar_random", ...}`` per game, then ``{"bench": "minatar_summary", ...}`` with
both algorithms' IQM and 95% interval of the normalised score, the games Rainbow leads on, and the goal's verdict
(Rainbow's IQM above DQN's with non-overlapping intervals, and ahead on at least 4 of 5 games).

    python bench/minatar.py --timesteps 30000 --seeds 0-2 --jobs 2
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

# This file is named like the `minatar` package: drop bench/ from the path so `import minatar` finds the package,
# and put the repository root first so the script runs from a checkout without installing.
_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]
sys.path.insert(0, str(_HERE.parent))

from bench.grid_bench import (
    bench_parser,
    parse_plan,
    random_scores,
    report_and_summary,
    rlgen,
)

GAMES = ("Asterix", "Breakout", "Freeway", "Seaquest", "SpaceInvaders")
#: DQN after 5M frames, Young & Tian (2019), read off their learning-curve figure (approximate).
PUBLISHED_DQN_5M = {"Asterix": 17.0, "Breakout": 10.0, "Freeway": 50.0, "Seaquest": 20.0, "SpaceInvaders": 43.0}


def env_id(game: str) -> str:
    return f"MinAtar/{game}-v1"


def make_minatar(env: str, seed: int) -> Any:
    """The evaluation env ``rlgen train`` builds for a MinAtar id: one Monitor-wrapped env, no other wrapper."""
    from stable_baselines3.common.env_util import make_vec_env

    return make_vec_env(env, n_envs=1, seed=seed)


def summary(report: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    """The goal's figures from ``rlgen report``'s report.json."""
    per_game = {env: {label: c["raw"]["mean"] for label, c in data["configs"].items()}
                for env, data in report["envs"].items()}
    leads = sorted(env for env, s in per_game.items() if {"rainbow", "dqn"} <= set(s) and s["rainbow"] > s["dqn"])
    agg = report["aggregate"]
    iqm = {label: c["metrics"]["IQM"] for label, c in agg.get("configs", {}).items()} if agg["computed"] else {}
    rainbow, dqn = iqm.get("rainbow", {}).get("ci"), iqm.get("dqn", {}).get("ci")
    separated = bool(rainbow and dqn and rainbow[0] > dqn[1])
    return {"bench": "minatar_summary", "timesteps": args.timesteps, "seeds": args.seeds, "iqm": iqm,
            "per_game_mean": per_game, "rainbow_ahead_on": leads,
            "goal_iqm_above_with_separate_intervals": separated, "goal_ahead_on_4_of_5": len(leads) >= 4}


def main(argv: list[str] | None = None) -> int:
    parser = bench_parser(__doc__, GAMES, 30_000, 10_000, "minatar")
    args, env_ids, seeds = parse_plan(parser, argv, env_id)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    randoms = random_scores(env_ids, seeds, args.eval_episodes, out / "random_scores.json", make_minatar, "minatar")
    published = {env_id(game): score for game, score in PUBLISHED_DQN_5M.items()}
    (out / "reference_scores.json").write_text(json.dumps(
        {env: published[env] for env in env_ids if env in published}, indent=1, sort_keys=True) + "\n")
    envs = [arg for env in env_ids for arg in ("--env", env)]
    common = [*envs, "--seeds", args.seeds, "--timesteps", str(args.timesteps), "--eval-freq", str(args.eval_freq),
              "--eval-episodes", str(args.eval_episodes), "--jobs", str(args.jobs)]
    failed = rlgen("train", "rainbow", *common, "--output", f"{args.runs}/rainbow")  # a grid.json each
    failed |= rlgen("train", "dqn", *common, "--output", f"{args.runs}/dqn", "-p", "exploration_fraction=0.1")
    report_args = ["--random-scores", str(out / "random_scores.json"),
                   "--reference-scores", str(out / "reference_scores.json")]
    status = report_and_summary(args, report_args, randoms, lambda report: summary(report, args))
    return failed or status


if __name__ == "__main__":
    sys.exit(main())
