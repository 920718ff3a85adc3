"""Details of the prioritised buffers that the mutation run (bench/mutation.sh) found no test for: exact leaf values,
the uniform-sampling warning's threshold, VecNormalize in sampling, and the Dict buffer keeping the
Box buffer's defaults and fields."""

from __future__ import annotations

import inspect
import warnings

import gymnasium as gym
import numpy as np
import pytest
from gymnasium import spaces
from stable_baselines3.common.vec_env import DummyVecEnv, VecNormalize

from buffers import DictPrioritizedReplayBuffer, PrioritizedReplayBuffer, n_step_targets

OBS = spaces.Box(-10.0, 10.0, (4,), np.float32)
DICT_OBS = spaces.Dict({"a": spaces.Box(-10.0, 10.0, (4,), np.float32)})
ACT = spaces.Discrete(2)


def fill(buffer, n: int, n_envs: int = 1, as_dict: bool = False) -> None:
    for t in range(n):
        obs = np.full((n_envs, 4), t / 10, dtype=np.float32)
        obs_in = {"a": obs} if as_dict else obs
        buffer.add(obs_in, obs_in, np.zeros((n_envs, 1)), np.full(n_envs, 2.0), np.zeros(n_envs), [{}] * n_envs)


def test_a_new_transition_gets_exactly_max_priority_plus_epsilon_to_the_alpha() -> None:
    buffer = PrioritizedReplayBuffer(8, OBS, ACT, device="cpu", alpha=0.5, epsilon=0.25)
    fill(buffer, 1)
    assert buffer.tree.leaves[0] == pytest.approx(1.25**0.5, rel=1e-12)  # (max_priority + epsilon) ** alpha


def test_uniform_warning_fires_exactly_at_the_threshold() -> None:
    buffer = PrioritizedReplayBuffer(8, OBS, ACT, device="cpu", warn_uniform_after=3)
    fill(buffer, 4)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        buffer.sample(2)
        buffer.sample(2)
        assert caught == []
        buffer.sample(2)  # the third draw without update_priorities
    assert len(caught) == 1 and caught[0].category is UserWarning
    assert "sampled 3 times" in str(caught[0].message) and "PrioritizedReplayBuffer" in str(caught[0].message)
    single = PrioritizedReplayBuffer(8, OBS, ACT, device="cpu", warn_uniform_after=1)  # 1 is a valid threshold
    fill(single, 2)
    with pytest.warns(UserWarning, match="sampled 1 times"):
        single.sample(1)


def test_batch_size_must_be_an_integer_not_a_bool() -> None:
    buffer = PrioritizedReplayBuffer(8, OBS, ACT, device="cpu")
    fill(buffer, 4)
    with pytest.raises(ValueError, match="batch_size"):
        buffer.sample(True)


def test_add_takes_keyword_arguments_as_sb3s_buffer_does() -> None:
    buffer = PrioritizedReplayBuffer(8, OBS, ACT, device="cpu")
    obs = np.ones((1, 4), np.float32)
    buffer.add(obs=obs, next_obs=obs, action=np.zeros((1, 1)), reward=np.ones(1), done=np.zeros(1), infos=[{}])
    assert buffer.size() == 1 and buffer.tree.leaves[0] > 0


def test_optimize_memory_usage_keeps_the_write_row_unsampleable_for_every_env() -> None:
    buffer = PrioritizedReplayBuffer(8, OBS, ACT, device="cpu", n_envs=2, optimize_memory_usage=True,
                                     handle_timeout_termination=False)
    fill(buffer, 6, n_envs=2)  # 4 rows of 2 envs: wrapped, pos = 2
    row = buffer.pos
    buffer.update_priorities(np.array([2 * row, 2 * row + 1, 0]), np.array([5.0, 5.0, 5.0]))
    assert buffer.tree.leaves[2 * row] == 0.0 and buffer.tree.leaves[2 * row + 1] == 0.0
    assert buffer.tree.leaves[0] > 0


@pytest.mark.parametrize("as_dict", [False, True])
def test_sampling_through_vec_normalize_normalises_observations_and_rewards(as_dict: bool) -> None:
    space = DICT_OBS if as_dict else OBS
    cls = DictPrioritizedReplayBuffer if as_dict else PrioritizedReplayBuffer
    buffer = cls(8, space, ACT, device="cpu", n_steps=1)
    fill(buffer, 5, as_dict=as_dict)

    class Env(gym.Env):
        observation_space, action_space = space, ACT

    env = VecNormalize(DummyVecEnv([Env]), gamma=0.99)
    obs_rms = env.obs_rms["a"] if as_dict else env.obs_rms
    obs_rms.mean, obs_rms.var = np.full(4, 1.0), np.full(4, 4.0)
    env.ret_rms.var = np.float64(16.0)
    np.random.seed(0)
    batch = buffer.sample(4, env=env)
    raw = (batch.indices / 10).astype(np.float32)[:, None]  # observation and next observation of step t: t / 10
    for sampled in (batch.observations, batch.next_observations):
        values = sampled["a"] if as_dict else sampled
        np.testing.assert_allclose(values.numpy(), np.repeat((raw - 1.0) / 2.0, 4, axis=1), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(batch.rewards.numpy(), 2.0 / 4.0, rtol=1e-5)  # r / sqrt(ret var)


def test_the_dict_buffer_keeps_the_box_buffers_defaults_fields_and_checks() -> None:
    box = inspect.signature(PrioritizedReplayBuffer.__init__).parameters
    dict_ = inspect.signature(DictPrioritizedReplayBuffer.__init__).parameters
    assert {k: p.default for k, p in dict_.items()} == {k: box[k].default for k in dict_}
    buffer = DictPrioritizedReplayBuffer(8, DICT_OBS, ACT, device="cpu", handle_timeout_termination=False,
                                         n_steps=2, gamma=0.5, warn_uniform_after=2)
    assert buffer.handle_timeout_termination is False and not buffer.optimize_memory_usage
    fill(buffer, 4, as_dict=True)
    buffer.update_priorities(np.arange(4), np.array([1.0, 2.0, 3.0, 4.0]))
    np.random.seed(0)
    low, high = buffer.sample(4, beta=0.2), buffer.sample(4, beta=1.0)
    assert low.weights is not None and low.discounts is not None
    assert (low.weights >= high.weights).all() and not np.allclose(low.weights, high.weights)
    assert set(np.round(low.discounts.numpy().ravel(), 6)) <= {0.5, 0.25}
    with pytest.raises(ValueError, match="warn_uniform_after"):
        DictPrioritizedReplayBuffer(8, DICT_OBS, ACT, device="cpu", warn_uniform_after=0)
    fresh = DictPrioritizedReplayBuffer(8, DICT_OBS, ACT, device="cpu", warn_uniform_after=2)
    fill(fresh, 3, as_dict=True)
    fresh.sample(1)
    with pytest.warns(UserWarning, match="DictPrioritizedReplayBuffer was sampled 2 times"):
        fresh.sample(1)


def test_n_step_targets_allocates_float32_results() -> None:
    zeros = np.zeros((4, 1), np.float32)
    targets = n_step_targets(np.ones((4, 1), np.float32), zeros, zeros, np.array([0, 1]), np.array([0, 0]),
                             newest_row=3, n_steps=2, gamma=0.5)
    assert targets.returns.dtype == np.float32 and targets.discounts.dtype == np.float32
    np.testing.assert_allclose(targets.returns[:, 0], [1.5, 1.5])
    np.testing.assert_allclose(targets.discounts[:, 0], [0.25, 0.25])


@pytest.mark.parametrize("cls, space", [(PrioritizedReplayBuffer, OBS), (DictPrioritizedReplayBuffer, DICT_OBS)])
def test_both_buffers_default_to_pers_paper_values_on_the_auto_device(cls, space) -> None:
    buffer = cls(8, space, ACT)  # every default, as an SB3 algorithm builds it without replay_buffer_kwargs
    from stable_baselines3.common.utils import get_device

    assert (buffer.device, buffer.n_envs, buffer.alpha, buffer.beta, buffer.epsilon, buffer.n_steps,
            buffer.gamma, buffer.warn_uniform_after) == (get_device("auto"), 1, 0.5, 0.4, 1e-6, 1, 0.99, 1000)
    assert buffer.handle_timeout_termination is True and buffer.optimize_memory_usage is False


def test_messages_say_what_happened_and_what_to_do() -> None:
    """The errors and the warning in full: a user reads these, so their words are behaviour."""
    import re

    empty = PrioritizedReplayBuffer(8, OBS, ACT, device="cpu")
    with pytest.raises(ValueError, match=r"^cannot sample from an empty PrioritizedReplayBuffer$"):
        empty.sample(1)
    empty.full = True
    with pytest.raises(ValueError, match="^" + re.escape(
            "cannot sample: size() reports 8 transitions but none has a priority. Transitions get one in add(); "
            "setting full or pos directly gives them none: call update_priorities(indices, priorities) for them "
            "first") + "$"):
        empty.sample(1)
    buffer = PrioritizedReplayBuffer(8, OBS, ACT, device="cpu", warn_uniform_after=1)
    fill(buffer, 2)
    with pytest.raises(ValueError, match="^" + re.escape(
            "priorities must be finite and non-negative (got NaN, inf or a negative value)") + "$"):
        buffer.update_priorities(np.array([0]), np.array([-1.0]))
    with pytest.warns(UserWarning) as caught:
        buffer.sample(1)
    assert str(caught[0].message) == (
        "PrioritizedReplayBuffer was sampled 1 times and update_priorities was never called: every priority is "
        "still the initial one, so sampling is uniform and every importance weight is 1 (SB3's DQN and other SB3 "
        "algorithms never call update_priorities). For prioritised replay, call "
        "buffer.update_priorities(samples.indices, abs_td_errors) after each gradient step, or use "
        "rlgen_plugins.rainbow.Rainbow with prioritized_replay=True and the other components off (prioritised "
        "DQN). warn_uniform_after=None silences this.")
    with pytest.raises(ValueError, match="^" + re.escape(
            "optimize_memory_usage must be False for DictPrioritizedReplayBuffer (as SB3's Dict buffer)") + "$"):
        DictPrioritizedReplayBuffer(8, DICT_OBS, ACT, device="cpu", optimize_memory_usage=True)
    with pytest.raises(ValueError, match=r"^observation_space must be a gymnasium.spaces.Dict, got Box$"):
        DictPrioritizedReplayBuffer(8, OBS, ACT, device="cpu")
