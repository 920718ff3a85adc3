"""rlgen's application and built-in plugins.

- :mod:`rlgen_plugins.rainbow`: the built-in plugin ``rlgen-rainbow`` (the algorithm, its update's math, its
  registrations and presets);
- :mod:`rlgen_plugins.ddpm`: the built-in plugin ``rlgen-diffusion`` (registers the diffusion components and adds the
  ``rlgen diffusion`` command);
- :mod:`rlgen_plugins.cli`: the application (the ``rlgen`` command, run folders, presets, callbacks).

The plugins reach the application only through the registry, as a third party's would. Attributes are loaded lazily
(PEP 562), so importing a plugin module or running ``rlgen --help`` does not import torch.
"""
from __future__ import annotations

from typing import Any

__all__ = ["Rainbow"]


def __getattr__(name: str) -> Any:
    if name == "Rainbow":
        from rlgen_plugins.rainbow.algorithm import Rainbow

        return Rainbow
    raise AttributeError(f"module 'rlgen_plugins' has no attribute {name!r}")
