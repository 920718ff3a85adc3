"""Rainbow Q-network and policy, shaped like SB3's ``DQNPolicy`` (``q_net``, ``q_net_target``, ``optimizer``)."""

from __future__ import annotations

from typing import Any, Callable

import numpy as np
import torch as th
from gymnasium import spaces
from stable_baselines3.common.policies import BasePolicy
from stable_baselines3.common.preprocessing import is_image_space
from stable_baselines3.common.torch_layers import (
    BaseFeaturesExtractor,
    CombinedExtractor,
    FlattenExtractor,
    NatureCNN,
)
from stable_baselines3.common.type_aliases import PyTorchObs, Schedule
from torch import nn

from policies.heads import QHead, categorical_q_values

# Rainbow paper (Hessel et al. 2018, table 1): Adam epsilon 1.5e-4. ``fused`` runs one kernel per step
# instead of a dozen per parameter: about 5x faster than PyTorch's default Adam for small networks on CPU.
DEFAULT_ADAM_KWARGS: dict[str, Any] = {"eps": 1.5e-4, "fused": True}


def check_distribution_args(n_atoms: int, v_min: float, v_max: float) -> None:
    """Raise ``ValueError`` naming the offending argument for an unusable C51 support."""
    if isinstance(n_atoms, bool) or not isinstance(n_atoms, (int, np.integer)) or n_atoms < 1:
        raise ValueError(f"n_atoms must be an integer >= 1 (1 = expected-value head), got {n_atoms!r}")
    for name, value in (("v_min", v_min), ("v_max", v_max)):
        if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)) \
                or not np.isfinite(value):
            raise ValueError(f"{name} must be a finite number, got {value!r}")
    if n_atoms > 1 and not float(v_min) < float(v_max):
        raise ValueError(f"v_min must be < v_max for a categorical head, got v_min={v_min}, v_max={v_max}")


class RainbowQNetwork(BasePolicy):
    """Features extractor + :class:`QHead`; returns Q-values, or per-atom logits through :meth:`logits`.

    ``forward(obs)`` uses the mean weights (noise off) so inspecting ``model.q_net(obs)`` is repeatable;
    training and stochastic acting pass ``noise=True`` explicitly.
    """

    action_space: spaces.Discrete

    def __init__(
        self,
        observation_space: spaces.Space,
        action_space: spaces.Discrete,
        features_extractor: BaseFeaturesExtractor,
        features_dim: int,
        net_arch: list[int] | None = None,
        activation_fn: type[nn.Module] = nn.ReLU,
        normalize_images: bool = True,
        dueling: bool = True,
        noisy: bool = True,
        noisy_std: float = 0.5,
        n_atoms: int = 51,
        v_min: float = -10.0,
        v_max: float = 10.0,
        shared_trunk: bool = False,
    ) -> None:
        super().__init__(
            observation_space, action_space, features_extractor=features_extractor, normalize_images=normalize_images
        )
        check_distribution_args(n_atoms, v_min, v_max)
        self.net_arch = [64, 64] if net_arch is None else list(net_arch)
        self.activation_fn = activation_fn
        self.features_dim = features_dim
        self.dueling, self.noisy, self.noisy_std = dueling, noisy, noisy_std
        self.n_atoms, self.v_min, self.v_max = n_atoms, float(v_min), float(v_max)
        self.shared_trunk = shared_trunk
        self.head = QHead(
            features_dim, int(action_space.n), self.net_arch, activation_fn, dueling, noisy, noisy_std, n_atoms,
            shared_trunk,
        )
        # The support z_i is derived from v_min/v_max: rebuild it rather than save it.
        support = th.linspace(self.v_min, self.v_max, n_atoms) if n_atoms > 1 else th.zeros(1)
        self.register_buffer("support", support, persistent=False)
        self._compiled_noisy_actions: Callable[..., th.Tensor] | None = None  # see compile_acting()

    def reset_noise(self) -> None:
        """Resample the noise of every noisy layer (no-op without noisy layers)."""
        self.head.reset_noise()

    def logits(self, obs: PyTorchObs, noise: bool = True) -> th.Tensor:
        """Per-action atom logits ``(batch, n_actions, n_atoms)``; Q-values themselves when ``n_atoms == 1``."""
        return self.head(self.extract_features(obs, self.features_extractor), noise)

    def q_values_from_logits(self, logits: th.Tensor) -> th.Tensor:
        """Expected Q-values ``(batch, n_actions)`` from :meth:`logits` output."""
        if self.n_atoms == 1:
            return logits.squeeze(-1)
        return categorical_q_values(logits, self.support)

    def forward(self, obs: PyTorchObs, noise: bool = False) -> th.Tensor:
        """Q-values ``(batch, n_actions)``; mean weights unless ``noise=True``."""
        return self.q_values_from_logits(self.logits(obs, noise))

    def greedy_actions(self, observation: PyTorchObs, noise: bool = False) -> th.Tensor:
        """argmax_a Q(s, a) for each observation, with the current noise sample or the mean weights."""
        return self(observation, noise=noise).argmax(dim=1).reshape(-1)

    def compile_acting(self) -> None:
        """Compile noisy acting, which ``learn`` runs at every environment step, with ``torch.compile``.

        Only the noisy path uses it: its batch shape is fixed by the number of envs. Deterministic acting
        (evaluation, any batch size) stays eager, so evaluating never triggers a compilation.
        """
        self._compiled_noisy_actions = th.compile(self.greedy_actions, dynamic=False)

    def _predict(self, observation: PyTorchObs, deterministic: bool = True) -> th.Tensor:
        # Noisy exploration is tied to acting stochastically, not to train/eval mode
        # (SB3 switches to eval mode for every rollout and predict).
        if not self.noisy or deterministic:
            return self.greedy_actions(observation, noise=False)
        self.reset_noise()
        return (self._compiled_noisy_actions or self.greedy_actions)(observation, noise=True)

    def _get_constructor_parameters(self) -> dict[str, Any]:
        data = super()._get_constructor_parameters()
        data.update(
            dict(
                net_arch=self.net_arch,
                features_dim=self.features_dim,
                activation_fn=self.activation_fn,
                features_extractor=self.features_extractor,
                dueling=self.dueling,
                noisy=self.noisy,
                noisy_std=self.noisy_std,
                n_atoms=self.n_atoms,
                v_min=self.v_min,
                v_max=self.v_max,
                shared_trunk=self.shared_trunk,
            )
        )
        return data


class RainbowPolicy(BasePolicy):
    """Online and target :class:`RainbowQNetwork` plus optimizer; the ``MlpPolicy`` of :class:`rlgen_plugins.Rainbow`.

    :param net_arch: hidden sizes of the Q head (default ``[64, 64]``, ``[]`` after NatureCNN); with
        ``dueling`` the last size is used by each of the value and advantage streams
    :param dueling: dueling value/advantage streams (Wang et al. 2016)
    :param noisy: factorised-Gaussian noisy linear layers in the head (Fortunato et al. 2018)
    :param noisy_std: sigma0 of the noisy layers (paper: 0.5)
    :param n_atoms: atoms of the categorical return distribution (C51: 51); 1 = expected-value head with Huber loss
    :param v_min: lowest atom of the support (paper: -10); pick it for the environment's return scale
    :param v_max: highest atom of the support (paper: 10)
    :param shared_trunk: with ``dueling``, share every hidden layer and make the value and advantage streams
        output layers only (cheaper; the paper's streams each have a hidden layer)
    :param optimizer_kwargs: for Adam, merged over ``{"eps": 1.5e-4, "fused": True}`` (the paper's epsilon; fused
        Adam for speed), so passing e.g. ``{"weight_decay": 1e-5}`` keeps the paper's epsilon; pass ``eps`` to change it
    Other parameters are those of SB3's ``DQNPolicy``.
    """

    q_net: RainbowQNetwork
    q_net_target: RainbowQNetwork

    def __init__(
        self,
        observation_space: spaces.Space,
        action_space: spaces.Discrete,
        lr_schedule: Schedule,
        net_arch: list[int] | None = None,
        activation_fn: type[nn.Module] = nn.ReLU,
        features_extractor_class: type[BaseFeaturesExtractor] = FlattenExtractor,
        features_extractor_kwargs: dict[str, Any] | None = None,
        normalize_images: bool = True,
        optimizer_class: type[th.optim.Optimizer] = th.optim.Adam,
        optimizer_kwargs: dict[str, Any] | None = None,
        dueling: bool = True,
        noisy: bool = True,
        noisy_std: float = 0.5,
        n_atoms: int = 51,
        v_min: float = -10.0,
        v_max: float = 10.0,
        shared_trunk: bool = False,
    ) -> None:
        check_distribution_args(n_atoms, v_min, v_max)
        if noisy and not float(noisy_std) > 0:
            raise ValueError(f"noisy_std must be > 0, got {noisy_std}")
        if net_arch is not None and any((not isinstance(h, int)) or h < 1 for h in net_arch):
            raise ValueError(f"net_arch must be a list of positive layer sizes, got {net_arch!r}")
        if optimizer_class is th.optim.Adam:  # the epsilon matters (CartPole preset notes): keep it unless overridden
            optimizer_kwargs = {**DEFAULT_ADAM_KWARGS, **(optimizer_kwargs or {})}
        super().__init__(
            observation_space,
            action_space,
            features_extractor_class,
            features_extractor_kwargs,
            optimizer_class=optimizer_class,
            optimizer_kwargs=optimizer_kwargs,
            normalize_images=normalize_images,
        )
        if net_arch is None:
            net_arch = [] if features_extractor_class == NatureCNN else [64, 64]
        self.net_arch = net_arch
        self.activation_fn = activation_fn
        self.net_args = {
            "observation_space": self.observation_space,
            "action_space": self.action_space,
            "net_arch": self.net_arch,
            "activation_fn": self.activation_fn,
            "normalize_images": normalize_images,
            "dueling": dueling,
            "noisy": noisy,
            "noisy_std": noisy_std,
            "n_atoms": n_atoms,
            "v_min": v_min,
            "v_max": v_max,
            "shared_trunk": shared_trunk,
        }
        self._build(lr_schedule)

    def _build(self, lr_schedule: Schedule) -> None:
        """Create online and target networks (target starts as a copy, in eval mode) and the optimizer."""
        self.q_net = self.make_q_net()
        self.q_net_target = self.make_q_net()
        self.q_net_target.load_state_dict(self.q_net.state_dict())
        self.q_net_target.set_training_mode(False)
        self.optimizer = self.optimizer_class(  # type: ignore[call-arg]
            self.q_net.parameters(), lr=lr_schedule(1), **self.optimizer_kwargs
        )
        # SB3 flips train/eval mode at every env step and every training phase; Module.train() walks the
        # whole tree through __setattr__. When no module customises train(), set the flags directly.
        modules = list(self.modules())
        self._plain_train_modules = modules if all(type(m).train is nn.Module.train for m in modules) else None
        # predict() takes a short path for arrays of a Box space that SB3 would not transpose (not an image).
        space = self.observation_space
        self._flat_box = isinstance(space, spaces.Box) and not is_image_space(space)

    def set_training_mode(self, mode: bool) -> None:
        """Put the policy in training or evaluation mode (affects batch norm / dropout; not the noise)."""
        plain = getattr(self, "_plain_train_modules", None)
        if plain is None:
            self.train(mode)
            return
        for module in plain:
            object.__setattr__(module, "training", mode)

    def make_q_net(self) -> RainbowQNetwork:
        # Separate features extractor per network, as in SB3's DQNPolicy.
        net_args = self._update_features_extractor(self.net_args, features_extractor=None)
        return RainbowQNetwork(**net_args).to(self.device)

    @property
    def noisy(self) -> bool:
        return bool(self.net_args["noisy"])

    @property
    def n_atoms(self) -> int:
        return int(self.net_args["n_atoms"])

    def reset_noise(self) -> None:
        """Resample the noise of the online and target networks."""
        self.q_net.reset_noise()
        self.q_net_target.reset_noise()

    def forward(self, obs: PyTorchObs, deterministic: bool = True) -> th.Tensor:
        return self._predict(obs, deterministic=deterministic)

    def predict(
        self,
        observation: np.ndarray | dict[str, np.ndarray],
        state: tuple[np.ndarray, ...] | None = None,
        episode_start: np.ndarray | None = None,
        deterministic: bool = False,
    ) -> tuple[np.ndarray, tuple[np.ndarray, ...] | None]:
        """SB3's ``BasePolicy.predict``, with a short path for a (batch of) non-image Box observation(s).

        Acting runs at every environment step, and SB3's generic conversions (copy, space checks, reshapes)
        cost more than the tiny network. Same actions, shapes and dtypes; everything else goes through SB3.
        """
        space = self.observation_space
        if getattr(self, "_flat_box", False) and isinstance(observation, np.ndarray):
            shape = observation.shape
            vectorized = shape != space.shape and shape[1:] == space.shape
            if vectorized or shape == space.shape:
                self.set_training_mode(False)
                with th.no_grad():
                    obs = th.as_tensor(observation, device=self.device).reshape(-1, *space.shape)
                    actions = self._predict(obs, deterministic=deterministic).cpu().numpy()
                return (actions if vectorized else actions.squeeze(axis=0)), state
        return super().predict(observation, state, episode_start, deterministic)

    def _predict(self, obs: PyTorchObs, deterministic: bool = True) -> th.Tensor:
        return self.q_net._predict(obs, deterministic=deterministic)

    def _get_constructor_parameters(self) -> dict[str, Any]:
        data = super()._get_constructor_parameters()
        data.update(
            dict(
                net_arch=self.net_args["net_arch"],
                activation_fn=self.net_args["activation_fn"],
                lr_schedule=self._dummy_schedule,
                optimizer_class=self.optimizer_class,
                optimizer_kwargs=self.optimizer_kwargs,
                features_extractor_class=self.features_extractor_class,
                features_extractor_kwargs=self.features_extractor_kwargs,
                dueling=self.net_args["dueling"],
                noisy=self.net_args["noisy"],
                noisy_std=self.net_args["noisy_std"],
                n_atoms=self.net_args["n_atoms"],
                v_min=self.net_args["v_min"],
                v_max=self.net_args["v_max"],
                shared_trunk=self.net_args["shared_trunk"],
            )
        )
        return data


class RainbowCnnPolicy(RainbowPolicy):
    """:class:`RainbowPolicy` with SB3's NatureCNN features extractor (``CnnPolicy``)."""

    def __init__(
        self, observation_space: spaces.Space, action_space: spaces.Discrete, lr_schedule: Schedule, **kwargs: Any
    ) -> None:
        kwargs.setdefault("features_extractor_class", NatureCNN)
        super().__init__(observation_space, action_space, lr_schedule, **kwargs)


class RainbowMultiInputPolicy(RainbowPolicy):
    """:class:`RainbowPolicy` for Dict observations with SB3's CombinedExtractor (``MultiInputPolicy``)."""

    def __init__(
        self, observation_space: spaces.Dict, action_space: spaces.Discrete, lr_schedule: Schedule, **kwargs: Any
    ) -> None:
        kwargs.setdefault("features_extractor_class", CombinedExtractor)
        super().__init__(observation_space, action_space, lr_schedule, **kwargs)


MlpPolicy = RainbowPolicy
CnnPolicy = RainbowCnnPolicy
MultiInputPolicy = RainbowMultiInputPolicy
