"""The MinAtar presets bench/minatar.py compares: Rainbow's, and SB3's DQN with the MinAtar paper's settings and
network (Young & Tian 2019: one 3x3 convolution with 16 filters, 128 hidden units, RMSProp)."""

from __future__ import annotations

import pytest
import torch as th
from stable_baselines3 import DQN

from policies import MinAtarCNN
from rlgen_plugins.cli.presets import find_preset, load_preset

GAMES = ("Asterix", "Breakout", "Freeway", "Seaquest", "SpaceInvaders")


@pytest.mark.parametrize("game", GAMES)
def test_dqn_has_the_minatar_papers_settings_on_every_game(game: str) -> None:
    preset, origin = find_preset("dqn", f"MinAtar/{game}-v1")
    assert origin is not None and "dqn.yml" in origin
    assert {k: preset[k] for k in ("learning_rate", "batch_size", "buffer_size", "train_freq", "learning_starts",
                                   "target_update_interval", "gamma", "exploration_final_eps")} == {
        "learning_rate": 0.00025, "batch_size": 32, "buffer_size": 100_000, "train_freq": 1, "learning_starts": 5000,
        "target_update_interval": 1000, "gamma": 0.99, "exploration_final_eps": 0.1}
    rainbow = load_preset("rainbow", f"MinAtar/{game}-v1")
    assert rainbow["policy_kwargs"]["features_extractor_kwargs"] == preset["policy_kwargs"]["features_extractor_kwargs"]


def test_dqn_minatar_preset_builds_the_papers_network_and_optimizer() -> None:
    minatar_gym = pytest.importorskip("minatar.gym")
    minatar_gym.register_envs()
    preset = load_preset("dqn", "MinAtar/Breakout-v1")
    for key in ("n_timesteps", "policy"):
        preset.pop(key)
    model = DQN("CnnPolicy", "MinAtar/Breakout-v1", **{**preset, "buffer_size": 1_000}, device="cpu")
    q_net = model.policy.q_net
    assert isinstance(q_net.features_extractor, MinAtarCNN)
    [conv] = [m for m in q_net.features_extractor.modules() if isinstance(m, th.nn.Conv2d)]
    assert (conv.out_channels, conv.kernel_size) == (16, (3, 3))
    linears = [m for m in q_net.modules() if isinstance(m, th.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(16 * 8 * 8, 128), (128, model.action_space.n)]
    optimizer = model.policy.optimizer
    assert isinstance(optimizer, th.optim.RMSprop)
    group = optimizer.param_groups[0]
    assert (group["alpha"], group["eps"], group["centered"]) == (0.95, 0.01, True)


@pytest.mark.parametrize("algo", ["rainbow", "dqn"])
def test_seaquest_episodes_are_capped_because_a_policy_on_the_surface_never_ends_one(algo: str) -> None:
    """MinAtar's Seaquest ends an episode only when the submarine dives and runs out of oxygen or is hit: a greedy
    policy that stays on the surface made a deterministic evaluation run forever."""
    from rlgen_plugins.cli.envs import check_env_id, make_env

    check_env_id("MinAtar/Seaquest-v1")
    preset = load_preset(algo, "MinAtar/Seaquest-v1")
    assert preset["env_kwargs"] == {"max_episode_steps": 27000}
    assert preset["learning_rate"] == load_preset(algo, "MinAtar/Breakout-v1")["learning_rate"]
    assert "env_kwargs" not in load_preset(algo, "MinAtar/Breakout-v1")
    env = make_env("MinAtar/Seaquest-v1", n_envs=1, seed=0, env_kwargs=preset["env_kwargs"])
    env.reset()
    noop = 0  # the minimal action set's first action: stay
    for step in range(1, 27001):
        _, _, done, infos = env.step([noop])
        if done[0]:
            break
    assert step == 27000 and infos[0].get("TimeLimit.truncated") is True
