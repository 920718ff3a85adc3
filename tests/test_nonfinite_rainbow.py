"""Issue 19, the RL layer: non-finite data caught at its source. A NaN or infinity in what a gradient step samples
(observations, rewards) or computes (loss, gradient) stops training with a NonFiniteError naming it and the env
step, before the optimizer step: the weights stay finite. A NaN reward is refused earlier still, by the
prioritised buffer's add()."""

from __future__ import annotations

from collections import namedtuple

import gymnasium as gym
import numpy as np
import pytest
import torch as th
from gymnasium import spaces

from rlgen_plugins.rainbow.algorithm import Rainbow
from rlgen_plugins.rainbow.support import NonFiniteError, check_finite_step

TINY = dict(net_arch=[8], n_atoms=5, v_min=-2.0, v_max=2.0)
BREAKS_AT = 40  # env steps after which the environment's output turns non-finite


class BreakingEnv(gym.Env):
    """Episodes of 10 steps, observation in R^3, two actions; after BREAKS_AT steps (over all episodes) the
    observation (``what="observation"``) or the reward (``what="reward"``) becomes ``value`` for good."""

    observation_space = spaces.Box(-1.0, 1.0, (3,), np.float32)
    action_space = spaces.Discrete(2)

    def __init__(self, what: str, value: float = float("nan")) -> None:
        self.what, self.value, self.steps, self.t = what, value, 0, 0

    def _obs(self) -> np.ndarray:
        broken = self.what == "observation" and self.steps >= BREAKS_AT
        return np.full(3, self.value if broken else 0.1 * self.t, np.float32)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        return self._obs(), {}

    def step(self, action):
        self.steps += 1
        self.t += 1
        reward = self.value if self.what == "reward" and self.steps >= BREAKS_AT else float(action)
        return self._obs(), reward, self.t >= 10, False, {}


def make(env: gym.Env, **kwargs) -> Rainbow:
    kwargs = {"buffer_size": 500, "learning_starts": 20, "batch_size": 16, "train_freq": 1, "seed": 0,
              "device": "cpu", "policy_kwargs": dict(TINY), **kwargs}
    return Rainbow("MlpPolicy", env, **kwargs)


def weights_finite(model: Rainbow) -> bool:
    return all(bool(th.isfinite(p).all()) for p in model.policy.parameters())


def assert_stopped(info: pytest.ExceptionInfo, model: Rainbow, names: set[str]) -> None:
    error = info.value
    assert set(error.what) and set(error.what) <= names, error.what
    message = str(error)
    assert "\n" not in message and all(name in message for name in error.what)
    assert error.step == model.num_timesteps and f"at env step {model.num_timesteps}" in message
    assert "before the optimizer step" in message
    assert weights_finite(model)


@pytest.mark.parametrize(("torch_compile", "value"),  # one compiled case: compiling takes ~30 s on 2 cores
                         [(False, float("nan")), (False, float("inf")), (True, float("nan"))],
                         ids=["eager-nan", "eager-inf", "compiled-nan"])
def test_non_finite_observation_stops_training_naming_it_with_the_weights_finite(torch_compile, value) -> None:
    model = make(BreakingEnv("observation", value), torch_compile=torch_compile)
    with pytest.raises(NonFiniteError) as info:
        model.learn(300)
    assert_stopped(info, model, {"observation", "next_observation"})
    assert BREAKS_AT <= model.num_timesteps < 300  # found at its source, soon after it appeared
    assert model._n_updates > 0  # the finite steps before it trained as usual


@pytest.mark.parametrize("n_steps", [1, 3])
def test_nan_reward_in_a_uniform_buffer_stops_training_naming_reward(n_steps) -> None:
    """SB3's ReplayBuffer / NStepReplayBuffer (prioritized_replay=False) store it; the gradient step catches it."""
    model = make(BreakingEnv("reward"), prioritized_replay=False, n_steps=n_steps)
    with pytest.raises(NonFiniteError) as info:
        model.learn(300)
    assert_stopped(info, model, {"reward"})


def test_nan_reward_is_refused_by_the_prioritized_buffer_at_add() -> None:
    model = make(BreakingEnv("reward"))
    with pytest.raises(ValueError, match=r"^reward must be finite, got nan for env 0: add\(\) stored nothing"):
        model.learn(300)
    assert model.num_timesteps == BREAKS_AT and model.replay_buffer.size() == BREAKS_AT - 1
    assert weights_finite(model)


def test_divergence_stops_at_the_non_finite_loss_or_gradient_with_the_weights_finite() -> None:
    """learning_rate=1e30: one Adam step moves the weights by ~1e30; the next forward pass overflows."""
    model = make(gym.make("CartPole-v1"), learning_rate=1e30, max_grad_norm=1e30, learning_starts=10)
    with pytest.raises(NonFiniteError) as info:
        model.learn(200)
    assert_stopped(info, model, {"loss", "gradient"})
    assert "the update diverged" in str(info.value)


def plant_gradient(model: Rainbow, value: float, monkeypatch: pytest.MonkeyPatch) -> None:
    original = model._gradients

    def gradients(data):
        loss, priorities = original(data)
        if model.num_timesteps >= 30:
            model._trained_parameters[0].grad[0] = value
        return loss, priorities

    monkeypatch.setattr(model, "_gradients", gradients)


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_a_planted_non_finite_gradient_stops_before_the_optimizer_step(value, monkeypatch) -> None:
    model = make(BreakingEnv("none"))
    plant_gradient(model, value, monkeypatch)
    before = {}

    def snapshot(_locals, _globals) -> bool:
        before.update({k: v.clone() for k, v in model.policy.state_dict().items()})
        return True

    with pytest.raises(NonFiniteError) as info:
        model.learn(100, callback=snapshot)  # called at every env step, so it holds the weights before the step
    assert_stopped(info, model, {"gradient"})
    assert model.num_timesteps == 30
    for key, tensor in model.policy.state_dict().items():
        assert th.equal(tensor, before[key]), key  # the failing step changed nothing


def test_without_the_check_the_planted_gradient_reaches_the_weights(monkeypatch) -> None:
    """What the check prevents (and so that its tests can fail): the switch off, NaN is written into theta."""
    model = make(BreakingEnv("none"))
    plant_gradient(model, float("nan"), monkeypatch)
    monkeypatch.setattr(Rainbow, "_check_finite", False)
    with pytest.raises(ValueError, match="priorities must be finite"):  # the buffer notices, one step too late
        model.learn(40)
    assert not weights_finite(model)


Samples = namedtuple("Samples", "observations next_observations rewards")


def test_the_fused_check_names_each_part_and_ignores_an_overflow_of_finite_values() -> None:
    finite = th.ones(4, 3)
    ok = dict(data=Samples(finite, finite, th.ones(4, 1)), loss=th.tensor(1.0), grad_norm=th.tensor(1.0))
    check_finite_step(**ok, step=7)
    huge = th.full((4, 3), 3e38)  # finite, but their sum overflows float32
    check_finite_step(Samples(huge, huge, th.ones(4, 1)), th.tensor(1.0), th.tensor(1.0), 7)
    ints = th.zeros(4, 3, dtype=th.uint8)  # integer observations (images) cannot be NaN and are not summed
    check_finite_step(Samples(ints, ints, th.ones(4, 1)), th.tensor(1.0), th.tensor(1.0), 7)
    bad = finite.clone()
    bad[2, 1] = float("nan")
    cases = [
        (dict(ok, data=Samples(bad, finite, th.ones(4, 1))), ("observation",)),
        (dict(ok, data=Samples({"a": finite, "b": bad}, {"a": finite, "b": ints}, th.ones(4, 1))), ("observation",)),
        (dict(ok, data=Samples(finite, bad, th.ones(4, 1))), ("next_observation",)),
        (dict(ok, data=Samples(finite, finite, th.tensor([[1.0], [float("-inf")]]))), ("reward",)),
        (dict(ok, loss=th.tensor(float("nan"))), ("loss",)),
        (dict(ok, loss=th.tensor(float("inf")), grad_norm=th.tensor(float("nan"))), ("loss", "gradient")),
    ]
    for kwargs, what in cases:
        with pytest.raises(NonFiniteError) as info:
            check_finite_step(**kwargs, step=7)
        assert info.value.what == what and info.value.step == 7
        assert str(info.value).startswith(f"non-finite {', '.join(what)} in the gradient step at env step 7:")
    assert issubclass(NonFiniteError, FloatingPointError)


def test_rlgen_train_on_a_nan_observation_env_is_one_line_and_the_record_says_failed(tmp_path, capsys) -> None:
    import json

    from rlgen_plugins.cli import main

    gym.register("rlgen-test/NanObservation-v0", entry_point=lambda: BreakingEnv("observation"))
    try:
        status = main(["train", "rainbow", "--env", "rlgen-test/NanObservation-v0", "--timesteps", "100",
                       "--seed", "0", "--output", str(tmp_path / "run"), "--eval-freq", "0", "--no-progress",
                       "-p", "learning_starts=20", "-p", "batch_size=16", "-p", "buffer_size=500",
                       "-p", "policy_kwargs=dict(net_arch=[8], n_atoms=5, v_min=-2.0, v_max=2.0)"])
    finally:
        gym.registry.pop("rlgen-test/NanObservation-v0")
    err = capsys.readouterr().err.strip().splitlines()
    assert status == 1 and len(err) == 1, err
    # the first non-finite value sampled is the next observation of the transition that broke (step BREAKS_AT)
    assert err[0].startswith("rlgen: error: non-finite next_observation") and f"at env step {BREAKS_AT}" in err[0]
    assert err[0].endswith(f"(the run record {tmp_path / 'run' / 'rlgen.json'} says failed)")
    record = json.loads((tmp_path / "run" / "rlgen.json").read_text())
    assert record["status"] == "failed" and record["timesteps"] == BREAKS_AT
    assert record["error"].startswith("non-finite next_observation")
