"""Atomic file writes of ``rlgen train`` / ``rlgen evaluate``: the library's writers (``diffusion.files``, standard
library only; ``diffusion`` loads its models lazily, so this imports neither torch nor diffusers) and SB3 zips."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from diffusion.files import replace_atomically, write_text_atomically

__all__ = ["replace_atomically", "save_atomically", "write_text_atomically"]


def save_atomically(model: Any, path: str | os.PathLike) -> Path:
    """Write an SB3 model's zip atomically (the ``.zip`` suffix stops SB3 from appending one to the temporary name)."""
    return replace_atomically(path, model.save, suffix=".tmp.zip")
