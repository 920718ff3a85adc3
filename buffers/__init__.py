"""Prioritised n-step replay buffers for Stable-Baselines3, on a fast batched sum tree, and frame-deduplicating
storage for stacked image observations."""
from buffers.frame_store import FrameStackReplayBuffer, FrameStore
from buffers.n_step import n_step_targets
from buffers.prioritized import DictPrioritizedReplayBuffer, PrioritizedReplayBuffer
from buffers.samples import DictPrioritizedReplayBufferSamples, PrioritizedReplayBufferSamples
from buffers.sum_tree import SumTree

__all__ = [
    "DictPrioritizedReplayBuffer",
    "DictPrioritizedReplayBufferSamples",
    "FrameStackReplayBuffer",
    "FrameStore",
    "PrioritizedReplayBuffer",
    "PrioritizedReplayBufferSamples",
    "SumTree",
    "n_step_targets",
]
