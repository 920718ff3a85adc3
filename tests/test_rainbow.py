"""Conformance of Rainbow with the SB3 algorithm contract, modelled on SB3's parametrised test suite
(test_save_load, test_predict, test_run, test_deterministic, test_identity, test_spaces, test_cnn, test_dict_env)."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch as th
from gymnasium import spaces
from stable_baselines3.common.callbacks import BaseCallback, CheckpointCallback
from stable_baselines3.common.env_checker import check_env
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.envs import FakeImageEnv, IdentityEnv, SimpleMultiObsEnv
from stable_baselines3.common.evaluation import evaluate_policy
from stable_baselines3.common.vec_env import DummyVecEnv

from policies import MinAtarCNN, RainbowPolicy
from rlgen_plugins.rainbow.algorithm import Rainbow

TINY_POLICY = dict(net_arch=[16], n_atoms=11, v_min=-10.0, v_max=10.0)
TINY = dict(learning_starts=20, batch_size=16, buffer_size=1_000, train_freq=1, target_update_interval=50,
            policy_kwargs=TINY_POLICY)

# Component ablations that must all run: DQN, Double DQN, C51 and Rainbow are special cases.
VARIANTS = {
    "rainbow": {},
    "dqn": dict(double_q=False, prioritized_replay=False, n_steps=1,
                policy_kwargs=dict(net_arch=[16], dueling=False, noisy=False, n_atoms=1)),
    "c51_uniform": dict(double_q=False, prioritized_replay=False, n_steps=1,
                        policy_kwargs=dict(TINY_POLICY, dueling=False, noisy=False)),
    "scalar_per_nstep": dict(policy_kwargs=dict(net_arch=[16], n_atoms=1)),
    "soft_target": dict(tau=0.05, target_update_interval=1),
}


def make(env, **kwargs) -> Rainbow:
    params = {**TINY, "seed": 0, **kwargs}
    return Rainbow(params.pop("policy", "MlpPolicy"), env, **params)


class MultiSpaceEnv(gym.Env):
    """Fixed-length episodes with an arbitrary observation space (SB3's test_spaces DummyEnv)."""

    def __init__(self, observation_space: spaces.Space) -> None:
        self.observation_space = observation_space
        self.action_space = spaces.Discrete(2)
        self._t = 0

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.observation_space.seed(seed)
        self._t = 0
        return self.observation_space.sample(), {}

    def step(self, action):
        self._t += 1
        return self.observation_space.sample(), float(action), self._t >= 10, False, {}


# ---------------------------------------------------------------- test_run / variants

@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_variants_run_and_log(variant: str) -> None:
    kwargs = dict(VARIANTS[variant])
    model = make(IdentityEnv(4, ep_length=20), **kwargs)
    model.learn(80)
    assert model._n_updates == 80 - TINY["learning_starts"]
    values = model.logger.name_to_value
    assert np.isfinite(values["train/loss"])
    assert values["train/n_updates"] == model._n_updates
    assert hasattr(model, "q_net") and hasattr(model, "q_net_target")


def test_multi_env_gradient_steps_minus_one() -> None:
    """n_envs=2, gradient_steps=-1: as many updates as env steps collected (train_freq * n_envs)."""
    env = make_vec_env(lambda: IdentityEnv(3, ep_length=10), n_envs=2)
    model = make(env, train_freq=4, gradient_steps=-1, learning_starts=0, batch_size=8)
    model.learn(8)
    assert model._n_updates == 4 * 2
    assert model.replay_buffer.n_envs == 2


def test_replay_buffer_is_prioritized_nstep_by_default() -> None:
    import buffers

    model = make(IdentityEnv(3))
    assert isinstance(model.replay_buffer, buffers.PrioritizedReplayBuffer)
    assert model.replay_buffer.n_steps == 3 and model.replay_buffer.gamma == model.gamma
    uniform = make(IdentityEnv(3), prioritized_replay=False)
    assert type(uniform.replay_buffer).__name__ == "NStepReplayBuffer"


def test_priority_settings_without_prioritized_replay_are_rejected() -> None:
    # A preset with PER settings and prioritized_replay=False would otherwise die in SB3 with a bare TypeError.
    with pytest.raises(ValueError, match=r"replay_buffer_kwargs: alpha, beta only apply to prioritised replay"):
        make(IdentityEnv(3), prioritized_replay=False, replay_buffer_kwargs={"beta": 0.4, "alpha": 0.5})
    import buffers

    explicit = make(IdentityEnv(3), prioritized_replay=False, replay_buffer_class=buffers.PrioritizedReplayBuffer,
                    replay_buffer_kwargs={"alpha": 0.3})
    assert explicit.replay_buffer.alpha == 0.3  # an explicit prioritised class still takes them


def test_registered_names_resolve() -> None:
    import buffers

    model = make(IdentityEnv(3), policy="RainbowPolicy", replay_buffer_class="PrioritizedReplayBuffer")
    assert type(model.policy) is RainbowPolicy
    assert type(model.replay_buffer) is buffers.PrioritizedReplayBuffer


def test_plugin_policy_name_resolves_through_registry() -> None:
    import registry

    class PluginPolicy(RainbowPolicy):
        pass

    class Plugin:
        @registry.hookimpl
        def register_policies(self, register):
            register("SomePluginPolicy", PluginPolicy)

    registry.register_plugin(Plugin(), name="test-rainbow-plugin-policy")
    try:
        model = make(IdentityEnv(3), policy="SomePluginPolicy")
        assert type(model.policy) is PluginPolicy
    finally:
        registry.unregister_plugin("test-rainbow-plugin-policy")


# ---------------------------------------------------------------- test_predict

def test_predict_shapes_single_and_vectorised() -> None:
    env = make_vec_env("CartPole-v1", n_envs=3, seed=0)
    model = make(env)
    obs = env.reset()
    for deterministic in (True, False):
        actions, state = model.predict(obs, deterministic=deterministic)
        assert actions.shape == (3,) and state is None
        action, _ = model.predict(obs[0], deterministic=deterministic)
        assert action.shape == ()
        assert model.action_space.contains(int(action))


# ---------------------------------------------------------------- test_deterministic

@pytest.mark.parametrize("deterministic", [True, False])
def test_predict_short_path_matches_sb3_predict(deterministic: bool) -> None:
    """RainbowPolicy.predict's short path for flat Box observations gives what SB3's BasePolicy.predict gives."""
    from stable_baselines3.common.policies import BasePolicy

    model = make(make_vec_env("CartPole-v1", n_envs=1, seed=0))
    model.learn(40)
    rng = np.random.default_rng(0)
    for obs in (rng.normal(size=4).astype(np.float32), rng.normal(size=(5, 4)).astype(np.float32),
                rng.normal(size=(1, 4)), [0.1, 0.0, -0.2, 0.3]):
        th.manual_seed(1)
        fast, _ = model.policy.predict(obs, deterministic=deterministic)
        th.manual_seed(1)
        slow, _ = BasePolicy.predict(model.policy, obs, deterministic=deterministic)
        assert isinstance(fast, np.ndarray) and fast.shape == slow.shape and fast.dtype == slow.dtype
        np.testing.assert_array_equal(fast, slow)
    with pytest.raises(ValueError):
        model.policy.predict(np.zeros((2, 3), dtype=np.float32))  # wrong shape: SB3's error


def test_shared_trunk_save_load(tmp_path) -> None:
    model = make(make_vec_env("CartPole-v1", n_envs=1, seed=0), policy_kwargs=dict(TINY_POLICY, shared_trunk=True))
    model.learn(40)
    obs = np.random.default_rng(0).normal(size=(8, 4)).astype(np.float32)
    model.save(tmp_path / "shared")
    loaded = Rainbow.load(tmp_path / "shared")
    assert loaded.q_net.head.shared_trunk and loaded.q_net.head.value_advantage is not None
    np.testing.assert_array_equal(loaded.predict(obs, deterministic=True)[0], model.predict(obs, deterministic=True)[0])


def test_same_seed_same_actions_and_rewards() -> None:
    def rollout() -> tuple[np.ndarray, np.ndarray]:
        env = make_vec_env("CartPole-v1", n_envs=1, seed=3)
        model = make(env, seed=3)
        model.learn(60)
        rewards = np.array([info["r"] for info in model.ep_info_buffer])
        obs = np.random.default_rng(0).uniform(-0.2, 0.2, (16, 4)).astype(np.float32)
        return model.predict(obs, deterministic=False)[0], rewards

    (a1, r1), (a2, r2) = rollout(), rollout()
    np.testing.assert_array_equal(a1, a2)
    np.testing.assert_array_equal(r1, r2)


_SEEDED_RUN = """
import hashlib, sys
import torch as th
th.set_num_threads(1)
from rlgen_plugins.rainbow.algorithm import Rainbow
model = Rainbow("MlpPolicy", "CartPole-v1", learning_starts=50, batch_size=32, buffer_size=1_000, train_freq=1,
                target_update_interval=20, seed=5, policy_kwargs=dict(net_arch=[32], n_atoms=11, v_max=20.0),
                torch_compile=sys.argv[2] == "compile")
model.learn(int(sys.argv[1]))
params = b"".join(p.detach().numpy().tobytes() for p in model.policy.parameters())
print(hashlib.sha256(params).hexdigest())
"""


@pytest.mark.parametrize("mode", ["eager", "compile"])
def test_same_seed_same_parameters_across_processes(mode: str) -> None:
    """Separate processes with the same seed and length train identical networks (no hidden nondeterminism from
    fused Adam, numba, the thread pool, or torch.compile's generated kernels, cached or not)."""
    import subprocess
    import sys

    def run(steps: int) -> str:
        done = subprocess.run([sys.executable, "-c", _SEEDED_RUN, str(steps), mode], capture_output=True, text=True,
                              check=True, timeout=300)
        return done.stdout.strip().splitlines()[-1]

    first, second = run(300), run(300)
    assert len(first) == 64
    assert first == second


# ---------------------------------------------------------------- test_identity

def test_identity_env_is_solved() -> None:
    env = IdentityEnv(4, ep_length=20)
    model = Rainbow("MlpPolicy", env, learning_rate=3e-3, learning_starts=100, batch_size=32, buffer_size=2_000,
                    train_freq=1, target_update_interval=50, n_steps=1, gamma=0.0, seed=0,
                    policy_kwargs=dict(net_arch=[32], n_atoms=11, v_min=0.0, v_max=1.0))
    model.learn(800)
    mean_reward, _ = evaluate_policy(model, model.get_env(), n_eval_episodes=5, deterministic=True)
    assert mean_reward >= 19.0  # 20 is perfect


# ---------------------------------------------------------------- test_save_load

def test_save_load_keeps_deterministic_actions_and_setup(tmp_path) -> None:
    env = make_vec_env("CartPole-v1", n_envs=1, seed=0)
    model = make(env, policy_kwargs=dict(TINY_POLICY, v_min=0.0, v_max=50.0))
    model.learn(60)
    obs = np.random.default_rng(0).uniform(-0.2, 0.2, (20, 4)).astype(np.float32)
    expected, _ = model.predict(obs, deterministic=True)
    params = model.get_parameters()
    model.save(tmp_path / "rainbow.zip")
    del model
    loaded = Rainbow.load(tmp_path / "rainbow.zip", env=env)
    np.testing.assert_array_equal(loaded.predict(obs, deterministic=True)[0], expected)
    for name, state in loaded.get_parameters().items():
        for key, tensor in state.items():
            if isinstance(tensor, th.Tensor):
                th.testing.assert_close(tensor, params[name][key])
    assert loaded.q_net is loaded.policy.q_net and loaded.q_net_target is loaded.policy.q_net_target
    assert loaded.q_net.support[-1].item() == 50.0 and loaded.n_steps == 3 and loaded.double_q
    assert loaded.beta_schedule is not None
    loaded.learn(30, reset_num_timesteps=False)  # training continues after loading (with a fresh buffer)
    assert loaded._n_updates > 0
    # set_env with a new env of the same spaces
    loaded.set_env(make_vec_env("CartPole-v1", n_envs=1, seed=1))
    loaded.learn(10, reset_num_timesteps=False)


def test_set_parameters_then_predict_changes(tmp_path) -> None:
    model = make(make_vec_env("CartPole-v1", n_envs=1, seed=0))
    params = {k: {n: t.clone() for n, t in v.items()} for k, v in model.get_parameters().items() if k == "policy"}
    perturbed = {k: {n: t + 0.5 if isinstance(t, th.Tensor) and t.is_floating_point() else t for n, t in v.items()}
                 for k, v in params.items() if k == "policy"}
    model.set_parameters(perturbed, exact_match=False)
    th.testing.assert_close(model.q_net.head.advantage.layers[0].weight_mu,
                            params["policy"]["q_net.head.advantage.layers.0.weight_mu"] + 0.5)


def test_replay_buffer_save_load_keeps_priorities(tmp_path) -> None:
    model = make(IdentityEnv(3, ep_length=10))
    model.learn(60)
    buffer = model.replay_buffer
    np.random.seed(7)
    before = buffer.sample(16)
    model.save_replay_buffer(tmp_path / "buffer.pkl")
    other = make(IdentityEnv(3, ep_length=10))
    other.load_replay_buffer(tmp_path / "buffer.pkl")
    np.random.seed(7)
    after = other.replay_buffer.sample(16)
    np.testing.assert_array_equal(before.indices, after.indices)
    th.testing.assert_close(before.weights, after.weights)
    assert other.replay_buffer.max_priority == buffer.max_priority
    assert not th.allclose(before.weights, th.ones_like(before.weights))  # priorities are not uniform


def test_policy_save_load(tmp_path) -> None:
    model = make(make_vec_env("CartPole-v1", n_envs=1, seed=0))
    obs = np.zeros((2, 4), dtype=np.float32)
    model.policy.save(tmp_path / "policy.pkl")
    policy = RainbowPolicy.load(tmp_path / "policy.pkl")
    np.testing.assert_array_equal(policy.predict(obs, deterministic=True)[0], model.predict(obs, deterministic=True)[0])


# ---------------------------------------------------------------- test_spaces

@pytest.mark.parametrize(
    "observation_space",
    [spaces.MultiDiscrete([3, 4]), spaces.MultiBinary(5), spaces.Discrete(6), spaces.Box(-1, 1, (3,))],
    ids=["multidiscrete", "multibinary", "discrete", "box"],
)
def test_observation_spaces(observation_space: spaces.Space) -> None:
    env = MultiSpaceEnv(observation_space)
    check_env(env)
    model = make(env)
    model.learn(40)
    assert model._n_updates > 0


def test_cnn_policy_on_fake_image_env() -> None:
    env = FakeImageEnv(screen_height=36, screen_width=36, n_channels=1, discrete=True)
    model = make(env, policy="CnnPolicy", buffer_size=100, batch_size=4, learning_starts=10,
                 policy_kwargs=dict(n_atoms=5, features_extractor_kwargs=dict(features_dim=16)))
    model.learn(16)
    assert model._n_updates > 0
    assert model.q_net.features_extractor.features_dim == 16


def test_multi_input_policy_on_simple_multi_obs_env() -> None:
    env = DummyVecEnv([lambda: SimpleMultiObsEnv(random_start=True)])
    model = make(env, policy="MultiInputPolicy", buffer_size=100, batch_size=4, learning_starts=10,
                 policy_kwargs=dict(n_atoms=5, net_arch=[16]))
    model.learn(16)
    assert type(model.replay_buffer).__name__ == "DictPrioritizedReplayBuffer"
    assert model._n_updates > 0


def test_dict_observations_without_per_need_one_step() -> None:
    env = DummyVecEnv([lambda: SimpleMultiObsEnv(random_start=True)])
    with pytest.raises(ValueError, match="n_steps"):
        make(env, policy="MultiInputPolicy", prioritized_replay=False)
    make(env, policy="MultiInputPolicy", prioritized_replay=False, n_steps=1).learn(24)


def test_minatar_cnn_on_minatar() -> None:
    minatar_gym = pytest.importorskip("minatar.gym")
    minatar_gym.register_envs()
    env = make_vec_env("MinAtar/Breakout-v1", n_envs=1, seed=0)
    model = make(env, policy="CnnPolicy", buffer_size=200, batch_size=8, learning_starts=10,
                 policy_kwargs=dict(features_extractor_class=MinAtarCNN, net_arch=[16], n_atoms=5))
    model.learn(20)
    assert model._n_updates > 0 and model.replay_buffer.observations.dtype == bool


# ---------------------------------------------------------------- callbacks, progress bar, evaluation

@pytest.mark.filterwarnings("ignore:rich is experimental")
def test_callbacks_and_progress_bar(tmp_path) -> None:
    class Counter(BaseCallback):
        def __init__(self) -> None:
            super().__init__()
            self.calls = 0

        def _on_step(self) -> bool:
            self.calls += 1
            return self.calls < 25  # stop early

    counter = Counter()
    checkpoints = CheckpointCallback(save_freq=10, save_path=str(tmp_path), name_prefix="rb")
    model = make(make_vec_env("CartPole-v1", n_envs=1, seed=0))
    model.learn(100, callback=[counter, checkpoints], progress_bar=True)
    assert counter.calls == 25 and model.num_timesteps == 25
    assert sorted(p.name for p in tmp_path.iterdir())[:2] == ["rb_10_steps.zip", "rb_20_steps.zip"]


def test_check_env_and_evaluate_policy() -> None:
    env = gym.make("CartPole-v1")
    check_env(env)
    model = make(env)
    mean, std = evaluate_policy(model, model.get_env(), n_eval_episodes=3, deterministic=True)
    again, _ = evaluate_policy(model, make_vec_env("CartPole-v1", n_envs=1, seed=0), n_eval_episodes=3)
    assert 8 <= mean <= 500 and std >= 0 and 8 <= again <= 500


def test_presets_build_models() -> None:
    from rlgen_plugins.cli.presets import available_presets, load_preset

    ids = available_presets("rainbow")
    assert {"CartPole-v1", "Acrobot-v1", "MinAtar/Breakout-v1", "PongNoFrameskip-v4"} <= set(ids)
    for env_id in ("CartPole-v1", "Acrobot-v1"):
        preset = load_preset("rainbow", env_id)
        for key in ("n_timesteps", "n_envs", "frame_stack", "env_wrapper"):
            preset.pop(key, None)
        preset["buffer_size"] = 1_000
        model = Rainbow(preset.pop("policy"), env_id, **preset)
        assert model.policy.n_atoms == preset["policy_kwargs"]["n_atoms"]
    atari = load_preset("rainbow", "PongNoFrameskip-v4")
    assert atari["policy"] == "CnnPolicy" and atari["n_steps"] == 3 and atari["policy_kwargs"]["n_atoms"] == 51
    minatar = load_preset("rainbow", "MinAtar/SpaceInvaders-v1")
    assert minatar["policy_kwargs"]["features_extractor_class"] is MinAtarCNN


def test_atari_preset_trains_on_stacked_frames_with_each_frame_stored_once() -> None:
    """The Atari preset's replay (PER, n-step, frame_stack_dedup) inside Rainbow, on 84x84 frames stacked by four."""
    from stable_baselines3.common.vec_env import VecFrameStack

    from rlgen_plugins.cli.presets import load_preset

    preset = load_preset("rainbow", "PongNoFrameskip-v4")
    assert preset["buffer_size"] == 1_000_000 and preset["replay_buffer_kwargs"]["frame_stack_dedup"] is True
    for key in ("n_timesteps", "frame_stack", "policy"):
        preset.pop(key)
    preset.update(buffer_size=400, learning_starts=64, target_update_interval=50, seed=0,
                  policy_kwargs=dict(preset["policy_kwargs"], net_arch=[16]))
    env = VecFrameStack(make_vec_env(FakeImageEnv, n_envs=1, seed=0), 4)
    model = Rainbow("CnnPolicy", env, **preset)
    model.learn(160)
    buffer = model.replay_buffer
    assert buffer.frames is not None and model._n_updates == (160 - 64) // 4
    batch = buffer.sample(8)
    assert batch.observations.shape == batch.next_observations.shape == (8, 4, 84, 84)
    frame_bytes = 84 * 84  # one frame per row (plus a few per episode start), not four
    assert buffer.frames.nbytes < 1.5 * 400 * frame_bytes and not hasattr(buffer, "observations")
