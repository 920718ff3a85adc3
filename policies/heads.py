"""Q-value heads: optional dueling streams, optional noisy layers, optional categorical (C51) output."""

from __future__ import annotations

import torch as th
from torch import nn

from policies.noisy import NoisyLinear, sample_scaled_noise_


def make_linear(in_features: int, out_features: int, noisy: bool, noisy_std: float) -> nn.Module:
    """A :class:`NoisyLinear` when ``noisy`` else a plain ``nn.Linear``."""
    if noisy:
        return NoisyLinear(in_features, out_features, sigma0=noisy_std)
    return nn.Linear(in_features, out_features)


class MLP(nn.Module):
    """Stack of (noisy) linear layers with an activation after every hidden layer.

    The ``noise`` flag is threaded through so one module serves both noisy acting and mean-weight acting.
    """

    def __init__(
        self,
        in_features: int,
        hidden: list[int],
        out_features: int | None,
        activation_fn: type[nn.Module],
        noisy: bool,
        noisy_std: float,
    ) -> None:
        super().__init__()
        sizes = [in_features, *hidden]
        layers = [make_linear(a, b, noisy, noisy_std) for a, b in zip(sizes[:-1], sizes[1:])]
        self.n_hidden = len(layers)
        if out_features is not None:
            layers.append(make_linear(sizes[-1], out_features, noisy, noisy_std))
        self.layers = nn.ModuleList(layers)
        self.activation = activation_fn()
        self.out_features = out_features if out_features is not None else sizes[-1]
        self.noisy = noisy

    def forward(self, x: th.Tensor, noise: bool = True) -> th.Tensor:
        for i, layer in enumerate(self.layers):
            x = layer(x, noise) if self.noisy else layer(x)
            if i < self.n_hidden:
                x = self.activation(x)
        return x


def dueling_combine(value: th.Tensor, advantage: th.Tensor) -> th.Tensor:
    """Q(s, a) = V(s) + A(s, a) - mean_a' A(s, a')  (Wang et al. 2016, eq. 9); works per atom for C51."""
    return value + advantage - advantage.mean(dim=1, keepdim=True)


class QHead(nn.Module):
    """Maps features to per-action logits of shape ``(batch, n_actions, n_atoms)``.

    ``net_arch`` lists hidden sizes. Without dueling they form one MLP. With dueling all but the last
    hidden layer are shared and the last one is duplicated into a value and an advantage stream, as in
    the Rainbow paper's Atari network (each stream: hidden layer, then output layer).
    With ``shared_trunk`` (dueling only) every hidden layer is shared and the streams are just the value and
    advantage output layers, stacked into one linear map ``value_advantage`` (about half the work of two
    streams; fewer, larger ops are what counts for small networks on CPU).
    With ``n_atoms == 1`` the "logits" are plain Q-values.
    """

    def __init__(
        self,
        features_dim: int,
        n_actions: int,
        net_arch: list[int],
        activation_fn: type[nn.Module] = nn.ReLU,
        dueling: bool = True,
        noisy: bool = True,
        noisy_std: float = 0.5,
        n_atoms: int = 51,
        shared_trunk: bool = False,
    ) -> None:
        super().__init__()
        self.n_actions = n_actions
        self.n_atoms = n_atoms
        self.dueling = dueling
        self.shared_trunk = shared_trunk and dueling
        if dueling and not shared_trunk:
            shared, stream = list(net_arch[:-1]), list(net_arch[-1:])
        else:
            shared, stream = list(net_arch), []
        self.trunk = MLP(features_dim, shared, None, activation_fn, noisy, noisy_std)
        trunk_out = self.trunk.out_features
        self.advantage: MLP | None = None
        self.value: MLP | None = None
        self.value_advantage: nn.Module | None = None
        if self.shared_trunk:
            # Rows [0, n_atoms) are the value layer V(s), the rest the advantage layer A(s, .), one per action.
            self.value_advantage = make_linear(trunk_out, (n_actions + 1) * n_atoms, noisy, noisy_std)
        else:
            self.advantage = MLP(trunk_out, stream, n_actions * n_atoms, activation_fn, noisy, noisy_std)
            self.value = MLP(trunk_out, stream, n_atoms, activation_fn, noisy, noisy_std) if dueling else None
        self.noisy_layers = [m for m in self.modules() if isinstance(m, NoisyLinear)]
        total = sum(layer.noise_size for layer in self.noisy_layers)
        self.register_buffer("noise", th.zeros(total), persistent=False)
        self._link_noise()
        self.reset_noise()

    def _link_noise(self) -> None:
        """Make every noisy layer's eps buffers views of ``self.noise``, so one in-place draw resamples them all."""
        offset = 0
        for layer in self.noisy_layers:
            layer.eps_in = self.noise[offset : offset + layer.in_features]
            offset += layer.in_features
            layer.eps_out = self.noise[offset : offset + layer.out_features]
            offset += layer.out_features

    def _apply(self, fn, recurse=True):  # type: ignore[no-untyped-def]
        # .to()/.cuda() replace each buffer separately and would break the views: re-link afterwards.
        result = super()._apply(fn, recurse)
        self._link_noise()
        return result

    def reset_noise(self) -> None:
        """Resample the noise of every noisy layer with a single random draw (cheap enough for every step)."""
        if self.noisy_layers:
            sample_scaled_noise_(self.noise)

    def forward(self, features: th.Tensor, noise: bool = True) -> th.Tensor:
        hidden = self.trunk(features, noise)
        if self.value_advantage is not None:  # shared trunk: one output layer for V and A
            layer = self.value_advantage
            out = layer(hidden, noise) if self.trunk.noisy else layer(hidden)
            out = out.view(-1, self.n_actions + 1, self.n_atoms)
            return dueling_combine(out[:, :1], out[:, 1:])
        assert self.advantage is not None
        advantage = self.advantage(hidden, noise).view(-1, self.n_actions, self.n_atoms)
        if self.value is None:
            return advantage
        value = self.value(hidden, noise).view(-1, 1, self.n_atoms)
        return dueling_combine(value, advantage)


def categorical_q_values(logits: th.Tensor, support: th.Tensor) -> th.Tensor:
    """Q(s, a) = sum_i z_i p_i(s, a) with p = softmax over atoms (Bellemare et al. 2017, eq. 1)."""
    return categorical_expectation(logits.softmax(dim=-1), support)


def categorical_expectation(probs: th.Tensor, support: th.Tensor) -> th.Tensor:
    """Q(s, a) = sum_i z_i p_i(s, a) from probabilities already computed (one matrix-vector product)."""
    return probs @ support
