"""The lock that keeps two fetches of one model apart: the second waits, then gives up in one line.

The lock file sits beside the model, hidden, and outlives the fetch (removing it would race). The
kernel releases it when its holder dies, so a crash never leaves it stuck.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from pathlib import Path

from filelock import FileLock, Timeout

from kcdev.console import Say
from kcdev.errors import UserError

NOTICE_EVERY = 10.0  # seconds between "still waiting" lines: no wait is silent for longer


def lock_path(dest: Path) -> Path:
    """The lock beside `dest`."""
    return dest.with_name(f".{dest.name}.lock")


@contextlib.contextmanager
def hold_lock(
    dest: Path, timeout: float, say: Say, notice_every: float = NOTICE_EVERY
) -> Iterator[None]:
    """Hold the lock on `dest` (its folder must exist), waiting up to `timeout` seconds for it."""
    lock = FileLock(lock_path(dest))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        _wait_for(lock, dest, timeout, say, notice_every)
    try:
        yield
    finally:
        lock.release()


def _wait_for(lock: FileLock, dest: Path, timeout: float, say: Say, notice_every: float) -> None:
    say(f"another fetch of {dest.name} is running: waiting up to {timeout:g} s for it")
    started = time.monotonic()
    while (left := timeout - (time.monotonic() - started)) > 0:
        try:
            lock.acquire(timeout=min(left, notice_every))
            return
        except Timeout:
            waited = time.monotonic() - started
            if waited < timeout:
                say(f"still waiting for the other fetch of {dest.name} ({waited:.0f} s)")
    raise UserError(
        f"another fetch of {dest.name} still holds {lock_path(dest)} after {timeout:g} s: "
        "let it finish, then run this again"
    )
