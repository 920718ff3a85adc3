"""Rainbow (Hessel et al. 2018) as a Stable-Baselines3 off-policy algorithm.

All six components can be switched off, so DQN, Double DQN, C51, etc. are special cases:

===================  ==========================================================
component            switch
===================  ==========================================================
Double Q-learning    ``double_q``
prioritised replay   ``prioritized_replay`` (``replay_buffer_kwargs``: alpha, beta, epsilon)
dueling network      ``policy_kwargs={"dueling": ...}``
multi-step returns   ``n_steps``
distributional C51   ``policy_kwargs={"n_atoms": 51, "v_min": ..., "v_max": ...}`` (``n_atoms=1``: Huber on Q)
noisy nets           ``policy_kwargs={"noisy": ...}`` (epsilon-greedy is used when ``noisy=False``)
===================  ==========================================================

The math lives in :mod:`rlgen_plugins.rainbow.targets`, the networks in :mod:`policies`.
"""

from __future__ import annotations

import warnings
from typing import Any, Callable, ClassVar, TypeVar

import numpy as np
import torch as th
from gymnasium import spaces
from stable_baselines3.common.buffers import NStepReplayBuffer, ReplayBuffer
from stable_baselines3.common.off_policy_algorithm import OffPolicyAlgorithm
from stable_baselines3.common.policies import BasePolicy
from stable_baselines3.common.type_aliases import GymEnv, MaybeCallback, Schedule
from stable_baselines3.common.utils import LinearSchedule, get_parameters_by_name, polyak_update
from torch import nn
from torch.func import functional_call, grad_and_value

from policies.heads import categorical_expectation
from policies.rainbow_policy import CnnPolicy, MlpPolicy, MultiInputPolicy, RainbowPolicy, check_distribution_args
from rlgen_plugins.rainbow.targets import (
    categorical_kl,
    categorical_projection,
    double_q_target,
    greedy_next_actions,
    huber_td,
)

SelfRainbow = TypeVar("SelfRainbow", bound="Rainbow")

# Message of SB3 >= 2.7's warning about n_steps with a custom buffer; silenced for buffers we configure ourselves.
_NSTEP_WARNING = r"`n_steps=\d+` is ignored because a custom `replay_buffer_class`"


class UnknownNameError(KeyError, ValueError):
    """An unknown policy or buffer name; both a ``KeyError`` (like registry lookups) and a ``ValueError`` (like SB3)."""

    def __str__(self) -> str:  # KeyError would print the message with quotes
        return str(self.args[0]) if self.args else ""


class UnsupportedSpaceError(ValueError, AssertionError):
    """The environment's action space is not Discrete (an ``AssertionError`` too, as SB3 raises)."""


def clip_grad_norm(parameters: list[th.Tensor], max_norm: float) -> th.Tensor:
    """``torch.nn.utils.clip_grad_norm_`` that skips the rescale when the norm is already within ``max_norm``.

    Same gradients as torch's (its coefficient clamps to exactly 1 there), but on CPU most steps save a
    multiply over every parameter. On an accelerator it always rescales: the check would sync every step.
    Returns the total norm before clipping.
    """
    total_norm = th.nn.utils.get_total_norm([p.grad for p in parameters if p.grad is not None])
    if total_norm.device.type != "cpu" or float(total_norm) + 1e-6 > max_norm:  # torch: max_norm / (norm + 1e-6)
        th.nn.utils.clip_grads_with_norm_(parameters, max_norm, total_norm)
    return total_norm


LogitsFn = Callable[[Any, bool], th.Tensor]


class _Logits(nn.Module):
    """``q_net.logits`` as ``forward``, so ``torch.func.functional_call`` can run it with parameters passed in."""

    def __init__(self, q_net: nn.Module) -> None:
        super().__init__()
        self.q_net = q_net

    def forward(self, obs: Any, noise: bool) -> th.Tensor:
        return self.q_net.logits(obs, noise)


def _without_arrays(samples: Any) -> Any:
    """The sample tuple with its numpy fields (PER's ``indices``, a plugin buffer's bookkeeping) set to ``None``:
    the compiled update takes tensors only."""
    arrays = {name: None for name, value in samples._asdict().items() if isinstance(value, np.ndarray)}
    return samples._replace(**arrays) if arrays else samples


def _check_cpu_compiler() -> None:
    """Fail at construction, not at the first gradient step, when ``torch.compile`` has no C++ compiler for the CPU."""
    try:
        from torch._inductor.cpp_builder import get_cpp_compiler  # private: skip the check if it moves
    except ImportError:
        return
    try:
        get_cpp_compiler()
    except Exception as exc:  # inductor raises its own exception types here
        raise ValueError(
            f"torch_compile=True needs a C++ compiler for torch.compile on the CPU (install g++ or set CXX), or "
            f"pass torch_compile=False (for a saved model: Rainbow.load(path, torch_compile=False)): {exc}"
        ) from None


def _registry_get(kind: str, name: str) -> Any:
    """``registry.get(kind, name)``; ``LookupError`` when unknown or when no registry is importable."""
    try:
        import registry
    except ImportError as exc:
        raise LookupError(f"no registry to look up {kind} {name!r}") from exc
    return registry.get(kind, name)


def _registry_names(kind: str) -> list[str]:
    try:
        import registry

        return list(registry.names(kind))
    except Exception:  # listing is only for the error message
        return []


class Rainbow(OffPolicyAlgorithm):
    """Rainbow: DQN with Double Q, prioritised replay, dueling, multi-step, C51 and noisy nets (Hessel et al. 2018).

    Defaults follow the paper's Atari settings converted from frames to agent steps (frame skip 4):
    Adam lr 6.25e-5, eps 1.5e-4; batch 32; PER alpha 0.5, beta 0.4 -> 1; n = 3; 51 atoms on [-10, 10];
    sigma0 0.5; learning starts after 20k steps (80k frames); target update every 8k steps (32k frames);
    one gradient step every 4 steps. For small problems use a preset (``rlgen_plugins/rainbow/hyperparams/rainbow.yml``).

    :param policy: ``"MlpPolicy"``, ``"CnnPolicy"``, ``"MultiInputPolicy"``, a registered policy name, or a class
    :param env: the environment (Discrete actions)
    :param learning_rate: Adam learning rate, constant or a schedule of the progress remaining
    :param buffer_size: replay capacity (transitions)
    :param learning_starts: environment steps collected before the first gradient step
    :param batch_size: minibatch size
    :param tau: 1.0 = hard target update every ``target_update_interval`` steps; < 1 = Polyak averaging
    :param gamma: discount factor in [0, 1]
    :param train_freq: collect this many steps (or ``(n, "episode")``) between training phases
    :param gradient_steps: gradient steps per training phase (-1: as many as environment steps collected)
    :param replay_buffer_class: a buffer class or a registered buffer name; ``None`` picks
        ``buffers.PrioritizedReplayBuffer`` (``prioritized_replay=True``), else SB3's ``NStepReplayBuffer`` /
        ``ReplayBuffer``. A buffer with ``update_priorities`` gets its priorities updated from the loss.
    :param replay_buffer_kwargs: extra buffer arguments, e.g. ``alpha``, ``beta`` (the initial value, annealed
        linearly to 1 over training) and ``epsilon`` for prioritised replay
    :param optimize_memory_usage: SB3's memory-efficient buffer variant
    :param n_steps: multi-step return horizon n (>= 1)
    :param target_update_interval: environment steps between target updates
    :param double_q: choose the next action with the online network (Double DQN)
    :param prioritized_replay: use proportional prioritised replay when ``replay_buffer_class`` is ``None``
    :param exploration_fraction: epsilon-greedy, only when ``policy_kwargs["noisy"]`` is False: fraction of
        training over which epsilon decays
    :param exploration_initial_eps: initial epsilon (non-noisy only)
    :param exploration_final_eps: final epsilon (non-noisy only)
    :param max_grad_norm: gradient-norm clipping threshold
    :param torch_compile: compute each update's gradients (``torch.func.grad_and_value`` of the loss) and act with
        noise through ``torch.compile``: fewer, fused kernels and no autograd graph, which is what small networks on
        CPU need (CartPole: 1.5-1.8x env steps per second). The first call compiles (~25 s on a fresh 2-core
        machine, seconds once cached); needs a C++ compiler on CPU. Off by default; the CartPole preset turns it on.
        See docs/rainbow.md.
    :param policy_kwargs: see :class:`policies.RainbowPolicy` (``net_arch``, ``dueling``, ``noisy``,
        ``noisy_std``, ``n_atoms``, ``v_min``, ``v_max``, ``features_extractor_class``, ``optimizer_kwargs``, ...)
    Other parameters are those of SB3's ``DQN``.
    """

    policy_aliases: ClassVar[dict[str, type[BasePolicy]]] = {
        "MlpPolicy": MlpPolicy,
        "CnnPolicy": CnnPolicy,
        "MultiInputPolicy": MultiInputPolicy,
    }
    exploration_schedule: Schedule
    beta_schedule: Schedule | None
    policy: RainbowPolicy

    def __init__(
        self,
        policy: str | type[RainbowPolicy],
        env: GymEnv | str,
        learning_rate: float | Schedule = 6.25e-5,
        buffer_size: int = 1_000_000,
        learning_starts: int = 20_000,
        batch_size: int = 32,
        tau: float = 1.0,
        gamma: float = 0.99,
        train_freq: int | tuple[int, str] = 4,
        gradient_steps: int = 1,
        replay_buffer_class: type[ReplayBuffer] | str | None = None,
        replay_buffer_kwargs: dict[str, Any] | None = None,
        optimize_memory_usage: bool = False,
        n_steps: int = 3,
        target_update_interval: int = 8_000,
        double_q: bool = True,
        prioritized_replay: bool = True,
        exploration_fraction: float = 0.1,
        exploration_initial_eps: float = 1.0,
        exploration_final_eps: float = 0.01,
        max_grad_norm: float = 10.0,
        torch_compile: bool = False,
        stats_window_size: int = 100,
        tensorboard_log: str | None = None,
        policy_kwargs: dict[str, Any] | None = None,
        verbose: int = 0,
        seed: int | None = None,
        device: th.device | str = "auto",
        _init_setup_model: bool = True,
    ) -> None:
        self._check_arguments(gamma, n_steps, tau, target_update_interval, batch_size, max_grad_norm, policy_kwargs)
        if not isinstance(torch_compile, bool):
            raise ValueError(f"torch_compile must be True or False, got {torch_compile!r}")
        try:
            super().__init__(
                policy,
                env,
                learning_rate,
                buffer_size,
                learning_starts,
                batch_size,
                tau,
                gamma,
                train_freq,
                gradient_steps,
                action_noise=None,
                replay_buffer_class=replay_buffer_class,  # type: ignore[arg-type]  # names resolved in _setup_model
                replay_buffer_kwargs=replay_buffer_kwargs,
                optimize_memory_usage=optimize_memory_usage,
                n_steps=n_steps,
                policy_kwargs=policy_kwargs,
                stats_window_size=stats_window_size,
                tensorboard_log=tensorboard_log,
                verbose=verbose,
                device=device,
                seed=seed,
                sde_support=False,
                supported_action_spaces=(spaces.Discrete,),
                support_multi_env=True,
            )
        except AssertionError as exc:
            if "action spaces" not in str(exc):
                raise
            raise UnsupportedSpaceError(
                f"env: Rainbow needs a Discrete action space (accepted: gymnasium.spaces.Discrete), got "
                f"{self.action_space}"
            ) from None
        self.double_q = double_q
        self.prioritized_replay = prioritized_replay
        self.exploration_initial_eps = exploration_initial_eps
        self.exploration_final_eps = exploration_final_eps
        self.exploration_fraction = exploration_fraction
        self.target_update_interval = target_update_interval
        self._n_calls = 0
        self.max_grad_norm = max_grad_norm
        self.torch_compile = torch_compile
        self.exploration_rate = 0.0
        if _init_setup_model:
            self._setup_model()

    @staticmethod
    def _check_arguments(
        gamma: float,
        n_steps: int,
        tau: float,
        target_update_interval: int,
        batch_size: int,
        max_grad_norm: float,
        policy_kwargs: dict[str, Any] | None,
    ) -> None:
        """Fail at construction, naming the argument, before any environment or network is built."""
        if not 0.0 <= float(gamma) <= 1.0:
            raise ValueError(f"gamma must be in [0, 1], got {gamma}")
        if isinstance(n_steps, bool) or not isinstance(n_steps, (int, np.integer)) or n_steps < 1:
            raise ValueError(f"n_steps must be an integer >= 1, got {n_steps!r}")
        if not 0.0 < float(tau) <= 1.0:
            raise ValueError(f"tau must be in (0, 1] (1 = hard target update), got {tau}")
        if target_update_interval < 1:
            raise ValueError(f"target_update_interval must be >= 1, got {target_update_interval}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if not max_grad_norm > 0:
            raise ValueError(f"max_grad_norm must be > 0, got {max_grad_norm}")
        kwargs = policy_kwargs or {}
        check_distribution_args(kwargs.get("n_atoms", 51), kwargs.get("v_min", -10.0), kwargs.get("v_max", 10.0))

    def _get_policy_from_name(self, policy_name: str) -> type[BasePolicy]:
        """``policy_aliases`` first, then policies registered by plugins (``registry.get("policies", name)``)."""
        if policy_name in self.policy_aliases:
            return self.policy_aliases[policy_name]
        try:
            return _registry_get("policies", policy_name)
        except LookupError:
            accepted = [*self.policy_aliases, *_registry_names("policies")]
            raise UnknownNameError(
                f"policy: unknown policy {policy_name!r}; accepted: {', '.join(accepted)} or a policy class"
            ) from None

    def _resolve_replay_buffer_class(self) -> None:
        """Turn a buffer name into a class, and pick the default buffer (prioritised or uniform)."""
        if isinstance(self.replay_buffer_class, str):
            name = self.replay_buffer_class
            try:
                self.replay_buffer_class = _registry_get("buffers", name)
            except LookupError:
                accepted = ", ".join(_registry_names("buffers")) or "none registered"
                raise UnknownNameError(
                    f"replay_buffer_class: unknown buffer {name!r}; registered buffers: {accepted}"
                ) from None
        if self.replay_buffer_class is None and self.prioritized_replay:
            import buffers

            is_dict = isinstance(self.observation_space, spaces.Dict)
            self.replay_buffer_class = (
                buffers.DictPrioritizedReplayBuffer if is_dict else buffers.PrioritizedReplayBuffer
            )
        per_only = sorted(set(self.replay_buffer_kwargs) & {"alpha", "beta", "epsilon"})
        if self.replay_buffer_class is None and per_only:
            raise ValueError(
                f"replay_buffer_kwargs: {', '.join(per_only)} only apply to prioritised replay, which "
                "prioritized_replay=False switches off; remove them or set prioritized_replay=True"
            )
        if self.replay_buffer_class is None and self.n_steps > 1 and isinstance(self.observation_space, spaces.Dict):
            raise ValueError(
                "n_steps > 1 with Dict observations needs prioritized_replay=True (DictPrioritizedReplayBuffer); "
                "SB3's uniform Dict buffer has no n-step returns"
            )
        # Buffers that compute n-step returns themselves get n_steps and gamma from the algorithm.
        cls = self.replay_buffer_class
        if isinstance(cls, type) and (issubclass(cls, NStepReplayBuffer) or hasattr(cls, "update_priorities")):
            self.replay_buffer_kwargs.setdefault("n_steps", self.n_steps)
            self.replay_buffer_kwargs.setdefault("gamma", self.gamma)

    def _setup_model(self) -> None:
        self._resolve_replay_buffer_class()
        with warnings.catch_warnings():
            if "n_steps" in self.replay_buffer_kwargs:
                warnings.filterwarnings("ignore", message=_NSTEP_WARNING)
            super()._setup_model()
        self._create_aliases()
        # Copy running stats, see SB3 GH issue #996
        self.batch_norm_stats = get_parameters_by_name(self.q_net, ["running_"])
        self.batch_norm_stats_target = get_parameters_by_name(self.q_net_target, ["running_"])
        self.exploration_schedule = LinearSchedule(
            self.exploration_initial_eps, self.exploration_final_eps, self.exploration_fraction
        )
        self._prioritized = hasattr(self.replay_buffer, "update_priorities")
        self._setup_compilation()
        # PER importance-sampling exponent: beta_0 -> 1 linearly over training (Schaul et al. 2016, section 3.4).
        beta0 = float(getattr(self.replay_buffer, "beta", 1.0)) if self._prioritized else 1.0
        self.beta_schedule = LinearSchedule(beta0, 1.0, 1.0) if self._prioritized else None
        if self.n_envs > self.target_update_interval:
            warnings.warn(
                f"n_envs ({self.n_envs}) > target_update_interval ({self.target_update_interval}): "
                f"the target network is updated after every env.step(), i.e. every {self.n_envs} steps."
            )

    def _setup_compilation(self) -> None:
        """With ``torch_compile``: compile the gradient computation and noisy acting.

        The compiled update is one function of the online parameters, ``torch.func.grad_and_value`` of
        :meth:`_loss_of_parameters`: the three forward passes, the targets, the loss and the gradients become a few
        fused kernels in one call, with no autograd graph to record or replay. On a small network the update is
        per-operation overhead, not arithmetic, so this takes the forward-and-backward time to about a third.
        Shapes are static (``dynamic=False``: the batch size is fixed); compilation happens at the first call.
        """
        self._compiled_gradients: Callable[..., Any] | None = None
        if not self.torch_compile:
            return
        if self.device.type == "cpu":
            _check_cpu_compiler()
        self._online_logits = _Logits(self.q_net)
        self._named_parameters = {f"q_net.{name}": param for name, param in self.q_net.named_parameters()}
        self._compiled_gradients = th.compile(grad_and_value(self._loss_of_parameters, has_aux=True), dynamic=False)
        if hasattr(self.q_net, "compile_acting"):  # policies from plugins may not offer it
            self.q_net.compile_acting()  # noisy acting runs at every env step of learn()

    def _create_aliases(self) -> None:
        self.q_net = self.policy.q_net
        self.q_net_target = self.policy.q_net_target
        # The parameters that receive gradients, listed once: walking the module tree every step is not free.
        self._trained_parameters = list(self.q_net.parameters())

    @property
    def noisy(self) -> bool:
        """Whether the policy explores with noisy layers (then epsilon-greedy is off)."""
        return bool(getattr(self.policy, "noisy", False))

    def _on_step(self) -> None:
        """After every vectorised env step: target update and the epsilon schedule (as SB3's DQN)."""
        self._n_calls += 1
        if self._n_calls % max(self.target_update_interval // self.n_envs, 1) == 0:
            polyak_update(self.q_net.parameters(), self.q_net_target.parameters(), self.tau)
            polyak_update(self.batch_norm_stats, self.batch_norm_stats_target, 1.0)
        # Noisy nets explore by themselves: epsilon stays 0 (Rainbow paper, section "Noisy Nets").
        self.exploration_rate = 0.0 if self.noisy else self.exploration_schedule(self._current_progress_remaining)
        self.logger.record("rollout/exploration_rate", self.exploration_rate)

    def _per_sample_loss(self, data: Any, online_logits: LogitsFn | None = None) -> tuple[th.Tensor, th.Tensor]:
        """Loss of each transition, shape (batch,), and its raw priority: KL for C51, Huber / |TD error| otherwise.

        With Double Q the online network also scores s' (same noise sample, as the paper's online network) to
        pick a*; that pass runs without autograd: batching it with s would double the backward pass's matmuls.
        ``online_logits`` replaces ``q_net.logits`` (the compiled update passes the parameters in explicitly).
        """
        noise = self.noisy
        q_net = self.q_net
        logits_of = online_logits if online_logits is not None else q_net.logits
        actions = data.actions.long().view(-1, 1)
        logits = logits_of(data.observations, noise)  # (batch, n_actions, n_atoms)
        if self.double_q:
            with th.no_grad():
                next_logits_online = logits_of(data.next_observations, noise)
        n_atoms = logits.shape[-1]
        chosen = logits.gather(1, actions.unsqueeze(-1).expand(-1, 1, n_atoms)).squeeze(1)  # (batch, n_atoms)
        with th.no_grad():
            next_logits_target = self.q_net_target.logits(data.next_observations, noise)
            if n_atoms == 1:
                next_q_target = next_logits_target.squeeze(-1)
                next_q_online = next_logits_online.squeeze(-1) if self.double_q else next_q_target
                target_q = double_q_target(
                    data.rewards, data.discounts, data.dones, next_q_online, next_q_target, self.double_q
                )
        if n_atoms == 1:
            return huber_td(chosen, target_q), (target_q - chosen).detach().abs().view(-1)
        with th.no_grad():
            support = q_net.support
            next_probs_target = next_logits_target.softmax(dim=-1)  # one softmax serves Q-values and the target
            next_q_target = categorical_expectation(next_probs_target, support)
            next_q_online = q_net.q_values_from_logits(next_logits_online) if self.double_q else next_q_target
            next_actions = greedy_next_actions(next_q_online, next_q_target, self.double_q)
            next_probs = next_probs_target.gather(1, next_actions.unsqueeze(-1).expand(-1, 1, n_atoms)).squeeze(1)
            target_probs = categorical_projection(next_probs, data.rewards, data.discounts, data.dones, support)
        kl = categorical_kl(target_probs, chosen)
        # Rainbow prioritises by the KL loss. KL >= 0, but in float32 it can round to slightly below 0 where the
        # prediction has converged onto the target (e.g. terminal transitions); the buffer rejects negatives.
        return kl, kl.detach().clamp_min(0.0)

    def _loss_and_priorities(self, data: Any, online_logits: LogitsFn | None = None) -> tuple[th.Tensor, th.Tensor]:
        """The batch's loss (importance-weighted with prioritised replay) and each transition's new priority."""
        per_sample, priorities = self._per_sample_loss(data, online_logits)
        if self._prioritized:
            return (data.weights.view(-1) * per_sample).mean(), priorities  # importance-sampling correction w_i
        return per_sample.mean(), priorities

    def _loss_of_parameters(self, parameters: dict[str, th.Tensor], data: Any) -> tuple[th.Tensor, th.Tensor]:
        """:meth:`_loss_and_priorities` as a function of the online parameters, for ``torch.func.grad_and_value``."""

        def online_logits(obs: Any, noise: bool) -> th.Tensor:
            return functional_call(self._online_logits, parameters, (obs, noise))

        return self._loss_and_priorities(data, online_logits)

    def train(self, gradient_steps: int, batch_size: int = 100) -> None:
        buffer = self.replay_buffer
        if buffer is None or buffer.size() * buffer.n_envs < batch_size:
            return  # fewer transitions than one batch, e.g. right after load() with a fresh buffer
        self.policy.set_training_mode(True)
        self._update_learning_rate(self.policy.optimizer)
        if self.beta_schedule is not None:
            self.replay_buffer.beta = self.beta_schedule(self._current_progress_remaining)  # type: ignore[union-attr]
        losses = []
        for _ in range(gradient_steps):
            data = self.replay_buffer.sample(batch_size, env=self._vec_normalize_env)  # type: ignore[union-attr]
            if data.discounts is None:  # a 1-step buffer without discounts
                data = data._replace(discounts=th.full_like(data.rewards, self.gamma))
            if self.noisy:  # fresh noise for online and target networks at every gradient step
                self.policy.reset_noise()
            if self._compiled_gradients is not None:
                with th.no_grad():  # grad_and_value differentiates inside; outer autograd has nothing to record
                    grads, (loss, priorities) = self._compiled_gradients(self._named_parameters, _without_arrays(data))
                for param, grad in zip(self._trained_parameters, grads.values()):
                    param.grad = grad
            else:
                loss, priorities = self._loss_and_priorities(data)
                for param in self._trained_parameters:  # optimizer.zero_grad(set_to_none=True) without its wrapper
                    param.grad = None
                loss.backward()
            clip_grad_norm(self._trained_parameters, self.max_grad_norm)
            self.policy.optimizer.step()
            if self._prioritized:
                self.replay_buffer.update_priorities(data.indices, priorities)  # type: ignore[union-attr]
            losses.append(loss.detach())
        self._n_updates += gradient_steps
        self.logger.record("train/n_updates", self._n_updates, exclude="tensorboard")
        self.logger.record("train/loss", th.stack(losses).mean().item())  # one sync per training phase
        if self.beta_schedule is not None:
            self.logger.record("train/per_beta", self.replay_buffer.beta)  # type: ignore[union-attr]

    def predict(
        self,
        observation: np.ndarray | dict[str, np.ndarray],
        state: tuple[np.ndarray, ...] | None = None,
        episode_start: np.ndarray | None = None,
        deterministic: bool = False,
    ) -> tuple[np.ndarray, tuple[np.ndarray, ...] | None]:
        """Greedy with mean weights when ``deterministic``; otherwise noisy-net or epsilon-greedy exploration."""
        if not deterministic and not self.noisy and np.random.rand() < self.exploration_rate:
            if self.policy.is_vectorized_observation(observation):
                if isinstance(observation, dict):
                    n_batch = observation[next(iter(observation.keys()))].shape[0]
                else:
                    n_batch = observation.shape[0]
                action = np.array([self.action_space.sample() for _ in range(n_batch)])
            else:
                action = np.array(self.action_space.sample())
            return action, state
        return self.policy.predict(observation, state, episode_start, deterministic)

    def learn(
        self: SelfRainbow,
        total_timesteps: int,
        callback: MaybeCallback = None,
        log_interval: int = 4,
        tb_log_name: str = "Rainbow",
        reset_num_timesteps: bool = True,
        progress_bar: bool = False,
    ) -> SelfRainbow:
        return super().learn(
            total_timesteps=total_timesteps,
            callback=callback,
            log_interval=log_interval,
            tb_log_name=tb_log_name,
            reset_num_timesteps=reset_num_timesteps,
            progress_bar=progress_bar,
        )

    def _excluded_save_params(self) -> list[str]:
        compiled = ["_compiled_gradients", "_online_logits", "_named_parameters"]
        return [*super()._excluded_save_params(), "q_net", "q_net_target", "_trained_parameters", *compiled]

    def _get_torch_save_params(self) -> tuple[list[str], list[str]]:
        return ["policy", "policy.optimizer"], []
