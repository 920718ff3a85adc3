"""Atomic file writes of ``rlgen train`` / ``rlgen evaluate``: the library's writers (``diffusion.files``, standard
library only; ``diffusion`` loads its models lazily, so this imports neither torch nor diffusers), SB3 zips, JSON
records, the hashing and flushing that checkpoints need, the clean-up of what an interrupted write left, and the
shield that keeps a run's final writes whole through a second Ctrl-C."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from diffusion.files import replace_atomically, write_text_atomically
from rlgen_plugins.cli.errors import UsageError

__all__ = ["RUN_INFO_FILE", "deferred_signals", "fsync_dir", "jsonable", "read_run_record", "remove_stale_temporaries",
           "replace_atomically", "save_atomically", "sha256", "write_json_atomically", "write_text_atomically"]

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
    """The run record (``rlgen.json``) in ``folder``, or ``{}`` when there is none; one that is not a JSON object
    (a damaged or foreign file) is a ``UsageError`` naming it, never silently taken for a missing one."""
    path = Path(folder) / RUN_INFO_FILE
    try:
        text = path.read_text()
    except FileNotFoundError:
        return {}
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"run record {path} cannot be read: {getattr(exc, 'strerror', None) or exc}") from None
    try:
        record = json.loads(text)
    except ValueError as exc:
        raise UsageError(f"run record {path} is not valid JSON ({exc}); repair or remove it") from None
    if not isinstance(record, dict):
        raise UsageError(f"run record {path} is not a JSON object but {type(record).__name__}; repair or remove it")
    for key, kind in (("algo", str), ("env", str), ("env_options", dict), ("hyperparams", dict)):
        if key in record and not isinstance(record[key], kind):
            raise UsageError(f"run record {path}: {key!r} is {record[key]!r}, not a {kind.__name__}; "
                             f"repair or remove it")
    return record


#: The temporary files :func:`replace_atomically` writes beside a file (``.NAME.<8 random characters><suffix>``).
_TEMPORARY = re.compile(r"\..+\.[a-z0-9_]{8}\.tmp(\.zip|\.pkl)?")


def remove_stale_temporaries(folder: str | os.PathLike) -> list[Path]:
    """Delete the temporary files an interrupted atomic write left in ``folder`` (a killed process never removes
    them); return them. Call it only where no other process is writing (a run starting in its own folder)."""
    folder = Path(folder)
    stale = [p for p in (folder.iterdir() if folder.is_dir() else []) if p.is_file() and _TEMPORARY.fullmatch(p.name)]
    for path in stale:
        path.unlink(missing_ok=True)
    return stale


@contextlib.contextmanager
def deferred_signals(signals: tuple[int, ...] = (signal.SIGINT, signal.SIGTERM)) -> Iterator[list[int]]:
    """Hold ``signals`` back while inside (a run's final writes), then deliver them to the handlers there before
    (SIGINT: ``KeyboardInterrupt`` as the block ends). Yields the signals received so far. Outside the main
    thread, where handlers cannot be set, nothing is held back."""
    received: list[int] = []
    try:
        previous = {signum: signal.signal(signum, lambda signum, frame: received.append(signum))
                    for signum in signals}
    except ValueError:  # not the main thread
        yield received
        return
    try:
        yield received
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, signal.SIG_DFL if handler is None else handler)
        for signum in dict.fromkeys(received):
            signal.raise_signal(signum)


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
