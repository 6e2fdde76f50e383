"""Restoring an RDB file into Redis so that it stays restored, with AOF on, and survives being
cut short at any point.

Copying dump.rdb into the data folder and restarting, as most guides say, silently keeps the old
data when `appendonly yes`: Redis loads the AOF and ignores the RDB. So the restore rebuilds the
AOF from the file instead, with nothing but ordinary commands:

1. check the file (a manifest's sha256 and size where there is one, the RDB version against the
   server's, redis-check-rdb), ask, start the journal, and take a safety backup;
2. stop Redis; in a container of the same image on its volume (kc-redis-journal restore), a
   temporary Redis loads the file with AOF off, checks the key counts, writes a fresh AOF with
   `CONFIG SET appendonly yes`, and the new files are switched in for the old ones;
3. start Redis, wait until it answers and is not loading, check the key counts again, and only
   then let the old files go (commit).

Every step is journaled on the data volume (kcdev/backup/journal.py): a failure or an
interruption (SIGINT, SIGTERM, SIGHUP) rolls back at once; a SIGKILL or a crash is finished or
rolled back by the next Redis start or `invoke up/ps/restore-redis`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import redis

from kcdev.backup import interrupts, rdb, store
from kcdev.backup.holdpoints import hold
from kcdev.backup.incoming import Expectation, Incoming, verify_file
from kcdev.backup.journal import Journal, JournalError, restoring
from kcdev.backup.redis_target import RedisTarget, config_value, connect, ready_reason
from kcdev.backup.save import backup, prepare_folder
from kcdev.console import Say, confirm
from kcdev.errors import UserError
from kcdev.redis_client import Keyspace, keyspace, total_keys
from kcdev.stack import readiness
from kcdev.stack.docker_cli import Docker, last_line

STOP_TIMEOUT = 60  # seconds Redis gets to write its AOF buffer before docker kills it


class RestoreFailed(Exception):
    """A step failed: the caller rolls back."""


def data_layout(client: redis.Redis) -> list[str]:
    """Where the server keeps its files (CONFIG GET), as kc-redis-journal's `begin` takes them:
    dump, AOF folder (Redis 7's multi-part AOF), AOF name, and the number of databases (a file
    with db 20 loads only into a server with more than 20)."""
    names = ("dbfilename", "appenddirname", "appendfilename", "databases")
    return [config_value(client, name) for name in names]


def verify_for_server(
    incoming: Incoming, docker: Docker, target: RedisTarget, redis_version: str
) -> rdb.CheckResult:
    """Whether this server can load the file: its RDB version, and its own redis-check-rdb."""
    readable = rdb.max_readable_version(redis_version)
    if readable is not None and incoming.rdb_version > readable:
        raise UserError(
            f"{incoming.name} is RDB version {incoming.rdb_version}, which Redis {redis_version} "
            f"cannot read (it reads up to {readable}): restore it into a newer Redis"
        )
    check = rdb.check_rdb(docker, target.image, incoming.path)
    if not check.ok:
        raise UserError(
            f"{incoming.name} fails redis-check-rdb ({check.problem}): the file is damaged; "
            "pick another (`invoke backups`)"
        )
    return check


@dataclass
class Restorer:
    """Redis' container and the journal of its volume: the steps of one restore, and the way
    back from any of them."""

    docker: Docker
    target: RedisTarget
    journal: Journal
    timeout: float
    stopped: bool = False  # whether this restore stopped Redis (the way back then restarts it)

    def container(self, action: str) -> None:
        extra = ["--time", str(STOP_TIMEOUT)] if action == "stop" else []
        result = self.docker.run(action, *extra, self.target.container_id, timeout=self.timeout)
        if result.returncode != 0:
            raise RestoreFailed(f"docker {action}: {last_line(result.stderr)}")

    def wait_ready(self) -> None:
        t = self.target

        def check() -> str | None:
            running = self.docker.run(
                "inspect", "--format", "{{.State.Running}}", t.container_id, timeout=30
            )
            if running.stdout.strip() != "true":
                raise RestoreFailed("the Redis container stopped while loading the data")
            return ready_reason(t)

        try:
            readiness.wait_until(check, time.monotonic() + self.timeout)
        except readiness.NotReady as exc:
            raise RestoreFailed(f"Redis did not come back ({exc})") from None

    def step(self, call: Callable[[], str | None]) -> str | None:
        """A journal command whose failure is the restore's: RestoreFailed, so it rolls back."""
        try:
            return call()
        except JournalError as exc:
            raise RestoreFailed(str(exc)) from None

    def replace(self, incoming: Incoming, expect: Expectation, say: Say) -> Keyspace:
        """Steps 2 and 3 up to the check: Redis on the file's data; RestoreFailed if not."""
        need_kb = 2 * incoming.size // 1024 + 1024  # the copy, plus an AOF base about its size
        say("stopping Redis")
        self.stopped = True
        self.container("stop")
        hold("stopped")
        say("rebuilding the AOF from the file in a temporary Redis")
        self.step(lambda: self.journal.restore(incoming.path, incoming.sha256, need_kb))
        say("starting Redis")
        self.container("start")
        self.wait_ready()
        hold("started")
        return self.check(expect)

    def check(self, expect: Expectation) -> Keyspace:
        """The live counts, if they are the file's; RestoreFailed otherwise."""
        client = self.target.client()
        try:
            found = keyspace(client.info("keyspace"))
        except redis.RedisError as exc:
            raise RestoreFailed(f"Redis does not answer after the restore ({exc})") from None
        finally:
            client.close()
        problem = expect.problem(found)
        if problem:
            raise RestoreFailed(f"Redis came back with other counts: {problem}")
        return found

    def roll_back(self) -> None:
        """Back to the data from before, from whatever step this restore reached (the journal's
        outcome line stays for the caller to report)."""
        self.journal.remove_leftovers()
        if not self.stopped:  # nothing was touched; Redis still runs on its data
            self.step(self.journal.abandon)
            return
        self.docker.run(
            "stop", "--time", str(STOP_TIMEOUT), self.target.container_id, timeout=self.timeout
        )
        self.step(self.journal.back)
        self.container("start")
        self.wait_ready()


def restore(
    target: RedisTarget,
    file: Path | Incoming,
    yes: bool = False,
    *,
    backups_dir: Path = store.DEFAULT_DIR,
    docker: Docker | None = None,
    timeout: float = 1800,
    say: Say = print,
    ask: Callable[[str], None] = confirm,
) -> Keyspace:
    """Replace Redis' data with an RDB file; returns the keys per database after it.

    `file` may be verified already (`verify_file`): a caller that checks the file before it
    looks for Redis tells a mistyped path first, and the file is not hashed twice.
    """
    docker = docker or Docker()
    incoming = file if isinstance(file, Incoming) else verify_file(file.expanduser().absolute())
    client = connect(target)
    try:
        redis_version = str(client.info("server")["redis_version"])
        layout = data_layout(client)
        current = total_keys(keyspace(client.info("keyspace")))
    except redis.RedisError as exc:
        raise UserError(f"lost the connection to Redis at {target.address} ({exc})") from None
    finally:
        client.close()
    check = verify_for_server(incoming, docker, target, redis_version)
    expect = incoming.expectation(check)
    journal = Journal(docker, target.volume, target.image, target.container_id, timeout)
    with restoring(target.volume):
        try:
            unfinished = journal.status()
        except JournalError as exc:
            raise UserError(
                f"Redis' image cannot journal a restore ({exc}): it predates kc-redis-journal; "
                "rebuild it with `invoke build` and restart Redis with `invoke up`"
            ) from None
        if unfinished.active:
            raise UserError(
                f"an earlier restore ({unfinished.name}) is unfinished: `invoke ps` finishes or "
                "rolls it back"
            )
        if not yes:
            ask(
                f"Replace all data in Redis ({target.source}, {current} keys) with "
                f"{incoming.described()}? A safety backup is taken first."
            )
        # The safety backup goes there: a folder that cannot take it stops the restore before
        # it begins (made only now: a restore refused at the question leaves nothing behind).
        prepare_folder(backups_dir.resolve(), 0, "--backups-dir")
        restorer = Restorer(docker, target, journal, timeout)
        with interrupts.as_exceptions():
            return _run(restorer, incoming, expect, layout, backups_dir, timeout, say)


def _run(
    restorer: Restorer,
    incoming: Incoming,
    expect: Expectation,
    layout: list[str],
    backups_dir: Path,
    timeout: float,
    say: Say,
) -> Keyspace:
    safety: Path | None = None
    try:
        restorer.step(lambda: restorer.journal.begin(incoming.name, layout, expect))
        hold("begun")
        safety = backup(
            restorer.target, backups_dir, kind="pre-restore", docker=restorer.docker,
            timeout=timeout, say=say,
        )  # fmt: skip
        say(f"safety backup of the current data: {safety}")
        hold("saved")
        found = restorer.replace(incoming, expect, say)
        hold("checked")
        restorer.step(restorer.journal.commit)
        restorer.step(restorer.journal.seen)
    except (RestoreFailed, UserError, KeyboardInterrupt) as exc:
        if isinstance(exc, KeyboardInterrupt):
            what = f"restore {interrupts.reason(exc)}"
        else:
            what = f"restore failed ({exc})"
        with interrupts.deferred():
            try:
                restorer.roll_back()
                restorer.step(restorer.journal.seen)  # reported here, by the error below
            except (RestoreFailed, UserError) as undo:
                kept = f"; the safety backup is {safety}" if safety else ""
                raise UserError(
                    f"{what}, and rolling back failed too ({undo}): the data from before is kept "
                    f"in the Redis volume (kc-restore/old){kept}; `invoke ps` tries again"
                ) from None
        raise UserError(
            f"{what}: rolled back, Redis is on its data from before; {incoming.name} is unchanged"
        ) from None
    return found
