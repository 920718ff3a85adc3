"""Training throughput (env steps per second, updates included) of Rainbow next to SB3's DQN, in one run.

Prints one JSON line per measurement round and per contender, then the ratios:
  {"bench": "throughput", "case": ..., "algo": ..., "steps_per_s": x, "rounds": [...]}
  {"bench": "throughput_ratio", "case": ..., "algo": ..., "ratio_to_sb3_dqn": r, "goal": g}

Cases (the goals of the Rainbow-at-scale issue):
- ``cartpole``: CartPole-v1, net_arch [128, 128], batch 128, one gradient step per env step, for SB3's DQN, eager
  ``Rainbow("MlpPolicy")`` with its defaults otherwise (goal >= 0.6x DQN) and the same with ``torch_compile``
  (goal >= 1.2x).
- ``minatar``: MinAtar Breakout with Rainbow's shipped preset (goal >= 1,000 env steps/s on one core) and SB3's DQN
  with the same CNN (``policies.MinAtarCNN``), head, batch and updates per step (goal: Rainbow >= 1.0x).

Contenders are measured in interleaved rounds after a warm-up that passes ``learning_starts`` (and compiles), each
round a ``learn`` call of ``--steps`` more env steps; the median round counts. One torch thread.

    python bench/throughput.py --case cartpole
    taskset -c 0 python bench/throughput.py --case minatar --steps 3000
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable

_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]  # bench/minatar.py would shadow minatar
sys.path.insert(0, str(_HERE.parent))

import torch as th  # noqa: E402
from stable_baselines3 import DQN  # noqa: E402

from policies import MinAtarCNN  # noqa: E402
from rlgen_plugins.cli.presets import load_preset  # noqa: E402
from rlgen_plugins.rainbow.algorithm import Rainbow  # noqa: E402

GOALS = {("cartpole", "rainbow_eager"): 0.6, ("cartpole", "rainbow_compiled"): 1.2, ("minatar", "rainbow"): 1.0}


def cartpole_contenders(seed: int) -> dict[str, Callable[[], Any]]:
    import gymnasium as gym

    common = dict(batch_size=128, train_freq=1, gradient_steps=1, learning_starts=1_000, buffer_size=50_000,
                  seed=seed, device="cpu")
    return {
        "sb3_dqn": lambda: DQN("MlpPolicy", gym.make("CartPole-v1"), policy_kwargs=dict(net_arch=[128, 128]),
                               **common),
        "rainbow_eager": lambda: Rainbow("MlpPolicy", gym.make("CartPole-v1"),
                                         policy_kwargs=dict(net_arch=[128, 128]), **common),
        "rainbow_compiled": lambda: Rainbow("MlpPolicy", gym.make("CartPole-v1"), torch_compile=True,
                                            policy_kwargs=dict(net_arch=[128, 128]), **common),
    }


def minatar_contenders(seed: int) -> dict[str, Callable[[], Any]]:
    import gymnasium as gym
    from minatar.gym import register_envs

    register_envs()
    env_id = "MinAtar/Breakout-v1"
    preset = load_preset("rainbow", env_id)
    preset.pop("n_timesteps", None)
    policy = preset.pop("policy")
    preset.update(learning_starts=1_000, seed=seed, device="cpu")
    shared = {k: preset[k] for k in ("learning_rate", "buffer_size", "learning_starts", "batch_size", "train_freq",
                                     "gradient_steps", "gamma", "target_update_interval", "seed", "device")}
    head = preset["policy_kwargs"]
    dqn_policy = dict(features_extractor_class=MinAtarCNN, features_extractor_kwargs=head["features_extractor_kwargs"],
                      net_arch=head["net_arch"])
    return {
        "sb3_dqn": lambda: DQN("CnnPolicy", gym.make(env_id), policy_kwargs=dqn_policy, **shared),
        "rainbow": lambda: Rainbow(policy, gym.make(env_id), **preset),
    }


def measure(make: Callable[[], Any], warmup: int) -> Any:
    model = make()
    model.learn(warmup)  # past learning_starts, compiled where the preset compiles
    return model


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--case", choices=("cartpole", "minatar"), default="cartpole")
    parser.add_argument("--steps", type=int, default=2_000, help="env steps per measured round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1_500, help="env steps before measuring (> learning_starts)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    th.set_num_threads(1)
    contenders = (cartpole_contenders if args.case == "cartpole" else minatar_contenders)(args.seed)
    models = {name: measure(make, args.warmup) for name, make in contenders.items()}
    rounds: dict[str, list[float]] = {name: [] for name in models}
    for _ in range(args.rounds):
        for name, model in models.items():
            start = time.perf_counter()
            model.learn(args.steps, reset_num_timesteps=False)
            rounds[name].append(args.steps / (time.perf_counter() - start))
    speed = {name: statistics.median(values) for name, values in rounds.items()}
    for name, value in speed.items():
        print(json.dumps({"bench": "throughput", "case": args.case, "algo": name, "steps_per_s": round(value, 1),
                          "rounds": [round(v, 1) for v in rounds[name]]}))
    for name in speed:
        if name == "sb3_dqn":
            continue
        print(json.dumps({"bench": "throughput_ratio", "case": args.case, "algo": name,
                          "ratio_to_sb3_dqn": round(speed[name] / speed["sb3_dqn"], 3),
                          "goal": GOALS.get((args.case, name))}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
