"""The math of Rainbow's update, one short function per component (CleanRL-style, no state).

Multi-step returns come from the replay buffer: ``rewards`` is already the n-step sum
``R = sum_{k<n} gamma^k r_{t+k}`` and ``discounts`` is ``gamma^n`` (or ``gamma^k`` when the window was cut
short by the episode's end), so every target below is ``R + discounts * (1 - done) * next_value``.
"""

from __future__ import annotations

import torch as th
from torch.nn import functional as F


def greedy_next_actions(next_q_online: th.Tensor, next_q_target: th.Tensor, double_q: bool) -> th.Tensor:
    """a* = argmax_a Q_online(s', a) for Double DQN (van Hasselt et al. 2016, eq. 4), else argmax_a Q_target(s', a).

    Returns indices of shape ``(batch, 1)``.
    """
    return (next_q_online if double_q else next_q_target).argmax(dim=1, keepdim=True)


def double_q_target(
    rewards: th.Tensor,
    discounts: th.Tensor,
    dones: th.Tensor,
    next_q_online: th.Tensor,
    next_q_target: th.Tensor,
    double_q: bool = True,
) -> th.Tensor:
    """y = R + gamma^n (1 - done) Q_target(s', argmax_a Q_online(s', a))  (Double DQN, eq. 4); shape (batch, 1)."""
    next_actions = greedy_next_actions(next_q_online, next_q_target, double_q)
    next_values = next_q_target.gather(1, next_actions)
    return rewards + discounts * (1.0 - dones) * next_values


def categorical_projection(
    next_probs: th.Tensor,
    rewards: th.Tensor,
    discounts: th.Tensor,
    dones: th.Tensor,
    support: th.Tensor,
) -> th.Tensor:
    """Project the distribution of R + gamma^n z onto the fixed support z (Bellemare et al. 2017, Algorithm 1).

    m_l += p_j (u - b_j), m_u += p_j (b_j - l) with b_j = (clip(R + gamma^n z_j) - v_min) / delta_z.
    Writing u = l + 1 (not ceil(b)) keeps the mass when b_j is an integer, where ceil(b) = floor(b)
    would give both neighbours zero weight; mass beyond the support is clipped onto its edge atoms.

    :param next_probs: (batch, n_atoms) probabilities of the next state's chosen action
    :param rewards, discounts, dones: (batch, 1)
    :param support: (n_atoms,) evenly spaced atoms z_0 = v_min ... z_{N-1} = v_max
    :return: (batch, n_atoms) projected target probabilities; each row sums to the row sum of ``next_probs``
    """
    n_atoms = support.shape[0]
    v_min, v_max = support[0], support[-1]
    delta_z = (v_max - v_min) / (n_atoms - 1)
    tz = (rewards + discounts * (1.0 - dones) * support).clamp(v_min, v_max)  # T z_j, clipped to the support
    b = ((tz - v_min) / delta_z).clamp(0, n_atoms - 1)  # fractional atom index of T z_j
    lower = b.floor()
    upper_weight = b - lower  # share of p_j that goes to atom l + 1
    lower_idx = lower.long()
    upper_idx = (lower_idx + 1).clamp(max=n_atoms - 1)  # at b = N - 1 the upper share is 0 anyway
    projected = th.zeros_like(next_probs)
    projected.scatter_add_(1, lower_idx, next_probs * (1.0 - upper_weight))
    projected.scatter_add_(1, upper_idx, next_probs * upper_weight)
    return projected


def categorical_kl(target_probs: th.Tensor, logits: th.Tensor) -> th.Tensor:
    """Per-sample KL(m || p_theta) = sum_i m_i (log m_i - log p_i) (Rainbow, section "Prioritized replay").

    Same gradient as C51's cross-entropy; as a priority it is 0 when the prediction matches the target.
    """
    log_p = F.log_softmax(logits, dim=-1)
    return (th.xlogy(target_probs, target_probs) - target_probs * log_p).sum(dim=-1)


def huber_td(current_q: th.Tensor, target_q: th.Tensor) -> th.Tensor:
    """Per-sample Huber loss of the TD error (the ``n_atoms == 1`` head, as in DQN); shape (batch,)."""
    return F.smooth_l1_loss(current_q, target_q, reduction="none").view(-1)
