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
import subprocess
import sys
from pathlib import Path
from typing import Any

# This file is named like the `minatar` package: drop bench/ from the path so `import minatar` finds the package,
# and put the repository root first so the script runs from a checkout without installing.
_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]
sys.path.insert(0, str(_HERE.parent))

from rlgen_plugins.cli.grid_plan import parse_seeds  # noqa: E402

GAMES = ("Asterix", "Breakout", "Freeway", "Seaquest", "SpaceInvaders")
#: DQN after 5M frames, Young & Tian (2019), read off their learning-curve figure (approximate).
PUBLISHED_DQN_5M = {"Asterix": 17.0, "Breakout": 10.0, "Freeway": 50.0, "Seaquest": 20.0, "SpaceInvaders": 43.0}
EVAL_SEED_OFFSET = 10_000  # rlgen train evaluates on seed + 10,000


def emit(record: dict[str, Any]) -> None:
    print(json.dumps(record), flush=True)


def random_scores(games: list[str], seeds: list[int], episodes: int, path: Path) -> dict[str, float]:
    """A uniformly random policy's mean return per game over ``episodes`` episodes of each run's evaluation seed
    (the same environments ``rlgen train``'s evaluations see); read from ``path`` when it already holds them."""
    done = json.loads(path.read_text()) if path.is_file() else {}
    wanted = {f"MinAtar/{game}-v1" for game in games}
    if wanted <= set(done):
        return done
    import numpy as np
    from stable_baselines3.common.env_util import make_vec_env

    from rlgen_plugins.cli.envs import check_env_id

    for env_id in sorted(wanted - set(done)):
        check_env_id(env_id)  # registers MinAtar's ids
        returns = []
        for seed in seeds:
            env = make_vec_env(env_id, n_envs=1, seed=seed + EVAL_SEED_OFFSET)
            env.action_space.seed(seed)
            env.reset()
            total, finished = 0.0, 0
            while finished < episodes:
                _, reward, done_now, _ = env.step(np.array([env.action_space.sample()]))
                total += float(reward[0])
                if done_now[0]:
                    returns.append(total)
                    total, finished = 0.0, finished + 1
            env.close()
        done[env_id] = round(float(np.mean(returns)), 4)
        emit({"bench": "minatar_random", "env": env_id, "episodes": len(returns), "mean_return": done[env_id]})
        path.write_text(json.dumps(done, indent=1, sort_keys=True) + "\n")
    return done


def rlgen(*args: str) -> int:
    """Run ``python -m rlgen_plugins.cli ARGS`` with this interpreter; its output goes to ours."""
    return subprocess.call([sys.executable, "-m", "rlgen_plugins.cli", *args], cwd=_HERE.parent)


def summary(report_json: Path, args: argparse.Namespace) -> dict[str, Any]:
    """The goal's figures from ``rlgen report``'s report.json."""
    report = json.loads(report_json.read_text())
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
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--games", default=",".join(GAMES), help="comma-separated (default: all five)")
    parser.add_argument("--seeds", default="0-2", help="seeds of each game and algorithm (default 0-2)")
    parser.add_argument("--timesteps", type=int, default=30_000, help="env steps per run (the presets: 5M)")
    parser.add_argument("--eval-freq", type=int, default=10_000)
    parser.add_argument("--eval-episodes", type=int, default=5)
    parser.add_argument("--jobs", type=int, default=2, help="runs at a time (one core each)")
    parser.add_argument("--runs", default="bench/reports/minatar/runs",
                        help="the grids' run folders: their records are committed, their models and checkpoints not")
    parser.add_argument("--out", default="bench/reports/minatar", help="the report folder (committed)")
    parser.add_argument("--reps", type=int, default=2000, help="bootstrap resamples")
    args = parser.parse_args(argv)
    games, seeds = args.games.split(","), parse_seeds(args.seeds)  # as rlgen train --seeds reads them
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    randoms = random_scores(games, seeds, args.eval_episodes, out / "random_scores.json")
    (out / "reference_scores.json").write_text(json.dumps(
        {f"MinAtar/{g}-v1": PUBLISHED_DQN_5M[g] for g in games}, indent=1, sort_keys=True) + "\n")
    envs = [arg for game in games for arg in ("--env", f"MinAtar/{game}-v1")]
    common = [*envs, "--seeds", args.seeds, "--timesteps", str(args.timesteps), "--eval-freq", str(args.eval_freq),
              "--eval-episodes", str(args.eval_episodes), "--jobs", str(args.jobs)]
    failed = rlgen("train", "rainbow", *common, "--output", f"{args.runs}/rainbow")  # a grid.json each
    failed |= rlgen("train", "dqn", *common, "--output", f"{args.runs}/dqn", "-p", "exploration_fraction=0.1")
    status = rlgen("report", args.runs, "--output", str(out), "--random-scores", str(out / "random_scores.json"),
                   "--reference-scores", str(out / "reference_scores.json"), "--reps", str(args.reps))
    if status == 0:
        record = summary(out / "report.json", args)
        record["random_scores"] = randoms
        emit(record)
        (out / "summary.json").write_text(json.dumps(record, indent=1) + "\n")
    return failed or status


if __name__ == "__main__":
    sys.exit(main())
