"""FrameStore pickling (what a checkpoint's replay_buffer.pkl holds): only the frame slots and rows written so far,
every array back as it was on load, and pickles of the earlier full-array layout still loading."""
import pickle

import numpy as np
import torch as th
from gymnasium import spaces
from hypothesis import given, settings
from test_frame_stack_buffer import SPACE, build, streams

from buffers import FrameStackReplayBuffer


@settings(max_examples=30, deadline=None, derandomize=True)
@given(streams())
def test_pickle_keeps_every_array_of_the_frame_store(case):
    buffer, _, _ = build(FrameStackReplayBuffer, case)
    copy = pickle.loads(pickle.dumps(buffer))
    for name in ("frames", "newest", "written", "continues", "oldest", "invalidated"):
        np.testing.assert_array_equal(getattr(copy.frames, name), getattr(buffer.frames, name), err_msg=name)
    assert copy.frames.frames.shape == buffer.frames.frames.shape and copy.frames.added == buffer.frames.added


def one_atari_episode(capacity: int, steps: int) -> tuple[FrameStackReplayBuffer, list[np.ndarray]]:
    """A buffer of ``capacity`` holding ``steps`` steps of one episode of random 84x84 frames (reward t at step
    t), and the frames (3 zero paddings first, as VecFrameStack gives)."""
    buffer = FrameStackReplayBuffer(capacity, SPACE, spaces.Discrete(6), device="cpu")
    rng = np.random.default_rng(0)
    frames = [np.zeros((1, 84, 84), np.uint8)] * 3 + [rng.integers(0, 256, (1, 84, 84), dtype=np.uint8)]
    for t in range(steps):
        new = rng.integers(0, 256, (1, 84, 84), dtype=np.uint8)
        obs, next_obs = np.concatenate(frames[-4:])[None], np.concatenate([*frames[-3:], new])[None]
        buffer.add(obs, next_obs, np.array([[t % 6]]), np.array([float(t)]), np.array([False]), [{}])
        frames.append(new)
    return buffer, frames


def test_a_pickle_early_in_a_run_costs_the_fill_not_the_capacity():
    """A checkpoint pickles the buffer: 24 frames of 84x84 held in room for 10k transitions (75 MB of frames)."""
    buffer, frames = one_atari_episode(10_000, 20)
    blob = pickle.dumps(buffer)
    assert 24 * 84 * 84 < len(blob) < 10**6 < buffer.frames.nbytes
    copy = pickle.loads(blob)
    np.random.seed(1)
    mine = buffer.sample(8)
    np.random.seed(1)
    theirs = copy.sample(8)
    for a, b in zip(mine, theirs):
        assert (a is None and b is None) or th.equal(a, b)
    t = mine.rewards[:, 0].long()
    for i in range(8):  # each drawn observation is the stack the env gave at that step
        np.testing.assert_array_equal(theirs.observations[i].numpy(), np.concatenate(frames[t[i]: t[i] + 4]))


def test_a_pickle_of_full_arrays_loads_as_it_was():
    """The layout before the frame store trimmed its pickles: the whole preallocated arrays."""
    store = one_atari_episode(64, 5)[0].frames
    full_state = dict(store.__dict__)  # what pickle stored for a FrameStore without __getstate__
    copy = type(store).__new__(type(store))
    copy.__setstate__(full_state)
    assert copy.frames is store.frames and copy.newest is store.newest  # kept as they are: no second allocation
    np.testing.assert_array_equal(copy.frames[: store.written[0]], store.frames[: store.written[0]])
