"""Small file-system facts and durable writes, shared by backups, downloads and preflight checks."""

from __future__ import annotations

import os
import shutil
from pathlib import Path


def free_bytes(path: Path) -> int:
    """Free bytes on the file system that holds `path` (or would, once its folders exist)."""
    while not path.exists() and path != path.parent:
        path = path.parent
    return shutil.disk_usage(path).free


def tree_size(path: Path) -> int:
    """Bytes in a file, or in every file under a folder; 0 for what does not exist."""
    if path.is_file():
        return path.stat().st_size
    if not path.is_dir():
        return 0
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def fsync_file(path: Path) -> None:
    """Flush a file (or a folder's entries) to disk: a rename is durable only after this."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_durably(path: Path, data: bytes) -> None:
    """Create `path` (never replacing one) with `data`, on disk before this returns."""
    with path.open("xb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def write_atomically(path: Path, data: bytes, mode: int) -> None:
    """Replace `path` with `data`, with `mode` from the first byte: a key or secret is never
    readable by others even for an instant, and an interruption never leaves half a file."""
    partial = path.with_name(f".{path.name}.partial")
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(partial, mode)
        os.replace(partial, path)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
