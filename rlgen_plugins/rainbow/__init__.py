"""The built-in plugin ``rlgen-rainbow``: :class:`Rainbow` (``algorithm``), the math of its update (``targets``),
its registrations (``plugin``) and presets (``hyperparams/rainbow.yml``).

``Rainbow`` is loaded lazily (PEP 562): the registry imports ``plugin`` without importing torch.
"""
from __future__ import annotations

from typing import Any

__all__ = ["Rainbow"]


def __getattr__(name: str) -> Any:
    if name == "Rainbow":
        from rlgen_plugins.rainbow.algorithm import Rainbow

        return Rainbow
    raise AttributeError(f"module 'rlgen_plugins.rainbow' has no attribute {name!r}")
