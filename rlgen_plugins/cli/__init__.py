"""The ``rlgen`` application: the command line (``main``), RL run folders (``runs``), presets, callbacks and
atomic file writes. Nothing here is imported by the library packages (``policies``, ``buffers``, ``diffusion``).

``main`` and ``build_parser`` load lazily (PEP 562), so plugins can import ``rlgen_plugins.cli.errors`` while the
command line itself is being built.
"""
from __future__ import annotations

from typing import Any

__all__ = ["build_parser", "main"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from rlgen_plugins.cli import app as module

        return getattr(module, name)
    raise AttributeError(f"module 'rlgen_plugins.cli' has no attribute {name!r}")
