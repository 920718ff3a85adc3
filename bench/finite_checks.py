"""What the per-step finiteness check costs: Rainbow's gradient steps with ``_check_finite`` on and off, in one run.

One model (CartPole-v1, MlpPolicy net_arch [64, 64], batch 32, Rainbow's defaults otherwise) fills its buffer, then
``train(gradient_steps)`` is timed in interleaved rounds, the check switched on and off between them (the same
weights, buffer and optimizer: only the switch differs). Prints one JSON line:

  {"bench": "finite_checks", "steps_per_s_check": a, "steps_per_s_no_check": b, "cost": 1 - a / b, ...}

``cost`` is the share of a gradient step the check takes (median rounds; goal < 0.02); ``check_share_of_step`` is
the same from the check timed by itself (``check_alone_us``) over a step without it, which noise disturbs less. One
torch thread.

    python bench/finite_checks.py [--rounds 15] [--steps 300] [--torch-compile]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]
sys.path.insert(0, str(_HERE.parent))

import gymnasium as gym  # noqa: E402
import torch as th  # noqa: E402

from rlgen_plugins.rainbow.algorithm import Rainbow  # noqa: E402
from rlgen_plugins.rainbow.support import check_finite_step  # noqa: E402


def timed_train(model: Rainbow, steps: int, check: bool) -> float:
    """Gradient steps per second of one ``train(steps)`` call with the check on or off."""
    model._check_finite = check  # the instance attribute shadows the class switch
    start = time.perf_counter()
    model.train(gradient_steps=steps, batch_size=model.batch_size)
    return steps / (time.perf_counter() - start)


def check_alone_us(model: Rainbow, calls: int = 2_000) -> float:
    """Microseconds per :func:`check_finite_step` call on a sampled batch (median of 5 blocks): the check by itself,
    far less noisy than the difference of two step rates on a shared machine."""
    data = model.replay_buffer.sample(model.batch_size)
    loss, norm = th.tensor(1.0), th.tensor(1.0)
    blocks = []
    for _ in range(5):
        start = time.perf_counter()
        for _ in range(calls):
            check_finite_step(data, loss, norm, 0)
        blocks.append((time.perf_counter() - start) / calls * 1e6)
    return statistics.median(blocks)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=15, help="timed rounds per setting (interleaved)")
    parser.add_argument("--steps", type=int, default=300, help="gradient steps per round")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--torch-compile", action="store_true")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    th.set_num_threads(1)
    model = Rainbow("MlpPolicy", gym.make("CartPole-v1"), policy_kwargs=dict(net_arch=[64, 64]),
                    batch_size=args.batch_size, learning_starts=1_000, buffer_size=10_000, train_freq=1,
                    gradient_steps=1, torch_compile=args.torch_compile, seed=args.seed, device="cpu")
    model.learn(1_100)  # fill the buffer past learning_starts (and compile)
    for check in (True, False):  # warm-up of both paths
        timed_train(model, args.steps, check)
    rounds: dict[bool, list[float]] = {True: [], False: []}
    for r in range(args.rounds):
        order = (True, False) if r % 2 == 0 else (False, True)  # alternate which goes first
        for check in order:
            rounds[check].append(timed_train(model, args.steps, check))
    on, off = statistics.median(rounds[True]), statistics.median(rounds[False])
    paired = statistics.median(1 - a / b for a, b in zip(rounds[True], rounds[False]))
    alone = check_alone_us(model)
    print(json.dumps({
        "bench": "finite_checks", "torch_compile": args.torch_compile, "batch_size": args.batch_size,
        "net_arch": [64, 64], "steps_per_round": args.steps, "rounds": args.rounds,
        "steps_per_s_check": round(on, 1), "steps_per_s_no_check": round(off, 1),
        "ratio": round(on / off, 4), "cost": round(1 - on / off, 4), "cost_paired_median": round(paired, 4),
        "check_alone_us": round(alone, 2), "step_us_no_check": round(1e6 / off, 1),
        "check_share_of_step": round(alone * off / 1e6, 4), "goal_cost_below": 0.02,
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
