"""The lock that keeps two fetches of one model apart: the second waits, then gives up in one line.

The lock file sits beside the model, hidden, and outlives the fetch (kcdev/locks.py says why).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

from kcdev.console import Say
from kcdev.locks import NOTICE_EVERY, hold

__all__ = ["NOTICE_EVERY", "hold_lock", "lock_path"]


def lock_path(dest: Path) -> Path:
    """The lock beside `dest`."""
    return dest.with_name(f".{dest.name}.lock")


@contextlib.contextmanager
def hold_lock(
    dest: Path, timeout: float, say: Say, notice_every: float = NOTICE_EVERY
) -> Iterator[None]:
    """Hold the lock on `dest` (its folder must exist), waiting up to `timeout` seconds for it."""
    with hold(lock_path(dest), f"fetch of {dest.name}", timeout, say, notice_every):
        yield
