"""The math of Rainbow's update: :func:`rainbow_loss`, read top to bottom, and one short function per component
(CleanRL-style, no state).

Multi-step returns come from the replay buffer: ``rewards`` is already the n-step sum
``R = sum_{k<n} gamma^k r_{t+k}`` and ``discounts`` is ``gamma^n`` (or ``gamma^k`` when the window was cut
short by the episode's end), so every target below is ``R + discounts * (1 - done) * next_value``.
"""

from __future__ import annotations

from typing import Any, Callable

import torch as th
from torch.nn import functional as F

from policies.heads import categorical_q_values

Logits = Callable[[Any], th.Tensor]  # observations -> (batch, n_actions, n_atoms) logits (Q-values if n_atoms == 1)


def rainbow_loss(online: Logits, target: Logits, data: Any, support: th.Tensor, *, double_q: bool,
                 weighted: bool) -> tuple[th.Tensor, th.Tensor]:
    """Rainbow's loss for a sampled batch, and each transition's new priority.

    ``data`` is the buffer's sample: observations, actions, next_observations, the n-step return
    R = sum_{k<n} gamma^k r_{t+k} as ``rewards``, the bootstrap factor gamma^n (gamma^k when the episode ended after
    k < n steps) as ``discounts``, ``dones`` and, with PER (``weighted``), the importance ``weights``.

        a*  = argmax_a Q_online(s', a)      (Double DQN, van Hasselt et al. 2016, eq. 4; Q_target without it)
        C51 (n_atoms > 1): m = Phi(R + gamma^n (1 - done) z) under p_target(s', a*)  (Bellemare et al. 2017, Alg. 1)
                           l_i = KL(m || p_online(s, a)),  priority_i = l_i          (Rainbow, eq. 3)
        scalar (n_atoms = 1): y = R + gamma^n (1 - done) Q_target(s', a*)
                           l_i = Huber(y - Q_online(s, a)),  priority_i = |y - Q_online(s, a)|
        L = mean_i w_i l_i                                                          (PER, section 3.4)

    Only the online network's scores of s receive gradients: its scores of s' only select a*.
    """
    logits = online(data.observations)  # (batch, n_actions, n_atoms)
    n_atoms = logits.shape[-1]
    chosen = logits.gather(1, data.actions.long().view(-1, 1, 1).expand(-1, 1, n_atoms)).squeeze(1)  # row of (s, a)
    with th.no_grad():
        next_target = target(data.next_observations)
        selector = online(data.next_observations) if double_q else next_target  # which network picks a*
        if n_atoms == 1:
            target_q = double_q_target(data.rewards, data.discounts, data.dones, selector.squeeze(-1),
                                       next_target.squeeze(-1))
        else:
            next_probs_target = next_target.softmax(dim=-1)
            next_q_selector = categorical_q_values(selector, support)
            next_actions = greedy_next_actions(next_q_selector).view(-1, 1, 1).expand(-1, 1, n_atoms)
            next_probs = next_probs_target.gather(1, next_actions).squeeze(1)
            target_probs = categorical_projection(next_probs, data.rewards, data.discounts, data.dones, support)
    if n_atoms == 1:
        per_sample = huber_td(chosen, target_q)
        priorities = (target_q - chosen).detach().abs().view(-1)
    else:
        per_sample = categorical_kl(target_probs, chosen)
        # KL >= 0, but in float32 it can round to slightly below 0 where the prediction has converged onto the
        # target (e.g. terminal transitions); the buffer rejects negative priorities.
        priorities = per_sample.detach().clamp_min(0.0)
    if weighted:
        per_sample = data.weights.view(-1) * per_sample  # importance-sampling correction w_i
    return per_sample.mean(), priorities


def greedy_next_actions(next_q_selector: th.Tensor) -> th.Tensor:
    """a* = argmax_a Q_sel(s', a), indices of shape ``(batch, 1)``.

    Q_sel is the online network's Q for Double DQN (van Hasselt et al. 2016, eq. 4), the target network's for DQN.
    """
    return next_q_selector.argmax(dim=1, keepdim=True)


def double_q_target(
    rewards: th.Tensor,
    discounts: th.Tensor,
    dones: th.Tensor,
    next_q_selector: th.Tensor,
    next_q_target: th.Tensor,
) -> th.Tensor:
    """y = R + gamma^n (1 - done) Q_target(s', argmax_a Q_sel(s', a))  (Double DQN, eq. 4); shape (batch, 1)."""
    next_actions = greedy_next_actions(next_q_selector)
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
    b = (tz - v_min) / delta_z  # fractional atom index of T z_j, in [0, N - 1] since T z_j is clipped
    lower = b.floor()
    upper_weight = b - lower  # share of p_j that goes to atom l + 1
    # A NaN return (from a non-finite reward) casts to an arbitrary index: the clamp keeps the scatter in bounds
    # (a no-op for finite returns, b is in [0, N - 1]) and the NaN weights make the loss NaN, which train() reports.
    lower_idx = lower.long().clamp(0, n_atoms - 1)
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
