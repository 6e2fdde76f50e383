"""The models folders (GGUF_DIR, HF_DIR), checked before a fetch: a folder that is a file, or that
this process cannot write (permissions, a read-only disk), stops in one line before any download.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from kcdev import paths
from kcdev.errors import UserError


def ensure_writable(folder: Path, setting: str) -> None:
    """Make `folder` when missing, and prove it writable by writing (and removing) a file there.

    Writing is the only sure test: root passes every permission check yet cannot write to a
    read-only disk or an immutable folder.
    """
    _refuse_a_file(folder, setting)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=folder, prefix=".kc-write-check-")
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise UserError(_cannot_write(folder, setting, exc.strerror or str(exc))) from None


def check_writable(folder: Path, setting: str) -> None:
    """As `ensure_writable`, but changing nothing (for dry runs): the permission bits only."""
    _refuse_a_file(folder, setting)
    existing = next(p for p in (folder, *folder.parents) if p.exists())
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UserError(_cannot_write(folder, setting, "permission denied"))


def _refuse_a_file(folder: Path, setting: str) -> None:
    for path in (folder, *folder.parents):
        if path.is_dir():
            return
        if path.exists():
            raise UserError(
                f"{setting}={paths.shown(folder)}: {paths.shown(path)} is a file, not a folder: "
                f"point {setting} at a folder, or move the file away"
            )


def _cannot_write(folder: Path, setting: str, why: str) -> str:
    return (
        f"cannot write to {paths.shown(folder)} ({setting}): {why}: make it writable for this "
        f"user, or point {setting} at another folder"
    )
