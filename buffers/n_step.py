"""n-step returns gathered at sample time, with Stable-Baselines3's ``NStepReplayBuffer`` semantics.

For a start row ``t`` of env ``e`` the window is ``t, t+1, ..., t+k-1`` (rows modulo the storage size) where ``k`` is
the smallest of ``n_steps`` and the first step that is a termination, a time-limit truncation or the newest stored row
(``pos - 1``: the window never crosses the write pointer). SB3 stores both endings as ``done`` (a truncation is
``done`` and ``timeout``), so ``dones`` alone ends the window. Then

    R = sum_{j<k} gamma**j * r_{t+j}   # n-step return (Sutton & Barto eq. 7.1)
    discount = gamma**k                # bootstrap factor for the k steps actually taken
    done = terminated_{t+k-1} and not truncated_{t+k-1}

and the bootstrap observation is the next observation of row ``t+k-1``. The last transitions of every episode keep
their (shorter) windows, so nothing is dropped.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import numpy as np

from buffers._jit import njit


class NStepTargets(NamedTuple):
    """Per-sample pieces of the n-step target, as numpy arrays."""

    last_rows: np.ndarray  # (batch,) row whose next observation bootstraps the target
    returns: np.ndarray  # (batch, 1) float32 discounted reward sum
    dones: np.ndarray  # (batch, 1) float32, 1 only for a true termination ending the window
    discounts: np.ndarray  # (batch, 1) float32 gamma ** k


def _n_step_loop(rewards: np.ndarray, dones: np.ndarray, timeouts: np.ndarray, rows: np.ndarray, envs: np.ndarray,
                 newest_row: int, n_steps: int, gamma: float, out: np.ndarray) -> np.ndarray:
    # One pass per sample: walk forward until a done, a timeout, the newest row or n steps; out = (R, done, gamma**k).
    size = dones.shape[0]
    last_rows = np.empty_like(rows)
    for k in range(rows.shape[0]):
        row, env = rows[k], envs[k]
        ret, discount = 0.0, 1.0
        for j in range(n_steps):
            ret += discount * rewards[row, env]
            discount *= gamma
            if dones[row, env] > 0 or row == newest_row or j == n_steps - 1:
                break
            row = (row + 1) % size
        last_rows[k] = row
        out[0, k, 0] = ret
        out[1, k, 0] = dones[row, env] * (1.0 - timeouts[row, env])
        out[2, k, 0] = discount
    return last_rows


_n_step_kernel = njit(_n_step_loop)


def n_step_targets(
    rewards: np.ndarray,
    dones: np.ndarray,
    timeouts: np.ndarray,
    rows: np.ndarray,
    envs: np.ndarray,
    newest_row: int,
    n_steps: int,
    gamma: float,
    normalize_reward: Callable[[np.ndarray], np.ndarray] | None = None,
    out: np.ndarray | None = None,
) -> NStepTargets:
    """Compute n-step returns, dones and discounts for start positions ``(rows, envs)``.

    ``rewards``, ``dones`` and ``timeouts`` are the buffer's ``(buffer_size, n_envs)`` arrays; ``newest_row`` is
    ``pos - 1`` (modulo the size). ``normalize_reward`` (e.g. VecNormalize's) is applied to each raw reward before
    discounting; without it a compiled single pass is used. ``out``: optional float32 array of shape
    ``(3, batch, 1)`` that receives returns, dones and discounts (the result fields are views of it).
    """
    batch = len(rows)
    if out is None:
        out = np.empty((3, batch, 1), dtype=np.float32)
    if normalize_reward is None:
        last_rows = _n_step_kernel(rewards, dones, timeouts, rows, envs, newest_row, n_steps, gamma, out)
        return NStepTargets(last_rows, out[0], out[1], out[2])

    # Vectorised numpy version of the same rule (as SB3's NStepReplayBuffer), used when rewards are normalised.
    size = dones.shape[0]
    steps = np.arange(n_steps)
    seq = (rows[:, None] + steps[None, :]) % size  # (batch, n_steps)
    env_col = envs[:, None]
    stop = (dones[seq, env_col] > 0) | (seq == newest_row)
    k_minus_1 = np.where(stop.any(axis=1), stop.argmax(axis=1), n_steps - 1)  # index of the window's last step
    mask = steps[None, :] <= k_minus_1[:, None]
    reward_seq = normalize_reward(rewards[seq, env_col]).astype(np.float64)
    last_rows = seq[np.arange(batch), k_minus_1]
    out[0, :, 0] = (reward_seq * (gamma**steps)[None, :] * mask).sum(axis=1)
    out[1, :, 0] = dones[last_rows, envs] * (1.0 - timeouts[last_rows, envs])
    out[2, :, 0] = gamma ** (k_minus_1 + 1.0)
    return NStepTargets(last_rows, out[0], out[1], out[2])
