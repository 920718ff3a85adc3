"""PrioritizedReplayBuffer: priorities, sampling distribution, importance weights, bad input, SB3 interplay, Dict obs."""
import pickle

import gymnasium as gym
import numpy as np
import pytest
import torch as th
from gymnasium import spaces
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import chisquare
from stable_baselines3 import DQN
from stable_baselines3.common.buffers import ReplayBuffer

from buffers import (
    DictPrioritizedReplayBuffer,
    DictPrioritizedReplayBufferSamples,
    PrioritizedReplayBuffer,
    PrioritizedReplayBufferSamples,
)

OBS = spaces.Box(-1.0, 1.0, (3,), np.float32)
ACT = spaces.Discrete(2)


def make(n=20, n_envs=1, rows=None, **kwargs):
    """A buffer of ``rows`` rows (default n) holding n transitions per env with distinct observations."""
    buffer = PrioritizedReplayBuffer((rows or n) * n_envs, OBS, ACT, device="cpu", n_envs=n_envs, **kwargs)
    for t in range(n):
        obs = np.full((n_envs, 3), t / 100, dtype=np.float32)
        buffer.add(obs, obs, np.zeros(n_envs), np.ones(n_envs), np.zeros(n_envs), [{}] * n_envs)
    return buffer


def test_is_an_sb3_replay_buffer_and_sample_fields():
    buffer = make(20, n_envs=2, n_steps=3)
    assert isinstance(buffer, ReplayBuffer)
    batch = buffer.sample(8)
    assert isinstance(batch, PrioritizedReplayBufferSamples)
    assert batch.observations.shape == (8, 3) and batch.actions.shape == (8, 1)
    for name in ("dones", "rewards", "discounts", "weights"):
        assert getattr(batch, name).shape == (8, 1) and getattr(batch, name).dtype == th.float32
    assert isinstance(batch.indices, np.ndarray) and batch.indices.dtype == np.int64
    assert ((batch.indices >= 0) & (batch.indices < 40)).all()


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"alpha": -0.1}, "alpha"), ({"alpha": float("nan")}, "alpha"),
        ({"beta": 0.0}, "beta"), ({"beta": 1.5}, "beta"),
        ({"epsilon": 0.0}, "epsilon"), ({"epsilon": -1e-6}, "epsilon"),
        ({"n_steps": 0}, "n_steps"), ({"n_steps": 2.5}, "n_steps"),
        ({"gamma": -0.1}, "gamma"), ({"gamma": 1.01}, "gamma"),
    ],
)
def test_bad_hyperparameters_name_the_argument(kwargs, name):
    with pytest.raises(ValueError, match=name):
        PrioritizedReplayBuffer(10, OBS, ACT, device="cpu", **kwargs)


def test_beta_is_settable_and_validated():
    buffer = make(5)
    buffer.beta = 1.0
    with pytest.raises(ValueError, match="beta"):
        buffer.beta = 0.0
    assert buffer.beta == 1.0
    with pytest.raises(ValueError, match="beta"):
        buffer.sample(2, beta=2.0)


def test_new_transitions_get_max_priority_seen():
    buffer = make(4, rows=8, alpha=0.5, epsilon=1e-6)
    assert buffer.tree.leaves[:4] == pytest.approx([(1 + 1e-6) ** 0.5] * 4)  # max starts at 1
    buffer.update_priorities(np.array([0, 1]), np.array([9.0, 0.0]))
    assert buffer.max_priority == 9.0
    obs = np.zeros((1, 3), dtype=np.float32)
    buffer.add(obs, obs, np.zeros(1), np.zeros(1), np.zeros(1), [{}])
    assert buffer.tree.leaves[[0, 1, 4]] == pytest.approx([3.0, 1e-3, 3.0], rel=1e-5)  # (p + eps) ** alpha


def test_update_priorities_duplicates_last_wins_and_accepts_tensors():
    buffer = make(6, alpha=1.0)
    buffer.update_priorities(th.tensor([2, 5, 2]), th.tensor([4.0, 1.0, 7.0]))
    assert buffer.tree.leaves[[2, 5]] == pytest.approx([7.0, 1.0])
    assert buffer.max_priority == 7.0


@pytest.mark.parametrize(
    "indices, priorities, match",
    [
        ([0, 1], [1.0, -1.0], "non-negative"),
        ([0, 1], [np.nan, 1.0], "finite"),
        ([0, 1], [1.0, np.inf], "finite"),
        ([0, 10], [1.0, 1.0], "stored"),  # 10 transitions stored out of capacity 20
        ([-1, 1], [1.0, 1.0], "stored"),
        ([0, 1, 2], [1.0, 1.0], "same length"),
    ],
)
def test_bad_priorities_raise_and_leave_state_unchanged(indices, priorities, match):
    buffer = PrioritizedReplayBuffer(20, OBS, ACT, device="cpu")
    obs = np.zeros((1, 3), dtype=np.float32)
    for _ in range(10):
        buffer.add(obs, obs, np.zeros(1), np.zeros(1), np.zeros(1), [{}])
    buffer.update_priorities(np.arange(10), np.arange(10.0))
    leaves, top = buffer.tree.leaves.copy(), buffer.max_priority
    with pytest.raises(ValueError, match=match):
        buffer.update_priorities(np.array(indices), np.array(priorities))
    np.testing.assert_array_equal(buffer.tree.leaves, leaves)
    assert buffer.max_priority == top


def test_sampling_errors():
    empty = PrioritizedReplayBuffer(10, OBS, ACT, device="cpu")
    with pytest.raises(ValueError, match="empty"):
        empty.sample(1)
    buffer = make(5, n_envs=2)
    np.random.seed(0)
    repeated = buffer.sample(25).indices  # with replacement, as SB3's buffers: more than the 10 stored
    assert repeated.shape == (25,) and set(repeated.tolist()) == set(range(10))
    with pytest.raises(ValueError, match="batch_size"):
        buffer.sample(0)


@settings(max_examples=12, deadline=None, derandomize=True)
@given(st.lists(st.floats(0.0, 10.0), min_size=2, max_size=12), st.sampled_from([0.0, 0.6, 1.0]),
       st.sampled_from([1, 2]))
def test_sampling_distribution_chi_square(raw, alpha, n_envs):
    """Counts over many stratified draws match P(i) = p_i**alpha / sum_k p_k**alpha (fixed seed)."""
    n = -(-len(raw) // n_envs)
    raw = (raw + raw)[: n * n_envs]
    buffer = make(n, n_envs=n_envs, alpha=alpha, epsilon=1e-2)
    buffer.update_priorities(np.arange(n * n_envs), np.array(raw))
    expected = (np.array(raw) + 1e-2) ** alpha
    expected /= expected.sum()
    np.random.seed(0)
    draws = np.concatenate([buffer.sample(min(8, n * n_envs)).indices for _ in range(500)])
    counts = np.bincount(draws, minlength=n * n_envs)
    assert chisquare(counts, expected * len(draws)).pvalue > 1e-3
    # The same test rejects a wrong law (the opposite ordering of priorities), so it can fail.
    if np.ptp(expected) > 0.1:
        wrong = expected[::-1] if not np.allclose(expected, expected[::-1]) else np.roll(expected, 1)
        assert chisquare(counts, wrong * len(draws)).pvalue < 1e-3


@settings(max_examples=25, deadline=None, derandomize=True)
@given(st.lists(st.floats(0.0, 100.0), min_size=1, max_size=30), st.floats(0.0, 1.0),
       st.floats(0.01, 1.0))
def test_importance_weights_match_formula(raw, alpha, beta):
    buffer = make(len(raw), alpha=alpha)
    buffer.update_priorities(np.arange(len(raw)), np.array(raw))
    np.random.seed(0)
    batch = buffer.sample(len(raw), beta=beta)
    prob = (np.array(raw) + buffer.epsilon) ** alpha
    prob /= prob.sum()
    w = (len(raw) * prob) ** -beta  # PER: w_i = (N P(i))**-beta, normalised by the largest over the buffer
    expected = w[batch.indices] / w.max()
    np.testing.assert_allclose(batch.weights[:, 0].numpy(), expected, rtol=1e-5)
    assert batch.weights.max().item() <= 1.0 + 1e-6


def test_optimize_memory_usage_never_samples_the_overwritten_row():
    buffer = PrioritizedReplayBuffer(6, OBS, ACT, device="cpu", optimize_memory_usage=True,
                                     handle_timeout_termination=False)
    for t in range(9):  # wraps: pos ends at 3, whose observation now holds step 8's next_obs
        obs = np.full((1, 3), t / 100, dtype=np.float32)
        buffer.add(obs, obs + 0.001, np.zeros(1), np.ones(1), np.zeros(1), [{}])
    np.random.seed(0)
    draws = np.concatenate([buffer.sample(5).indices for _ in range(50)])
    assert buffer.pos == 3 and 3 not in draws and set(draws.tolist()) == {0, 1, 2, 4, 5}
    buffer.update_priorities(np.array([3]), np.array([5.0]))  # stays unsampleable
    assert buffer.tree.leaves[3] == 0.0
    batch = buffer.sample(5)
    # next_obs is read from the following row: the next step's obs, or for the newest step its stored next_obs.
    obs = batch.observations[:, 0].numpy()
    expected = np.where(np.isclose(obs, 0.08), 0.001, 0.01)
    np.testing.assert_allclose(batch.next_observations[:, 0].numpy() - obs, expected, atol=1e-6)


def test_pickle_and_reset():
    buffer = make(8, n_steps=2)
    buffer.update_priorities(np.arange(8), np.arange(8.0))
    copy = pickle.loads(pickle.dumps(buffer))
    np.testing.assert_array_equal(copy.tree.leaves, buffer.tree.leaves)
    assert (copy.max_priority, copy.beta, copy.n_steps) == (7.0, 0.4, 2)
    copy.reset()
    assert copy.tree.total() == 0.0 and copy.size() == 0 and copy.max_priority == 1.0


def test_dqn_learns_with_it_and_replay_buffer_save_load_keeps_priorities(tmp_path):
    model = DQN("MlpPolicy", "CartPole-v1", learning_starts=50, batch_size=16, buffer_size=400, train_freq=4,
                replay_buffer_class=PrioritizedReplayBuffer, replay_buffer_kwargs={"n_steps": 3, "alpha": 0.6},
                policy_kwargs={"net_arch": [16]}, seed=0, device="cpu")
    model.learn(200)
    buffer = model.replay_buffer
    assert isinstance(buffer, PrioritizedReplayBuffer) and buffer.size() == 200
    batch = buffer.sample(16)
    buffer.update_priorities(batch.indices, np.linspace(0.0, 3.0, 16))
    model.save_replay_buffer(tmp_path / "rb.pkl")
    other = DQN("MlpPolicy", "CartPole-v1", buffer_size=400, replay_buffer_class=PrioritizedReplayBuffer,
                policy_kwargs={"net_arch": [16]}, device="cpu")
    other.load_replay_buffer(tmp_path / "rb.pkl")
    loaded = other.replay_buffer
    np.testing.assert_array_equal(loaded.tree.leaves, buffer.tree.leaves)
    assert (loaded.max_priority, loaded.alpha, loaded.n_steps) == (3.0, 0.6, 3)


DICT_OBS = spaces.Dict({"img": spaces.Box(0, 255, (2, 2), np.uint8), "vec": spaces.Box(-1.0, 1.0, (2,), np.float32)})


def test_dict_buffer_samples_dict_observations_with_n_step():
    buffer = DictPrioritizedReplayBuffer(12, DICT_OBS, ACT, device="cpu", n_envs=2, n_steps=2, gamma=0.5)
    for t in range(5):
        obs = {"img": np.full((2, 2, 2), t, np.uint8), "vec": np.full((2, 2), t, np.float32)}
        nxt = {"img": np.full((2, 2, 2), t + 100, np.uint8), "vec": np.full((2, 2), t + 100, np.float32)}
        done = np.array([t == 2, False])
        buffer.add(obs, nxt, np.zeros(2), np.ones(2), done, [{}, {}])
    np.random.seed(0)
    batch = buffer.sample(10)
    assert isinstance(batch, DictPrioritizedReplayBufferSamples)
    assert batch.observations["img"].shape == (10, 2, 2) and batch.observations["vec"].shape == (10, 2)
    t = batch.observations["vec"][:, 0].numpy().astype(int)
    env = batch.indices % 2
    last = np.where((env == 0) & (t == 2) | (t == 4), t, t + 1)  # window of 2 cut by env 0's done and the newest row
    np.testing.assert_array_equal(batch.next_observations["vec"][:, 0].numpy(), last + 100)
    np.testing.assert_allclose(batch.rewards[:, 0].numpy(), np.where(last == t, 1.0, 1.5))
    np.testing.assert_array_equal(batch.dones[:, 0].numpy(), ((env == 0) & (last == 2)).astype(np.float32))
    buffer.update_priorities(batch.indices, np.ones(10))


def test_dict_buffer_bad_input():
    with pytest.raises(ValueError, match="optimize_memory_usage"):
        DictPrioritizedReplayBuffer(8, DICT_OBS, ACT, optimize_memory_usage=True, handle_timeout_termination=False)
    with pytest.raises(ValueError, match="observation_space"):
        DictPrioritizedReplayBuffer(8, OBS, ACT)
    with pytest.raises(ValueError, match="gamma"):
        DictPrioritizedReplayBuffer(8, DICT_OBS, ACT, gamma=2.0)


class TwoKeyEnv(gym.Env):
    """Tiny Dict-observation env: reward 1 when the action matches the sign of obs["a"][0]; 8-step episodes."""

    observation_space = spaces.Dict({"a": spaces.Box(-1.0, 1.0, (2,), np.float32),
                                     "b": spaces.Box(-1.0, 1.0, (3,), np.float32)})
    action_space = spaces.Discrete(2)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        return self._obs(), {}

    def _obs(self):
        self.last = self.observation_space.sample()
        return self.last

    def step(self, action):
        reward = float(int(action) == int(self.last["a"][0] > 0))
        self.t += 1
        return self._obs(), reward, False, self.t >= 8, {}


def test_dqn_multi_input_runs_with_dict_buffer():
    model = DQN("MultiInputPolicy", TwoKeyEnv(), learning_starts=30, batch_size=8, buffer_size=100, train_freq=4,
                replay_buffer_class=DictPrioritizedReplayBuffer, replay_buffer_kwargs={"n_steps": 2},
                policy_kwargs={"net_arch": [8]}, seed=0, device="cpu")
    model.learn(60)
    buffer = model.replay_buffer
    assert isinstance(buffer, DictPrioritizedReplayBuffer) and buffer.size() == 60
    assert buffer.timeouts.sum() == 7  # the 8-step time limits were recorded as truncations
    batch = buffer.sample(8)
    assert batch.observations.keys() == {"a", "b"} and batch.observations["b"].shape == (8, 3)


def uniform_warnings(record):
    return [w for w in record if issubclass(w.category, UserWarning) and "sampling is uniform" in str(w.message)]


def test_warns_once_that_sb3_dqn_samples_uniformly():
    """SB3's DQN never calls update_priorities: the buffer says so once, after warn_uniform_after samples."""
    model = DQN("MlpPolicy", "CartPole-v1", learning_starts=20, batch_size=8, buffer_size=200, train_freq=1,
                replay_buffer_class=PrioritizedReplayBuffer, replay_buffer_kwargs={"warn_uniform_after": 30},
                policy_kwargs={"net_arch": [8]}, seed=0, device="cpu")
    with pytest.warns(UserWarning) as record:
        model.learn(100)  # about 80 gradient steps, one sample each
    found = uniform_warnings(record)
    assert len(found) == 1
    message = str(found[0].message)
    assert "sampled 30 times" in message and "update_priorities" in message and "Rainbow" in message
    leaves = model.replay_buffer.tree.leaves[: model.replay_buffer.n_stored()]
    assert np.ptp(leaves) == 0.0  # what the warning claims: every priority is still the initial one
    assert PrioritizedReplayBuffer(10, OBS, ACT, device="cpu").warn_uniform_after == 1000  # documented default


@pytest.mark.parametrize("kwargs, update", [({}, True), ({"alpha": 0.0}, False), ({"warn_uniform_after": None}, False)])
def test_no_uniform_warning_with_updates_alpha_zero_or_none(kwargs, update, recwarn):
    buffer = make(6, **{"warn_uniform_after": 5, **kwargs})
    for _ in range(12):
        batch = buffer.sample(2)
        if update:
            buffer.update_priorities(batch.indices, np.array([0.5, 2.0]))
    assert not uniform_warnings(recwarn.list)


def test_uniform_warning_fires_without_updates_and_bad_threshold_is_rejected(recwarn):
    buffer = make(6, warn_uniform_after=5)
    for _ in range(12):
        buffer.sample(2)
    assert len(uniform_warnings(recwarn.list)) == 1
    for bad in (0, -3, 2.5, True):
        with pytest.raises(ValueError, match="warn_uniform_after"):
            PrioritizedReplayBuffer(10, OBS, ACT, device="cpu", warn_uniform_after=bad)


def test_full_flag_on_empty_buffer_error_says_why():
    """SB3's buffer tests set full=True on an empty buffer: no transition has a priority, and the error says so."""
    buffer = PrioritizedReplayBuffer(10, OBS, ACT, device="cpu")
    buffer.full = True
    with pytest.raises(ValueError, match=r"size\(\) reports 10 transitions but none has a priority.*update_priorities"):
        buffer.sample(4)
    buffer.update_priorities(np.arange(10), np.ones(10))  # the way out the message names
    assert buffer.sample(4).observations.shape == (4, 3)
