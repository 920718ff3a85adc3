"""NoisyLinear, the Q heads, MinAtarCNN and RainbowPolicy as modules (no training)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch as th
from gymnasium import spaces
from stable_baselines3.common.torch_layers import FlattenExtractor, NatureCNN

from policies import (
    MinAtarCNN,
    NoisyLinear,
    QHead,
    RainbowCnnPolicy,
    RainbowMultiInputPolicy,
    RainbowPolicy,
    categorical_q_values,
    dueling_combine,
)
from policies.noisy import sample_scaled_noise_


def constant_lr(_: float) -> float:
    return 1e-3


# ---------------------------------------------------------------- NoisyLinear

def test_noisy_linear_init_follows_the_paper() -> None:
    th.manual_seed(0)
    layer = NoisyLinear(16, 4, sigma0=0.5)
    bound = 1 / math.sqrt(16)
    assert layer.weight_mu.abs().max() <= bound
    assert th.allclose(layer.weight_sigma, th.full((4, 16), 0.5 * bound))
    assert th.allclose(layer.bias_sigma, th.full((4,), 0.5 * bound))


def test_noisy_linear_noise_on_off_and_reset() -> None:
    th.manual_seed(0)
    layer = NoisyLinear(5, 3)
    x = th.randn(7, 5)
    mean_out = layer(x, noise=False)
    th.testing.assert_close(mean_out, x @ layer.weight_mu.T + layer.bias_mu)
    noisy_a, noisy_b = layer(x), layer(x)
    th.testing.assert_close(noisy_a, noisy_b)  # same noise until reset_noise()
    assert not th.allclose(noisy_a, mean_out)
    layer.reset_noise()
    assert not th.allclose(layer(x), noisy_a)
    th.testing.assert_close(layer(x, noise=False), mean_out)  # mean weights unaffected by noise


def test_noisy_linear_weight_noise_is_factorised() -> None:
    """Effective weight noise sigma * (eps_out eps_in^T): the noise matrix has rank one."""
    th.manual_seed(1)
    layer = NoisyLinear(6, 4)
    with th.no_grad():
        layer.weight_mu.zero_()
        layer.bias_mu.zero_()
        layer.weight_sigma.fill_(1.0)
        layer.bias_sigma.fill_(1.0)
    weight = layer(th.eye(6), noise=True).T - layer.eps_out.view(-1, 1)  # rows: W e_i + b, minus b
    assert th.linalg.matrix_rank(weight).item() == 1
    th.testing.assert_close(weight, th.outer(layer.eps_out, layer.eps_in))


def test_scaled_noise_has_the_right_distribution() -> None:
    th.manual_seed(0)
    x = sample_scaled_noise_(th.empty(200_000))
    # f(x) = sgn(x) sqrt(|x|), x ~ N(0, 1): E[f] = 0, E[f^2] = E|x| = sqrt(2 / pi)
    assert abs(x.mean().item()) < 0.01
    assert x.pow(2).mean().item() == pytest.approx(math.sqrt(2 / math.pi), rel=0.01)


def test_noise_buffers_are_not_saved() -> None:
    layer = NoisyLinear(3, 2)
    assert set(layer.state_dict()) == {"weight_mu", "weight_sigma", "bias_mu", "bias_sigma"}


@pytest.mark.parametrize("sigma0", [0.0, -1.0])
def test_noisy_linear_rejects_bad_sigma(sigma0: float) -> None:
    with pytest.raises(ValueError, match="sigma0"):
        NoisyLinear(3, 2, sigma0=sigma0)


# ---------------------------------------------------------------- heads

def test_dueling_combine_identifiability() -> None:
    value = th.randn(5, 1, 3)
    advantage = th.randn(5, 4, 3)
    q = dueling_combine(value, advantage)
    th.testing.assert_close(q.mean(dim=1, keepdim=True), value)  # mean_a Q(s, a) = V(s)
    th.testing.assert_close(q - q.mean(1, keepdim=True), advantage - advantage.mean(1, keepdim=True))


def test_categorical_q_values_is_expectation_over_support() -> None:
    support = th.tensor([-1.0, 0.0, 2.0])
    logits = th.log(th.tensor([[[0.5, 0.25, 0.25], [0.0, 0.0, 1.0]]]) + 1e-30)
    th.testing.assert_close(categorical_q_values(logits, support), th.tensor([[0.0, 2.0]]), atol=1e-6, rtol=0)


@pytest.mark.parametrize("dueling", [True, False])
@pytest.mark.parametrize("noisy", [True, False])
@pytest.mark.parametrize("n_atoms", [1, 5])
def test_qhead_shapes_and_layers(dueling: bool, noisy: bool, n_atoms: int) -> None:
    head = QHead(8, 3, [16, 12], dueling=dueling, noisy=noisy, n_atoms=n_atoms)
    out = head(th.randn(4, 8))
    assert out.shape == (4, 3, n_atoms)
    n_linear = sum(isinstance(m, (th.nn.Linear, NoisyLinear)) for m in head.modules())
    # Without dueling: 2 hidden + output. With dueling: 1 shared + (1 hidden + output) per stream.
    assert n_linear == (5 if dueling else 3)
    assert len(head.noisy_layers) == (n_linear if noisy else 0)


@pytest.mark.parametrize("noisy", [True, False])
@pytest.mark.parametrize("n_atoms", [1, 5])
def test_qhead_shared_trunk_is_dueling_over_one_stacked_output_layer(noisy: bool, n_atoms: int) -> None:
    th.manual_seed(0)
    head = QHead(8, 3, [16, 12], dueling=True, noisy=noisy, n_atoms=n_atoms, shared_trunk=True)
    features = th.randn(4, 8)
    out = head(features, noise=False)
    assert out.shape == (4, 3, n_atoms)
    n_linear = sum(isinstance(m, (th.nn.Linear, NoisyLinear)) for m in head.modules())
    assert n_linear == 3  # 2 shared hidden layers + one output layer holding V and A
    assert head.value is None and head.advantage is None
    assert len(head.noisy_layers) == (3 if noisy else 0)
    # Rows [0, n_atoms) of the output layer are V, the next 3 * n_atoms are A: Q = V + A - mean_a A.
    layer = head.value_advantage
    weight, bias = (layer.weight_mu, layer.bias_mu) if noisy else (layer.weight, layer.bias)
    raw = th.nn.functional.linear(head.trunk(features, noise=False), weight, bias).view(4, 4, n_atoms)
    th.testing.assert_close(out, dueling_combine(raw[:, :1], raw[:, 1:]))
    if noisy:
        head.reset_noise()
        th.testing.assert_close(head(features, noise=True), head(features, noise=True))
        assert not th.allclose(head(features, noise=True), out)


def test_shared_trunk_without_dueling_is_a_plain_mlp() -> None:
    head = QHead(8, 3, [16, 12], dueling=False, noisy=False, n_atoms=5, shared_trunk=True)
    assert not head.shared_trunk and head.value_advantage is None and head.value is None
    assert head(th.randn(2, 8)).shape == (2, 3, 5)


def test_qhead_reset_noise_resamples_every_layer_with_one_draw() -> None:
    th.manual_seed(0)
    head = QHead(4, 2, [8], dueling=True, noisy=True, n_atoms=3)
    before = [layer.eps_in.clone() for layer in head.noisy_layers]
    head.reset_noise()
    for layer, old in zip(head.noisy_layers, before):
        assert not th.equal(layer.eps_in, old)
        # every layer's noise is a view of the head's single noise buffer
        assert layer.eps_in.untyped_storage().data_ptr() == head.noise.untyped_storage().data_ptr()


def test_qhead_noise_views_survive_to() -> None:
    head = QHead(4, 2, [8], noisy=True, n_atoms=3).to(th.float64)
    head.reset_noise()
    offset = head.noisy_layers[0].in_features
    th.testing.assert_close(head.noisy_layers[0].eps_out, head.noise[offset : offset + 8])
    assert head(th.randn(2, 4, dtype=th.float64)).dtype == th.float64


# ---------------------------------------------------------------- MinAtarCNN

@pytest.mark.parametrize("shape", [(10, 10, 4), (4, 10, 10)])
def test_minatar_cnn_accepts_channels_last_and_first(shape: tuple[int, int, int]) -> None:
    space = spaces.Box(0, 1, shape=shape, dtype=bool)
    cnn = MinAtarCNN(space, features_dim=32)
    obs = th.as_tensor(np.stack([space.sample() for _ in range(3)])).float()
    assert cnn(obs).shape == (3, 32)
    assert cnn.channels_last == (shape[-1] == 4)


def test_minatar_cnn_rejects_flat_observations() -> None:
    with pytest.raises(ValueError, match="observation_space"):
        MinAtarCNN(spaces.Box(0, 1, shape=(10,)))


# ---------------------------------------------------------------- RainbowPolicy

def make_policy(**kwargs) -> RainbowPolicy:
    return RainbowPolicy(spaces.Box(-1, 1, (4,)), spaces.Discrete(3), constant_lr, **kwargs)


def test_policy_defaults() -> None:
    policy = make_policy()
    assert policy.net_arch == [64, 64]
    assert policy.q_net.n_atoms == 51 and policy.q_net.support[0] == -10 and policy.q_net.support[-1] == 10
    assert policy.optimizer.defaults["eps"] == pytest.approx(1.5e-4)
    assert isinstance(policy.q_net.features_extractor, FlattenExtractor)
    assert policy.q_net.features_extractor is not policy.q_net_target.features_extractor
    for p, q in zip(policy.q_net.parameters(), policy.q_net_target.parameters()):
        assert th.equal(p, q) and p is not q


def test_adam_keyword_arguments_merge_over_the_paper_defaults() -> None:
    """Passing one Adam option must not silently drop the paper's epsilon to torch's 1e-8."""
    decayed = make_policy(optimizer_kwargs={"weight_decay": 1e-5})
    assert decayed.optimizer.defaults["eps"] == pytest.approx(1.5e-4)
    assert decayed.optimizer.defaults["weight_decay"] == pytest.approx(1e-5)
    assert decayed.optimizer_kwargs == {"eps": 1.5e-4, "fused": True, "weight_decay": 1e-5}  # what save() records
    assert make_policy(optimizer_kwargs={"eps": 1e-8}).optimizer.defaults["eps"] == pytest.approx(1e-8)
    sgd = make_policy(optimizer_class=th.optim.SGD, optimizer_kwargs={"momentum": 0.9})
    assert sgd.optimizer_kwargs == {"momentum": 0.9}  # Adam's defaults are not pushed onto other optimizers


def test_policy_deterministic_predict_repeatable_and_stochastic_predict_noisy() -> None:
    th.manual_seed(0)
    policy = make_policy(noisy_std=10.0)
    obs = np.random.default_rng(0).uniform(-1, 1, (32, 4)).astype(np.float32)
    a1, _ = policy.predict(obs, deterministic=True)
    a2, _ = policy.predict(obs, deterministic=True)
    np.testing.assert_array_equal(a1, a2)
    stochastic = [policy.predict(obs, deterministic=False)[0] for _ in range(5)]
    assert any(not np.array_equal(s, a1) for s in stochastic)
    assert a1.shape == (32,)


def test_policy_set_training_mode_matches_module_train() -> None:
    policy = make_policy()
    policy.set_training_mode(True)
    assert all(m.training for m in policy.modules())
    policy.set_training_mode(False)
    assert not any(m.training for m in policy.modules())


def test_cnn_and_multi_input_policies_pick_sb3_extractors() -> None:
    image = spaces.Box(0, 255, (1, 36, 36), dtype=np.uint8)  # channels first, as after VecTransposeImage
    cnn = RainbowCnnPolicy(image, spaces.Discrete(2), constant_lr, n_atoms=3)
    assert isinstance(cnn.q_net.features_extractor, NatureCNN) and cnn.net_arch == []
    multi = RainbowMultiInputPolicy(spaces.Dict({"a": spaces.Box(-1, 1, (2,)), "b": image}), spaces.Discrete(2),
                                    constant_lr, n_atoms=3)
    obs = {"a": np.zeros((2,), np.float32), "b": np.zeros((1, 36, 36), np.uint8)}
    assert multi.predict(obs, deterministic=True)[0].shape == ()


@pytest.mark.parametrize(
    ("kwargs", "argument"),
    [(dict(n_atoms=0), "n_atoms"), (dict(v_min=3.0, v_max=3.0), "v_min"), (dict(noisy_std=-0.1), "noisy_std"),
     (dict(net_arch=[0]), "net_arch")],
)
def test_policy_bad_arguments(kwargs: dict, argument: str) -> None:
    with pytest.raises(ValueError, match=argument):
        make_policy(**kwargs)


def test_policy_save_load_roundtrip(tmp_path) -> None:
    th.manual_seed(0)
    policy = make_policy(n_atoms=7, v_min=0.0, v_max=50.0, net_arch=[8])
    obs = np.random.default_rng(1).uniform(-1, 1, (10, 4)).astype(np.float32)
    expected, _ = policy.predict(obs, deterministic=True)
    policy.save(tmp_path / "policy.pt")
    loaded = RainbowPolicy.load(tmp_path / "policy.pt")
    np.testing.assert_array_equal(loaded.predict(obs, deterministic=True)[0], expected)
    assert loaded.q_net.support[-1].item() == 50.0
