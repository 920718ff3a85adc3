"""What Rainbow's update needs around the math: error types, gradient clipping, the online network as a module of
its parameters (for ``torch.func``), the compiler check and registry look-ups."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch as th
from torch import nn

from policies.rainbow_policy import check_distribution_args


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


def check_arguments(
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
    if not 0.0 <= float(tau) <= 1.0:
        raise ValueError(f"tau must be in [0, 1] (1 = hard target update, 0 = no target update), got {tau}")
    if target_update_interval < 1:
        raise ValueError(f"target_update_interval must be >= 1, got {target_update_interval}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if not max_grad_norm > 0:
        raise ValueError(f"max_grad_norm must be > 0, got {max_grad_norm}")
    kwargs = policy_kwargs or {}
    check_distribution_args(kwargs.get("n_atoms", 51), kwargs.get("v_min", -10.0), kwargs.get("v_max", 10.0))
