"""Atari smoke run on CPU: does a short ``rlgen train`` of an Atari preset learn? Its score next to a uniformly random
policy's, both measured in this run on the same environment (SB3's Atari wrappers, 4 stacked frames, full games).

Resumable: the run checkpoints every ``--save-freq`` steps into ``OUT/run`` and a rerun continues it
(``--resume latest``), or, once its ``rlgen.json`` says finished, only scores the saved model again; the random
policy's score is kept in ``OUT/random.json``. Both are scored on the preset's own episode cap. Prints JSON lines:
  {"bench": "atari_smoke_random", ...}, {"bench": "atari_smoke_train", "seconds": ...},
  {"bench": "atari_smoke", "agent_mean": a, "random_mean": r, "difference_ci95": [lo, hi], "learned": bool}
``learned`` is true when the bootstrap 95% interval of the mean difference (agent - random) lies above 0.

    python bench/atari_smoke.py --algo der --env RoadRunnerNoFrameskip-v4 --timesteps 30000 --out /tmp/smoke
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import registry  # noqa: E402
from rlgen_plugins.cli import runs  # noqa: E402
from rlgen_plugins.cli.checkpoints import CHECKPOINTS_DIR  # noqa: E402
from rlgen_plugins.cli.envs import check_env_id, make_env  # noqa: E402
from rlgen_plugins.cli.files import read_run_record  # noqa: E402
from rlgen_plugins.cli.presets import load_preset  # noqa: E402


class RandomPolicy:
    """``predict`` of a uniformly random policy, for SB3's ``evaluate_policy``."""

    def __init__(self, action_space: Any, seed: int) -> None:
        self.action_space = action_space
        self.action_space.seed(seed)

    def predict(self, observation: np.ndarray, state: Any = None, episode_start: Any = None,
                deterministic: bool = False) -> tuple[np.ndarray, None]:
        return np.array([self.action_space.sample() for _ in range(len(observation))]), None


def episode_returns(policy: Any, env_id: str, episodes: int, seed: int, frame_stack: int,
                    env_kwargs: dict[str, Any]) -> list[float]:
    """Full-game returns (SB3's Monitor sits beneath the life-loss wrapper) of ``policy`` over ``episodes`` games."""
    from stable_baselines3.common.evaluation import evaluate_policy

    env = make_env(env_id, n_envs=1, seed=seed, frame_stack=frame_stack, env_kwargs=env_kwargs)
    try:
        returns, _ = evaluate_policy(policy(env) if callable(policy) else policy, env, n_eval_episodes=episodes,
                                     deterministic=True, return_episode_rewards=True)
    finally:
        env.close()
    return [float(r) for r in returns]


def bootstrap_difference(a: list[float], b: list[float], seed: int = 0, draws: int = 10_000) -> tuple[float, float]:
    """Percentile bootstrap 95% interval of mean(a) - mean(b), resampling each group."""
    rng = np.random.default_rng(seed)
    x, y = np.asarray(a), np.asarray(b)
    diffs = (rng.choice(x, (draws, x.size)).mean(1) - rng.choice(y, (draws, y.size)).mean(1))
    return float(np.percentile(diffs, 2.5)), float(np.percentile(diffs, 97.5))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--algo", default="der")
    parser.add_argument("--env", default="RoadRunnerNoFrameskip-v4")
    parser.add_argument("--timesteps", type=int, default=30_000)
    parser.add_argument("--episodes", type=int, default=10, help="evaluation games of each policy")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--save-freq", type=int, default=5_000)
    parser.add_argument("--eval-freq", type=int, default=10_000)
    parser.add_argument("--out", type=Path, default=Path("bench/reports/atari_smoke"))
    args = parser.parse_args()
    check_env_id(args.env)
    args.out.mkdir(parents=True, exist_ok=True)
    env_kwargs = load_preset(args.algo, args.env).get("env_kwargs", {})  # the run's own episode cap (der: 108k)
    eval_seed = 10_000 + args.seed  # the same games for both policies, none of them seen in training

    random_file = args.out / "random.json"
    if not random_file.is_file():
        returns = episode_returns(lambda env: RandomPolicy(env.action_space, eval_seed), args.env, args.episodes,
                                  eval_seed, 4, env_kwargs)
        random_file.write_text(json.dumps({"returns": returns}))
    random_returns = json.loads(random_file.read_text())["returns"]
    print(json.dumps({"bench": "atari_smoke_random", "env": args.env, "returns": random_returns,
                      "mean": float(np.mean(random_returns))}), flush=True)

    run = args.out / "run"
    record = read_run_record(run)
    resume = "latest" if (run / CHECKPOINTS_DIR).is_dir() and any((run / CHECKPOINTS_DIR).iterdir()) else None
    if record.get("status") != "finished":  # a finished run is scored again, never retrained
        start = time.perf_counter()
        runs.train(args.algo, args.env, timesteps=args.timesteps, seed=args.seed, output=run, overwrite=True,
                   eval_freq=args.eval_freq, eval_episodes=3, progress_bar=False, save_freq=args.save_freq,
                   resume=resume)
        print(json.dumps({"bench": "atari_smoke_train", "algo": args.algo, "env": args.env,
                          "timesteps": args.timesteps, "seconds": round(time.perf_counter() - start, 1),
                          "resumed": resume is not None}), flush=True)

    model = registry.get("algorithms", args.algo).load(run / "model.zip", device="cpu")
    agent_returns = episode_returns(model, args.env, args.episodes, eval_seed, 4, env_kwargs)
    low, high = bootstrap_difference(agent_returns, random_returns)
    print(json.dumps({"bench": "atari_smoke", "algo": args.algo, "env": args.env, "timesteps": args.timesteps,
                      "episodes": args.episodes, "agent_returns": agent_returns,
                      "agent_mean": float(np.mean(agent_returns)), "random_mean": float(np.mean(random_returns)),
                      "ratio_to_random": float(np.mean(agent_returns)) / max(float(np.mean(random_returns)), 1e-9),
                      "difference_ci95": [low, high], "learned": low > 0}), flush=True)


if __name__ == "__main__":
    main()
