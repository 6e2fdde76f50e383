"""Backing up Redis: a snapshot Redis itself writes, copied out, checked, hashed and described.

The snapshot is a BGSAVE, and the backup waits for *that* save: `rdb_saves` (counted when a save
forks) identifies it, and only `rdb_bgsave_in_progress:0` with `rdb_last_bgsave_status:ok` after
it counts as done. LASTSAVE cannot tell (one-second resolution), and a BGSAVE refused because a
save or an AOF rewrite is running answers an error that `redis-cli` would exit 0 on; here that
error means "wait for the other child, then try again", a bounded number of times.
"""

from __future__ import annotations

import os
import secrets
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import redis
from tenacity import (
    RetryCallState,
    RetryError,
    Retrying,
    retry_if_exception_type,
    stop_after_attempt,
)

from kcdev import files
from kcdev.backup import interrupts, rdb, store
from kcdev.backup.holdpoints import hold
from kcdev.backup.redis_target import RedisTarget, config_value, connect
from kcdev.console import Say, human_size
from kcdev.errors import UserError
from kcdev.files import fsync_file
from kcdev.redis_client import Keyspace, keyspace
from kcdev.stack import readiness
from kcdev.stack.docker_cli import Docker, last_line

T = TypeVar("T")
SAVE_ATTEMPTS = 5
# Writes are held for the instant between counting keys and forking the snapshot (a few ms, a
# fork of a large dataset perhaps 100 ms); Redis lifts the pause by itself after this at worst.
PAUSE_MS = 10_000


class Busy(Exception):
    """Redis refused BGSAVE because another child (a save or an AOF rewrite) is running."""


class Superseded(Exception):
    """Another save started after ours: the dump on disk may be newer than our key counts."""


@dataclass(frozen=True)
class Snapshot:
    save_number: int  # the value rdb_saves took when our BGSAVE forked
    keyspace: Keyspace  # counted in the same paused instant as the fork
    taken: datetime


def busy_reason(persistence: dict[str, Any]) -> str | None:
    """Why a BGSAVE would be refused now, or None when no save or AOF rewrite runs."""
    if persistence.get("rdb_bgsave_in_progress"):
        return "an RDB save is running"
    if persistence.get("aof_rewrite_in_progress"):
        return "an AOF rewrite is running"
    return None


def is_busy_error(error: redis.ResponseError) -> bool:
    text = str(error).lower()
    return "in progress" in text or "child process is active" in text


def save_progress(persistence: dict[str, Any], save_number: int) -> str | None:
    """None once our save finished well, a reason while it runs; raises if it cannot end well."""
    saves = int(persistence["rdb_saves"])
    if saves < save_number:
        raise UserError("Redis restarted during the backup: nothing was saved; try again")
    if saves > save_number:
        raise Superseded(f"another save (number {saves}) started after ours")
    if persistence.get("rdb_bgsave_in_progress"):
        return "the snapshot is still being written"
    if persistence.get("rdb_last_bgsave_status") != "ok":
        raise UserError(
            "Redis could not write its snapshot (rdb_last_bgsave_status is not ok; is its disk "
            "full?): see `invoke logs --service=redis`; nothing was saved"
        )
    return None


def start_save(client: redis.Redis) -> Snapshot:
    """Count keys and fork the snapshot in one instant in which no write can run.

    INFO keyspace read while writes go on would not match the snapshot. CLIENT PAUSE WRITE holds
    writes (and key expiry) for the few commands in this pipeline, so the counts are exactly the
    forked dataset's; redis-check-rdb's count of the file confirms it afterwards. BGSAVE without
    SCHEDULE: a scheduled save would fork later, after the counts.
    """
    pipe = client.pipeline(transaction=False)
    pipe.client_pause(PAUSE_MS, all=False)
    pipe.info("keyspace")
    pipe.info("persistence")
    pipe.bgsave(schedule=False)
    pipe.client_unpause()
    paused, space, persistence, started, _ = pipe.execute(raise_on_error=False)
    taken = datetime.now(UTC)
    for reply, command in ((paused, "CLIENT PAUSE WRITE"), (space, "INFO"), (persistence, "INFO")):
        if isinstance(reply, Exception):
            raise UserError(f"Redis refused {command} ({reply}): Redis 6.2 or newer is needed")
    if isinstance(started, redis.ResponseError):
        if is_busy_error(started):
            raise Busy(str(started))
        raise UserError(f"Redis refused BGSAVE ({started}): nothing was saved")
    if isinstance(started, Exception):
        raise started
    return Snapshot(int(persistence["rdb_saves"]) + 1, keyspace(space), taken)


def wait_for(check: Callable[[], str | None], deadline: float, what: str) -> None:
    try:
        readiness.wait_until(check, deadline)
    except readiness.NotReady as exc:
        raise UserError(f"gave up waiting for {what} ({exc}): try again later") from None


def wait_idle(client: redis.Redis, deadline: float) -> None:
    wait_for(lambda: busy_reason(client.info("persistence")), deadline, "a running save")


def wait_saved(client: redis.Redis, snapshot: Snapshot, deadline: float) -> None:
    number = snapshot.save_number
    wait_for(lambda: save_progress(client.info("persistence"), number), deadline, "the snapshot")


def snapshot_and_copy(
    client: redis.Redis, copy: Callable[[], T], deadline: float, say: Say
) -> tuple[Snapshot, T]:
    """Take a snapshot and copy it out, again when another save got in the way (Busy, or
    Superseded: a save that started after ours may have replaced the dump we read)."""

    def attempt() -> tuple[Snapshot, T]:
        wait_idle(client, deadline)
        snapshot = start_save(client)
        wait_saved(client, snapshot, deadline)
        hold("backup-saved")
        copied = copy()
        save_progress(client.info("persistence"), snapshot.save_number)  # the dump is still ours
        return snapshot, copied

    def announce(state: RetryCallState) -> None:
        failed = state.outcome.exception() if state.outcome else None
        say(f"Redis was busy ({failed}): waiting for it, then saving again")

    # No wait between attempts: each one waits for the other save itself (wait_idle).
    retrying = Retrying(
        retry=retry_if_exception_type((Busy, Superseded)),
        stop=stop_after_attempt(SAVE_ATTEMPTS),
        before_sleep=announce,
    )
    try:
        return retrying(attempt)
    except RetryError as exc:
        raise UserError(
            f"Redis stayed busy with other saves {SAVE_ATTEMPTS} times "
            f"({exc.last_attempt.exception()}): try again later"
        ) from None


def prepare_folder(folder: Path, needed: int, flag: str = "--output-dir") -> Path:
    """The backup folder, made when missing and proved writable before Redis is asked for a
    snapshot, with room for `needed` bytes; `flag` is the option that names it.

    Writing (and removing) a file is the only sure test: root passes every permission check yet
    cannot write to an immutable folder or a read-only disk; found out only when `docker cp`
    fails, it cost a snapshot first, and the message said nothing of the folder.
    """
    if folder.exists() and not folder.is_dir():
        raise UserError(f"{folder} is a file, not a folder: choose another {flag}")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(
            f"cannot create the backup folder {folder} ({exc.strerror}): choose another {flag}"
        ) from None
    try:
        fd, probe = tempfile.mkstemp(dir=folder, prefix=".kc-write-check-")
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise UserError(
            f"cannot write to the backup folder {folder} ({exc.strerror}): make it writable for "
            f"this user, or choose another {flag}"
        ) from None
    free = files.free_bytes(folder)
    if free < needed:
        raise UserError(
            f"not enough disk space in {folder}: {human_size(free)} free, the backup "
            f"may need {human_size(needed)} (Redis' used_memory): free some space or "
            f"choose another {flag}"
        )
    return folder


@dataclass(frozen=True)
class Fetched:
    """The dump copied to this machine, checked and hashed there."""

    check: rdb.CheckResult
    sha256: str


def fetch_dump(
    docker: Docker, target: RedisTarget, source: str, dest: Path, timeout: float
) -> Fetched:
    """Copy the dump out while redis-check-rdb reads it inside the container; hash the copy.

    Both read the same bytes: Redis replaces its dump only by renaming a finished save over it,
    and any save started after ours makes the backup start again (snapshot_and_copy checks), so
    the file cannot change between the two reads. The sha256 of the copy then guards the backup
    from here on (a restore checks it, and runs redis-check-rdb on the file itself). Checking the
    copy after the copy, as restore does, made this step about twice as slow on 1 GB.
    """
    with ThreadPoolExecutor(1) as pool:
        check = pool.submit(rdb.check_in_container, docker, target.container_id, source, timeout)
        copy_dump(docker, target, source, dest, timeout)
        digest = store.sha256_of(dest)  # while the check may still run: hashlib frees the GIL
        return Fetched(check.result(), digest)


def copy_dump(docker: Docker, target: RedisTarget, source: str, dest: Path, timeout: float) -> None:
    result = docker.run("cp", f"{target.container_id}:{source}", str(dest), timeout=timeout)
    if result.returncode != 0:
        raise UserError(
            f"could not copy {source} out of the Redis container: {last_line(result.stderr)}"
        )


def backup(
    target: RedisTarget,
    output_dir: Path = store.DEFAULT_DIR,
    keep: int | None = None,
    *,
    kind: str = "backup",
    docker: Docker | None = None,
    timeout: float = 1800,
    say: Say = print,
) -> Path:
    """Back Redis up into `output_dir`; returns the new backup's .rdb path."""
    if keep is not None and keep < 1:
        raise UserError(f"--keep={keep} must be 1 or more")
    docker = docker or Docker()
    client = connect(target)
    try:
        with interrupts.as_exceptions():  # SIGTERM/SIGHUP: clean up like Ctrl-C
            return _backup(client, target, output_dir.resolve(), keep, kind, docker, timeout, say)
    except redis.RedisError as exc:
        raise UserError(
            f"lost the connection to Redis at {target.address} ({exc}): nothing was saved"
        ) from None
    finally:
        client.close()


def _backup(
    client: redis.Redis,
    target: RedisTarget,
    output_dir: Path,
    keep: int | None,
    kind: str,
    docker: Docker,
    timeout: float,
    say: Say,
) -> Path:
    deadline = time.monotonic() + timeout
    redis_version = str(client.info("server")["redis_version"])
    flag = "--backups-dir" if kind == "pre-restore" else "--output-dir"
    folder = prepare_folder(output_dir, int(client.info("memory")["used_memory"]), flag)
    source = f"{config_value(client, 'dir').rstrip('/')}/{config_value(client, 'dbfilename')}"
    store.remove_stale_partials(folder)
    # The pid says whose it is: a partial whose process is gone (SIGKILL) is removed next time.
    partial = folder / f"{store.PARTIAL_PREFIX}{os.getpid()}-{secrets.token_hex(6)}.partial"
    try:
        say(f"saving a snapshot of Redis {redis_version} ({target.source})")
        snapshot, fetched = snapshot_and_copy(
            client,
            lambda: fetch_dump(
                docker, target, source, partial, max(1.0, deadline - time.monotonic())
            ),
            deadline,
            say,
        )
        hold("backup-copied")
        manifest = describe(partial, fetched, snapshot, redis_version, target.source, kind)
        final = folder / manifest.file
        os.chmod(partial, 0o600)  # backups hold the data itself: readable by us only
        fsync_file(partial)
        # Published before its manifest: cut short in between, it lists as "no manifest", never
        # as verified; a backup is complete only once its manifest exists.
        store.publish(partial, final)
        try:
            hold("backup-published")
            store.write_manifest(final, manifest)
        except BaseException:
            final.unlink(missing_ok=True)
            raise
    finally:
        partial.unlink(missing_ok=True)
    hold("backup-described")
    say(
        f"saved {manifest.keys} keys in {len(manifest.databases)} database(s), "
        f"{human_size(manifest.size)}, verified with redis-check-rdb"
    )
    if keep is not None:
        try:
            pruned = store.prune(folder, keep, final)
        except OSError as exc:  # the backup itself is done and sound: say so, do not fail it
            say(f"warning: could not prune older backups ({exc})")
        else:
            say(prune_report(pruned, keep))
    return final


def prune_report(pruned: store.Pruned, keep: int) -> str:
    """What --keep did, in one line: every file it deleted, and what it spared and why."""
    removed = ", ".join(p.name for p in pruned.removed)
    line = (
        f"pruned {len(pruned.removed)} older backup(s): {removed}"
        if removed
        else (f"nothing to prune (--keep={keep})")
    )
    if pruned.spared:
        line += (
            f"; kept {pruned.spared.name} beyond --keep={keep}: it is the newest backup with "
            "keys, the newer ones are empty"
        )
    return line


def describe(
    dump: Path, fetched: Fetched, snapshot: Snapshot, redis_version: str, source: str, kind: str
) -> store.Manifest:
    """Write down what the copy is, once sure it is what Redis saved; raises otherwise."""
    version = rdb.file_version(dump)
    if version is None:
        raise UserError("what Redis saved is not an RDB file: see `invoke logs --service=redis`")
    if not fetched.check.ok:
        raise UserError(
            f"the snapshot fails redis-check-rdb ({fetched.check.problem}): nothing was saved"
        )
    counted = sum(db.keys for db in snapshot.keyspace.values())
    if fetched.check.keys != counted:
        raise UserError(
            f"the snapshot holds {fetched.check.keys} keys but Redis counted {counted} when it "
            "forked it: nothing was saved; try again"
        )
    name = store.backup_name(snapshot.taken, kind)
    return store.Manifest(
        kind=kind,
        file=f"{name}.rdb",
        created=store.iso_time(snapshot.taken),
        size=dump.stat().st_size,
        sha256=fetched.sha256,
        rdb_version=version,
        redis_version=redis_version,
        databases=snapshot.keyspace,
        source=source,
    )
