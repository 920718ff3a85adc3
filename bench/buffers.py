"""Benchmark: prioritised replay speed and memory (issue 3). Prints one JSON object per line.

Speed, capacity 2**20, batch 256, CartPole-shaped data, all contenders timed interleaved in the same run:
  * ``buffers.PrioritizedReplayBuffer``: ``sample`` + ``update_priorities``;
  * the textbook peer: SB3 ``ReplayBuffer`` whose indices come from a Python-loop segment tree (sum + min tree,
    one Python loop per sampled value and per updated index), same gather;
  * SB3's uniform ``ReplayBuffer.sample`` (the issue's 2x budget for ``sample``).
Times are microseconds per call: ``min`` (best block, least disturbed by other processes) and ``median`` over blocks.
Memory: bytes per stored transition (storage arrays + priority trees) for CartPole and 84x84x4 uint8 observations.

Frame dedup (issue 15), ``--part frames``: bytes per transition of 84x84x4 uint8 stacks for
``FrameStackReplayBuffer`` / ``PrioritizedReplayBuffer(frame_stack_dedup=True)`` against SB3's ``ReplayBuffer`` with
``optimize_memory_usage`` (and the total at 1M transitions), and ``sample(32)`` times of all of them, filled with
the same VecFrameStack-like stream (2**14 transitions, episodes of 50-400 steps), timed interleaved in the same run.

Run:  PYTHONPATH=. python bench/buffers.py   (or python -m bench.buffers) [--blocks 15] [--calls 40]
      [--part all|prioritized|frames]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable

# Run as a script, this file's folder comes first on sys.path and its name would shadow the ``buffers`` package.
_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != _HERE]

import numpy as np
import torch as th
from gymnasium import spaces
from stable_baselines3.common.buffers import ReplayBuffer

import buffers
from buffers import FrameStackReplayBuffer, PrioritizedReplayBuffer, SumTree

CAPACITY, BATCH = 2**20, 256
CARTPOLE_OBS = spaces.Box(-np.inf, np.inf, (4,), np.float32)
ATARI_OBS = spaces.Box(0, 255, (4, 84, 84), np.uint8)
ACTIONS = spaces.Discrete(2)


class LoopSegmentTree:
    """The usual textbook sum/min segment tree: Python lists, one Python loop per index."""

    def __init__(self, capacity: int, leaves: np.ndarray) -> None:
        self.capacity = capacity  # a power of two
        sums = np.zeros(2 * capacity)
        sums[capacity:] = leaves
        mins = np.full(2 * capacity, np.inf)
        mins[capacity:] = leaves
        for level in range(int(np.log2(capacity)) - 1, -1, -1):  # vectorised build, only to save set-up time
            lo, hi = 2**level, 2 ** (level + 1)
            sums[lo:hi] = sums[2 * lo : 2 * hi : 2] + sums[2 * lo + 1 : 2 * hi : 2]
            mins[lo:hi] = np.minimum(mins[2 * lo : 2 * hi : 2], mins[2 * lo + 1 : 2 * hi : 2])
        self.sums, self.mins = sums.tolist(), mins.tolist()

    def update(self, index: int, value: float) -> None:
        node = index + self.capacity
        self.sums[node] = value
        self.mins[node] = value
        node //= 2
        while node >= 1:
            self.sums[node] = self.sums[2 * node] + self.sums[2 * node + 1]
            self.mins[node] = min(self.mins[2 * node], self.mins[2 * node + 1])
            node //= 2

    def find_prefixsum_idx(self, mass: float) -> int:
        node = 1
        while node < self.capacity:
            if self.sums[2 * node] > mass:
                node = 2 * node
            else:
                mass -= self.sums[2 * node]
                node = 2 * node + 1
        return node - self.capacity


class LoopPERBuffer(ReplayBuffer):
    """SB3 ReplayBuffer sampling through ``LoopSegmentTree`` (the textbook prioritised buffer)."""

    def attach(self, tree: LoopSegmentTree, alpha: float = 0.5, beta: float = 0.4) -> None:
        self.tree, self.alpha, self.beta, self.max_priority = tree, alpha, beta, 1.0

    def sample_prioritized(self, batch_size: int):
        total = self.tree.sums[1]
        segment = total / batch_size
        indices = np.array([self.tree.find_prefixsum_idx((i + np.random.random()) * segment) for i in range(batch_size)])
        p_min = self.tree.mins[1] / total
        max_weight = (p_min * self.buffer_size) ** (-self.beta)
        weights = np.array([(self.tree.sums[i + self.tree.capacity] / total * self.buffer_size) ** (-self.beta)
                            for i in indices]) / max_weight
        return self._get_samples(indices), weights, indices

    def update_priorities(self, indices: np.ndarray, priorities: np.ndarray) -> None:
        for index, priority in zip(indices, priorities):
            self.tree.update(int(index), (priority + 1e-6) ** self.alpha)
            self.max_priority = max(self.max_priority, priority)


def time_interleaved(contenders: dict[str, Callable[[], object]], blocks: int, calls: int) -> dict[str, dict]:
    """Run each contender ``calls`` times per block, blocks interleaved; return min/median us per call."""
    per_call: dict[str, list[float]] = {name: [] for name in contenders}
    for fn in contenders.values():
        fn()  # warm-up (JIT, caches)
    for _ in range(blocks):
        for name, fn in contenders.items():
            n = max(1, calls // 20) if name.startswith("loop") else calls
            start = time.perf_counter()
            for _ in range(n):
                fn()
            per_call[name].append((time.perf_counter() - start) / n * 1e6)
    return {name: {"min_us": round(min(v), 2), "median_us": round(statistics.median(v), 2)} for name, v in per_call.items()}


def fill(buffer: ReplayBuffer, rng: np.random.Generator) -> None:
    buffer.observations[:] = rng.standard_normal(buffer.observations.shape, dtype=np.float32)
    if not buffer.optimize_memory_usage:
        buffer.next_observations[:] = rng.standard_normal(buffer.next_observations.shape, dtype=np.float32)
    buffer.actions[:] = rng.integers(0, 2, buffer.actions.shape)
    buffer.rewards[:] = 1.0
    buffer.dones[:] = rng.random(buffer.dones.shape) < 0.01
    buffer.pos, buffer.full = 0, True


def speed(blocks: int, calls: int) -> list[dict]:
    rng = np.random.default_rng(0)
    np.random.seed(0)
    raw = rng.exponential(1.0, CAPACITY)

    ours = PrioritizedReplayBuffer(CAPACITY, CARTPOLE_OBS, ACTIONS, device="cpu")
    fill(ours, rng)
    ours.update_priorities(np.arange(CAPACITY), raw)
    ours_n3 = PrioritizedReplayBuffer(CAPACITY, CARTPOLE_OBS, ACTIONS, device="cpu", n_steps=3)
    for name in ("observations", "next_observations", "actions", "rewards", "dones"):
        setattr(ours_n3, name, getattr(ours, name))  # share storage, separate tree
    ours_n3.pos, ours_n3.full = 0, True
    ours_n3.update_priorities(np.arange(CAPACITY), raw)
    uniform = ReplayBuffer(CAPACITY, CARTPOLE_OBS, ACTIONS, device="cpu")
    loop = LoopPERBuffer(CAPACITY, CARTPOLE_OBS, ACTIONS, device="cpu")
    for buf in (uniform, loop):
        for name in ("observations", "next_observations", "actions", "rewards", "dones"):
            setattr(buf, name, getattr(ours, name))
        buf.pos, buf.full = 0, True
    loop.attach(LoopSegmentTree(CAPACITY, (raw + 1e-6) ** 0.5))
    tree = SumTree(CAPACITY)
    tree.update(np.arange(CAPACITY), (raw + 1e-6) ** 0.5)

    new_p = lambda: rng.exponential(1.0, BATCH)  # noqa: E731

    def ours_sample_update() -> None:
        batch = ours.sample(BATCH)
        ours.update_priorities(batch.indices, new_p())

    def loop_sample_update() -> None:
        _, _, indices = loop.sample_prioritized(BATCH)
        loop.update_priorities(indices, new_p())

    def ours_tree_ops() -> None:
        values = (np.arange(BATCH) + np.random.random_sample(BATCH)) * (tree.total() / BATCH)
        tree.update(tree.find_prefixsum(values), new_p())

    def loop_tree_ops() -> None:
        seg = loop.tree.sums[1] / BATCH
        idx = [loop.tree.find_prefixsum_idx((i + np.random.random()) * seg) for i in range(BATCH)]
        for i, p in zip(idx, new_p()):
            loop.tree.update(i, p)

    times = time_interleaved(
        {
            "ours_sample_update": ours_sample_update,
            "loop_sample_update": loop_sample_update,
            "ours_sample": lambda: ours.sample(BATCH),
            "ours_sample_nstep3": lambda: ours_n3.sample(BATCH),
            "sb3_uniform_sample": lambda: uniform.sample(BATCH),
            "ours_tree_find_update": ours_tree_ops,
            "loop_tree_find_update": loop_tree_ops,
        },
        blocks,
        calls,
    )
    common = {"capacity": CAPACITY, "batch": BATCH, "unit": "us_per_call"}
    rows = [{"bench": f"buffers.{name}", **common, **t} for name, t in times.items()]
    ratio = lambda a, b, key: round(times[a][key] / times[b][key], 2)  # noqa: E731
    rows.append({"bench": "buffers.ratio", **common,
                 "loop_over_ours_sample_update_min": ratio("loop_sample_update", "ours_sample_update", "min_us"),
                 "loop_over_ours_sample_update_median": ratio("loop_sample_update", "ours_sample_update", "median_us"),
                 "loop_over_ours_tree_ops_min": ratio("loop_tree_find_update", "ours_tree_find_update", "min_us"),
                 "ours_over_sb3_sample_min": ratio("ours_sample", "sb3_uniform_sample", "min_us"),
                 "ours_over_sb3_sample_median": ratio("ours_sample", "sb3_uniform_sample", "median_us"),
                 "goal": "loop/ours >= 100, ours_sample/sb3_sample <= 2"})
    return rows


def memory() -> list[dict]:
    """Bytes per stored transition; arrays are allocated lazily (np.zeros), so nothing large is touched."""
    rows = []
    capacity = 2**16
    for label, space in (("cartpole", CARTPOLE_OBS), ("atari_84x84x4_uint8", ATARI_OBS)):
        for optimize in (False, True):
            kwargs = {"optimize_memory_usage": optimize, "handle_timeout_termination": not optimize}
            for cls in (ReplayBuffer, PrioritizedReplayBuffer):
                buf = cls(capacity, space, ACTIONS, device="cpu", **kwargs)
                arrays = [buf.observations, buf.actions, buf.rewards, buf.dones, buf.timeouts]
                if not optimize:
                    arrays.append(buf.next_observations)
                total = sum(a.nbytes for a in arrays) + (buf.tree.nbytes if hasattr(buf, "tree") else 0)
                rows.append({"bench": "buffers.bytes_per_transition", "obs": label, "buffer": cls.__name__,
                             "optimize_memory_usage": optimize, "bytes": round(total / capacity, 1)})
                del buf
    return rows


def buffer_bytes(buf: ReplayBuffer) -> int:
    """Bytes of a buffer's storage arrays (frames or observations, per-row arrays) and priority trees."""
    arrays = [buf.actions, buf.rewards, buf.dones, buf.timeouts]
    if getattr(buf, "frames", None) is not None:
        total = buf.frames.nbytes  # type: ignore[attr-defined]
    else:
        total = buf.observations.nbytes + (0 if buf.optimize_memory_usage else buf.next_observations.nbytes)
    return total + sum(a.nbytes for a in arrays) + (buf.tree.nbytes if hasattr(buf, "tree") else 0)


def frame_stream(steps: int, rng: np.random.Generator):
    """(obs, next_obs, done) of a VecFrameStack-like (4, 84, 84) stream: zero padding, episodes of 50-400 steps."""
    stack = np.zeros((1, 4, 84, 84), np.uint8)
    stack[0, 3] = rng.integers(0, 256, (84, 84), dtype=np.uint8)
    left = rng.integers(50, 401)
    for _ in range(steps):
        nxt = np.concatenate([stack[:, 1:], rng.integers(0, 256, (1, 1, 84, 84), dtype=np.uint8)], axis=1)
        left -= 1
        done = np.array([left == 0])
        yield stack, nxt, done
        if left == 0:
            stack = np.zeros_like(stack)
            stack[0, 3] = rng.integers(0, 256, (84, 84), dtype=np.uint8)
            left = rng.integers(50, 401)
        else:
            stack = nxt


def frames(blocks: int, calls: int) -> list[dict]:
    """Frame dedup: bytes per transition and sample(32) against SB3's optimize_memory_usage buffer."""
    rows: list[dict] = []
    # np.zeros is lazy, so nothing large is touched; SB3's 1M buffer (28 GB) is refused here, so it is measured at
    # 2**16 and scaled (its bytes per transition do not depend on the capacity).
    makers = {
        "frame_stack_replay_buffer": lambda c: FrameStackReplayBuffer(c, ATARI_OBS, spaces.Discrete(6), device="cpu"),
        "prioritized_frame_stack_dedup": lambda c: PrioritizedReplayBuffer(c, ATARI_OBS, spaces.Discrete(6),
                                                                           device="cpu", frame_stack_dedup=True),
        "sb3_replay_buffer_optimize_memory": lambda c: ReplayBuffer(c, ATARI_OBS, spaces.Discrete(6), device="cpu",
                                                                    optimize_memory_usage=True,
                                                                    handle_timeout_termination=False),
    }
    for name, make in makers.items():
        capacity = 2**16 if name.startswith("sb3") else 1_000_000
        buf = make(capacity)
        total = buffer_bytes(buf) / capacity * 1_000_000
        rows.append({"bench": "buffers.frames.bytes_per_transition", "obs": "atari_84x84x4_uint8", "buffer": name,
                     "measured_capacity": capacity, "bytes": round(total / 1_000_000, 1),
                     "gb_at_1M": round(total / 1e9, 3)})
        del buf

    # One torch thread, as the tests use: with two on these shared cores, th.tensor's parallel copy of a 0.9 MB
    # batch took ~16 ms instead of ~0.08 ms (OpenMP threads waiting on each other), which would swamp the gather.
    th.set_num_threads(1)
    capacity, n = 2**14, 2**14 + 2**12  # wraps
    rng = np.random.default_rng(0)
    np.random.seed(0)
    kwargs = {"device": "cpu"}
    contenders = {
        "sb3_optimize_memory": ReplayBuffer(capacity, ATARI_OBS, spaces.Discrete(6), optimize_memory_usage=True,
                                            handle_timeout_termination=False, **kwargs),
        "ours_uniform_dedup": FrameStackReplayBuffer(capacity, ATARI_OBS, spaces.Discrete(6), **kwargs),
        "ours_prioritized_dedup_nstep3": PrioritizedReplayBuffer(capacity, ATARI_OBS, spaces.Discrete(6), n_steps=3,
                                                                 frame_stack_dedup=True, warn_uniform_after=None,
                                                                 **kwargs),
    }
    add_us = {name: 0.0 for name in contenders}
    zero, info = np.zeros(1), [{}]
    for obs, nxt, done in frame_stream(n, rng):
        for name, buf in contenders.items():
            start = time.perf_counter()
            buf.add(obs, nxt, zero, zero, done, info)
            add_us[name] += time.perf_counter() - start
    per = contenders["ours_prioritized_dedup_nstep3"]
    per.update_priorities(np.arange(capacity), rng.exponential(1.0, capacity))
    times = time_interleaved({f"sample32_{name}": (lambda b=buf: b.sample(32)) for name, buf in contenders.items()},
                             blocks, calls)
    common = {"capacity": capacity, "batch": 32, "unit": "us_per_call", "obs": "atari_84x84x4_uint8",
              "torch_threads": th.get_num_threads()}
    for name, t in times.items():
        rows.append({"bench": f"buffers.frames.{name}", **common, **t})
    for name in contenders:
        rows.append({"bench": f"buffers.frames.add_{name}", **common, "mean_us": round(add_us[name] / n * 1e6, 2)})
    ref = times["sample32_sb3_optimize_memory"]
    for name in ("ours_uniform_dedup", "ours_prioritized_dedup_nstep3"):
        mine = times[f"sample32_{name}"]
        rows.append({"bench": "buffers.frames.ratio", "contender": name, **common,
                     "ours_over_sb3_sample32_min": round(mine["min_us"] / ref["min_us"], 2),
                     "ours_over_sb3_sample32_median": round(mine["median_us"] / ref["median_us"], 2),
                     "goal": "ours/sb3 <= 1 (sample no slower), bytes <= 8000 per transition"})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--blocks", type=int, default=15)
    parser.add_argument("--calls", type=int, default=40)
    parser.add_argument("--part", choices=["all", "prioritized", "frames"], default="all")
    args = parser.parse_args()
    print(json.dumps({"bench": "buffers.env", "python": platform.python_version(), "numpy": np.__version__,
                      "numba": buffers._jit.HAS_NUMBA, "date": time.strftime("%Y-%m-%d"),
                      "cpus": os.cpu_count(), "loadavg_1min": round(os.getloadavg()[0], 2)}))
    parts = {"prioritized": lambda: memory() + speed(args.blocks, args.calls),
             "frames": lambda: frames(args.blocks, args.calls)}
    for name, part in parts.items():
        if args.part in ("all", name):
            for row in part():
                print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
