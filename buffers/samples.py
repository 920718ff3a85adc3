"""Sample batches returned by the prioritised buffers (SB3's sample tuples plus ``weights`` and ``indices``)."""
from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch as th
from stable_baselines3.common.type_aliases import TensorDict


class PrioritizedReplayBufferSamples(NamedTuple):
    """Fields of SB3's ``ReplayBufferSamples`` (with n-step ``rewards``/``dones``/``discounts``) plus PER extras.

    ``weights`` are importance weights ``(N * P(i)) ** -beta / max_j w_j``, shape ``(batch, 1)``; ``indices`` are flat
    indices ``row * n_envs + env`` (numpy int64) to hand back to ``update_priorities``.
    """

    observations: th.Tensor
    actions: th.Tensor
    next_observations: th.Tensor
    dones: th.Tensor
    rewards: th.Tensor
    discounts: th.Tensor
    weights: th.Tensor
    indices: np.ndarray


class DictPrioritizedReplayBufferSamples(NamedTuple):
    """``PrioritizedReplayBufferSamples`` with dict observations."""

    observations: TensorDict
    actions: th.Tensor
    next_observations: TensorDict
    dones: th.Tensor
    rewards: th.Tensor
    discounts: th.Tensor
    weights: th.Tensor
    indices: np.ndarray
