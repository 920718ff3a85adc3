"""Proportional prioritised replay (Schaul et al. 2016) with n-step returns, as SB3 replay buffers.

Each stored transition ``(row, env)`` has flat index ``row * n_envs + env`` and a leaf ``(|delta| + epsilon) ** alpha``
in a ``SumTree``. Sampling is stratified over ``batch_size`` equal slices of the total priority. With
``frame_stack_dedup=True`` the observations live in a ``FrameStore`` (``buffers.frame_store``) and transitions whose
frames were overwritten keep priority 0.
"""
from __future__ import annotations

import math
import warnings
from typing import Any

import numpy as np
import torch as th
from gymnasium import spaces
from stable_baselines3.common.buffers import DictReplayBuffer
from stable_baselines3.common.vec_env import VecNormalize

from buffers._jit import njit
from buffers.frame_store import FrameStackReplayBuffer, FrameStore, check_buffer_size, check_rewards
from buffers.n_step import NStepTargets, n_step_targets
from buffers.samples import DictPrioritizedReplayBufferSamples, PrioritizedReplayBufferSamples
from buffers.sum_tree import SumTree


def _leaf_values_loop(priorities: np.ndarray, indices: np.ndarray, n_stored: int, epsilon: float, alpha: float,
                      out: np.ndarray) -> float:
    # Validate raw priorities and indices, fill out = (p + epsilon) ** alpha (PER eq. 1), return max p (-1 = bad).
    top = 0.0
    for k in range(priorities.shape[0]):
        p = priorities[k]
        if not (p >= 0.0 and p < np.inf) or indices[k] < 0 or indices[k] >= n_stored:
            return -1.0
        top = max(top, p)
        out[k] = (p + epsilon) ** alpha
    return top


_leaf_values = njit(_leaf_values_loop)


def _is_real(value: Any) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, (bool, np.bool_))


def _check_hyperparameters(alpha: float, beta: float, epsilon: float, n_steps: int, gamma: float,
                           warn_uniform_after: int | None) -> None:
    if not (_is_real(alpha) and math.isfinite(alpha) and alpha >= 0):
        raise ValueError(f"alpha must be a finite number >= 0, got {alpha!r}")
    _check_beta(beta)
    if not (_is_real(epsilon) and math.isfinite(epsilon) and epsilon > 0):
        raise ValueError(f"epsilon must be a finite number > 0, got {epsilon!r}")
    if isinstance(n_steps, bool) or not isinstance(n_steps, (int, np.integer)) or n_steps < 1:
        raise ValueError(f"n_steps must be an integer >= 1, got {n_steps!r}")
    if not (_is_real(gamma) and 0.0 <= gamma <= 1.0):
        raise ValueError(f"gamma must be a finite number in [0, 1], got {gamma!r}")
    if warn_uniform_after is not None and (isinstance(warn_uniform_after, bool)
                                           or not isinstance(warn_uniform_after, (int, np.integer))
                                           or warn_uniform_after < 1):
        raise ValueError(f"warn_uniform_after must be a positive integer or None, got {warn_uniform_after!r}")


def _check_beta(beta: float) -> float:
    if not (_is_real(beta) and 0.0 < beta <= 1.0):
        raise ValueError(f"beta must be in (0, 1], got {beta!r}")
    return float(beta)


class _PrioritizedMixin:
    """Priority bookkeeping shared by the flat and Dict buffers (it sits before the SB3 class in the MRO)."""

    buffer_size: int
    n_envs: int
    pos: int
    full: bool
    optimize_memory_usage: bool
    rewards: np.ndarray
    dones: np.ndarray
    timeouts: np.ndarray
    frames: FrameStore | None = None  # set by FrameStackReplayBuffer with frame_stack_dedup=True
    # Class defaults for buffers pickled before the uniform-sampling warning existed.
    warn_uniform_after: int | None = None
    _samples_drawn = 0
    _priorities_updated = False

    def _init_priorities(self, alpha: float, beta: float, epsilon: float, n_steps: int, gamma: float,
                         warn_uniform_after: int | None) -> None:
        self.alpha = float(alpha)
        self.beta = beta
        self.epsilon = float(epsilon)
        self.n_steps = int(n_steps)
        self.gamma = float(gamma)
        self.tree = SumTree(self.buffer_size * self.n_envs)
        self.max_priority = 1.0  # raw priority given to new transitions (max seen so far)
        self._env_offsets = np.arange(self.n_envs, dtype=np.int64)
        self.warn_uniform_after = None if warn_uniform_after is None else int(warn_uniform_after)
        self._samples_drawn = 0  # sample() calls so far
        self._priorities_updated = False  # whether update_priorities has ever been called

    @property
    def beta(self) -> float:
        """Importance-sampling exponent (the algorithm anneals it to 1)."""
        return self._beta

    @beta.setter
    def beta(self, value: float) -> None:
        self._beta = _check_beta(value)

    def n_stored(self) -> int:
        """Number of stored transitions over all envs (``size() * n_envs``)."""
        return self.size() * self.n_envs  # type: ignore[attr-defined]

    def add(self, *args: Any, **kwargs: Any) -> None:
        """Store one step of every env (SB3 semantics) with the maximum priority seen so far."""
        row = self.pos
        super().add(*args, **kwargs)  # type: ignore[misc]
        self._after_add(row)

    def _after_add(self, row: int) -> None:
        # New transitions get the maximum priority seen so far.
        leaf = (self.max_priority + self.epsilon) ** self.alpha
        self.tree.update(row * self.n_envs + self._env_offsets, np.full(self.n_envs, leaf))
        if self.optimize_memory_usage:
            # The next row's observation now holds this row's next_obs: that transition is invalid until rewritten.
            self.tree.update(self.pos * self.n_envs + self._env_offsets, np.zeros(self.n_envs))
        if self.frames is not None and self.frames.invalidated.size:
            # Transitions whose oldest frame was just overwritten can no longer be rebuilt: never sample them.
            self.tree.update(self.frames.invalidated, np.zeros(self.frames.invalidated.size))

    def reset(self) -> None:
        """Empty the buffer and its priorities."""
        super().reset()  # type: ignore[misc]
        self.tree = SumTree(self.buffer_size * self.n_envs)
        self.max_priority = 1.0

    def _sample_indices(self, batch_size: int, beta: float | None) -> tuple[np.ndarray, np.ndarray]:
        """Stratified proportional draw, with replacement as SB3 samples (a batch larger than the buffer repeats
        transitions): flat indices, and a float32 ``(4, batch, 1)`` block whose last slot holds
        the normalised importance weights (the first three receive n-step returns, dones and discounts)."""
        if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        total = self.tree.total()
        if total <= 0.0:
            if self.size() == 0:  # type: ignore[attr-defined]
                raise ValueError(f"cannot sample from an empty {type(self).__name__}")
            raise ValueError(f"cannot sample: size() reports {self.n_stored()} transitions but none has a priority. "
                             "Transitions get one in add(); setting full or pos directly gives them none: call "
                             "update_priorities(indices, priorities) for them first")
        beta = self._beta if beta is None else _check_beta(beta)
        # Stratified: one uniform draw in each of batch_size equal slices of [0, total) (global np.random, as SB3).
        values = (np.arange(batch_size) + np.random.random_sample(batch_size)) * (total / batch_size)
        indices = self.tree.find_prefixsum(values)
        # w_i = (N P(i))**-beta / max_j w_j = (p_i / p_min)**-beta   (PER, Schaul et al. 2016, section 3.4)
        packed = np.empty((4, batch_size, 1), dtype=np.float32)  # one tensor conversion instead of four
        packed[3, :, 0] = (self.tree.leaves[indices] / self.tree.min()) ** (-beta)
        self._count_sample()
        return indices, packed

    def _count_sample(self) -> None:
        """Warn once if sampling has been uniform for ``warn_uniform_after`` calls (no ``update_priorities``)."""
        self._samples_drawn += 1
        if (self._samples_drawn != self.warn_uniform_after or self._priorities_updated or self.alpha == 0.0):
            return
        warnings.warn(
            f"{type(self).__name__} was sampled {self._samples_drawn} times and update_priorities was never "
            "called: every priority is still the initial one, so sampling is uniform and every importance weight "
            "is 1 (SB3's DQN and other SB3 algorithms never call update_priorities). For prioritised replay, call "
            "buffer.update_priorities(samples.indices, abs_td_errors) after each gradient step, or use "
            "rlgen_plugins.rainbow.Rainbow with prioritized_replay=True and the other components off "
            "(prioritised DQN). warn_uniform_after=None silences this.", UserWarning, stacklevel=4)

    def update_priorities(self, indices: np.ndarray | th.Tensor, priorities: np.ndarray | th.Tensor) -> None:
        """Set RAW priorities (|TD error| or per-sample loss, finite and >= 0) for flat ``indices``.

        Stores ``(priority + epsilon) ** alpha``. For an index repeated in one call the LAST occurrence wins.
        Bad input raises ``ValueError`` and leaves the priorities (and ``max_priority``) unchanged.
        """
        if isinstance(priorities, th.Tensor):
            priorities = priorities.detach().cpu().numpy()
        if isinstance(indices, th.Tensor):
            indices = indices.detach().cpu().numpy()
        idx = SumTree._as_index_array(indices)
        prio = SumTree._as_float_array(priorities)
        if prio.shape != idx.shape:
            raise ValueError(f"indices and priorities must have the same length, got {idx.size} and {prio.size}")
        leaves = np.empty_like(prio)
        top = _leaf_values(prio, idx, self.n_stored(), self.epsilon, self.alpha, leaves)
        if top < 0.0:
            if idx.size and (idx.min() < 0 or idx.max() >= self.n_stored()):
                raise ValueError(f"indices must lie in [0, {self.n_stored()}) (what is stored), "
                                 f"got min {idx.min()} max {idx.max()}")
            raise ValueError("priorities must be finite and non-negative (got NaN, inf or a negative value)")
        if self.optimize_memory_usage and self.full:
            leaves[idx // self.n_envs == self.pos] = 0.0  # the row under the write pointer stays unsampleable
        if self.frames is not None:
            rows, envs = np.divmod(idx, self.n_envs)
            leaves[~self.frames.valid(rows, envs)] = 0.0  # transitions whose frames were overwritten stay so
        self.tree.update(idx, leaves)
        self.max_priority = max(self.max_priority, top)
        self._priorities_updated = True

    def _targets(self, rows: np.ndarray, envs: np.ndarray, env: VecNormalize | None,
                 packed: np.ndarray) -> tuple[NStepTargets, tuple[th.Tensor, ...]]:
        """n-step targets into ``packed[:3]``; returns them and the torch views (returns, dones, discounts, weights)."""
        normalize = None if env is None else (lambda r: self._normalize_reward(r, env))  # type: ignore[attr-defined]
        targets = n_step_targets(self.rewards, self.dones, self.timeouts, rows, envs,
                                 (self.pos - 1) % self.buffer_size, self.n_steps, self.gamma, normalize, packed[:3])
        return targets, tuple(self.to_torch(packed).unbind(0))  # type: ignore[attr-defined]


class PrioritizedReplayBuffer(_PrioritizedMixin, FrameStackReplayBuffer):
    """SB3 ``ReplayBuffer`` with proportional prioritised sampling and n-step returns.

    :param alpha: priority exponent (0 = uniform); :param beta: importance-sampling exponent in (0, 1];
    :param epsilon: added to raw priorities so none is 0; :param n_steps: return horizon; :param gamma: discount;
    :param warn_uniform_after: after this many ``sample`` calls without any ``update_priorities`` call (so every
        priority is still the initial one and sampling is uniform), warn once (``None``: never; no warning when
        ``alpha == 0``); :param frame_stack_dedup: store each frame of stacked image observations once (see
        ``FrameStackReplayBuffer`` for it and for ``frame_stack``, ``stack_axis`` and ``frames_per_env``);
        transitions whose frames were overwritten get priority 0.
    Other parameters as SB3's ``ReplayBuffer`` (``optimize_memory_usage`` needs ``handle_timeout_termination=False``).
    """

    def __init__(
        self,
        buffer_size: int,
        observation_space: spaces.Space,
        action_space: spaces.Space,
        device: th.device | str = "auto",
        n_envs: int = 1,
        optimize_memory_usage: bool = False,
        handle_timeout_termination: bool = True,
        alpha: float = 0.5,
        beta: float = 0.4,
        epsilon: float = 1e-6,
        n_steps: int = 1,
        gamma: float = 0.99,
        warn_uniform_after: int | None = 1000,
        frame_stack_dedup: bool = False,
        frame_stack: int | None = None,
        stack_axis: int | None = None,
        frames_per_env: int | None = None,
    ) -> None:
        _check_hyperparameters(alpha, beta, epsilon, n_steps, gamma, warn_uniform_after)
        super().__init__(buffer_size, observation_space, action_space, device, n_envs, optimize_memory_usage,
                         handle_timeout_termination, frame_stack_dedup, frame_stack, stack_axis, frames_per_env)
        self._init_priorities(alpha, beta, epsilon, n_steps, gamma, warn_uniform_after)

    def sample(self, batch_size: int, env: VecNormalize | None = None,  # type: ignore[override]
               beta: float | None = None) -> PrioritizedReplayBufferSamples:
        """Draw ``batch_size`` transitions in proportion to priority (stratified), with n-step targets."""
        indices, packed = self._sample_indices(batch_size, beta)
        rows, envs = np.divmod(indices, self.n_envs)
        t, (returns, dones, discounts, weights) = self._targets(rows, envs, env, packed)
        obs, next_obs = self._observation_pair(rows, envs, t.last_rows)
        return PrioritizedReplayBufferSamples(  # the gathered arrays are new: no second copy into torch
            observations=self.to_torch(self._normalize_obs(obs, env), copy=False),  # type: ignore[arg-type]
            actions=self.to_torch(self.actions[rows, envs], copy=False),
            next_observations=self.to_torch(self._normalize_obs(next_obs, env), copy=False),  # type: ignore[arg-type]
            dones=dones,
            rewards=returns,
            discounts=discounts,
            weights=weights,
            indices=indices,
        )


class DictPrioritizedReplayBuffer(_PrioritizedMixin, DictReplayBuffer):
    """``PrioritizedReplayBuffer`` for ``spaces.Dict`` observations (no ``optimize_memory_usage``, as in SB3, and
    no frame dedup)."""

    def __init__(
        self,
        buffer_size: int,
        observation_space: spaces.Dict,
        action_space: spaces.Space,
        device: th.device | str = "auto",
        n_envs: int = 1,
        optimize_memory_usage: bool = False,
        handle_timeout_termination: bool = True,
        alpha: float = 0.5,
        beta: float = 0.4,
        epsilon: float = 1e-6,
        n_steps: int = 1,
        gamma: float = 0.99,
        warn_uniform_after: int | None = 1000,
    ) -> None:
        check_buffer_size(buffer_size, n_envs)
        _check_hyperparameters(alpha, beta, epsilon, n_steps, gamma, warn_uniform_after)
        if optimize_memory_usage:
            raise ValueError("optimize_memory_usage must be False for DictPrioritizedReplayBuffer (as SB3's Dict buffer)")
        if not isinstance(observation_space, spaces.Dict):
            raise ValueError(f"observation_space must be a gymnasium.spaces.Dict, got {type(observation_space).__name__}")
        super().__init__(buffer_size, observation_space, action_space, device, n_envs,
                         optimize_memory_usage, handle_timeout_termination)
        self._init_priorities(alpha, beta, epsilon, n_steps, gamma, warn_uniform_after)

    def add(self, obs: dict[str, np.ndarray], next_obs: dict[str, np.ndarray], action: np.ndarray,
            reward: np.ndarray, done: np.ndarray, infos: list[dict[str, Any]]) -> None:
        """Store one step of every env with the maximum priority; a NaN or infinite reward raises ``ValueError``
        and stores nothing."""
        check_rewards(reward)
        super().add(obs, next_obs, action, reward, done, infos)

    def sample(self, batch_size: int, env: VecNormalize | None = None,  # type: ignore[override]
               beta: float | None = None) -> DictPrioritizedReplayBufferSamples:
        """Draw ``batch_size`` transitions in proportion to priority (stratified), with n-step targets."""
        indices, packed = self._sample_indices(batch_size, beta)
        rows, envs = np.divmod(indices, self.n_envs)
        t, (returns, dones, discounts, weights) = self._targets(rows, envs, env, packed)
        obs = self._normalize_obs({k: v[rows, envs] for k, v in self.observations.items()}, env)
        next_obs = self._normalize_obs({k: v[t.last_rows, envs] for k, v in self.next_observations.items()}, env)
        return DictPrioritizedReplayBufferSamples(
            observations={k: self.to_torch(v) for k, v in obs.items()},  # type: ignore[union-attr]
            actions=self.to_torch(self.actions[rows, envs]),
            next_observations={k: self.to_torch(v) for k, v in next_obs.items()},  # type: ignore[union-attr]
            dones=dones,
            rewards=returns,
            discounts=discounts,
            weights=weights,
            indices=indices,
        )
