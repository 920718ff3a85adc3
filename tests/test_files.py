"""rlgen_plugins.cli.files: atomic replacement that loses nothing on error and gives ordinary permissions."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from rlgen_plugins.cli.files import replace_atomically, write_text_atomically


def test_error_while_writing_keeps_the_old_file_and_leaves_no_temporary(tmp_path: Path) -> None:
    path = write_text_atomically(tmp_path / "run.json", "old")

    def half_then_fail(tmp: str) -> None:
        Path(tmp).write_text("half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        replace_atomically(path, half_then_fail)
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["run.json"]


@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_permissions_follow_the_umask_not_mkstemps_0600(tmp_path: Path, umask: int) -> None:
    previous = os.umask(umask)
    try:
        path = replace_atomically(tmp_path / "sub" / "model.zip", lambda tmp: Path(tmp).write_bytes(b"zip"),
                                  suffix=".tmp.zip", fsync=True)
    finally:
        os.umask(previous)
    assert path.read_bytes() == b"zip" and path.parent.name == "sub"  # the folder is created
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask


def test_writer_sees_the_requested_suffix(tmp_path: Path) -> None:
    seen: list[str] = []
    replace_atomically(tmp_path / "grid.png", lambda tmp: seen.append(tmp) or Path(tmp).write_bytes(b""), suffix=".png")
    assert seen[0].endswith(".png") and Path(seen[0]).parent == tmp_path and not Path(seen[0]).exists()
