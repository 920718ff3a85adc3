"""Rainbow on a MinAtar game with the shipped preset, for as many steps as the machine allows.

Prints JSON lines:
  {"bench": "minatar_eval", "game": ..., "steps": n, "mean_return": r, ...}  (every --eval-freq steps)
  {"bench": "minatar_summary", "game": ..., "steps": n, "wall_s": t, "steps_per_s": x,
   "final_mean_return": r, "random_policy_return": r0, "published_dqn_5M_frames": ...}

The peer in the same run is a uniformly random policy on the same evaluation seeds; the published DQN figures
(Young & Tian 2019, 5M frames, read off a figure) are printed for context only, they need ~100x more steps.

    python bench/minatar.py --game Breakout --steps 30000
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

# This file is named like the `minatar` package: drop bench/ from the path so `import minatar` finds the package,
# and put the repository root first so the script runs from a checkout without installing.
_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]
sys.path.insert(0, str(_HERE.parent))

import numpy as np  # noqa: E402
import torch as th  # noqa: E402
from stable_baselines3.common.callbacks import BaseCallback  # noqa: E402
from stable_baselines3.common.env_util import make_vec_env  # noqa: E402
from stable_baselines3.common.evaluation import evaluate_policy  # noqa: E402

from rlgen_plugins.cli.presets import load_preset  # noqa: E402
from rlgen_plugins.rainbow.algorithm import Rainbow  # noqa: E402

PUBLISHED_DQN = {"Breakout": 10, "SpaceInvaders": 43, "Asterix": 17, "Freeway": 50, "Seaquest": 20}


def emit(record: dict[str, Any]) -> None:
    print(json.dumps(record), flush=True)


class RandomAgent:
    """Uniform random actions, with the ``predict`` signature evaluate_policy expects."""

    def __init__(self, action_space: Any, n_envs: int) -> None:
        self.action_space, self.n_envs = action_space, n_envs

    def predict(self, obs: Any, state: Any = None, episode_start: Any = None, deterministic: bool = False) -> Any:
        return np.array([self.action_space.sample() for _ in range(self.n_envs)]), state


class PeriodicEval(BaseCallback):
    def __init__(self, eval_env: Any, game: str, eval_freq: int, n_episodes: int) -> None:
        super().__init__()
        self.eval_env, self.game, self.eval_freq, self.n_episodes = eval_env, game, eval_freq, n_episodes
        self.start = time.perf_counter()

    def _on_step(self) -> bool:
        if self.eval_freq > 0 and self.num_timesteps % self.eval_freq == 0:
            mean, std = evaluate_policy(self.model, self.eval_env, n_eval_episodes=self.n_episodes, deterministic=True)
            emit({"bench": "minatar_eval", "game": self.game, "steps": self.num_timesteps,
                  "mean_return": round(float(mean), 3), "std_return": round(float(std), 3),
                  "elapsed_s": round(time.perf_counter() - self.start, 1)})
        return True


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--game", default="Breakout", choices=sorted(PUBLISHED_DQN))
    parser.add_argument("--steps", type=int, default=30_000, help="training env steps (preset: 5M)")
    parser.add_argument("--learning-starts", type=int, default=None, help="override the preset's (5000)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--eval-freq", type=int, default=10_000)
    parser.add_argument("--eval-episodes", type=int, default=10)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    th.set_num_threads(args.threads)

    import minatar.gym

    minatar.gym.register_envs()  # gymnasium >= 1.0 no longer loads the package's entry point by itself
    env_id = f"MinAtar/{args.game}-v1"
    preset = load_preset("rainbow", env_id)
    policy = preset.pop("policy")
    for key in ("n_timesteps", "n_envs", "frame_stack", "env_wrapper", "env_kwargs"):
        preset.pop(key, None)
    if args.learning_starts is not None:
        preset["learning_starts"] = args.learning_starts
    preset["buffer_size"] = min(preset.get("buffer_size", 100_000), max(args.steps, 1_000))

    env = make_vec_env(env_id, n_envs=1, seed=args.seed)
    eval_env = make_vec_env(env_id, n_envs=args.eval_episodes, seed=10_000 + args.seed)
    random_agent = RandomAgent(eval_env.action_space, args.eval_episodes)
    random_return, _ = evaluate_policy(random_agent, eval_env, n_eval_episodes=args.eval_episodes)  # type: ignore
    model = Rainbow(policy, env, seed=args.seed, **preset)
    start = time.perf_counter()
    model.learn(args.steps, callback=PeriodicEval(eval_env, args.game, args.eval_freq, args.eval_episodes))
    wall = time.perf_counter() - start
    final, final_std = evaluate_policy(model, eval_env, n_eval_episodes=args.eval_episodes, deterministic=True)
    emit({
        "bench": "minatar_summary",
        "game": args.game,
        "steps": args.steps,
        "wall_s": round(wall, 1),
        "steps_per_s": round(args.steps / wall, 1),
        "final_mean_return": round(float(final), 3),
        "final_std_return": round(float(final_std), 3),
        "random_policy_return": round(float(random_return), 3),
        "ratio_vs_random": None if random_return == 0 else round(float(final) / float(random_return), 2),
        "published_dqn_5M_frames": PUBLISHED_DQN[args.game],
        "learning_starts": preset["learning_starts"],
        "buffer_size": preset["buffer_size"],
        "torch_threads": th.get_num_threads(),
    })


if __name__ == "__main__":
    main()
