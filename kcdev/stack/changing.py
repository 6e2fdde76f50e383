"""One task at a time changes a stack: a second `up`, or a `down` during an `up`, waits its turn.

Two `invoke up` at once made compose fail the second on "container name already in use"; a
`down` during a restore would stop the Redis the restore is filling. Read-only tasks (`ps`,
`logs`) never wait. The lock is per compose project and per user, outside the repository: two
clones with one COMPOSE_PROJECT_NAME drive one stack.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from kcdev.console import Say
from kcdev.errors import UserError
from kcdev.locks import hold

WAIT_FOR_OTHER = 1800.0  # seconds: a restore of a large dataset may hold the stack that long


def lock_dir() -> Path:
    folder = Path(tempfile.gettempdir()) / f"kc-devenv-{os.getuid()}"
    try:
        folder.mkdir(mode=0o700, exist_ok=True)
    except OSError as exc:
        raise UserError(
            f"cannot make {folder} for the stack's lock ({exc.strerror or exc}): set TMPDIR to "
            "a writable folder"
        ) from None
    return folder


@contextlib.contextmanager
def changing(project_name: str, say: Say, timeout: float = WAIT_FOR_OTHER) -> Iterator[None]:
    """Hold the stack `project_name` while a task changes it (never nested: a flock would wait
    for itself)."""
    what = f"up, down, restart or restore of stack {project_name}"
    with hold(lock_dir() / f"{project_name}.lock", what, timeout, say):
        yield
