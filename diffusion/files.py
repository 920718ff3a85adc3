"""Atomic file writes for run folders: checkpoints, configs, grids and pipelines (standard library only; the
``rlgen`` application writes its RL run folders with these too)."""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable


def _umask() -> int:
    mask = os.umask(0o022)  # reading the umask portably means setting it
    os.umask(mask)
    return mask


def replace_atomically(path: str | os.PathLike, write: Callable[[str], Any], suffix: str = ".tmp",
                       fsync: bool = False) -> Path:
    """Have ``write(tmp)`` fill a temporary file beside ``path``, then rename it into place; return ``path``.

    A crash or an error never leaves half a file at ``path`` (an existing file stays as it was), and the temporary
    file is always removed. ``suffix`` matters to writers that pick a format or append an extension from the name
    (SB3 appends ``.zip``). ``fsync`` flushes the data to disk before the rename, for checkpoints that must survive
    a power cut. The file gets the permissions a plain ``open()`` gives (0o666 less the umask), not mkstemp's 0o600.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        if fsync:
            with open(tmp, "rb") as handle:
                os.fsync(handle.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


def write_text_atomically(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` to ``path`` through :func:`replace_atomically`."""
    return replace_atomically(path, lambda tmp: Path(tmp).write_text(text))


def replace_folder_atomically(path: str | os.PathLike, write: Callable[[Path], Any]) -> Path:
    """Have ``write(tmp_dir)`` fill a folder beside ``path``, then swap it in for ``path``; return ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    old = path.with_name(f".{path.name}.old")
    for p in (tmp, old):
        if p.exists():
            shutil.rmtree(p)
    try:
        write(tmp)
        if path.exists():
            os.replace(path, old)
        os.replace(tmp, path)
    finally:
        for p in (tmp, old):
            if p.exists():
                shutil.rmtree(p)
    return path


# What `replace_atomically` leaves behind when killed mid-write: ".NAME.<8 mkstemp characters><suffix>"; and
# `replace_folder_atomically`: ".NAME.tmp" / ".NAME.old" folders.
_TEMP_FILE = re.compile(r"^\..+\.[a-z0-9_]{8}\.[A-Za-z0-9]+$")
_TEMP_FOLDER = re.compile(r"^\..+\.(tmp|old)$")


def remove_stale_temp_files(*folders: str | os.PathLike) -> list[Path]:
    """Delete the temporary files and folders an interrupted (SIGKILLed) atomic write left in ``folders``.

    Only hidden names of the two shapes above are touched, one level deep; returns what was removed. Call it when a
    run (re)starts, before its own writes begin.
    """
    removed = []
    for folder in map(Path, folders):
        if not folder.is_dir():
            continue
        for entry in folder.iterdir():
            if entry.is_dir() and not entry.is_symlink() and _TEMP_FOLDER.match(entry.name):
                shutil.rmtree(entry, ignore_errors=True)
            elif entry.is_file() and (_TEMP_FILE.match(entry.name) or _TEMP_FOLDER.match(entry.name)):
                entry.unlink(missing_ok=True)
            else:
                continue
            removed.append(entry)
    return removed
