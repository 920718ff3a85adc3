"""Atomic file writes of ``rlgen train`` / ``rlgen evaluate``: the library's writers (``diffusion.files``, standard
library only; ``diffusion`` loads its models lazily, so this imports neither torch nor diffusers), SB3 zips, JSON
records and the hashing and flushing that checkpoints need."""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path
from typing import Any

import numpy as np

from diffusion.files import replace_atomically, write_text_atomically

__all__ = ["RUN_INFO_FILE", "fsync_dir", "jsonable", "read_run_record", "replace_atomically", "save_atomically",
           "sha256", "write_json_atomically", "write_text_atomically"]

#: A run folder's record: its description, status and results.
RUN_INFO_FILE = "rlgen.json"


def save_atomically(model: Any, path: str | os.PathLike) -> Path:
    """Write an SB3 model's zip atomically (the ``.zip`` suffix stops SB3 from appending one to the temporary name)."""
    return replace_atomically(path, model.save, suffix=".tmp.zip")


def jsonable(value: Any) -> Any:
    """``value`` as JSON gives it back; classes and functions by dotted name, other objects by address-free repr."""

    def name(obj: Any) -> Any:
        if isinstance(obj, np.generic):
            return obj.item()
        if isinstance(obj, type) or callable(obj) and hasattr(obj, "__qualname__"):
            return f"{obj.__module__}.{obj.__qualname__}"
        return re.sub(r" at 0x[0-9a-fA-F]+", "", repr(obj))

    return json.loads(json.dumps(value, default=name, sort_keys=True))


def write_json_atomically(path: str | os.PathLike, data: Any, fsync: bool = False) -> Path:
    """Write ``data`` as indented JSON to ``path`` through :func:`replace_atomically` (``fsync``: flushed first)."""
    text = json.dumps(data, indent=2) + "\n"
    return replace_atomically(path, lambda tmp: Path(tmp).write_text(text), fsync=fsync)


def read_run_record(folder: str | os.PathLike) -> dict[str, Any]:
    """The run record (``rlgen.json``) in ``folder``, or ``{}`` when it is missing or unreadable."""
    try:
        record = json.loads((Path(folder) / RUN_INFO_FILE).read_text())
    except (OSError, ValueError):
        return {}
    return record if isinstance(record, dict) else {}


def sha256(path: str | os.PathLike) -> str:
    """The hex sha256 of the file at ``path``, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def fsync_dir(path: str | os.PathLike) -> None:
    """Flush folder ``path``'s entries (a rename into it) to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
