"""Rainbow as a drop-in for SB3's DQN: it is a DQN, takes DQN's defaults, and follows DQN's training conventions
(found by running SB3's own test suite against it)."""

from __future__ import annotations

import inspect

import numpy as np
import pytest
import torch as th
from stable_baselines3 import DQN, HerReplayBuffer
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.envs import BitFlippingEnv, IdentityEnv

from rlgen_plugins.rainbow.algorithm import Rainbow

TINY_POLICY = dict(net_arch=[16], n_atoms=11, v_min=-10.0, v_max=10.0)

#: Defaults where Rainbow differs from DQN on purpose: the multi-step component (n = 3, the paper's).
INTENDED_DIFFERENCES = {"n_steps": (3, 1)}


def test_rainbow_is_a_dqn_so_tools_that_check_for_dqn_take_it() -> None:
    model = Rainbow("MlpPolicy", IdentityEnv(3), policy_kwargs=TINY_POLICY)
    assert isinstance(model, DQN)
    assert model.learn.__func__ is not DQN.learn  # its own tb_log_name, DQN's loop underneath
    assert Rainbow._on_step is DQN._on_step and Rainbow.predict is DQN.predict


def test_defaults_are_dqns_except_the_components() -> None:
    ours = inspect.signature(Rainbow.__init__).parameters
    theirs = inspect.signature(DQN.__init__).parameters
    assert set(theirs) <= set(ours)
    differing = {name: (ours[name].default, p.default) for name, p in theirs.items()
                 if p.default is not inspect.Parameter.empty and ours[name].default != p.default}
    assert differing == INTENDED_DIFFERENCES
    assert ours["learning_starts"].default == 100
    assert {name for name in ours if name not in theirs} == {"double_q", "prioritized_replay", "torch_compile"}


def test_train_takes_every_gradient_step_while_fewer_than_batch_size_are_stored() -> None:
    """SB3 samples with replacement: learning_starts alone decides when learning begins."""
    model = Rainbow("MlpPolicy", IdentityEnv(3, ep_length=5), learning_starts=1_000, batch_size=32, seed=0,
                    policy_kwargs=TINY_POLICY)
    with pytest.warns(UserWarning, match="not past learning_starts=1000"):
        model.learn(8)  # 8 transitions stored, no update yet
    assert model.replay_buffer.size() == 8 and model._n_updates == 0
    before = [p.detach().clone() for p in model.q_net.parameters()]
    model.train(gradient_steps=3, batch_size=32)
    assert model._n_updates == 3
    assert any(not th.equal(a, b) for a, b in zip(before, model.q_net.parameters()))


def test_multi_env_counts_updates_as_dqn() -> None:
    """SB3's test_offpolicy_multi_env: the same schedule gives Rainbow the updates it gives DQN."""
    counts = []
    for algo in (DQN, Rainbow):
        env = make_vec_env(lambda: IdentityEnv(3, ep_length=10), n_envs=2, seed=0)
        kwargs = dict(policy_kwargs=TINY_POLICY) if algo is Rainbow else dict(policy_kwargs=dict(net_arch=[16]))
        model = algo("MlpPolicy", env, learning_starts=10, train_freq=5, gradient_steps=1, buffer_size=100,
                     seed=0, **kwargs)
        model.learn(40)
        counts.append(model._n_updates)
    assert counts[0] > 0 and counts[1] == counts[0]


def test_tau_zero_never_moves_the_target_network() -> None:
    model = Rainbow("MlpPolicy", IdentityEnv(3, ep_length=5), tau=0.0, target_update_interval=1, learning_starts=5,
                    train_freq=1, batch_size=8, seed=0, policy_kwargs=TINY_POLICY)
    target_before = [p.detach().clone() for p in model.q_net_target.parameters()]
    online_before = [p.detach().clone() for p in model.q_net.parameters()]
    model.learn(30)
    assert all(th.equal(a, b) for a, b in zip(target_before, model.q_net_target.parameters()))
    assert any(not th.equal(a, b) for a, b in zip(online_before, model.q_net.parameters()))


def test_target_update_warning_is_sb3s() -> None:
    env = make_vec_env(lambda: IdentityEnv(3), n_envs=4)
    with pytest.warns(UserWarning, match=r"greater than the target network update interval \(4 > 2\)"):
        Rainbow("MlpPolicy", env, target_update_interval=2, policy_kwargs=TINY_POLICY)


def test_her_with_prioritized_replay_is_an_error_not_a_silent_replacement() -> None:
    env = BitFlippingEnv(n_bits=4, continuous=False, max_steps=4)
    her = dict(replay_buffer_class=HerReplayBuffer, replay_buffer_kwargs=dict(n_sampled_goal=2), n_steps=1,
               learning_starts=20, batch_size=8, policy_kwargs=TINY_POLICY, seed=0)
    with pytest.raises(ValueError, match=r"replay_buffer_class: HerReplayBuffer has no priorities.*"
                                         r"prioritized_replay=False"):
        Rainbow("MultiInputPolicy", env, **her)
    model = Rainbow("MultiInputPolicy", env, prioritized_replay=False, **her)
    model.learn(40)
    assert isinstance(model.replay_buffer, HerReplayBuffer) and model._n_updates > 0
    assert np.isfinite(model.logger.name_to_value["train/loss"])
