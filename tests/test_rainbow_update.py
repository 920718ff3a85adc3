"""Rainbow's update wired end to end, checked against a hand computation from the raw transitions.

Transitions go into a real prioritised n-step buffer, with non-uniform priorities, terminations and a time-limit
truncation. The loss and the new priorities that ``Rainbow.train`` produces for the sampled batch must equal those
computed here in float64 numpy from the stored transitions themselves: the n-step return and its discount gamma**k,
the done flags, PER's importance weights, the Double-Q choice of a* and the C51 projection (eq. 7 of Bellemare et
al. 2017 written as loops). A bug in any of them (weights dropped from the loss, gamma instead of gamma**k, a* from
the target network, bootstrapping through a termination) changes the numbers.
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch as th
from gymnasium import spaces
from stable_baselines3.common.logger import configure

from rlgen_plugins.rainbow.algorithm import Rainbow

GAMMA, N_STEPS, ALPHA, BETA, EPSILON = 0.9, 3, 0.6, 0.5, 1e-6
V_MIN, V_MAX = -2.0, 2.0
# Episode lengths and how each ends: terminated, truncated (time limit), still running at the end.
EPISODES = [(4, "terminated"), (3, "truncated"), (5, "running")]


class BoxEnv(gym.Env):
    """Only its spaces matter: the buffer is filled by hand."""

    observation_space = spaces.Box(-1.0, 1.0, (2,), np.float32)
    action_space = spaces.Discrete(3)

    def reset(self, *, seed=None, options=None):
        return np.zeros(2, np.float32), {}

    def step(self, action):
        return np.zeros(2, np.float32), 0.0, False, False, {}


def make_model(n_atoms: int) -> Rainbow:
    model = Rainbow(
        "MlpPolicy", BoxEnv(), n_steps=N_STEPS, gamma=GAMMA, buffer_size=64, batch_size=16, learning_starts=0,
        replay_buffer_kwargs=dict(alpha=ALPHA, beta=BETA, epsilon=EPSILON), seed=0,
        policy_kwargs=dict(net_arch=[8], noisy=False, n_atoms=n_atoms, v_min=V_MIN, v_max=V_MAX),
    )
    model.set_logger(configure(None, []))  # train() records its loss here
    gen = th.Generator().manual_seed(1)
    with th.no_grad():  # online and target networks disagree, so Double Q's choice of a* matters
        for param in model.q_net_target.parameters():
            param.copy_(th.randn(param.shape, generator=gen))
    return model


def fill(model: Rainbow, rng: np.random.Generator) -> list[dict]:
    """Add the scripted episodes to the buffer; return the transitions as stored, in order."""
    transitions = []
    for length, ending in EPISODES:
        obs = rng.uniform(-1, 1, 2).astype(np.float32)
        for t in range(length):
            next_obs = rng.uniform(-1, 1, 2).astype(np.float32)
            last = t == length - 1
            step = dict(obs=obs, next_obs=next_obs, action=int(rng.integers(3)), reward=float(rng.normal()),
                        terminated=last and ending == "terminated", truncated=last and ending == "truncated")
            done = step["terminated"] or step["truncated"]
            infos = [{"TimeLimit.truncated": step["truncated"]}]
            model.replay_buffer.add(obs[None], next_obs[None], np.array([[step["action"]]]),
                                    np.array([step["reward"]]), np.array([done]), infos)
            transitions.append(step)
            obs = next_obs
    return transitions


def n_step_window(transitions: list[dict], start: int) -> tuple[float, float, float, np.ndarray]:
    """(R, gamma**k, done, bootstrap observation) for the window starting at ``start`` (Sutton & Barto eq. 7.1)."""
    ret, k = 0.0, 0
    for k in range(1, N_STEPS + 1):
        step = transitions[start + k - 1]
        ret += GAMMA ** (k - 1) * step["reward"]
        if step["terminated"] or step["truncated"] or start + k == len(transitions):
            break
    last = transitions[start + k - 1]
    return ret, GAMMA**k, float(last["terminated"]), last["next_obs"]


def softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def project(probs: np.ndarray, ret: float, discount: float, done: float, support: np.ndarray) -> np.ndarray:
    """C51 eq. 7: (Phi T z)_i = sum_j [1 - |clip(R + discount (1 - done) z_j) - z_i| / dz]_0^1 p_j."""
    dz = support[1] - support[0]
    out = np.zeros_like(probs)
    for j, z_j in enumerate(support):
        tz = np.clip(ret + discount * (1 - done) * z_j, support[0], support[-1])
        for i, z_i in enumerate(support):
            out[i] += max(0.0, 1.0 - abs(tz - z_i) / dz) * probs[j]
    return out


def hand_loss(model: Rainbow, transitions: list[dict], indices: np.ndarray, raw_priorities: np.ndarray):
    """The loss and new priorities of the batch ``indices``, from the raw transitions."""

    def net(module, observations: np.ndarray) -> np.ndarray:
        with th.no_grad():
            return module.logits(th.as_tensor(np.stack(observations)), False).double().numpy()

    leaves = (raw_priorities + EPSILON) ** ALPHA
    weights = (leaves[indices] / leaves.min()) ** -BETA  # w_i = (N P(i))^-beta / max_j w_j
    windows = [n_step_window(transitions, i) for i in indices]
    obs = [transitions[i]["obs"] for i in indices]
    actions = np.array([transitions[i]["action"] for i in indices])
    bootstrap = [w[3] for w in windows]
    logits, next_online, next_target = net(model.q_net, obs), net(model.q_net, bootstrap), net(model.q_net_target,
                                                                                             bootstrap)
    support = np.linspace(V_MIN, V_MAX, logits.shape[-1])
    losses, priorities, chosen_differs = [], [], []
    for b, (ret, discount, done, _) in enumerate(windows):
        if logits.shape[-1] == 1:
            a_star = next_online[b, :, 0].argmax()  # Double Q: the online network picks, the target evaluates
            chosen_differs.append(a_star != next_target[b, :, 0].argmax())
            y = ret + discount * (1 - done) * next_target[b, a_star, 0]
            delta = y - logits[b, actions[b], 0]
            losses.append(0.5 * delta**2 if abs(delta) < 1 else abs(delta) - 0.5)  # Huber, threshold 1
            priorities.append(abs(delta))
        else:
            q_online = softmax(next_online[b]) @ support
            a_star = q_online.argmax()
            chosen_differs.append(a_star != (softmax(next_target[b]) @ support).argmax())
            m = project(softmax(next_target[b, a_star]), ret, discount, done, support)
            log_p = np.log(softmax(logits[b, actions[b]]))
            kl = float(np.sum(np.where(m > 0, m * (np.log(np.where(m > 0, m, 1.0)) - log_p), 0.0)))
            losses.append(kl)
            priorities.append(kl)
    return float(np.mean(weights * np.array(losses))), np.array(priorities), windows, np.array(chosen_differs)


@pytest.mark.parametrize("n_atoms", [1, 11])
def test_train_loss_and_new_priorities_match_a_hand_computation(n_atoms: int) -> None:
    model = make_model(n_atoms)
    rng = np.random.default_rng(0)
    transitions = fill(model, rng)
    buffer = model.replay_buffer
    raw = rng.uniform(0.1, 3.0, len(transitions))  # non-uniform priorities: the importance weights differ
    buffer.update_priorities(np.arange(len(transitions)), raw)

    np.random.seed(7)
    indices = buffer.sample(16).indices.copy()  # the batch train() is about to draw with the same seed
    loss, priorities, windows, a_star_differs = hand_loss(model, transitions, indices, raw)
    # The batch exercises what it should: terminations, windows cut short, full bootstraps, Double Q's choice.
    dones = np.array([w[2] for w in windows])
    discounts = np.array([w[1] for w in windows])
    full = np.isclose(discounts, GAMMA**N_STEPS)
    assert dones.any() and (full & (dones == 0)).any() and (~full & (dones == 0)).any()
    assert a_star_differs.any()

    np.random.seed(7)
    model.train(gradient_steps=1, batch_size=16)
    assert model.logger.name_to_value["train/loss"] == pytest.approx(loss, rel=1e-5, abs=1e-7)
    stored = buffer.tree.leaves[indices]
    np.testing.assert_allclose(stored, (priorities + EPSILON) ** ALPHA, rtol=1e-4, atol=1e-7)
    assert model._n_updates == 1
