"""Frame-deduplicating replay: rebuilt stacks equal what the env produced; bad input; SB3 wiring; memory."""
import pickle

import gymnasium as gym
import numpy as np
import pytest
import torch as th
from gymnasium import spaces
from hypothesis import given, settings
from hypothesis import strategies as st
from stable_baselines3 import DQN
from stable_baselines3.common.buffers import ReplayBuffer
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.envs import FakeImageEnv
from stable_baselines3.common.vec_env import VecFrameStack

from buffers import FrameStackReplayBuffer, PrioritizedReplayBuffer

ACT = spaces.Discrete(1_000_000)  # the action stored for step t of env e is t * n_envs + e: it names the transition
H, W = 3, 2


class Stream:
    """Frame stacks of ``n_envs`` envs, as VecFrameStack (zero padding) or FrameStackObservation (first-frame
    padding) make them, with every frame unique; records what each step's obs and next_obs were."""

    def __init__(self, n_envs, k, channels, axis, padding, seed=0):
        self.n_envs, self.k, self.axis, self.padding = n_envs, k, axis, padding
        self.frame_shape = (channels, H, W) if axis == 0 else (H, W, channels)
        self.rng = np.random.default_rng(seed)
        self.count = 0
        self.stacks = [self._reset(e) for e in range(n_envs)]
        self.obs, self.next_obs, self.newest = [], [], []  # per step: (n_envs, *shape) arrays; newest frame numbers
        self.written = [0] * n_envs  # frames the spec says the buffer has written per env
        self.starting = [True] * n_envs

    def _frame(self, env):
        frame = self.rng.integers(0, 256, self.frame_shape, dtype=np.uint8)
        frame.flat[:3] = (self.count % 256, self.count // 256, env + 1)  # unique: no two frames are equal
        self.count += 1
        return frame

    def _reset(self, env):
        first = self._frame(env)
        pad = np.zeros_like(first) if self.padding == "zero" else first
        return [pad] * (self.k - 1) + [first]

    def stack(self, frames):
        return np.concatenate(frames, axis=self.axis)

    def step(self, events):
        """Advance every env one step; events[e] in {"", "term", "trunc"}. Returns SB3's add() arguments."""
        obs = np.stack([self.stack(s) for s in self.stacks])
        next_obs, newest = [], []
        for e, event in enumerate(events):
            self.written[e] += self.k if self.starting[e] else 0
            newest.append(self.written[e] - 1)
            self.written[e] += 1
            moved = self.stacks[e][1:] + [self._frame(e)]
            next_obs.append(self.stack(moved))  # at an episode end: SB3's terminal_observation
            self.starting[e] = bool(event)
            self.stacks[e] = self._reset(e) if event else moved
        next_obs = np.stack(next_obs)
        self.obs.append(obs)
        self.next_obs.append(next_obs)
        self.newest.append(newest)
        t = len(self.obs) - 1
        action = np.arange(self.n_envs) + t * self.n_envs
        done = np.array([bool(x) for x in events])
        infos = [{"TimeLimit.truncated": x == "trunc"} for x in events]
        return obs, next_obs, action, np.full(self.n_envs, float(t)), done, infos

    def valid(self, t, e, rows, slots):
        """The spec: step t of env e is stored and all its frames are among the env's last ``slots`` frames."""
        return t >= len(self.obs) - rows and self.newest[t][e] - self.k + 1 >= self.written[e] - slots


@st.composite
def streams(draw):
    n_envs, rows, k = draw(st.integers(1, 3)), draw(st.integers(2, 8)), draw(st.integers(2, 4))
    channels, axis, padding = draw(st.integers(1, 2)), draw(st.sampled_from([0, 2])), draw(st.sampled_from(["zero", "first"]))
    slots = draw(st.one_of(st.none(), st.integers(k + 1, k + 8)))
    steps = draw(st.integers(1, 3 * rows))
    events = draw(st.lists(st.lists(st.sampled_from(["", "", "", "term", "trunc"]), min_size=n_envs, max_size=n_envs),
                           min_size=steps, max_size=steps))
    return n_envs, rows, k, channels, axis, padding, slots, events


def build(cls, case, **kwargs):
    n_envs, rows, k, channels, axis, padding, slots, events = case
    stream = Stream(n_envs, k, channels, axis, padding)
    shape = stream.stack(stream.stacks[0]).shape
    space = spaces.Box(0, 255, shape, np.uint8)
    buffer = cls(rows * n_envs, space, ACT, device="cpu", n_envs=n_envs, frame_stack_dedup=True, frame_stack=k,
                 stack_axis=axis, frames_per_env=slots, **kwargs)
    for ev in events:
        buffer.add(*stream.step(ev))
    return buffer, stream, (rows + rows // 16 + k + 1) if slots is None else slots


def last_step(t, e, events, n_steps):
    """Brute force: the last step of the n-step window from step t of env e (stops at an end or the newest step)."""
    for j in range(n_steps):
        s = t + j
        if events[s][e] or s == len(events) - 1 or j == n_steps - 1:
            return s


@settings(max_examples=40, deadline=None, derandomize=True)
@given(streams(), st.integers(1, 3))
def test_prioritized_rebuilds_exactly_what_the_env_produced(case, n_steps):
    n_envs, rows, k, *_, events = case
    buffer, stream, slots = build(PrioritizedReplayBuffer, case, n_steps=n_steps, gamma=0.5)
    expected_valid = {(t, e) for t in range(len(events)) for e in range(n_envs) if stream.valid(t, e, rows, slots)}
    positive = int((buffer.tree.leaves[: buffer.n_stored()] > 0).sum())
    assert positive == len(expected_valid)  # overwritten-frame transitions have priority 0, all others are there
    np.random.seed(0)
    batch = buffer.sample(positive, beta=1.0)  # equal priorities, stratified: each valid transition once
    seen = set()
    for i, flat in enumerate(batch.indices):
        t, e = divmod(int(batch.actions[i, 0]), n_envs)
        assert flat == (t % rows) * n_envs + e and (t, e) in expected_valid
        np.testing.assert_array_equal(batch.observations[i].numpy(), stream.obs[t][e])
        last = last_step(t, e, events, n_steps)
        np.testing.assert_array_equal(batch.next_observations[i].numpy(), stream.next_obs[last][e])
        assert batch.discounts[i, 0].item() == 0.5 ** (last - t + 1)
        assert batch.dones[i, 0].item() == float(events[last][e] == "term")
        seen.add((t, e))
    assert seen == expected_valid
    # Priorities set on stale transitions stay 0; on valid ones they take effect.
    buffer.update_priorities(np.arange(buffer.n_stored()), np.full(buffer.n_stored(), 3.0))
    assert int((buffer.tree.leaves[: buffer.n_stored()] > 0).sum()) == len(expected_valid)


@settings(max_examples=30, deadline=None, derandomize=True)
@given(streams())
def test_uniform_buffer_rebuilds_exactly_and_never_draws_stale_transitions(case):
    n_envs, rows, k, *_, events = case
    buffer, stream, slots = build(FrameStackReplayBuffer, case)
    assert isinstance(buffer, ReplayBuffer)
    np.random.seed(0)
    batch = buffer.sample(64)
    assert batch.observations.shape == (64, *stream.obs[0].shape[1:]) and batch.observations.dtype == th.uint8
    for i in range(64):
        t, e = divmod(int(batch.actions[i, 0]), n_envs)
        assert stream.valid(t, e, rows, slots)
        np.testing.assert_array_equal(batch.observations[i].numpy(), stream.obs[t][e])
        np.testing.assert_array_equal(batch.next_observations[i].numpy(), stream.next_obs[t][e])
        assert batch.rewards[i, 0].item() == t
        assert batch.dones[i, 0].item() == float(events[t][e] == "term")  # a truncation is not a termination


def test_uniform_draw_is_uniform_over_valid_transitions():
    """Rejection redraws keep the law uniform: 7 valid of 8 stored, each drawn about 1/7 of the time."""
    stream = Stream(1, 2, 1, 0, "zero")
    space = spaces.Box(0, 255, (2, H, W), np.uint8)
    buffer = FrameStackReplayBuffer(8, space, ACT, device="cpu", frame_stack=2, frames_per_env=9)
    for t in range(8):
        buffer.add(*stream.step([""]))  # 2 + 8 frames written, 9 slots: step 0 (frames 0, 1, 2) lost frame 0
    valid = [t for t in range(8) if stream.valid(t, 0, 8, 9)]
    assert valid == [1, 2, 3, 4, 5, 6, 7]
    np.random.seed(0)
    counts = np.bincount(buffer.sample(7000).actions[:, 0].numpy(), minlength=8)
    assert counts[0] == 0 and np.all(np.abs(counts[1:] - 1000) < 150)


SPACE = spaces.Box(0, 255, (4, 84, 84), np.uint8)


@pytest.mark.parametrize("space, kwargs, match", [
    (spaces.Box(0.0, 1.0, (4, 84, 84), np.float32), {}, "uint8 Box"),
    (spaces.Box(0, 255, (4, 84), np.uint8), {}, "3 dimensions"),
    (spaces.Discrete(3), {}, "uint8 Box"),
    (spaces.Box(0, 255, (1, 84, 84), np.uint8), {}, "size 1"),
    (spaces.Box(0, 255, (84, 84, 1), np.uint8), {}, "size 1"),
    (SPACE, {"frame_stack": 3}, "frame_stack must be an integer >= 2 dividing the size 4"),
    (SPACE, {"frame_stack": 1}, "frame_stack"),
    (SPACE, {"stack_axis": 3}, "stack_axis must be one of"),
    (SPACE, {"frames_per_env": 4}, "frames_per_env must be an integer > frame_stack=4"),
    (SPACE, {"optimize_memory_usage": True, "handle_timeout_termination": False}, "optimize_memory_usage"),
    (SPACE, {"frame_stack_dedup": "yes"}, "frame_stack_dedup must be True or False"),
    (SPACE, {"frame_stack_dedup": False, "frame_stack": 4}, "need frame_stack_dedup=True"),
])
@pytest.mark.parametrize("cls", [FrameStackReplayBuffer, PrioritizedReplayBuffer])
def test_not_a_frame_stack_is_a_construction_error(cls, space, kwargs, match):
    kwargs = {"frame_stack_dedup": True, **kwargs}
    with pytest.raises(ValueError, match=match):
        cls(16, space, ACT, device="cpu", **kwargs)


def test_stack_axis_and_frame_stack_defaults():
    first = FrameStackReplayBuffer(16, SPACE, ACT, device="cpu").frames
    assert (first.stack_axis, first.frame_stack, first.frame_shape) == (0, 4, (1, 84, 84))
    last = FrameStackReplayBuffer(16, spaces.Box(0, 255, (84, 84, 12), np.uint8), ACT, device="cpu",
                                  frame_stack=4).frames
    assert (last.stack_axis, last.frame_stack, last.frame_shape) == (2, 4, (84, 84, 3))
    assert first.frames_per_env == 16 + 1 + 4 + 1
    assert not hasattr(FrameStackReplayBuffer(16, SPACE, ACT, device="cpu"), "observations")


def snapshot(buffer):
    f = buffer.frames
    return (buffer.pos, f.written.copy(), f.continues.copy(), f.frames.copy(), f.newest.copy(),
            buffer.actions.copy(), buffer.tree.leaves.copy())


@pytest.mark.parametrize("bad", ["not_shifted", "not_continued", "wrong_shape"])
def test_bad_stacks_raise_at_add_and_store_nothing(bad):
    stream = Stream(2, 3, 1, 0, "zero")
    buffer = PrioritizedReplayBuffer(8, spaces.Box(0, 255, (3, H, W), np.uint8), ACT, device="cpu", n_envs=2,
                                     frame_stack_dedup=True, stack_axis=0)
    buffer.add(*stream.step(["", ""]))
    obs, next_obs, action, reward, done, infos = stream.step(["", ""])
    before = snapshot(buffer)
    if bad == "not_shifted":
        next_obs[1, 0] += 1  # env 1's next_obs does not start with obs's frames 1..k-1
        match = "next_obs of env 1 is not obs moved on by one frame along stack_axis=0 .frame_stack=3."
    elif bad == "not_continued":
        obs[1, 2] += 1
        next_obs[1, 1] += 1  # env 1 stays a consistent stack, but not the one its previous next_obs promised
        match = "obs of env 1 does not continue the previous step's next_obs, although that step was not done"
    else:
        obs, match = obs[:, :2], r"obs must have shape \(2, 3, 3, 2\)"
    with pytest.raises(ValueError, match=match):
        buffer.add(obs, next_obs, action, reward, done, infos)
    for a, b in zip(before, snapshot(buffer)):
        np.testing.assert_array_equal(a, b)


def test_after_done_a_new_stack_is_accepted():
    stream = Stream(1, 2, 1, 0, "zero")
    buffer = FrameStackReplayBuffer(8, spaces.Box(0, 255, (2, H, W), np.uint8), ACT, device="cpu")
    buffer.add(*stream.step(["trunc"]))
    buffer.add(*stream.step([""]))  # reset stack [0, f]: does not continue, and need not
    np.random.seed(0)
    batch = buffer.sample(20)
    t = batch.actions[:, 0].numpy()
    for i in range(20):
        np.testing.assert_array_equal(batch.next_observations[i].numpy(), stream.next_obs[t[i]][0])
    assert buffer.frames.written[0] == 2 + 1 + 2 + 1


def test_pickle_reset_and_keep_adding():
    stream = Stream(1, 2, 1, 0, "zero")
    buffer = PrioritizedReplayBuffer(6, spaces.Box(0, 255, (2, H, W), np.uint8), ACT, device="cpu",
                                     frame_stack_dedup=True, n_steps=2)
    for _ in range(4):
        buffer.add(*stream.step([""]))
    copy = pickle.loads(pickle.dumps(buffer))
    copy.add(*stream.step([""]))  # continues the pickled episode
    np.random.seed(0)
    batch = copy.sample(5, beta=1.0)
    for i, a in enumerate(batch.actions[:, 0].numpy()):
        np.testing.assert_array_equal(batch.observations[i].numpy(), stream.obs[a][0])
    copy.reset()
    assert copy.size() == 0 and copy.frames.written[0] == 0
    copy.add(*stream.step([""]))  # after reset the next add starts an episode: no continuation check


def test_bytes_per_transition_meets_the_8_gb_goal():
    """84x84x4 uint8: about 7.5 KB per transition (frames + per-row arrays + tree) against SB3's 28 KB."""
    capacity = 2**16
    ours = PrioritizedReplayBuffer(capacity, SPACE, spaces.Discrete(6), device="cpu", frame_stack_dedup=True)
    per_row = sum(a.nbytes for a in (ours.actions, ours.rewards, ours.dones, ours.timeouts))
    total = (ours.frames.nbytes + per_row + ours.tree.nbytes) / capacity
    assert 7056 < total < 8000  # 1M transitions: under 8 GB
    sb3 = ReplayBuffer(capacity, SPACE, spaces.Discrete(6), device="cpu", optimize_memory_usage=True,
                       handle_timeout_termination=False)
    assert sb3.observations.nbytes / capacity > 3.5 * total


def fake_image_env(n_envs):
    return VecFrameStack(make_vec_env(FakeImageEnv, n_envs=n_envs, seed=0,
                                      env_kwargs={"screen_height": 36, "screen_width": 36}), 4)


def assert_consistent(buffer, n):
    """Every valid transition: next_obs is obs moved on by one frame (the real wrappers' stacks were accepted)."""
    rows, envs = np.divmod(np.arange(n), buffer.n_envs)
    keep = buffer.frames.valid(rows, envs)
    obs, nxt = buffer.frames.gather(rows[keep], envs[keep], rows[keep])
    np.testing.assert_array_equal(obs[:, 1:], nxt[:, :-1])
    return keep


def test_dqn_cnn_learns_with_frame_stack_replay_buffer():
    env = fake_image_env(2)  # 10-step episodes, VecFrameStack(4); SB3 adds VecTransposeImage: (4, 36, 36)
    model = DQN("CnnPolicy", env, learning_starts=100, batch_size=8, buffer_size=400, train_freq=4,
                replay_buffer_class=FrameStackReplayBuffer, replay_buffer_kwargs={"frame_stack": 4},
                policy_kwargs={"net_arch": [8], "features_extractor_kwargs": {"features_dim": 16}}, seed=0,
                device="cpu")
    model.learn(300)
    buffer = model.replay_buffer
    assert isinstance(buffer, FrameStackReplayBuffer) and buffer.frames.obs_shape == (4, 36, 36)
    assert buffer.size() == 152 and buffer.timeouts.sum() > 0  # 2 envs: 152 steps of 2; truncations recorded
    keep = assert_consistent(buffer, buffer.size() * 2)
    assert keep.all()  # per env 16 episode starts and 152 steps: 16 * 4 + 152 = 216 frames, in 200 + 12 + 5 slots
    assert buffer.sample(8).observations.shape == (8, 4, 36, 36)


def test_prioritized_dedup_in_a_plain_loop_matches_the_env():
    """VecFrameStack (channel-last, zero padding) with SB3's terminal_observation handling, n-step, 2 envs."""
    env = fake_image_env(2)
    buffer = PrioritizedReplayBuffer(60, env.observation_space, env.action_space, device="cpu", n_envs=2,
                                     frame_stack_dedup=True, n_steps=3, gamma=0.5)
    assert buffer.frames.stack_axis == 2
    obs, seen = env.reset(), []
    for _ in range(45):  # wraps the 30 rows
        action = np.array([env.action_space.sample() for _ in range(2)])
        new_obs, reward, done, infos = env.step(action)
        next_obs = new_obs.copy()
        for i in np.flatnonzero(done):
            next_obs[i] = infos[i]["terminal_observation"]
        buffer.add(obs, next_obs, action, reward, done, infos)
        seen.append((obs, next_obs, done))
        obs = new_obs
    np.random.seed(0)
    for _ in range(3):
        batch = buffer.sample(16)
        rows, envs = np.divmod(batch.indices, 2)
        for i in range(16):
            t = 15 + (rows[i] - buffer.pos) % 30  # rows hold steps 15..44; the oldest sits at pos
            np.testing.assert_array_equal(batch.observations[i].numpy(), seen[t][0][envs[i]])
            last = next(s for s in range(t, t + 3) if seen[s][2][envs[i]] or s in (44, t + 2))
            np.testing.assert_array_equal(batch.next_observations[i].numpy(), seen[last][1][envs[i]])
        buffer.update_priorities(batch.indices, np.random.random_sample(16))


class GrayImageEnv(gym.Env):
    """(36, 36) uint8 frames, 7-step episodes ending in a termination; FrameStackObservation stacks them on axis 0."""

    observation_space = spaces.Box(0, 255, (36, 36), np.uint8)
    action_space = spaces.Discrete(2)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        return self.observation_space.sample(), {}

    def step(self, action):
        self.t += 1
        return self.observation_space.sample(), float(action), self.t >= 7, False, {}


def test_dqn_with_gymnasium_frame_stack_observation():
    """FrameStackObservation pads with copies of the first frame ("reset"): those stacks are stored exactly too."""
    env = gym.wrappers.FrameStackObservation(GrayImageEnv(), 4)
    model = DQN("CnnPolicy", env, learning_starts=50, batch_size=8, buffer_size=200, train_freq=4,
                replay_buffer_class=FrameStackReplayBuffer,
                policy_kwargs={"net_arch": [8], "features_extractor_kwargs": {"features_dim": 16}}, seed=0,
                device="cpu")
    model.learn(120)
    buffer = model.replay_buffer
    assert buffer.frames.stack_axis == 0 and buffer.frames.frame_shape == (1, 36, 36)
    keep = assert_consistent(buffer, buffer.size())
    starts = np.flatnonzero(np.r_[1.0, buffer.dones[: buffer.size() - 1, 0]] > 0)  # rows that begin an episode
    obs, _ = buffer.frames.gather(starts, np.zeros_like(starts), starts)
    assert keep.all() and (obs == obs[:, -1:]).all()  # each first stack is its first frame four times


def test_without_dedup_it_is_sb3_replay_buffer():
    space = spaces.Box(0, 255, (2, H, W), np.uint8)
    ours = FrameStackReplayBuffer(6, space, ACT, device="cpu", frame_stack_dedup=False)
    ref = ReplayBuffer(6, space, ACT, device="cpu")
    stream = Stream(1, 2, 1, 0, "zero")
    for t in range(9):
        step = stream.step(["term" if t == 4 else ""])
        ours.add(*step)
        ref.add(*step)
    assert ours.frames is None
    for seed in range(3):
        np.random.seed(seed)
        a = ours.sample(5)
        np.random.seed(seed)
        b = ref.sample(5)
        assert a.discounts is None and b.discounts is None
        for x, y in zip(a[:5], b[:5]):
            np.testing.assert_array_equal(x.numpy(), y.numpy())


def test_warns_before_allocating_more_frames_than_memory(monkeypatch):
    import buffers.frame_store as frame_store

    if frame_store.psutil is None:
        pytest.skip("psutil is not installed (the check is skipped, as in SB3)")
    monkeypatch.setattr(frame_store.psutil, "virtual_memory", lambda: type("Memory", (), {"available": 10**6})())
    with pytest.warns(UserWarning, match=r"enough memory .* frames 0\.49GB > 0\.00GB"):
        FrameStackReplayBuffer(2**16, SPACE, ACT, device="cpu")  # 2**16 + 2**12 + 5 slots of 7,056 bytes (lazy)

