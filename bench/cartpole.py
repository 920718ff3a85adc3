"""Rainbow on CartPole-v1 with the shipped preset: sample efficiency over seeds, and throughput next to SB3 DQN.

Prints one JSON object per line:
  {"bench": "cartpole_seed", "seed": s, "steps_to_475": n | null, "eval_at_end": r, ...}
  {"bench": "cartpole_summary", "median_steps_to_475": n, "solved_at_end": k, "seeds": m, ...}
  {"bench": "cartpole_throughput", "algo": ..., "steps_per_s": x, ...}
  {"bench": "cartpole_throughput_ratio", "ratio": rainbow / dqn, "ratio_eager": ..., ...}

Throughput peers, all measured in the same run in interleaved blocks: SB3's DQN with the same settings (its default
network), DQN with our hidden sizes when they differ, and Rainbow without ``torch_compile`` when the preset compiles.

Evaluation: mean return of ``--eval-episodes`` deterministic episodes (one per env of a DummyVecEnv), every
``--eval-freq`` steps until it first reaches 475, then once more at the end of training.

    python bench/cartpole.py                      # 5 seeds x 20k steps, then throughput
    python bench/cartpole.py --seeds 3 --skip-throughput
    python bench/cartpole.py --seeds 0 --throughput-steps 1000
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

import numpy as np  # noqa: E402
import torch as th  # noqa: E402
from stable_baselines3 import DQN  # noqa: E402
from stable_baselines3.common.callbacks import BaseCallback  # noqa: E402
from stable_baselines3.common.env_util import make_vec_env  # noqa: E402
from stable_baselines3.common.evaluation import evaluate_policy  # noqa: E402

from rlgen_plugins.cli.presets import load_preset, normalize_hyperparams  # noqa: E402
from rlgen_plugins.cli.runs import parse_overrides  # noqa: E402
from rlgen_plugins.rainbow.algorithm import Rainbow  # noqa: E402

ENV_ID = "CartPole-v1"
SOLVED = 475.0


def emit(record: dict[str, Any]) -> None:
    print(json.dumps(record), flush=True)


def rainbow_kwargs(overrides: dict[str, Any]) -> tuple[str, int, dict[str, Any]]:
    """Policy name, training length and constructor kwargs from the shipped preset (plus overrides)."""
    preset = load_preset("rainbow", ENV_ID)
    preset.update(overrides)
    policy = preset.pop("policy", "MlpPolicy")
    n_timesteps = int(preset.pop("n_timesteps", 20_000))
    for key in ("n_envs", "frame_stack", "env_wrapper", "env_kwargs"):
        preset.pop(key, None)
    return policy, n_timesteps, preset


class SolveTracker(BaseCallback):
    """Evaluate every ``eval_freq`` steps until the deterministic mean first reaches ``SOLVED``."""

    def __init__(self, eval_env: Any, eval_freq: int, n_episodes: int, stop_when_solved: bool = False) -> None:
        super().__init__()
        self.eval_env, self.eval_freq, self.n_episodes = eval_env, eval_freq, n_episodes
        self.stop_when_solved = stop_when_solved
        self.solved_at: int | None = None
        self.history: list[tuple[int, float]] = []

    def evaluate(self) -> float:
        mean, _ = evaluate_policy(self.model, self.eval_env, n_eval_episodes=self.n_episodes, deterministic=True)
        self.history.append((self.num_timesteps, float(mean)))
        return float(mean)

    def _on_step(self) -> bool:
        if self.solved_at is None and self.num_timesteps % self.eval_freq == 0:
            if self.evaluate() >= SOLVED:
                self.solved_at = self.num_timesteps
                return not self.stop_when_solved
        return True


def run_seed(seed: int, args: argparse.Namespace, overrides: dict[str, Any]) -> dict[str, Any]:
    policy, n_timesteps, kwargs = rainbow_kwargs(overrides)
    total = args.steps or n_timesteps
    env = make_vec_env(ENV_ID, n_envs=1, seed=seed)
    eval_env = make_vec_env(ENV_ID, n_envs=args.eval_episodes, seed=10_000 + seed)
    model = Rainbow(policy, env, seed=seed, **kwargs)
    tracker = SolveTracker(eval_env, args.eval_freq, args.eval_episodes, args.stop_when_solved)
    start = time.perf_counter()
    model.learn(total, callback=tracker)
    train_s = time.perf_counter() - start
    final = tracker.evaluate()
    return {
        "bench": "cartpole_seed",
        "seed": seed,
        "steps_to_475": tracker.solved_at,
        "eval_at_end": final,
        "total_steps": total,
        "wall_s": round(train_s, 1),
        "evals": tracker.history,
    }


def throughput(args: argparse.Namespace, overrides: dict[str, Any]) -> None:
    """Env steps/s with one gradient step of batch 128 per env step, Rainbow vs SB3 DQN, interleaved blocks."""
    policy, _, kwargs = rainbow_kwargs(overrides)
    shared = dict(
        learning_rate=kwargs["learning_rate"],
        buffer_size=kwargs["buffer_size"],
        learning_starts=kwargs["learning_starts"],
        batch_size=128,
        train_freq=1,
        gradient_steps=1,
        target_update_interval=kwargs["target_update_interval"],
        seed=0,
    )
    net_arch = kwargs["policy_kwargs"]["net_arch"]
    rainbow_args = {**kwargs, **shared}
    same_net = f"dqn_net{net_arch}"
    models = {
        "rainbow": Rainbow(policy, ENV_ID, **rainbow_args),
        # Peer: SB3 DQN with the same settings and its default network ([64, 64]) ...
        "dqn": DQN("MlpPolicy", ENV_ID, **shared),
    }
    if list(net_arch) != list(models["dqn"].policy.net_arch):  # ... and, when ours differs, DQN with our sizes
        models[same_net] = DQN("MlpPolicy", ENV_ID, policy_kwargs={"net_arch": net_arch}, **shared)
    if rainbow_args.get("torch_compile"):  # what compiling the update buys, measured in the same run
        models["rainbow_eager"] = Rainbow(policy, ENV_ID, **{**rainbow_args, "torch_compile": False})
    for model in models.values():  # fill past learning_starts so every measured step trains
        model.learn(shared["learning_starts"] + 200)
    rates: dict[str, list[float]] = {name: [] for name in models}
    block = max(args.throughput_steps // args.rounds, 1)
    for _ in range(args.rounds):
        for name, model in models.items():
            start = time.perf_counter()
            model.learn(block, reset_num_timesteps=False)
            rates[name].append(block / (time.perf_counter() - start))
    medians = {name: statistics.median(r) for name, r in rates.items()}
    for name, r in rates.items():
        emit({"bench": "cartpole_throughput", "algo": name, "steps_per_s": round(medians[name], 1),
              "rounds": [round(x, 1) for x in r], "batch_size": 128, "gradient_steps_per_env_step": 1})
    emit({"bench": "cartpole_throughput_ratio", "ratio": round(medians["rainbow"] / medians["dqn"], 3),
          "ratio_same_net": round(medians["rainbow"] / medians.get(same_net, medians["dqn"]), 3),
          "ratio_eager": round(medians.get("rainbow_eager", medians["rainbow"]) / medians["dqn"], 3),
          "goal": 0.8, "torch_threads": th.get_num_threads(), "torch_compile": bool(rainbow_args.get("torch_compile")),
          "rainbow_policy_kwargs": str(kwargs["policy_kwargs"])})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=5, help="number of seeds (0 = skip the learning runs)")
    parser.add_argument("--first-seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=0, help="training steps per seed (default: the preset's)")
    parser.add_argument("--eval-freq", type=int, default=500)
    parser.add_argument("--eval-episodes", type=int, default=20)
    parser.add_argument("--skip-throughput", action="store_true")
    parser.add_argument("--stop-when-solved", action="store_true",
                        help="end a seed's training at its first eval >= 475 (for tuning; eval_at_end is then that)")
    parser.add_argument("--throughput-steps", type=int, default=1500, help="measured steps per algorithm")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved measurement blocks per algorithm")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1 = fair on a shared machine)")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=YAML",
                        help="override preset entries, e.g. learning_rate=5e-4 (for tuning)")
    args = parser.parse_args()
    th.set_num_threads(args.threads)
    overrides = normalize_hyperparams(parse_overrides(args.set))  # the same reading as `rlgen train -p`
    results = []
    for seed in range(args.first_seed, args.first_seed + args.seeds):
        record = run_seed(seed, args, overrides)
        results.append(record)
        emit(record)
    if results:
        steps = [r["steps_to_475"] for r in results]
        # Unsolved seeds count as infinitely slow for the median.
        median = statistics.median([s if s is not None else float("inf") for s in steps])
        emit({
            "bench": "cartpole_summary",
            "seeds": len(results),
            "median_steps_to_475": None if median == float("inf") else median,
            "solved_by_end": sum(r["steps_to_475"] is not None for r in results),
            "still_solved_at_end": sum(r["eval_at_end"] >= SOLVED for r in results),
            "evals_at_end": [r["eval_at_end"] for r in results],
            "goal": {"median_steps_to_475": 6000, "still_solved_at_end": len(results)},
            "overrides": overrides,
        })
    if not args.skip_throughput:
        throughput(args, overrides)


if __name__ == "__main__":
    np.set_printoptions(precision=3)
    main()
