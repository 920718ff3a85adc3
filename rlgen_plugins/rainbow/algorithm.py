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

``Rainbow`` is a subclass of SB3's ``DQN``: collection, the epsilon schedule, target updates, ``predict``, saving
and loading are DQN's. What Rainbow adds is :meth:`Rainbow._loss` (the update, one function of the online
parameters that eager and compiled runs share), its buffer choice, PER's beta schedule and noisy exploration.
The per-component math lives in :mod:`rlgen_plugins.rainbow.targets`, the networks in :mod:`policies`.
"""

from __future__ import annotations

import math
import warnings
from typing import Any, Callable, ClassVar, TypeVar

import torch as th
from gymnasium import spaces
from stable_baselines3.common.buffers import NStepReplayBuffer, ReplayBuffer
from stable_baselines3.common.policies import BasePolicy
from stable_baselines3.common.type_aliases import GymEnv, MaybeCallback, Schedule
from stable_baselines3.common.utils import ConstantSchedule, LinearSchedule
from stable_baselines3.dqn import DQN
from torch.func import functional_call, grad_and_value

from policies.rainbow_policy import CnnPolicy, MlpPolicy, MultiInputPolicy, RainbowPolicy
from rlgen_plugins.rainbow.support import (
    OnlineLogits,
    UnknownNameError,
    UnsupportedSpaceError,
    check_cpu_compiler,
    check_finite_step,
    clip_grad_norm,
    registry_get,
    registry_names,
    without_arrays,
)
from rlgen_plugins.rainbow.targets import rainbow_loss
from rlgen_plugins.rainbow.validation import check_constructor, check_learn

SelfRainbow = TypeVar("SelfRainbow", bound="Rainbow")

# Message of SB3 >= 2.7's warning about n_steps with a custom buffer; silenced for buffers we configure ourselves.
_NSTEP_WARNING = r"`n_steps=\d+` is ignored because a custom `replay_buffer_class`"


class Rainbow(DQN):
    """Rainbow: DQN with Double Q, prioritised replay, dueling, multi-step, C51 and noisy nets (Hessel et al. 2018).

    A drop-in for SB3's ``DQN``: every argument DQN has keeps DQN's default (``learning_starts=100``,
    ``learning_rate=1e-4``, ``target_update_interval=10_000``, ...), so ``Rainbow("MlpPolicy", env)`` runs where
    ``DQN("MlpPolicy", env)`` does. The six components are on by default; the defaults that differ from DQN's are
    the components themselves: ``n_steps=3`` (DQN: 1), ``double_q=True``, ``prioritized_replay=True`` and the
    policy's dueling, noisy, 51-atom head. The paper's Atari settings (lr 6.25e-5, target update every 8k steps,
    learning starts after 20k steps, ...) are the Atari presets (``rlgen_plugins/rainbow/hyperparams/rainbow.yml``).

    :param policy: ``"MlpPolicy"``, ``"CnnPolicy"``, ``"MultiInputPolicy"``, a registered policy name, or a class
    :param env: the environment (Discrete actions)
    :param replay_buffer_class: a buffer class or a registered buffer name; ``None`` picks
        ``buffers.PrioritizedReplayBuffer`` (``prioritized_replay=True``), else SB3's ``NStepReplayBuffer`` /
        ``ReplayBuffer``. A class of your own needs ``update_priorities`` while ``prioritized_replay`` is True.
    :param replay_buffer_kwargs: extra buffer arguments, e.g. ``alpha``, ``beta`` (the initial value, annealed
        linearly to 1 over training) and ``epsilon`` for prioritised replay
    :param n_steps: multi-step return horizon n (>= 1)
    :param double_q: choose the next action with the online network (Double DQN)
    :param prioritized_replay: proportional prioritised replay (Schaul et al. 2016)
    :param exploration_fraction: epsilon-greedy, only when ``policy_kwargs["noisy"]`` is False: fraction of
        training over which epsilon decays (noisy nets explore by themselves: epsilon stays 0)
    :param torch_compile: compute each update's gradients (``torch.func.grad_and_value`` of :meth:`_loss`) and act
        with noise through ``torch.compile``: fewer, fused kernels and no autograd graph, which is what small
        networks on CPU need. The first call compiles (~25 s on a fresh 2-core machine, seconds once cached);
        needs a C++ compiler on CPU. See docs/rainbow.md.
    :param policy_kwargs: see :class:`policies.RainbowPolicy` (``net_arch``, ``dueling``, ``noisy``,
        ``noisy_std``, ``n_atoms``, ``v_min``, ``v_max``, ``features_extractor_class``, ``optimizer_kwargs``, ...)
    Every other parameter is DQN's, with DQN's meaning and default.
    """

    policy_aliases: ClassVar[dict[str, type[BasePolicy]]] = {
        "MlpPolicy": MlpPolicy,
        "CnnPolicy": CnnPolicy,
        "MultiInputPolicy": MultiInputPolicy,
    }
    beta_schedule: Schedule | None
    policy: RainbowPolicy
    #: Check every gradient step's sampled data, loss and gradient for NaN/inf (:func:`support.check_finite_step`)
    #: and stop before the optimizer step; off only to measure what the check costs (bench/finite_checks.py).
    _check_finite: ClassVar[bool] = True

    def __init__(
        self,
        policy: str | type[RainbowPolicy],
        env: GymEnv | str,
        learning_rate: float | Schedule = 1e-4,
        buffer_size: int = 1_000_000,
        learning_starts: int = 100,
        batch_size: int = 32,
        tau: float = 1.0,
        gamma: float = 0.99,
        train_freq: int | tuple[int, str] = 4,
        gradient_steps: int = 1,
        replay_buffer_class: type[ReplayBuffer] | str | None = None,
        replay_buffer_kwargs: dict[str, Any] | None = None,
        optimize_memory_usage: bool = False,
        n_steps: int = 3,
        target_update_interval: int = 10_000,
        exploration_fraction: float = 0.1,
        exploration_initial_eps: float = 1.0,
        exploration_final_eps: float = 0.05,
        max_grad_norm: float = 10.0,
        stats_window_size: int = 100,
        tensorboard_log: str | None = None,
        policy_kwargs: dict[str, Any] | None = None,
        verbose: int = 0,
        seed: int | None = None,
        device: th.device | str = "auto",
        double_q: bool = True,
        prioritized_replay: bool = True,
        torch_compile: bool = False,
        _init_setup_model: bool = True,
    ) -> None:
        check_constructor(locals())  # every argument, before SB3 makes the env or allocates anything
        try:
            super().__init__(
                policy,  # type: ignore[arg-type]
                env,
                learning_rate=learning_rate,
                buffer_size=buffer_size,
                learning_starts=learning_starts,
                batch_size=batch_size,
                tau=tau,
                gamma=gamma,
                train_freq=train_freq,
                gradient_steps=gradient_steps,
                replay_buffer_class=replay_buffer_class,  # type: ignore[arg-type]  # names resolved in _setup_model
                replay_buffer_kwargs=replay_buffer_kwargs,
                optimize_memory_usage=optimize_memory_usage,
                n_steps=n_steps,
                target_update_interval=target_update_interval,
                exploration_fraction=exploration_fraction,
                exploration_initial_eps=exploration_initial_eps,
                exploration_final_eps=exploration_final_eps,
                max_grad_norm=max_grad_norm,
                stats_window_size=stats_window_size,
                tensorboard_log=tensorboard_log,
                policy_kwargs=policy_kwargs,
                verbose=verbose,
                seed=seed,
                device=device,
                _init_setup_model=False,
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
        self.torch_compile = torch_compile
        if _init_setup_model:
            self._setup_model()

    def _get_policy_from_name(self, policy_name: str) -> type[BasePolicy]:
        """``policy_aliases`` first, then policies registered by plugins (``registry.get("policies", name)``)."""
        if policy_name in self.policy_aliases:
            return self.policy_aliases[policy_name]
        try:
            return registry_get("policies", policy_name)
        except LookupError:
            accepted = [*self.policy_aliases, *registry_names("policies")]
            raise UnknownNameError(
                f"policy: unknown policy {policy_name!r}; accepted: {', '.join(accepted)} or a policy class"
            ) from None

    def _resolve_replay_buffer_class(self) -> None:
        """Turn a buffer name into a class, pick the default buffer (prioritised or uniform), and refuse a buffer
        that cannot do what was asked of it (prioritised replay from a buffer without priorities)."""
        if isinstance(self.replay_buffer_class, str):
            name = self.replay_buffer_class
            try:
                self.replay_buffer_class = registry_get("buffers", name)
            except LookupError:
                accepted = ", ".join(registry_names("buffers")) or "none registered"
                raise UnknownNameError(
                    f"replay_buffer_class: unknown buffer {name!r}; registered buffers: {accepted}"
                ) from None
        cls = self.replay_buffer_class
        if cls is not None and self.prioritized_replay and not hasattr(cls, "update_priorities"):
            raise ValueError(
                f"replay_buffer_class: {cls.__name__} has no priorities (no update_priorities), but "
                "prioritized_replay=True asks for prioritised replay; pass prioritized_replay=False to train on "
                f"{cls.__name__} without it, or a prioritised buffer such as buffers.PrioritizedReplayBuffer"
            )
        if cls is None and self.prioritized_replay:
            import buffers

            is_dict = isinstance(self.observation_space, spaces.Dict)
            cls = buffers.DictPrioritizedReplayBuffer if is_dict else buffers.PrioritizedReplayBuffer
        per_only = sorted(set(self.replay_buffer_kwargs) & {"alpha", "beta", "epsilon"})
        if cls is None and per_only:
            raise ValueError(
                f"replay_buffer_kwargs: {', '.join(per_only)} only apply to prioritised replay, which "
                "prioritized_replay=False switches off; remove them or set prioritized_replay=True"
            )
        if cls is None and self.n_steps > 1 and isinstance(self.observation_space, spaces.Dict):
            raise ValueError(
                "n_steps > 1 with Dict observations needs prioritized_replay=True (DictPrioritizedReplayBuffer); "
                "SB3's uniform Dict buffer has no n-step returns"
            )
        # Buffers that compute n-step returns themselves get n_steps and gamma from the algorithm.
        if isinstance(cls, type) and (issubclass(cls, NStepReplayBuffer) or hasattr(cls, "update_priorities")):
            self.replay_buffer_kwargs.setdefault("n_steps", self.n_steps)
            self.replay_buffer_kwargs.setdefault("gamma", self.gamma)
        self.replay_buffer_class = cls

    def _setup_model(self) -> None:
        """DQN's setup (buffer, policy, aliases, epsilon schedule), then what Rainbow adds: PER's beta schedule,
        no epsilon with noisy nets, and the compiled update."""
        self._resolve_replay_buffer_class()
        with warnings.catch_warnings():
            if "n_steps" in self.replay_buffer_kwargs:
                warnings.filterwarnings("ignore", message=_NSTEP_WARNING)
            super()._setup_model()
        if self.noisy:  # noisy nets explore by themselves: epsilon stays 0 (Rainbow paper, section "Noisy Nets")
            self.exploration_schedule = ConstantSchedule(0.0)
        self._prioritized = hasattr(self.replay_buffer, "update_priorities")
        # PER importance-sampling exponent: beta_0 -> 1 linearly over training (Schaul et al. 2016, section 3.4).
        beta0 = float(getattr(self.replay_buffer, "beta", 1.0)) if self._prioritized else 1.0
        self.beta_schedule = LinearSchedule(beta0, 1.0, 1.0) if self._prioritized else None
        self._setup_compilation()

    def _create_aliases(self) -> None:
        super()._create_aliases()
        # The online parameters theta, by name (the arguments of _loss) and as a list (the ones that get gradients).
        self._online_logits = OnlineLogits(self.q_net)
        self._named_parameters = dict(self._online_logits.named_parameters())
        self._trained_parameters = list(self._named_parameters.values())

    def _setup_compilation(self) -> None:
        """With ``torch_compile``: compile ``grad_and_value(_loss)`` and noisy acting.

        The three forward passes, the targets, the loss and the gradients become a few fused kernels in one call,
        with no autograd graph to record or replay; on a small network the update is per-operation overhead, not
        arithmetic. Shapes are static (``dynamic=False``: the batch size is fixed); compilation happens at the
        first call.
        """
        self._compiled_gradients: Callable[..., Any] | None = None
        if not self.torch_compile:
            return
        if self.device.type == "cpu":
            check_cpu_compiler()
        self._compiled_gradients = th.compile(grad_and_value(self._loss, has_aux=True), dynamic=False)
        if hasattr(self.q_net, "compile_acting"):  # policies from plugins may not offer it
            self.q_net.compile_acting()  # noisy acting runs at every env step of learn()

    @property
    def noisy(self) -> bool:
        """Whether the policy explores with noisy layers (then epsilon-greedy is off)."""
        return bool(getattr(self.policy, "noisy", False))

    def _loss(self, parameters: dict[str, th.Tensor] | None, data: Any) -> tuple[th.Tensor, th.Tensor]:
        """:func:`~rlgen_plugins.rainbow.targets.rainbow_loss` as a function of the online parameters theta.

        Returns the loss and each sampled transition's new priority. Compiled runs pass the parameters in and
        differentiate with ``torch.func.grad_and_value``; eager runs pass ``None``, which means the network's own
        parameters (called directly: ``functional_call``'s parameter swapping costs ~10% of an eager step), and
        call ``backward()``. The target network and the online network share the current noise sample (the paper's
        online network scores s' with it too).
        """
        noise = self.noisy

        def online(obs: Any) -> th.Tensor:
            if parameters is None:
                return self.q_net.logits(obs, noise)
            return functional_call(self._online_logits, parameters, (obs, noise))

        def target(obs: Any) -> th.Tensor:
            return self.q_net_target.logits(obs, noise)

        return rainbow_loss(online, target, data, self.q_net.support, double_q=self.double_q, weighted=self._prioritized)

    def _gradients(self, data: Any) -> tuple[th.Tensor, th.Tensor]:
        """Set each online parameter's ``.grad`` to dL/dtheta of :meth:`_loss`; return the loss and the priorities."""
        if self._compiled_gradients is None:
            for param in self._trained_parameters:  # optimizer.zero_grad(set_to_none=True) without its wrapper
                param.grad = None
            loss, priorities = self._loss(None, data)
            loss.backward()
            return loss.detach(), priorities
        with th.no_grad():  # grad_and_value differentiates inside; outer autograd has nothing to record
            grads, (loss, priorities) = self._compiled_gradients(self._named_parameters, without_arrays(data))
        for param, grad in zip(self._trained_parameters, grads.values()):
            param.grad = grad
        return loss, priorities

    def train(self, gradient_steps: int, batch_size: int = 100) -> None:
        """``gradient_steps`` updates, each: sample (with PER's weights at the current beta), fresh noise for the
        online and target networks, the gradients of :meth:`_loss`, clipping, the optimizer step, new priorities.

        Before each optimizer step one fused check (:func:`~rlgen_plugins.rainbow.support.check_finite_step`, one
        scalar read) raises ``NonFiniteError`` if the sampled observations or rewards, the loss or the gradient
        norm is NaN or infinite, naming which and the env step: a non-finite value never reaches the weights.
        A learning-rate schedule that returns a non-finite or negative value raises ``ValueError`` here too.

        As in SB3, the buffer is sampled with replacement, so every call takes exactly ``gradient_steps`` steps
        once ``learning_starts`` has let learning begin, however few transitions are stored.
        """
        self.policy.set_training_mode(True)
        self._update_learning_rate(self.policy.optimizer)
        lr = self.policy.optimizer.param_groups[0]["lr"]
        if not (isinstance(lr, (int, float)) and math.isfinite(lr) and lr >= 0):
            progress = self._current_progress_remaining
            past = " (below 0: the last rollout ran past total_timesteps; clamp it, e.g. max(progress, 0))"
            raise ValueError(f"learning_rate: the schedule returned {lr!r} at progress_remaining={progress:.4g}"
                             f"{past if progress < 0 else ''} (env step {self.num_timesteps}); it must return "
                             "finite numbers >= 0")
        if self.beta_schedule is not None:
            self.replay_buffer.beta = self.beta_schedule(self._current_progress_remaining)  # type: ignore[union-attr]
        losses = []
        for _ in range(gradient_steps):
            data = self.replay_buffer.sample(batch_size, env=self._vec_normalize_env)  # type: ignore[union-attr]
            if data.discounts is None:  # a 1-step buffer without discounts
                data = data._replace(discounts=th.full_like(data.rewards, self.gamma))
            if self.noisy:  # fresh noise for online and target networks at every gradient step
                self.policy.reset_noise()
            loss, priorities = self._gradients(data)
            grad_norm = clip_grad_norm(self._trained_parameters, self.max_grad_norm)
            if self._check_finite:  # NaN/inf data, loss or gradient: stop before the step would write it into theta
                check_finite_step(data, loss, grad_norm, self.num_timesteps)
            self.policy.optimizer.step()
            if self._prioritized:
                self.replay_buffer.update_priorities(data.indices, priorities)  # type: ignore[union-attr]
            losses.append(loss)
        self._n_updates += gradient_steps
        self.logger.record("train/n_updates", self._n_updates, exclude="tensorboard")
        if losses:
            self.logger.record("train/loss", th.stack(losses).mean().item())  # one sync per training phase
        if self.beta_schedule is not None:
            self.logger.record("train/per_beta", self.replay_buffer.beta)  # type: ignore[union-attr]

    def learn(
        self: SelfRainbow,
        total_timesteps: int,
        callback: MaybeCallback = None,
        log_interval: int = 4,
        tb_log_name: str = "Rainbow",
        reset_num_timesteps: bool = True,
        progress_bar: bool = False,
    ) -> SelfRainbow:
        """DQN's ``learn``, after checking its arguments (a one-line error for a bad one) and warning when
        ``total_timesteps`` does not pass ``learning_starts`` (no gradient step would be taken).

        Raises :class:`~rlgen_plugins.rainbow.support.NonFiniteError` if a gradient step meets a NaN or infinity
        (in the sampled observations or rewards, the loss or the gradient), before it changes the weights.
        """
        check_learn(self, total_timesteps, log_interval, tb_log_name, reset_num_timesteps, progress_bar)
        return super().learn(
            total_timesteps=total_timesteps,
            callback=callback,
            log_interval=log_interval,
            tb_log_name=tb_log_name,
            reset_num_timesteps=reset_num_timesteps,
            progress_bar=progress_bar,
        )

    def _excluded_save_params(self) -> list[str]:
        derived = ["_compiled_gradients", "_online_logits", "_named_parameters", "_trained_parameters"]
        return [*super()._excluded_save_params(), *derived]
