"""SIGTERM and SIGHUP as exceptions during a backup or restore, so they clean up like Ctrl-C.

Python's default for both is to die on the spot, skipping every `finally`: a restore killed so
would leave Redis stopped until the next `invoke` command finished or undid it. As exceptions,
they let the restore roll back at once and say so. SIGKILL cannot be caught: the restore journal
(kcdev/backup/journal.py) is what makes that case safe; this only makes the others prompt.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType

CAUGHT = (signal.SIGTERM, signal.SIGHUP)


class Interrupted(KeyboardInterrupt):
    """A SIGTERM or SIGHUP arrived; a KeyboardInterrupt, so it unwinds like Ctrl-C."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def _raise(signum: int, frame: FrameType | None) -> None:
    raise Interrupted(signum)


@contextmanager
def as_exceptions() -> Iterator[None]:
    """SIGTERM and SIGHUP raise Interrupted inside the block. Only the main thread can handle
    signals (Python's rule): elsewhere the block runs with the handlers as they are."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.signal(sig, _raise) for sig in CAUGHT}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


@contextmanager
def deferred() -> Iterator[None]:
    """Ignore SIGINT, SIGTERM and SIGHUP inside the block: a rollback must not be cut short by a
    second Ctrl-C. SIGKILL still ends it, and the journal then finishes it later."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught = (signal.SIGINT, *CAUGHT)
    previous = {sig: signal.signal(sig, signal.SIG_IGN) for sig in caught}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def reason(exc: BaseException) -> str:
    """How an interruption reads in a message: the signal's name."""
    if isinstance(exc, Interrupted):
        return f"interrupted by {signal.Signals(exc.signum).name}"
    return "interrupted by SIGINT (Ctrl-C)"
