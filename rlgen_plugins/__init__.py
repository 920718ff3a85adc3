"""rlgen's built-in plugins: the Rainbow algorithm, its policies and buffers, the diffusion components, the command line.

Attributes are loaded lazily (PEP 562) so that importing a plugin module, or running ``rlgen --help``,
does not import torch.
"""
from __future__ import annotations

from typing import Any

__all__ = ["Rainbow"]


def __getattr__(name: str) -> Any:
    if name == "Rainbow":
        from rlgen_plugins.rainbow import Rainbow

        return Rainbow
    raise AttributeError(f"module 'rlgen_plugins' has no attribute {name!r}")
