"""Issue 19, the RL layer: every bad argument of Rainbow, its learn() and the replay buffers is a one-line error
naming the argument (and what it accepts), raised before SB3 builds or allocates anything; what SB3 accepts keeps
working; a call that can take no gradient step warns."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch as th
from gymnasium import spaces
from stable_baselines3.common.envs import IdentityEnv
from stable_baselines3.common.utils import LinearSchedule

from buffers import DictPrioritizedReplayBuffer, FrameStackReplayBuffer, PrioritizedReplayBuffer
from rlgen_plugins.rainbow.algorithm import Rainbow
from rlgen_plugins.rainbow.support import ArgumentTypeError

NAN, INF = float("nan"), float("inf")
TINY = dict(net_arch=[8], n_atoms=5, v_min=-2.0, v_max=2.0)


def make(env=None, **kwargs) -> Rainbow:
    kwargs = {"buffer_size": 200, "learning_starts": 10, "batch_size": 8, "policy_kwargs": dict(TINY), "seed": 0,
              "device": "cpu", **kwargs}
    return Rainbow("MlpPolicy", IdentityEnv(3) if env is None else env, **kwargs)


def one_line(exc: pytest.ExceptionInfo) -> str:
    message = str(exc.value)
    assert "\n" not in message
    return message


# (constructor arguments, exception type, words the message must contain)
CONSTRUCTOR_CASES = [
    (dict(buffer_size=1.5), TypeError, ["buffer_size", "integer >= 1", "1.5"]),
    (dict(buffer_size="100"), TypeError, ["buffer_size", "integer >= 1", "'100' (str)"]),
    (dict(buffer_size=0), ValueError, ["buffer_size", "integer >= 1", "got 0"]),
    (dict(buffer_size=-1), ValueError, ["buffer_size", "got -1"]),
    (dict(learning_starts="10"), TypeError, ["learning_starts", "integer >= 0"]),
    (dict(learning_starts=-5), ValueError, ["learning_starts", "integer >= 0"]),
    (dict(train_freq=0), ValueError, ["train_freq", "integer >= 1", "'step' or 'episode'"]),
    (dict(train_freq=2.5), TypeError, ["train_freq"]),
    (dict(train_freq=(4, "steps")), ValueError, ["train_freq", "'step' or 'episode'", "'steps'"]),
    (dict(train_freq=(0, "step")), ValueError, ["train_freq", "frequency"]),
    (dict(policy_kwargs=dict(TINY, activation_fn="relu")), TypeError,
     ["activation_fn", "torch.nn.Module class", "torch.nn.ReLU", "'relu'"]),
    (dict(policy_kwargs=dict(TINY, activation_fn=th.nn.ReLU())), TypeError, ["activation_fn", "torch.nn.ReLU"]),
    (dict(policy_kwargs=dict(TINY, optimizer_class="adam")), TypeError, ["optimizer_class", "torch.optim.Adam"]),
    (dict(policy_kwargs=dict(TINY, net_arch=[8, 0])), TypeError, ["net_arch", "integers >= 1"]),
    (dict(policy_kwargs=dict(TINY, noisy="yes")), TypeError, ["noisy", "True or False"]),
    (dict(policy_kwargs=[("n_atoms", 5)]), TypeError, ["policy_kwargs", "dict"]),
    (dict(policy_kwargs=dict(TINY, v_min=-INF)), ValueError, ["v_min", "finite"]),
    (dict(policy_kwargs=dict(TINY, v_max=NAN)), ValueError, ["v_max", "finite"]),
    (dict(policy_kwargs=dict(TINY, v_min=2.0, v_max=2.0)), ValueError, ["v_min", "< v_max"]),
    (dict(policy_kwargs=dict(TINY, v_min=3.0, v_max=-3.0)), ValueError, ["v_min", "< v_max"]),
    (dict(policy_kwargs=dict(TINY, noisy_std=NAN)), ValueError, ["noisy_std", "> 0"]),
    (dict(learning_rate=INF), ValueError, ["learning_rate", "finite number > 0", "inf"]),
    (dict(learning_rate=NAN), ValueError, ["learning_rate", "nan"]),
    (dict(learning_rate=0.0), ValueError, ["learning_rate", "> 0"]),
    (dict(learning_rate=-1e-3), ValueError, ["learning_rate", "> 0"]),
    (dict(learning_rate="1e-3"), TypeError, ["learning_rate", "number"]),
    (dict(learning_rate=lambda progress: NAN), ValueError, ["learning_rate", "schedule", "nan"]),
    (dict(target_update_interval=NAN), TypeError, ["target_update_interval", "integer >= 1"]),
    (dict(target_update_interval=0), ValueError, ["target_update_interval", "integer >= 1"]),
    (dict(gamma=NAN), ValueError, ["gamma", "finite number in [0, 1]", "nan"]),
    (dict(gamma=1.5), ValueError, ["gamma", "[0, 1]"]),
    (dict(gamma="0.99"), TypeError, ["gamma", "number"]),
    (dict(tau=NAN), ValueError, ["tau", "[0, 1]"]),
    (dict(batch_size=500), ValueError, ["batch_size", "<= buffer_size", "batch_size=500 > buffer_size=200"]),
    (dict(batch_size=8.0), TypeError, ["batch_size", "integer >= 1", "8.0 (float)"]),
    (dict(batch_size=0), ValueError, ["batch_size", "integer >= 1"]),
    (dict(exploration_fraction=1.5), ValueError, ["exploration_fraction", "[0, 1]"]),
    (dict(exploration_fraction=-0.1), ValueError, ["exploration_fraction", "[0, 1]"]),
    (dict(exploration_final_eps=NAN), ValueError, ["exploration_final_eps", "[0, 1]"]),
    (dict(gradient_steps=-2), ValueError, ["gradient_steps", "-1 (as many as the env steps"]),
    (dict(gradient_steps=1.5), TypeError, ["gradient_steps", "integer >= 1"]),
    (dict(n_steps=0), ValueError, ["n_steps", "integer >= 1"]),
    (dict(max_grad_norm=0.0), ValueError, ["max_grad_norm", "> 0"]),
    (dict(max_grad_norm=NAN), ValueError, ["max_grad_norm"]),
    (dict(stats_window_size=0), ValueError, ["stats_window_size"]),
    (dict(replay_buffer_kwargs=[("alpha", 0.5)]), TypeError, ["replay_buffer_kwargs", "dict"]),
    (dict(optimize_memory_usage="no"), TypeError, ["optimize_memory_usage", "True or False"]),
    (dict(seed=-1), ValueError, ["seed", "integer >= 0"]),
    (dict(seed=1.5), TypeError, ["seed"]),
    (dict(seed=np.int64(3)), TypeError, ["seed", "Python int"]),
    (dict(verbose="1"), TypeError, ["verbose"]),
    (dict(device="gpu0"), ValueError, ["device", "'cpu'"]),
    (dict(tensorboard_log=3), TypeError, ["tensorboard_log"]),
    (dict(double_q="yes"), TypeError, ["double_q", "True or False"]),
    (dict(prioritized_replay=1), TypeError, ["prioritized_replay", "True or False"]),
    (dict(torch_compile="yes"), TypeError, ["torch_compile", "True or False"]),
]


@pytest.mark.parametrize(("kwargs", "kind", "words"), CONSTRUCTOR_CASES,
                         ids=[",".join(f"{k}={v!r}"[:40] for k, v in c[0].items()) for c in CONSTRUCTOR_CASES])
def test_bad_constructor_argument_is_a_one_line_error_naming_it(kwargs, kind, words) -> None:
    with pytest.raises(kind) as info:
        make(**kwargs)
    message = one_line(info)
    for word in words:
        assert word in message, (word, message)
    assert isinstance(info.value, ValueError)  # type errors too: code that catches SB3's ValueError keeps working


def test_checks_run_before_the_environment_is_made() -> None:
    with pytest.raises(ValueError, match="buffer_size"):
        Rainbow("MlpPolicy", "NoSuchEnv-v0", buffer_size=0)  # not gym.make's unregistered-env error
    with pytest.raises(ArgumentTypeError, match="env must be a gymnasium.Env"):
        Rainbow("MlpPolicy", 42)
    with pytest.raises(ArgumentTypeError, match=r"policy must be a policy name .* or a policy class, got 3 \(int\)"):
        Rainbow(3, "NoSuchEnv-v0")


def test_env_none_is_an_error_unless_loading(tmp_path) -> None:
    with pytest.raises(ValueError) as info:
        Rainbow("MlpPolicy", None)
    assert "env" in one_line(info) and "Rainbow.load" in str(info.value)
    model = make()
    model.save(tmp_path / "m.zip")
    assert Rainbow("MlpPolicy", None, _init_setup_model=False).env is None  # what Rainbow.load does
    loaded = Rainbow.load(tmp_path / "m.zip")
    assert loaded.env is None and loaded.batch_size == 8
    with pytest.raises(ValueError, match=r"env: this model has no environment.*set_env"):
        loaded.learn(20)
    loaded.set_env(IdentityEnv(3))
    loaded.learn(20)


@pytest.mark.parametrize(
    ("kwargs", "kind", "words"),
    [
        (dict(log_interval=0), ValueError, ["log_interval", "integer >= 1"]),
        (dict(log_interval=1.5), TypeError, ["log_interval"]),
        (dict(total_timesteps=0), ValueError, ["total_timesteps", "integer >= 1"]),
        (dict(total_timesteps=-10), ValueError, ["total_timesteps"]),
        (dict(total_timesteps=100.5), TypeError, ["total_timesteps", "100.5 (float)"]),
        (dict(total_timesteps="100"), TypeError, ["total_timesteps"]),
        (dict(reset_num_timesteps="no"), TypeError, ["reset_num_timesteps", "True or False"]),
        (dict(tb_log_name=None), TypeError, ["tb_log_name", "str"]),
    ],
)
def test_bad_learn_argument_is_a_one_line_error_naming_it(kwargs, kind, words) -> None:
    model = make()
    with pytest.raises(kind) as info:
        model.learn(**{"total_timesteps": 20, **kwargs})
    message = one_line(info)
    for word in words:
        assert word in message, (word, message)
    assert model.num_timesteps == 0  # refused before SB3 started anything


def test_learn_no_longer_than_learning_starts_warns_naming_both() -> None:
    model = make(learning_starts=100, train_freq=1)
    with pytest.warns(UserWarning, match=r"learn\(total_timesteps=100\).*learning_starts=100.*no gradient step"):
        model.learn(100)
    assert model._n_updates == 0  # the warning was right
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model.learn(5, reset_num_timesteps=False)  # continues past learning_starts: trains, no warning
    assert model._n_updates > 0


def test_warning_counts_whole_rollouts() -> None:
    """train_freq=8: learn(98) collects 13 rollouts (104 steps), past learning_starts=100: it trains, no warning."""
    model = make(learning_starts=100, train_freq=8)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model.learn(98)
    assert model._n_updates > 0


def test_gradient_steps_zero_is_sb3_collect_only_and_warns() -> None:
    model = make(gradient_steps=0, learning_starts=0)
    with pytest.warns(UserWarning, match="gradient_steps=0.*no gradient step"):
        model.learn(30)
    assert model._n_updates == 0 and model.replay_buffer.size() == 32  # 8 rollouts of train_freq=4 steps


def test_what_sb3_accepts_keeps_working() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        make(train_freq=(4, "step"), tau=0.0, learning_rate=LinearSchedule(1e-3, 0.0, 1.0),
             gradient_steps=-1).learn(40)
        make(train_freq=(1, "episode"), learning_rate=lambda progress: 1e-3 * max(progress, 0.0), batch_size=200,
             buffer_size=np.int64(200), max_grad_norm=INF, seed=3, verbose=False,
             policy_kwargs=dict(TINY, activation_fn=th.nn.Tanh)).learn(40)


def test_a_schedule_below_zero_past_total_timesteps_is_caught() -> None:
    """An episode-based rollout runs past total_timesteps: progress_remaining < 0, and a schedule that is linear in
    it turns negative (gradient ascent, if SB3 applied it)."""
    model = make(train_freq=(1, "episode"), learning_rate=lambda progress: 1e-3 * progress)
    with pytest.raises(ValueError, match=r"learning_rate: the schedule returned -.*below 0.*max\(progress, 0\)"):
        model.learn(40)  # IdentityEnv's episodes are 100 steps long


def test_a_schedule_that_turns_non_finite_during_training_is_caught_before_the_step() -> None:
    model = make(learning_rate=lambda progress: 1e-3 if progress > 0.5 else NAN, train_freq=1)
    with pytest.raises(ValueError, match=r"learning_rate: the schedule returned nan .*env step \d+"):
        model.learn(100)
    assert all(th.isfinite(p).all() for p in model.q_net.parameters())


# ---------------------------------------------------------------- buffers

OBS, ACT = spaces.Box(-1, 1, (3,), np.float32), spaces.Discrete(2)
IMAGES = spaces.Box(0, 255, (4, 8, 8), np.uint8)


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        (dict(buffer_size=0), "buffer_size"), (dict(buffer_size=-1), "buffer_size"),
        (dict(buffer_size=1.5), "buffer_size"), (dict(buffer_size="100"), "buffer_size"),
        (dict(n_envs=0), "n_envs"),
        (dict(alpha=INF), "alpha"), (dict(alpha=True), "alpha"),
        (dict(beta=NAN), "beta"), (dict(beta=-0.5), "beta"),
        (dict(epsilon=NAN), "epsilon"), (dict(epsilon=INF), "epsilon"),
        (dict(n_steps=0), "n_steps"), (dict(n_steps=1.0), "n_steps"),
        (dict(gamma=NAN), "gamma"), (dict(gamma=INF), "gamma"), (dict(gamma="0.9"), "gamma"),
    ],
)
@pytest.mark.parametrize("cls", [PrioritizedReplayBuffer, DictPrioritizedReplayBuffer])
def test_prioritized_buffer_constructors_name_the_bad_argument(cls, kwargs, name) -> None:
    space = spaces.Dict({"x": OBS}) if cls is DictPrioritizedReplayBuffer else OBS
    kwargs = {"buffer_size": 10, **kwargs}
    with pytest.raises(ValueError) as info:
        cls(observation_space=space, action_space=ACT, device="cpu", **kwargs)
    assert one_line(info).startswith(name), str(info.value)


@pytest.mark.parametrize("dedup", [True, False])
@pytest.mark.parametrize("buffer_size", [0, 2.5])
def test_frame_stack_buffer_checks_buffer_size(dedup, buffer_size) -> None:
    with pytest.raises(ValueError, match=r"^buffer_size must be an integer >= 1"):
        FrameStackReplayBuffer(buffer_size, IMAGES, ACT, device="cpu", frame_stack_dedup=dedup)


@pytest.mark.parametrize("bad", [NAN, INF, -INF])
@pytest.mark.parametrize("kind", ["per", "per_dict", "per_frames", "frames", "uniform"])
def test_add_with_a_non_finite_reward_raises_naming_reward_and_stores_nothing(kind, bad) -> None:
    if kind == "per_dict":
        buffer = DictPrioritizedReplayBuffer(8, spaces.Dict({"x": OBS}), ACT, device="cpu", n_envs=2)
        obs = {"x": np.zeros((2, 3), np.float32)}
        next_obs = obs
    elif kind in ("per_frames", "frames"):
        cls = PrioritizedReplayBuffer if kind == "per_frames" else FrameStackReplayBuffer
        buffer = cls(8, IMAGES, ACT, device="cpu", n_envs=2, frame_stack_dedup=True)
        obs = np.zeros((2, *IMAGES.shape), np.uint8)
        next_obs = obs
    else:
        cls = PrioritizedReplayBuffer if kind == "per" else FrameStackReplayBuffer
        buffer = cls(8, OBS, ACT, device="cpu", n_envs=2, **({} if kind == "per" else {"frame_stack_dedup": False}))
        obs = next_obs = np.zeros((2, 3), np.float32)
    args = (obs, next_obs, np.zeros((2, 1)), np.array([0.0, bad], np.float32), np.zeros(2), [{}, {}])
    with pytest.raises(ValueError) as info:
        buffer.add(*args)
    message = one_line(info)
    assert message.startswith("reward must be finite") and "env 1" in message
    assert buffer.size() == 0 and buffer.pos == 0
    if hasattr(buffer, "tree"):
        assert buffer.tree.total() == 0.0
    buffer.add(*args[:3], np.array([0.0, 1.0], np.float32), *args[4:])  # a finite reward is stored
    assert buffer.size() == 1


def test_update_priorities_with_non_finite_priorities_still_raises() -> None:
    buffer = PrioritizedReplayBuffer(8, OBS, ACT, device="cpu")
    obs = np.zeros((1, 3), np.float32)
    buffer.add(obs, obs, np.zeros((1, 1)), np.ones(1, np.float32), np.zeros(1), [{}])
    for bad in (NAN, INF):
        with pytest.raises(ValueError, match="priorities must be finite"):
            buffer.update_priorities(np.array([0]), np.array([bad]))
