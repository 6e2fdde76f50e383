"""Folders and files this process cannot write, even as root: for fetch-model's one-line errors.

Permission bits stop other users only, since root passes every permission check; so as root the
path is also made immutable (`chattr +i`, which stops root too), and the mark removed afterwards.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest


def _chattr(flag: str, path: Path) -> bool:
    try:
        result = subprocess.run(["chattr", flag, str(path)], capture_output=True, check=False)
    except FileNotFoundError:
        return False
    return result.returncode == 0


@contextlib.contextmanager
def unwritable(path: Path) -> Iterator[None]:
    """While inside, nothing can be created in (a folder) or written to (a file) `path`."""
    mode = path.stat().st_mode & 0o7777
    path.chmod(0o555 if path.is_dir() else 0o444)
    immutable = False
    try:
        if os.geteuid() == 0:
            immutable = _chattr("+i", path)
            if not immutable:
                pytest.skip("root without a working chattr: cannot make a path unwritable here")
        yield
    finally:
        if immutable:
            _chattr("-i", path)
        path.chmod(mode)
