"""Waiting for another kc-devenv process that holds a lock: said every 10 s, given up in one line.

Two fetches of one model, or two tasks that change one stack (`up` beside `down`, two `up`s),
would otherwise race: the second `up` failed on compose's "container name already in use". The
kernel releases a lock when its holder dies, so a crash never leaves one stuck; the files stay
(removing them would race).
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


@contextlib.contextmanager
def hold(
    path: Path, what: str, timeout: float, say: Say, notice_every: float = NOTICE_EVERY
) -> Iterator[None]:
    """Hold the lock file `path` (its folder must exist) for `what` ("fetch of model.gguf"),
    waiting up to `timeout` seconds for another holder to finish."""
    lock = FileLock(path)
    try:
        lock.acquire(timeout=0)
    except Timeout:
        _wait_for(lock, path, what, timeout, say, notice_every)
    try:
        yield
    finally:
        lock.release()


def _wait_for(
    lock: FileLock, path: Path, what: str, timeout: float, say: Say, notice_every: float
) -> None:
    say(f"another {what} is running: waiting up to {timeout:g} s for it")
    started = time.monotonic()
    while (left := timeout - (time.monotonic() - started)) > 0:
        try:
            lock.acquire(timeout=min(left, notice_every))
            return
        except Timeout:
            waited = time.monotonic() - started
            if waited < timeout:
                say(f"still waiting for the other {what} ({waited:.0f} s)")
    raise UserError(
        f"another {what} still holds {path} after {timeout:g} s: let it finish, then run this again"
    )
