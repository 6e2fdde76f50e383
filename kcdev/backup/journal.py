"""The restore journal: a restore that is cut short at any point is finished or rolled back.

The problem. A restore stops Redis, replaces its AOF and dump, and starts it again. Killed in
the middle, it used to leave the AOF moved aside; Redis 7, started on such a folder, made a new
empty AOF and served 0 keys, and nothing said so.

The design. Every step that touches Redis' files runs inside the stack's own image, through
`kc-redis-journal` (docker/redis/), and records its phase in `kc-restore/` on the data volume,
beside the data it protects. The new data is built in `kc-restore/new/` by a temporary Redis,
then switched in by renames; the old data moves to `kc-restore/old/` and stays there until the
restored data has been checked. The phase alone decides what recovery does:

    preparing, building  roll back: the data itself was not touched (delete the journal)
    built                roll forward: the new data is complete and its key counts checked;
                         switch it in (each rename is checked first, so repeating is safe)
    switched             keep the new data, check its key counts, then delete the old data
    rolling-back         finish putting the old data back

Who recovers. Recovery has to happen wherever Redis might start, not only in `invoke`:
- the image's start script runs `kc-redis-journal recover` before Redis starts, so Redis never
  serves half-replaced data, whether started by `invoke up`, `docker compose up` by hand or by
  Docker's restart policy;
- `invoke up`, `invoke ps` and `invoke restore-redis` (kcdev/backup/recovery.py) also start a
  Redis that an interrupted restore left stopped, check and commit a switched restore, and say
  in one line which way it went (kc-redis-journal leaves a `kc-restore.outcome` line for that).

Locks. A running Redis holds a shared flock on its data folder (taken by the start script; the
descriptor survives `exec`); steps that move data take it exclusively, so they can never run
under a live server, and a Redis start waits while such a step runs. On the host, the restoring
process holds a lock file for the volume: recovery leaves a restore alone while its process
lives, and otherwise removes its leftover containers (labelled with the volume) first.

Signals. SIGTERM, SIGHUP and SIGINT make a running restore roll back at once (interrupts.py);
SIGKILL cannot be caught, and is exactly what the journal is for.
"""

from __future__ import annotations

import fcntl
import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from kcdev import paths
from kcdev.backup import holdpoints
from kcdev.backup.incoming import Expectation
from kcdev.backup.rdb import bind_mount
from kcdev.backup.redis_target import DATA_DIR
from kcdev.errors import UserError
from kcdev.stack.docker_cli import Docker, last_line

SCRIPT = "kc-redis-journal"
LABEL = "kc-devenv.restore-volume"  # on every container a restore starts: how to find leftovers
# The image carries compose's labels (compose built it); a throwaway container must not pass for
# one of the stack's own in a `--filter label=...` of the project.
NOT_COMPOSE = ["--label", "com.docker.compose.project=", "--label", "com.docker.compose.service="]
LOCK_DIR = paths.CACHE_DIR / "restore-locks"
BACKUP_IN_CONTAINER = "/kc-restore/backup.rdb"

WHEN = {
    "preparing": "before it changed any data",
    "building": "while it rebuilt the AOF from the backup",
    "built": "while it switched the new data in",
    "switched": "after the new data was in place",
    "rolling-back": "while it rolled back",
}


class JournalError(Exception):
    """A journal command failed: its `kc-restore:` line, or the docker error."""


@dataclass(frozen=True)
class Outcome:
    """How an unfinished restore ended, as kc-redis-journal recorded it."""

    result: str  # "rolled-back" or "finished"
    phase: str  # the phase it had reached when it was cut short
    name: str  # the restored file's name

    def line(self) -> str:
        when = WHEN.get(self.phase, f"in phase {self.phase}")
        if self.result == "finished":
            return (
                f"the restore of {self.name} was cut short {when}: finished it, Redis has the "
                "restored data"
            )
        return (
            f"the restore of {self.name} was cut short {when}: rolled it back, Redis has its "
            "data from before"
        )


@dataclass(frozen=True)
class Status:
    active: bool  # a journal exists: a restore is unfinished
    phase: str
    name: str
    expect: Expectation | None
    outcome: Outcome | None  # the last unfinished restore's end, until reported


def parse_status(text: str) -> Status:
    fields = dict(line.split("=", 1) for line in text.splitlines() if "=" in line)
    parts = fields.get("outcome", "").split(" ", 2)
    outcome = Outcome(*parts) if len(parts) == 3 else None
    expect_text = fields.get("expect", "").strip()
    try:
        expect = Expectation.parse(expect_text) if expect_text else None
    except ValueError:
        expect = None
    return Status(
        fields.get("active") == "yes",
        fields.get("phase", ""),
        fields.get("name", ""),
        expect,
        outcome,
    )


@dataclass
class Journal:
    """The journal of one Redis data volume, run through docker.

    `container_id` is the Redis container while it runs (commands then run inside it, beside the
    server); without it they run in a throwaway container of `image` that mounts the volume.
    """

    docker: Docker
    volume: str
    image: str
    container_id: str | None = None
    timeout: float = 1800

    def _throwaway(self, command: str, user: str, extra: list[str]) -> list[str]:
        name = f"kc-redis-{command}-{secrets.token_hex(4)}"
        return [
            "run", "--rm", "--name", name, "--label", f"{LABEL}={self.volume}", *NOT_COMPOSE,
            "--network", "none", "--user", user,
            "--mount", f"type=volume,source={self.volume},target={DATA_DIR}",
            *extra, *holdpoints.docker_env(), "--entrypoint", SCRIPT, self.image,
        ]  # fmt: skip

    def run(
        self, command: str, *args: str, user: str = "redis", inside: bool = True,
        extra: list[str] | None = None,
    ) -> str:  # fmt: skip
        """One kc-redis-journal command; its stdout, or JournalError with its one-line reason."""
        if inside and self.container_id:
            argv = ["exec", *holdpoints.docker_env(), self.container_id, SCRIPT]
        else:
            argv = self._throwaway(command, user, extra or [])
        try:
            result = self.docker.run(*argv, command, DATA_DIR, *args, timeout=self.timeout)
        except BaseException:
            self.remove_leftovers()  # timed out or interrupted: the step must not go on alone
            raise
        if result.returncode != 0:
            lines = [ln for ln in result.stderr.splitlines() if ln.startswith("kc-restore: ")]
            reason = lines[-1].removeprefix("kc-restore: ") if lines else last_line(result.stderr)
            raise JournalError(reason or f"{command}: exit code {result.returncode}")
        return result.stdout

    def status(self) -> Status:
        return parse_status(self.run("status"))

    def begin(self, name: str, layout: list[str], expect: Expectation) -> None:
        self.run("begin", name, *layout, *expect.args())

    def restore(self, backup: Path, sha256: str, need_kb: int) -> str:
        """Copy the backup in, rebuild the AOF from it, switch it in; Redis must be stopped."""
        mount = ["--mount", bind_mount(backup, BACKUP_IN_CONTAINER)]
        return self.run(
            "restore", sha256, str(need_kb), user="root", inside=False, extra=mount
        )  # root: the backup is private to its owner on the host

    def recover(self) -> None:
        self.run("recover", inside=False)

    def abandon(self) -> None:
        self.run("abandon")

    def back(self) -> None:
        self.run("back", inside=False)

    def commit(self) -> None:
        self.run("commit")

    def seen(self) -> None:
        self.run("seen")

    def remove_leftovers(self) -> None:
        """Remove the containers a restore of this volume left running (a killed `invoke` leaves
        its step running on; the journal tells what to do with what it did)."""
        found = self.docker.run(
            "ps", "-aq", "--filter", f"label={LABEL}={self.volume}", timeout=60
        ).stdout.split()
        if found:
            self.docker.run("rm", "--force", *found, timeout=120)


def _lock_path(volume: str) -> Path:
    LOCK_DIR.mkdir(parents=True, exist_ok=True)
    return LOCK_DIR / f"{volume}.lock"


@contextmanager
def restoring(volume: str) -> Iterator[None]:
    """Held by the process that restores into `volume`, for as long as it lives (the kernel lets
    go when it dies, even by SIGKILL): the mark of a restore that is really still running."""
    with _lock_path(volume).open("a") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise UserError(
                "another restore of this Redis is running: wait until it ends (`invoke ps`)"
            ) from None
        yield


def restore_running(volume: str) -> bool:
    """Whether a live process is restoring into `volume` (it holds the lock `restoring` takes)."""
    path = _lock_path(volume)
    fd = os.open(path, os.O_RDONLY | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # also lets go of the lock, if it was taken
    return False
