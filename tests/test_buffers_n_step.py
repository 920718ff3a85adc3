"""n-step returns, dones, discounts and bootstrap observations against brute force and SB3's NStepReplayBuffer."""
import numpy as np
import pytest
from gymnasium import spaces
from hypothesis import given, settings
from hypothesis import strategies as st
from stable_baselines3.common.buffers import NStepReplayBuffer

from buffers import PrioritizedReplayBuffer, n_step_targets

OBS = spaces.Box(-np.inf, np.inf, (2,), np.float32)  # obs = (global step, env id): identifies every transition
ACT = spaces.Discrete(3)


@st.composite
def episodes(draw):
    """Random multi-env streams with terminations, truncations and enough steps to wrap the storage."""
    n_envs = draw(st.integers(1, 3))
    rows = draw(st.integers(2, 7))
    steps = draw(st.integers(1, 3 * rows))
    events = draw(st.lists(st.lists(st.sampled_from(["", "", "", "term", "trunc"]), min_size=n_envs,
                                    max_size=n_envs), min_size=steps, max_size=steps))
    rewards = draw(st.lists(st.lists(st.integers(-3, 3), min_size=n_envs, max_size=n_envs), min_size=steps,
                            max_size=steps))
    return n_envs, rows, events, np.array(rewards, dtype=np.float32)


def fill(buffer, n_envs, events, rewards):
    for t, (ev, rew) in enumerate(zip(events, rewards)):
        obs = np.array([[t, e] for e in range(n_envs)], dtype=np.float32)
        next_obs = obs + np.array([1000.0, 0.0], dtype=np.float32)  # (1000 + t, e) marks "next obs of step t"
        done = np.array([x in ("term", "trunc") for x in ev])
        infos = [{"TimeLimit.truncated": x == "trunc"} for x in ev]
        buffer.add(obs, next_obs, np.zeros(n_envs), rew, done, infos)


def brute_force(t, e, events, rewards, n_steps, gamma, handle_timeout=True):
    """Walk forward from step t of env e: (return, done, discount, last step)."""
    ret, newest = 0.0, len(events) - 1
    for j in range(n_steps):
        s = t + j
        ret += gamma**j * float(rewards[s][e])
        term, trunc = events[s][e] == "term", events[s][e] == "trunc"
        if term or trunc or s == newest or j == n_steps - 1:
            done = term or (trunc and not handle_timeout)
            return ret, float(done), gamma ** (j + 1), s


@settings(max_examples=60, deadline=None, derandomize=True)
@given(episodes(), st.integers(1, 4), st.sampled_from([0.0, 0.5, 0.99, 1.0]),
       st.sampled_from(["timeouts", "no_timeouts", "optimize_memory"]))
def test_samples_match_brute_force(case, n_steps, gamma, mode):
    n_envs, rows, events, rewards = case
    handle_timeout, optimize = mode == "timeouts", mode == "optimize_memory"
    buffer = PrioritizedReplayBuffer(rows * n_envs, OBS, ACT, device="cpu", n_envs=n_envs, n_steps=n_steps,
                                     gamma=gamma, handle_timeout_termination=handle_timeout,
                                     optimize_memory_usage=optimize)
    fill(buffer, n_envs, events, rewards)
    # With optimize_memory_usage the row under the write pointer lost its observation: it must never be drawn.
    invalid_oldest = optimize and len(events) >= rows
    oldest = max(0, len(events) - rows) + invalid_oldest
    np.random.seed(0)
    batch = buffer.sample(buffer.n_stored() - n_envs * invalid_oldest, beta=1.0)
    obs, next_obs = batch.observations.numpy(), batch.next_observations.numpy()
    for k, flat in enumerate(batch.indices):
        t, e = int(obs[k, 0]), int(obs[k, 1])
        assert flat == (t % rows) * n_envs + e and oldest <= t < len(events)  # flat index = row * n_envs + env
        ret, done, disc, last = brute_force(t, e, events, rewards, n_steps, gamma, handle_timeout)
        assert batch.rewards[k, 0].item() == pytest.approx(ret, abs=1e-5)
        assert batch.dones[k, 0].item() == done
        assert batch.discounts[k, 0].item() == pytest.approx(disc, rel=1e-6)
        if optimize and last < len(events) - 1:  # next_obs is read from the next row: the next step's obs
            assert next_obs[k].tolist() == [last + 1, e]
        else:
            assert next_obs[k].tolist() == [1000.0 + last, e]


@settings(max_examples=40, deadline=None, derandomize=True)
@given(episodes(), st.integers(1, 4), st.sampled_from([0.5, 0.99]))
def test_matches_sb3_nstep_buffer(case, n_steps, gamma):
    """Same stored data, same (row, env) pairs: identical to SB3 2.9's NStepReplayBuffer."""
    n_envs, rows, events, rewards = case
    ours = PrioritizedReplayBuffer(rows * n_envs, OBS, ACT, device="cpu", n_envs=n_envs, n_steps=n_steps, gamma=gamma)
    ref = NStepReplayBuffer(rows * n_envs, OBS, ACT, device="cpu", n_envs=n_envs, n_steps=n_steps, gamma=gamma)
    fill(ours, n_envs, events, rewards)
    fill(ref, n_envs, events, rewards)
    batch_rows = np.arange(ref.size())
    np.random.seed(1)
    envs = np.random.randint(0, n_envs, size=batch_rows.shape)  # the env draw SB3 makes inside _get_samples
    np.random.seed(1)
    expected = ref._get_samples(batch_rows)
    got = n_step_targets(ours.rewards, ours.dones, ours.timeouts, batch_rows, envs, (ours.pos - 1) % rows,
                         n_steps, gamma, lambda r: r)
    np.testing.assert_allclose(got.returns, expected.rewards.numpy(), rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(got.dones, expected.dones.numpy())
    np.testing.assert_allclose(got.discounts, expected.discounts.numpy(), rtol=1e-6)
    np.testing.assert_array_equal(ours.next_observations[got.last_rows, envs], expected.next_observations.numpy())
    # The compiled path (no reward normalisation) agrees with the vectorised one.
    fast = n_step_targets(ours.rewards, ours.dones, ours.timeouts, batch_rows, envs, (ours.pos - 1) % rows,
                          n_steps, gamma)
    np.testing.assert_array_equal(fast.last_rows, got.last_rows)
    np.testing.assert_allclose(np.stack(fast[1:]), np.stack(got[1:]), rtol=1e-6, atol=1e-6)


class DoublingNormalizer:
    """Stands in for VecNormalize: observations unchanged, rewards doubled."""

    def normalize_obs(self, obs):
        return obs

    def normalize_reward(self, reward):
        return 2.0 * reward


def test_reward_normalisation_applies_before_discounting():
    buffer = PrioritizedReplayBuffer(8, OBS, ACT, device="cpu", n_steps=3, gamma=0.5)
    fill(buffer, 1, [[""]] * 5, np.ones((5, 1), dtype=np.float32))
    np.random.seed(0)
    plain = buffer.sample(5)
    np.random.seed(0)
    scaled = buffer.sample(5, env=DoublingNormalizer())
    np.testing.assert_array_equal(plain.indices, scaled.indices)
    np.testing.assert_allclose(scaled.rewards.numpy(), 2.0 * plain.rewards.numpy())
    np.testing.assert_array_equal(scaled.discounts.numpy(), plain.discounts.numpy())


def one_env_buffer(events, n_steps=3, gamma=0.5, rows=10):
    buffer = PrioritizedReplayBuffer(rows, OBS, ACT, device="cpu", n_steps=n_steps, gamma=gamma)
    fill(buffer, 1, [[x] for x in events], np.ones((len(events), 1), dtype=np.float32))
    np.random.seed(0)
    batch = buffer.sample(buffer.n_stored())
    order = np.argsort(batch.observations[:, 0].numpy())
    return {name: getattr(batch, name)[order, 0].numpy().tolist() for name in ("rewards", "dones", "discounts")}


def test_window_stops_at_termination_and_truncation():
    out = one_env_buffer(["", "term", "", "trunc", "", ""])
    assert out["rewards"] == [1.5, 1.0, 1.5, 1.0, 1.5, 1.0]  # never runs past step 1 (term) or step 3 (trunc)
    assert out["dones"] == [1.0, 1.0, 0.0, 0.0, 0.0, 0.0]  # a truncation is not a termination
    assert out["discounts"] == [0.25, 0.5, 0.25, 0.5, 0.25, 0.5]  # gamma ** k for the k steps taken


def test_last_transitions_of_episode_are_kept():
    out = one_env_buffer(["", "", "", "", "term"])
    assert len(out["rewards"]) == 5
    assert out["rewards"] == [1.75, 1.75, 1.75, 1.5, 1.0]
    assert out["discounts"] == [0.125, 0.125, 0.125, 0.25, 0.5]


def test_window_never_crosses_write_pointer_after_wrap():
    # 7 steps in 4 rows: rows hold steps 3..6; the newest (6) sits just before the oldest (3) in storage.
    out = one_env_buffer(["", "", "", "", "", "", ""], rows=4)
    assert out["rewards"] == [1.75, 1.75, 1.5, 1.0]
    assert out["discounts"] == [0.125, 0.125, 0.25, 0.5]
