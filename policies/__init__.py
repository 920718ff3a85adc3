"""Policies and network building blocks for rlgen's value-based agents (Rainbow)."""

from policies.extractors import MinAtarCNN
from policies.heads import MLP, QHead, categorical_q_values, dueling_combine
from policies.noisy import NoisyLinear
from policies.rainbow_policy import (
    CnnPolicy,
    MlpPolicy,
    MultiInputPolicy,
    RainbowCnnPolicy,
    RainbowMultiInputPolicy,
    RainbowPolicy,
    RainbowQNetwork,
)

__all__ = [
    "MLP",
    "CnnPolicy",
    "MinAtarCNN",
    "MlpPolicy",
    "MultiInputPolicy",
    "NoisyLinear",
    "QHead",
    "RainbowCnnPolicy",
    "RainbowMultiInputPolicy",
    "RainbowPolicy",
    "RainbowQNetwork",
    "categorical_q_values",
    "dueling_combine",
]
