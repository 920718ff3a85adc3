"""Rainbow's components in isolation: C51 projection, Double-Q, noise handling, bad input.

Each test pins one of the recurring Rainbow bugs listed in docs/reference (rainbow-pitfalls).
"""

from __future__ import annotations

from collections import namedtuple

import gymnasium as gym
import numpy as np
import pytest
import torch as th
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.envs import IdentityEnv, IdentityEnvBox

from buffers import PrioritizedReplayBuffer
from buffers.samples import PrioritizedReplayBufferSamples
from rlgen_plugins.rainbow.algorithm import Rainbow
from rlgen_plugins.rainbow.support import UnknownNameError, UnsupportedSpaceError, clip_grad_norm, without_arrays
from rlgen_plugins.rainbow.targets import (
    categorical_kl,
    categorical_projection,
    double_q_target,
    greedy_next_actions,
)

TINY = dict(net_arch=[16], n_atoms=11, v_min=-5.0, v_max=5.0)


def tiny_model(env=None, **kwargs) -> Rainbow:
    params = dict(learning_starts=8, batch_size=8, buffer_size=500, train_freq=1, target_update_interval=20,
                  policy_kwargs=dict(TINY), seed=0)
    params.update(kwargs)
    return Rainbow("MlpPolicy", env if env is not None else IdentityEnv(3, ep_length=10), **params)


def brute_force_projection(probs: np.ndarray, rewards: np.ndarray, discounts: np.ndarray, dones: np.ndarray,
                           support: np.ndarray) -> np.ndarray:
    """C51 paper eq. 7: (Phi T Z)_i = sum_j [1 - |clip(T z_j) - z_i| / dz]_0^1 p_j, written as loops."""
    v_min, v_max = support[0], support[-1]
    dz = support[1] - support[0]
    out = np.zeros_like(probs)
    for b in range(probs.shape[0]):
        for j, z_j in enumerate(support):
            tz = np.clip(rewards[b] + discounts[b] * (1 - dones[b]) * z_j, v_min, v_max)
            for i, z_i in enumerate(support):
                out[b, i] += max(0.0, 1.0 - abs(tz - z_i) / dz) * probs[b, j]
    return out


# ---------------------------------------------------------------- C51 projection

def _random_probs(rng: np.random.Generator, batch: int, n_atoms: int) -> np.ndarray:
    p = rng.random((batch, n_atoms)) + 1e-3
    return p / p.sum(axis=1, keepdims=True)


@pytest.mark.parametrize("case", ["random", "integer_b", "beyond_edges", "terminal"])
def test_categorical_projection_conserves_mass_and_matches_brute_force(case: str) -> None:
    rng = np.random.default_rng(0)
    support = np.linspace(-10.0, 10.0, 21)  # delta_z = 1: integer rewards with discount 1 give integer b
    batch = 6
    probs = _random_probs(rng, batch, 21)
    dones = np.zeros(batch)
    discounts = np.full(batch, 0.9)
    if case == "random":
        rewards = rng.uniform(-3, 3, batch)
    elif case == "integer_b":
        rewards = np.array([0.0, 1.0, -2.0, 3.0, 5.0, -7.0])
        discounts = np.ones(batch)  # T z_j = r + z_j lands exactly on atoms
    elif case == "beyond_edges":
        rewards = np.array([50.0, -50.0, 9.5, -9.5, 10.0, -10.0])  # mass piles up on the edge atoms
    else:
        rewards = rng.uniform(-3, 3, batch)
        dones = np.ones(batch)  # all mass on the atoms around r
    got = categorical_projection(
        th.tensor(probs, dtype=th.float64), th.tensor(rewards).view(-1, 1), th.tensor(discounts).view(-1, 1),
        th.tensor(dones).view(-1, 1), th.tensor(support),
    ).numpy()
    expected = brute_force_projection(probs, rewards, discounts, dones, support)
    np.testing.assert_allclose(got.sum(axis=1), 1.0, atol=1e-12)
    np.testing.assert_allclose(got, expected, atol=1e-12)
    assert (got >= 0).all()


def test_categorical_projection_integer_b_keeps_mass_on_that_atom() -> None:
    """The l == u bug: floor(b) == ceil(b) gives both neighbours weight 0 and the mass vanishes."""
    support = th.linspace(0.0, 4.0, 5)
    probs = th.tensor([[0.0, 0.0, 1.0, 0.0, 0.0]])
    got = categorical_projection(probs, th.tensor([[1.0]]), th.tensor([[1.0]]), th.tensor([[0.0]]), support)
    assert got.tolist() == [[0.0, 0.0, 0.0, 1.0, 0.0]]
    # Top edge: b == N - 1 exactly.
    got = categorical_projection(probs, th.tensor([[2.0]]), th.tensor([[1.0]]), th.tensor([[0.0]]), support)
    assert got.tolist() == [[0.0, 0.0, 0.0, 0.0, 1.0]]


def test_categorical_kl_and_projection_act_on_the_last_axis_of_any_batch_shape() -> None:
    """KL over atoms (the last axis), whatever the leading batch shape: each row equals its own 1-row KL."""
    gen = th.Generator().manual_seed(0)
    logits = th.randn(2, 3, 5, generator=gen)
    target = th.randn(2, 3, 5, generator=gen).softmax(-1)
    batched = categorical_kl(target, logits)
    assert batched.shape == (2, 3)
    for i in range(2):
        for j in range(3):
            m, log_p = target[i, j], logits[i, j].log_softmax(0)
            assert batched[i, j].item() == pytest.approx(float((m * (m.log() - log_p)).sum()), rel=1e-5)


def test_categorical_kl_is_zero_for_matching_distributions_and_positive_otherwise() -> None:
    logits = th.randn(4, 7, generator=th.Generator().manual_seed(0))
    same = categorical_kl(logits.softmax(-1), logits)
    np.testing.assert_allclose(same.numpy(), 0.0, atol=1e-6)
    other = categorical_kl(th.full((4, 7), 1 / 7), logits)
    assert (other > 1e-4).all()


# ---------------------------------------------------------------- Double Q

def test_double_q_target_uses_the_selectors_argmax_and_target_values() -> None:
    online = th.tensor([[1.0, 5.0, 2.0]])  # online prefers action 1
    target = th.tensor([[10.0, 3.0, 4.0]])  # target prefers action 0
    r, disc, done = th.tensor([[1.0]]), th.tensor([[0.5]]), th.tensor([[0.0]])
    assert greedy_next_actions(online).item() == 1
    assert double_q_target(r, disc, done, online, target).item() == pytest.approx(1.0 + 0.5 * 3.0)  # Double DQN
    assert double_q_target(r, disc, done, target, target).item() == pytest.approx(1.0 + 0.5 * 10.0)  # DQN
    # Terminal transitions do not bootstrap.
    assert double_q_target(r, disc, th.tensor([[1.0]]), online, target).item() == pytest.approx(1.0)


@pytest.mark.parametrize("double_q", [True, False])
@pytest.mark.parametrize("n_atoms", [1, 11])
def test_the_update_picks_a_star_with_the_online_network_only_under_double_q(
        n_atoms: int, double_q: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    """Inside the update, a* comes from the online network's Q(s') with double_q=True, the target's without."""
    import rlgen_plugins.rainbow.targets as rainbow_module

    model = tiny_model(double_q=double_q, policy_kwargs=dict(TINY, n_atoms=n_atoms, noisy=False))
    model.learn(20)
    with th.no_grad():  # make online and target networks disagree
        for p in model.q_net_target.parameters():
            p.add_(th.randn_like(p))
    captured: dict = {}
    original = rainbow_module.greedy_next_actions

    def spy(next_q_selector):
        captured["selector"] = next_q_selector
        return original(next_q_selector)

    monkeypatch.setattr(rainbow_module, "greedy_next_actions", spy)
    np.random.seed(3)
    data = model.replay_buffer.sample(8)
    model._loss(None, data)
    with th.no_grad():
        expected_online = model.q_net(data.next_observations)
        expected_target = model.q_net_target(data.next_observations)
    assert not th.allclose(expected_online, expected_target)
    th.testing.assert_close(captured["selector"], expected_online if double_q else expected_target)


# ---------------------------------------------------------------- noise

@pytest.mark.parametrize("max_norm", [0.5, 3.0, 100.0])
def test_clip_grad_norm_matches_torch_with_and_without_clipping(max_norm: float) -> None:
    """The rescale is skipped only where torch's coefficient clamps to 1: gradients stay bit-identical."""
    gen = th.Generator().manual_seed(0)
    ours = [th.nn.Parameter(th.zeros(shape)) for shape in [(4, 3), (3,), (2, 4)]]
    theirs = [th.nn.Parameter(th.zeros(shape)) for shape in [(4, 3), (3,), (2, 4)]]
    for a, b in zip(ours, theirs):
        a.grad = th.randn(a.shape, generator=gen)
        b.grad = a.grad.clone()
    norm_before = th.cat([p.grad.flatten() for p in ours]).norm()
    assert 0.5 < norm_before < 100.0  # the cases clip, clip, and leave alone
    total = clip_grad_norm(ours, max_norm)
    expected_total = th.nn.utils.clip_grad_norm_(theirs, max_norm)
    assert th.equal(total, expected_total)
    for a, b in zip(ours, theirs):
        assert th.equal(a.grad, b.grad)
    norm_after = th.cat([p.grad.flatten() for p in ours]).norm()
    assert norm_after <= max_norm + 1e-4 and (max_norm < norm_before or norm_after == norm_before)


def test_noise_is_resampled_at_every_gradient_step_for_online_and_target() -> None:
    model = tiny_model()
    model.learn(20)
    online, target = model.q_net.head.noise, model.q_net_target.head.noise
    before = (online.clone(), target.clone())
    model.train(gradient_steps=1, batch_size=8)
    assert not th.equal(online, before[0])
    assert not th.equal(target, before[1])


def test_deterministic_predict_is_noise_free_and_repeatable() -> None:
    model = tiny_model()
    model.learn(20)
    obs = np.arange(3)  # all three observations of IdentityEnv(3), vectorised
    noise_before = model.q_net.head.noise.clone()
    actions = [model.predict(obs, deterministic=True)[0] for _ in range(5)]
    assert all(np.array_equal(a, actions[0]) for a in actions)
    assert th.equal(model.q_net.head.noise, noise_before)  # deterministic predict does not touch the noise
    with th.no_grad():
        mean_q = model.q_net(model.policy.obs_to_tensor(obs)[0])
    np.testing.assert_array_equal(actions[0], mean_q.argmax(1).numpy())


def test_noisy_exploration_is_active_during_learn_although_sb3_uses_eval_mode() -> None:
    """SB3 calls set_training_mode(False) before acting; the noise must not be tied to module.training."""
    model = tiny_model(learning_starts=0, gradient_steps=0)  # no gradient step: every noise draw comes from acting
    draws = []
    original = model.q_net.reset_noise

    def spy() -> None:
        draws.append(model.policy.training)
        original()

    model.q_net.reset_noise = spy  # type: ignore[method-assign]
    with pytest.warns(UserWarning, match="gradient_steps=0"):
        model.learn(30)
    assert len(draws) == 30  # fresh noise for every action
    assert not any(draws)  # ... although the policy was in eval mode
    assert model.exploration_rate == 0.0  # noisy nets replace epsilon-greedy


def test_stochastic_predict_samples_noise() -> None:
    model = tiny_model(policy_kwargs=dict(TINY, noisy_std=5.0))
    obs = np.arange(3)
    th.manual_seed(0)
    actions = {tuple(model.predict(obs, deterministic=False)[0]) for _ in range(30)}
    assert len(actions) > 1


def test_epsilon_greedy_only_without_noisy_layers() -> None:
    model = tiny_model(policy_kwargs=dict(TINY, noisy=False), exploration_fraction=0.5, exploration_initial_eps=1.0,
                       exploration_final_eps=0.1, learning_starts=1000)
    with pytest.warns(UserWarning, match="not past learning_starts=1000"):
        model.learn(10)
    assert model.exploration_rate == pytest.approx(0.1)  # epsilon-greedy ran its schedule
    assert model.exploration_schedule(0.9) == pytest.approx(1.0 - 0.9 * 0.2)
    assert not any(isinstance(m, th.nn.Module) and type(m).__name__ == "NoisyLinear" for m in model.policy.modules())


def test_per_beta_is_annealed_to_one() -> None:
    model = tiny_model()
    assert model.replay_buffer.beta == pytest.approx(0.4)
    model.learn(60)
    assert model.replay_buffer.beta == pytest.approx(1.0, abs=0.03)


def test_v_min_is_kept_as_given() -> None:
    """One library silently turned v_min=0 into -v_max."""
    model = tiny_model(policy_kwargs=dict(TINY, v_min=0.0, v_max=100.0))
    assert model.q_net.support[0].item() == 0.0
    assert model.q_net.support[-1].item() == 100.0
    assert model.q_net_target.support.shape == (11,)


# ---------------------------------------------------------------- torch.compile

def _eager_loss_and_gradients(model: Rainbow, data) -> tuple[th.Tensor, th.Tensor, list[th.Tensor]]:
    for param in model._trained_parameters:
        param.grad = None
    loss, priorities = model._loss(None, data)  # the eager path: the network called directly
    loss.backward()
    return loss.detach(), priorities, [param.grad.clone() for param in model._trained_parameters]


def _compiled_loss_and_gradients(model: Rainbow, data) -> tuple[th.Tensor, th.Tensor, list[th.Tensor]]:
    with th.no_grad():
        grads, (loss, priorities) = model._compiled_gradients(model._named_parameters, without_arrays(data))
    return loss, priorities, list(grads.values())


@pytest.mark.parametrize("n_atoms", [1, 11])
def test_compiled_loss_matches_eager_for_each_model_and_after_load(n_atoms: int, tmp_path) -> None:
    """torch_compile=True gives eager's loss, priorities and gradients: for two models in turn (dynamo shares one
    compiled graph between instances, which must read each model's own weights) and for a reloaded model."""
    models = []
    for seed in (0, 1):
        model = tiny_model(seed=seed, torch_compile=True, policy_kwargs=dict(TINY, n_atoms=n_atoms))
        model.learn(30)  # compiles at the first gradient step and trains with the compiled loss
        models.append(model)
    models[1].save(tmp_path / "model")
    loaded = Rainbow.load(tmp_path / "model", env=IdentityEnv(3, ep_length=10))
    assert loaded.torch_compile is True
    loaded.replay_buffer = models[1].replay_buffer
    for model in [*models, loaded]:
        data = model.replay_buffer.sample(8)
        model.policy.reset_noise()
        loss, priorities, grads = _compiled_loss_and_gradients(model, data)
        eager_loss, eager_priorities, eager_grads = _eager_loss_and_gradients(model, data)
        assert len(grads) == len(eager_grads) == len(list(model.q_net.parameters()))
        th.testing.assert_close(loss, eager_loss, rtol=1e-5, atol=1e-6)
        th.testing.assert_close(priorities, eager_priorities, rtol=1e-5, atol=1e-6)
        for grad, eager_grad in zip(grads, eager_grads):
            th.testing.assert_close(grad, eager_grad, rtol=1e-4, atol=1e-6)
    losses = [model._loss(model._named_parameters, data)[0] for model in models]
    assert not th.allclose(losses[0], losses[1])


def test_compiled_noisy_acting_takes_eager_actions_on_the_same_noise() -> None:
    """torch_compile also compiles noisy acting (learn's predict); deterministic acting stays eager."""
    assert tiny_model().q_net._compiled_noisy_actions is None
    model = tiny_model(torch_compile=True, env=make_vec_env(lambda: IdentityEnv(3, ep_length=10), n_envs=2))
    model.learn(30)
    q_net = model.q_net
    assert q_net._compiled_noisy_actions is not None
    gen = np.random.default_rng(0)
    for _ in range(20):
        obs = th.as_tensor(gen.integers(0, 3, size=2))  # a batch of n_envs observations, as learn() acts on
        q_net.reset_noise()
        with th.no_grad():
            expected = q_net(obs, noise=True).argmax(dim=1)
            assert th.equal(q_net._compiled_noisy_actions(obs, noise=True), expected)
    compiled, calls = q_net._compiled_noisy_actions, []
    q_net._compiled_noisy_actions = lambda obs, noise: calls.append(noise) or compiled(obs, noise=noise)
    model.predict(np.array([0, 1]), deterministic=True)
    assert calls == []  # evaluation stays eager: any batch size, never a compilation
    model.predict(np.array([0, 1]), deterministic=False)
    assert calls == [True]


# A plugin buffer's sample type: PER's fields plus a bookkeeping array of its own.
_TaggedSamples = namedtuple("_TaggedSamples", [*PrioritizedReplayBufferSamples._fields, "ages"])


class _TaggingBuffer(PrioritizedReplayBuffer):
    """Returns ``_TaggedSamples`` and records the indices handed back to ``update_priorities``."""

    def sample(self, batch_size: int, env=None, beta=None) -> _TaggedSamples:  # type: ignore[override]
        samples = super().sample(batch_size, env, beta)
        self.sampled.append(samples.indices.copy())
        return _TaggedSamples(*samples, ages=self.pos - samples.indices // self.n_envs)

    def update_priorities(self, indices, priorities) -> None:
        self.updated.append(np.asarray(indices).copy())
        super().update_priorities(indices, priorities)


def test_compiled_update_takes_a_plugin_buffer_whose_samples_carry_extra_arrays() -> None:
    """The compiled gradients take tensors only: every numpy field of a sample is dropped on the way in, while the
    buffer still gets its own indices back with the new priorities."""
    model = tiny_model(torch_compile=True, replay_buffer_class=_TaggingBuffer)
    buffer = model.replay_buffer
    buffer.sampled, buffer.updated = [], []
    model.learn(30)
    assert model._n_updates > 0 and len(buffer.updated) == len(buffer.sampled) == model._n_updates
    for sampled, updated in zip(buffer.sampled, buffer.updated):
        np.testing.assert_array_equal(updated, sampled)
    data = buffer.sample(8)
    stripped = without_arrays(data)
    assert type(stripped) is _TaggedSamples and stripped.indices is None and stripped.ages is None
    assert stripped.observations is data.observations and stripped.weights is data.weights


def test_torch_compile_without_a_cpp_compiler_fails_at_construction(tmp_path) -> None:
    from torch._inductor import config as inductor_config

    tiny_model(torch_compile=True).save(tmp_path / "compiled")  # compilation is lazy: nothing compiled yet
    with inductor_config.patch({"cpp.cxx": ("no-such-c++-compiler",)}):  # inductor's own patch: restored exactly
        with pytest.raises(ValueError, match="torch_compile"):
            tiny_model(torch_compile=True)
        with pytest.raises(ValueError, match="torch_compile=False"):
            Rainbow.load(tmp_path / "compiled")
        assert Rainbow.load(tmp_path / "compiled", torch_compile=False).torch_compile is False
        assert tiny_model(torch_compile=False).torch_compile is False
    assert tiny_model(torch_compile=True).torch_compile is True  # the real compiler is found again afterwards


# ---------------------------------------------------------------- bad input

@pytest.mark.parametrize(
    ("kwargs", "argument"),
    [
        (dict(policy_kwargs=dict(v_min=1.0, v_max=1.0)), "v_min"),
        (dict(policy_kwargs=dict(v_min=2.0, v_max=-2.0)), "v_min"),
        (dict(policy_kwargs=dict(n_atoms=0)), "n_atoms"),
        (dict(policy_kwargs=dict(n_atoms=2.5)), "n_atoms"),
        (dict(n_steps=0), "n_steps"),
        (dict(gamma=1.5), "gamma"),
        (dict(gamma=-0.1), "gamma"),
        (dict(tau=-0.1), "tau"),
        (dict(tau=1.5), "tau"),
        (dict(policy_kwargs=dict(noisy_std=0.0)), "noisy_std"),
        (dict(torch_compile="yes"), "torch_compile"),
    ],
)
def test_bad_arguments_raise_value_error_naming_them(kwargs: dict, argument: str) -> None:
    with pytest.raises(ValueError, match=argument):
        Rainbow("MlpPolicy", IdentityEnv(3), **kwargs)


def test_unknown_policy_name_raises_key_and_value_error() -> None:
    with pytest.raises(KeyError, match="policy"):
        Rainbow("NoSuchPolicy", IdentityEnv(3))
    with pytest.raises(ValueError, match="MlpPolicy"):
        Rainbow("NoSuchPolicy", IdentityEnv(3))
    with pytest.raises(UnknownNameError, match="replay_buffer_class"):
        Rainbow("MlpPolicy", IdentityEnv(3), replay_buffer_class="NoSuchBuffer")


def test_box_actions_rejected_with_clear_error() -> None:
    with pytest.raises(UnsupportedSpaceError, match="Discrete"):
        Rainbow("MlpPolicy", IdentityEnvBox())
    with pytest.raises(ValueError, match="env"):  # also an AssertionError, as SB3 raises
        Rainbow("MlpPolicy", gym.make("Pendulum-v1"))


def test_evaluation_ignores_epsilon() -> None:
    """Deterministic predict (what evaluate_policy uses) must not explore even while epsilon is 1."""
    model = tiny_model(policy_kwargs=dict(TINY, noisy=False))
    model.exploration_rate = 1.0
    obs = np.tile(np.arange(3), 20)
    greedy = model.predict(obs, deterministic=True)[0]
    with th.no_grad():
        expected = model.q_net(model.policy.obs_to_tensor(obs)[0]).argmax(1).numpy()
    np.testing.assert_array_equal(greedy, expected)
    np.random.seed(0)
    explored = model.predict(obs, deterministic=False)[0]  # epsilon = 1: uniform actions
    assert not np.array_equal(explored, greedy)
