"""Rainbow's arguments checked at the door: type, range and finiteness of each, before SB3 builds anything.

Every check raises with a one-line message that names the argument and the values it accepts. A value of the wrong
type raises :class:`~rlgen_plugins.rainbow.support.ArgumentTypeError` (a ``TypeError`` that is also a ``ValueError``,
so code that catches SB3's ``ValueError`` still catches it); a value of the right type outside its range raises
``ValueError``. What SB3 itself accepts keeps working: ``train_freq=(4, "step")``, schedules (callables) for
``learning_rate``, ``tau=0``, ``gradient_steps=-1`` and ``env=None`` for loading (``_init_setup_model=False``).
"""

from __future__ import annotations

import math
import os
import warnings
from typing import Any

import numpy as np
import torch as th
from stable_baselines3.common.policies import BasePolicy
from stable_baselines3.common.torch_layers import BaseFeaturesExtractor
from stable_baselines3.common.type_aliases import TrainFrequencyUnit
from torch import nn

from policies.rainbow_policy import check_distribution_args
from rlgen_plugins.rainbow.support import ArgumentTypeError

_MAX_SEED = 2**32 - 1  # numpy's seeds (SB3 seeds numpy, random and torch with the same value)


def is_integer(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def is_real(value: Any) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, (bool, np.bool_))


def _shown(value: Any) -> str:
    return f"{value!r} ({type(value).__name__})"


def check_integer(name: str, value: Any, minimum: int, also: str = "") -> None:
    """``value`` is an integer >= ``minimum`` (``also``: other accepted values, in words, for the message)."""
    accepted = f"an integer >= {minimum}{also}"
    if not is_integer(value):
        raise ArgumentTypeError(f"{name} must be {accepted}, got {_shown(value)}")
    if value < minimum:
        raise ValueError(f"{name} must be {accepted}, got {value!r}")


def check_real(name: str, value: Any, low: float | None = None, high: float | None = None, *,
               low_open: bool = False, allow_inf: bool = False) -> None:
    """``value`` is a number in [low, high] (``(low, high]`` with ``low_open``), finite unless ``allow_inf``."""
    if low is not None and high is not None:
        interval = f"in {'(' if low_open else '['}{low:g}, {high:g}]"
    elif low is not None:
        interval = f"{'>' if low_open else '>='} {low:g}"
    else:
        interval = ""
    accepted = f"a {'' if allow_inf else 'finite '}number {interval}".rstrip()
    if not is_real(value):
        raise ArgumentTypeError(f"{name} must be {accepted}, got {_shown(value)}")
    v = float(value)
    if math.isnan(v) or (math.isinf(v) and not allow_inf):
        raise ValueError(f"{name} must be {accepted}, got {value!r}")
    if low is not None and (v < low or (low_open and v == low)) or high is not None and v > high:
        raise ValueError(f"{name} must be {accepted}, got {value!r}")


def check_bool(name: str, value: Any) -> None:
    if not isinstance(value, (bool, np.bool_)):
        raise ArgumentTypeError(f"{name} must be True or False, got {_shown(value)}")


def check_mapping(name: str, value: Any) -> None:
    if value is not None and not isinstance(value, dict):
        raise ArgumentTypeError(f"{name} must be a dict or None, got {_shown(value)}")


def check_class(name: str, value: Any, base: type, example: str) -> None:
    if not (isinstance(value, type) and issubclass(value, base)):
        kind = f"{base.__module__}.{base.__qualname__}".replace("torch.nn.modules.module", "torch.nn")
        raise ArgumentTypeError(f"{name} must be a {kind} class such as {example} (the class itself, not an instance "
                                f"or a name), got {_shown(value)}")


def check_learning_rate(value: Any) -> None:
    """A finite number > 0, or a schedule (a callable of progress_remaining) whose first value is finite and >= 0."""
    if callable(value):
        first = value(1.0)
        if not (is_real(first) and math.isfinite(first) and first >= 0):
            raise ValueError(f"learning_rate: the schedule must return a finite number >= 0, got {first!r} at "
                             "progress_remaining=1")
        return
    check_real("learning_rate", value, 0.0, low_open=True)


def check_train_freq(value: Any) -> None:
    accepted = "an integer >= 1 or a tuple (frequency >= 1, 'step' or 'episode')"
    if isinstance(value, tuple):
        if len(value) != 2:
            raise ArgumentTypeError(f"train_freq must be {accepted}, got {value!r}")
        frequency, unit = value
        unit = unit.value if isinstance(unit, TrainFrequencyUnit) else unit
        if unit not in ("step", "episode"):
            raise ValueError(f"train_freq must be {accepted}, got the unit {unit!r}")
        check_integer("train_freq (its frequency)", frequency, 1)
        return
    if not is_integer(value):
        raise ArgumentTypeError(f"train_freq must be {accepted}, got {_shown(value)}")
    if value < 1:
        raise ValueError(f"train_freq must be {accepted}, got {value!r}")


def check_env(env: Any, init_setup_model: bool) -> None:
    if env is None:
        if init_setup_model:
            raise ValueError("env must be an environment (a gymnasium.Env, a VecEnv or a registered env id), got "
                             "None: Rainbow needs one to build its networks and replay buffer; env=None is only for "
                             "loading a saved model (Rainbow.load(path), then set_env(env) to train)")
        return
    if not (isinstance(env, str) or all(hasattr(env, a) for a in ("reset", "step", "observation_space"))):
        raise ArgumentTypeError(f"env must be a gymnasium.Env, a VecEnv or a registered env id (str), got "
                                f"{_shown(env)}")


def check_policy_kwargs(policy_kwargs: Any) -> None:
    """The keys Rainbow's policies take, each checked for type and range (a plugin's policy may take more)."""
    check_mapping("policy_kwargs", policy_kwargs)
    kwargs = policy_kwargs or {}
    if "activation_fn" in kwargs:
        check_class("policy_kwargs['activation_fn']", kwargs["activation_fn"], nn.Module, "torch.nn.ReLU")
    if "optimizer_class" in kwargs:
        check_class("policy_kwargs['optimizer_class']", kwargs["optimizer_class"], th.optim.Optimizer,
                    "torch.optim.Adam")
    if "features_extractor_class" in kwargs:
        check_class("policy_kwargs['features_extractor_class']", kwargs["features_extractor_class"],
                    BaseFeaturesExtractor, "stable_baselines3.common.torch_layers.FlattenExtractor")
    for key in ("optimizer_kwargs", "features_extractor_kwargs"):
        check_mapping(f"policy_kwargs['{key}']", kwargs.get(key))
    for key in ("dueling", "noisy", "shared_trunk", "normalize_images"):
        if key in kwargs:
            check_bool(f"policy_kwargs['{key}']", kwargs[key])
    net_arch = kwargs.get("net_arch")
    if net_arch is not None and not (isinstance(net_arch, (list, tuple))
                                     and all(is_integer(h) and h >= 1 for h in net_arch)):
        raise ArgumentTypeError(f"policy_kwargs['net_arch'] must be a list of layer sizes (integers >= 1), e.g. "
                                f"[64, 64], got {net_arch!r}")
    if kwargs.get("noisy", True) and "noisy_std" in kwargs:
        check_real("policy_kwargs['noisy_std']", kwargs["noisy_std"], 0.0, low_open=True)
    n_atoms = kwargs.get("n_atoms", 51)
    check_integer("policy_kwargs['n_atoms']", n_atoms, 1, " (1 = expected-value head)")
    for key in ("v_min", "v_max"):
        if key in kwargs:
            check_real(f"policy_kwargs['{key}']", kwargs[key])
    check_distribution_args(n_atoms, kwargs.get("v_min", -10.0), kwargs.get("v_max", 10.0))


def check_constructor(a: dict[str, Any]) -> None:
    """Rainbow's constructor arguments (``a``: name -> value, as passed); raises on the first bad one."""
    policy = a["policy"]
    if not (isinstance(policy, str) or isinstance(policy, type) and issubclass(policy, BasePolicy)):
        raise ArgumentTypeError(f"policy must be a policy name ('MlpPolicy', 'CnnPolicy', 'MultiInputPolicy' or one "
                                f"a plugin registered) or a policy class, got {_shown(policy)}")
    check_env(a["env"], a["_init_setup_model"])
    check_learning_rate(a["learning_rate"])
    check_integer("buffer_size", a["buffer_size"], 1)
    check_integer("learning_starts", a["learning_starts"], 0)
    check_integer("batch_size", a["batch_size"], 1)
    if a["batch_size"] > a["buffer_size"]:
        raise ValueError(f"batch_size must be <= buffer_size (each batch is drawn from the replay buffer), got "
                         f"batch_size={a['batch_size']} > buffer_size={a['buffer_size']}")
    check_real("tau", a["tau"], 0.0, 1.0)
    check_real("gamma", a["gamma"], 0.0, 1.0)
    check_train_freq(a["train_freq"])
    steps = a["gradient_steps"]
    accepted = "an integer >= 1, or -1 (as many as the env steps of each rollout)"
    if not is_integer(steps):
        raise ArgumentTypeError(f"gradient_steps must be {accepted}, got {_shown(steps)}")
    if steps < -1:  # 0 is SB3's "collect only" (no training): learn() warns about it
        raise ValueError(f"gradient_steps must be {accepted} (0: collect without training), got {steps}")
    check_mapping("replay_buffer_kwargs", a["replay_buffer_kwargs"])
    check_bool("optimize_memory_usage", a["optimize_memory_usage"])
    check_integer("n_steps", a["n_steps"], 1)
    check_integer("target_update_interval", a["target_update_interval"], 1)
    for name in ("exploration_fraction", "exploration_initial_eps", "exploration_final_eps"):
        check_real(name, a[name], 0.0, 1.0)
    check_real("max_grad_norm", a["max_grad_norm"], 0.0, low_open=True, allow_inf=True)
    check_integer("stats_window_size", a["stats_window_size"], 1)
    log = a["tensorboard_log"]
    if log is not None and not isinstance(log, (str, os.PathLike)):
        raise ArgumentTypeError(f"tensorboard_log must be a folder path (str) or None, got {_shown(log)}")
    check_policy_kwargs(a["policy_kwargs"])
    if not isinstance(a["verbose"], bool):
        check_integer("verbose", a["verbose"], 0, " (0 none, 1 info, 2 debug)")
    seed = a["seed"]
    if seed is not None:
        check_integer("seed", seed, 0, f" and <= {_MAX_SEED}, or None")
        if not isinstance(seed, int):  # Python's random.seed, which SB3 calls, refuses numpy integers
            raise ArgumentTypeError(f"seed must be a Python int (int(seed) for a numpy integer) or None, got "
                                    f"{_shown(seed)}")
        if seed > _MAX_SEED:
            raise ValueError(f"seed must be an integer in [0, {_MAX_SEED}] or None, got {seed}")
    device, devices = a["device"], "'auto', 'cpu', 'cuda', 'cuda:N' or a torch.device"
    if not isinstance(device, (str, th.device)):
        raise ArgumentTypeError(f"device must be {devices}, got {_shown(device)}")
    if isinstance(device, str) and device != "auto":
        try:
            th.device(device)
        except RuntimeError:
            raise ValueError(f"device must be {devices}, got {device!r}") from None
    for name in ("double_q", "prioritized_replay", "torch_compile", "_init_setup_model"):
        check_bool(name, a[name])


def check_learn(model: Any, total_timesteps: Any, log_interval: Any, tb_log_name: Any, reset_num_timesteps: Any,
                progress_bar: Any) -> None:
    """``learn()``'s arguments, that the model has an env, and a warning when the call can take no gradient step."""
    check_integer("total_timesteps", total_timesteps, 1)
    if log_interval is not None:
        check_integer("log_interval", log_interval, 1, " (episodes between log lines) or None")
    if not isinstance(tb_log_name, str):
        raise ArgumentTypeError(f"tb_log_name must be a str, got {_shown(tb_log_name)}")
    check_bool("reset_num_timesteps", reset_num_timesteps)
    check_bool("progress_bar", progress_bar)
    if model.env is None:
        raise ValueError("env: this model has no environment (loaded without one?); pass env= to Rainbow.load or "
                         "call model.set_env(env) before learn()")
    start = 0 if reset_num_timesteps else model.num_timesteps
    end = start + total_timesteps
    frequency, unit = model.train_freq if isinstance(model.train_freq, tuple) else (model.train_freq, "step")
    if getattr(unit, "value", unit) == "step":  # SB3 collects whole rollouts of frequency * n_envs env steps
        chunk = frequency * model.n_envs
        end = start + -(-total_timesteps // chunk) * chunk
    if model.gradient_steps == 0:
        warnings.warn(f"gradient_steps=0: learn(total_timesteps={total_timesteps}) only collects experience and "
                      "takes no gradient step (SB3's collect-only setting); pass gradient_steps >= 1 (or -1: as many "
                      "as the env steps of each rollout) to train", UserWarning, stacklevel=3)
    elif end <= model.learning_starts:
        warnings.warn(
            f"learn(total_timesteps={total_timesteps}) ends at env step {end}, not past learning_starts="
            f"{model.learning_starts}: training starts only after learning_starts env steps, so this call takes no "
            "gradient step; pass a larger total_timesteps or a smaller learning_starts", UserWarning, stacklevel=3)
