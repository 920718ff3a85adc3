"""What Rainbow's update needs around the math: error types, gradient clipping, the finiteness check of each
gradient step, the online network as a module of its parameters (for ``torch.func``), the compiler check and
registry look-ups."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch as th
from torch import nn


class UnknownNameError(KeyError, ValueError):
    """An unknown policy or buffer name; both a ``KeyError`` (like registry lookups) and a ``ValueError`` (like SB3)."""

    def __str__(self) -> str:  # KeyError would print the message with quotes
        return str(self.args[0]) if self.args else ""


class UnsupportedSpaceError(ValueError, AssertionError):
    """The environment's action space is not Discrete (an ``AssertionError`` too, as SB3 raises)."""


class ArgumentTypeError(TypeError, ValueError):
    """An argument of the wrong type; a ``ValueError`` too, like the errors SB3 raises for bad arguments."""


class NonFiniteError(FloatingPointError):
    """A gradient step met a NaN or infinity (in the sampled data, the loss or the gradient) and stopped before the
    optimizer step, so the weights are unchanged; ``what`` names the quantities, ``step`` the env step."""

    def __init__(self, message: str, what: tuple[str, ...] = (), step: int | None = None) -> None:
        super().__init__(message)
        self.what, self.step = what, step


def _floating(observations: Any) -> list[th.Tensor]:
    """The floating-point tensors of an observation batch (a tensor or a dict of them); integer ones cannot be NaN."""
    values = observations.values() if isinstance(observations, dict) else (observations,)
    return [v for v in values if isinstance(v, th.Tensor) and v.is_floating_point()]


def check_finite_step(data: Any, loss: th.Tensor, grad_norm: th.Tensor, step: int) -> None:
    """Raise :class:`NonFiniteError` unless the sampled observations, rewards, the loss and the gradient norm are
    all finite.

    One fused check: the sum of them all is finite exactly when each is (a NaN or an infinity in any one makes the
    sum non-finite; only an overflow of finite values can make it so falsely, and then nothing is raised). One
    scalar read per step; only on failure is each part looked at to name it.
    """
    observations, next_observations = _floating(data.observations), _floating(data.next_observations)
    total = loss + grad_norm + data.rewards.sum()
    for tensor in (*observations, *next_observations):
        total = total + tensor.sum()
    if math.isfinite(total.item()):
        return
    parts = {"observation": observations, "next_observation": next_observations, "reward": [data.rewards],
             "loss": [loss], "gradient": [grad_norm]}
    bad = tuple(name for name, tensors in parts.items() if not all(bool(th.isfinite(t).all()) for t in tensors))
    if not bad:  # finite parts whose sum overflowed
        return
    sampled = tuple(name for name in bad if name in ("observation", "next_observation", "reward"))
    if sampled:  # the data is the source: the loss and gradient are non-finite because of it
        bad, then = sampled, " (so the loss and gradient are too)" if {"loss", "gradient"} & set(bad) else ""
        source = "the environment produced it (stable_baselines3's VecCheckNan wrapper finds the step)"
    else:
        then = ""
        source = "the update diverged (lower learning_rate or max_grad_norm, or check v_min/v_max and the reward scale)"
    raise NonFiniteError(f"non-finite {', '.join(bad)} in the gradient step at env step {step}{then}: training "
                         f"stopped before the optimizer step, the weights are unchanged; {source}", bad, step)


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


class OnlineLogits(nn.Module):
    """``q_net.logits`` as ``forward``, so ``torch.func.functional_call`` can run it on given parameters."""

    def __init__(self, q_net: nn.Module) -> None:
        super().__init__()
        self.q_net = q_net

    def forward(self, obs: Any, noise: bool) -> th.Tensor:
        return self.q_net.logits(obs, noise)


def without_arrays(samples: Any) -> Any:
    """The sample tuple with its numpy fields (PER's ``indices``, a plugin buffer's bookkeeping) set to ``None``:
    the compiled update takes tensors only."""
    arrays = {name: None for name, value in samples._asdict().items() if isinstance(value, np.ndarray)}
    return samples._replace(**arrays) if arrays else samples


def check_cpu_compiler() -> None:
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


def registry_get(kind: str, name: str) -> Any:
    """``registry.get(kind, name)``; ``LookupError`` when unknown or when no registry is importable."""
    try:
        import registry
    except ImportError as exc:
        raise LookupError(f"no registry to look up {kind} {name!r}") from exc
    return registry.get(kind, name)


def registry_names(kind: str) -> list[str]:
    try:
        import registry

        return list(registry.names(kind))
    except Exception:  # listing is only for the error message
        return []
