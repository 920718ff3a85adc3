"""Features extractors that SB3 does not ship."""

from __future__ import annotations

import torch as th
from gymnasium import spaces
from stable_baselines3.common.torch_layers import BaseFeaturesExtractor
from torch import nn


class MinAtarCNN(BaseFeaturesExtractor):
    """Small CNN for MinAtar's 10x10xC boolean grids (Young & Tian 2019: one 3x3 conv with 16 filters).

    NatureCNN's 8x8 stride-4 first layer cannot take a 10x10 input, hence this extractor.

    :param observation_space: a Box of shape (H, W, C) (channels last, as MinAtar emits) or (C, H, W)
    :param features_dim: size of the linear layer after the convolution
    :param channels_last: whether the channel axis is last; ``None`` infers it (last axis smaller than the others)
    """

    def __init__(
        self,
        observation_space: spaces.Box,
        features_dim: int = 128,
        n_filters: int = 16,
        channels_last: bool | None = None,
    ) -> None:
        if not isinstance(observation_space, spaces.Box) or len(observation_space.shape) != 3:
            raise ValueError(
                "observation_space: MinAtarCNN needs a 3-D Box observation (H, W, C) or (C, H, W), "
                f"got {observation_space}"
            )
        super().__init__(observation_space, features_dim)
        shape = observation_space.shape
        if channels_last is None:
            channels_last = shape[2] < shape[0] and shape[2] < shape[1]
        self.channels_last = channels_last
        channels, height, width = (shape[2], shape[0], shape[1]) if channels_last else shape
        self.cnn = nn.Sequential(nn.Conv2d(channels, n_filters, kernel_size=3, stride=1), nn.ReLU(), nn.Flatten())
        n_flat = n_filters * (height - 2) * (width - 2)
        self.linear = nn.Sequential(nn.Linear(n_flat, features_dim), nn.ReLU())

    def forward(self, observations: th.Tensor) -> th.Tensor:
        x = observations.float()
        if self.channels_last:
            x = x.permute(0, 3, 1, 2)
        return self.linear(self.cnn(x))
