"""Waiting for *our* BGSAVE: busy servers, refused saves, failed saves, saves that overtake ours.

A scripted fake client stands in for Redis: each INFO persistence answers the next state of a
script, so every interleaving the real server can produce is played in order, without a server.
"""

from __future__ import annotations

import errno
import hashlib
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

import pytest
import redis

from kcdev import files
from kcdev.backup import rdb, save
from kcdev.backup.redis_target import RedisTarget
from kcdev.errors import UserError
from kcdev.redis_client import DbKeys
from kcdev.stack import readiness
from kcdev.stack.docker_cli import Docker
from tests.unit.conftest import FakeRunner

from .test_rdb import CHECK_OK, CHECK_TRUNCATED

BUSY_AOF = "Another child process is active (AOF?): can't BGSAVE right now."
KEYSPACE = {"db0": {"keys": 2, "expires": 1, "avg_ttl": 5}, "db3": {"keys": 1, "expires": 0}}
TARGET = RedisTarget("c0ffee", "127.0.0.1", 6379, "", "sha256:abc", "test")


def state(
    saves: int = 0, *, saving: int = 0, rewriting: int = 0, status: str = "ok"
) -> dict[str, Any]:
    return {
        "rdb_saves": saves,
        "rdb_bgsave_in_progress": saving,
        "aof_rewrite_in_progress": rewriting,
        "rdb_last_bgsave_status": status,
    }


class FakeRedis:
    """Answers INFO persistence from a script (the last state repeats) and BGSAVE from a list."""

    def __init__(self, states: list[dict[str, Any]], bgsave: list[object] | None = None) -> None:
        self.states = states
        self.bgsave_replies = bgsave if bgsave is not None else [True]
        self.pipelines: list[list[tuple[str, ...]]] = []
        self.pause_reply: object = True

    def info(self, section: str) -> dict[str, Any]:
        assert section == "persistence"
        return self.states.pop(0) if len(self.states) > 1 else self.states[0]

    def pipeline(self, transaction: bool = True) -> FakePipeline:
        assert not transaction, "BGSAVE inside MULTI would only be scheduled"
        return FakePipeline(self)


class FakePipeline:
    def __init__(self, client: FakeRedis) -> None:
        self.client = client
        self.queued: list[tuple[str, ...]] = []

    def client_pause(self, timeout: int, all: bool = True) -> None:
        self.queued.append(("CLIENT PAUSE", str(timeout), "ALL" if all else "WRITE"))

    def info(self, section: str) -> None:
        self.queued.append(("INFO", section))

    def bgsave(self, schedule: bool = True) -> None:
        self.queued.append(("BGSAVE", *(["SCHEDULE"] if schedule else [])))

    def client_unpause(self) -> None:
        self.queued.append(("CLIENT UNPAUSE",))

    def execute(self, raise_on_error: bool = True) -> list[object]:
        assert not raise_on_error, "UNPAUSE must run even when BGSAVE is refused"
        self.client.pipelines.append(self.queued)
        replies: list[object] = []
        for command in self.queued:
            if command[0] == "CLIENT PAUSE":
                replies.append(self.client.pause_reply)
            elif command == ("INFO", "keyspace"):
                replies.append(KEYSPACE)
            elif command == ("INFO", "persistence"):
                replies.append(self.client.info("persistence"))
            elif command[0] == "BGSAVE":
                replies.append(self.client.bgsave_replies.pop(0))
            else:
                replies.append(b"OK")
        return replies


@pytest.fixture(autouse=True)
def no_polling_delay(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(readiness, "POLL", 0)


class Recorder:
    def __init__(self) -> None:
        self.copies = 0
        self.said: list[str] = []

    def copy(self) -> None:
        self.copies += 1

    def say(self, line: str) -> None:
        self.said.append(line)


def run(fake: FakeRedis, deadline: float = float("inf")) -> tuple[save.Snapshot, Recorder]:
    rec = Recorder()
    snapshot, _ = save.snapshot_and_copy(cast(redis.Redis, fake), rec.copy, deadline, rec.say)
    return snapshot, rec


# --- the decisions, one state at a time -------------------------------------------------------


def test_busy_reason() -> None:
    assert save.busy_reason(state()) is None
    assert save.busy_reason(state(saving=1)) == "an RDB save is running"
    assert save.busy_reason(state(rewriting=1)) == "an AOF rewrite is running"


@pytest.mark.parametrize(
    ("message", "busy"),
    [
        (BUSY_AOF, True),
        ("Background save already in progress", True),
        ("Background append only file rewriting in progress", True),
        ("ERR unknown command 'BGSAVE'", False),
    ],
)
def test_is_busy_error(message: str, busy: bool) -> None:
    assert save.is_busy_error(redis.ResponseError(message)) is busy


def test_save_progress() -> None:
    assert save.save_progress(state(5, saving=1), 5) == "the snapshot is still being written"
    assert save.save_progress(state(5), 5) is None
    with pytest.raises(UserError, match="could not write its snapshot"):
        save.save_progress(state(5, status="err"), 5)
    with pytest.raises(save.Superseded):
        save.save_progress(state(6), 5)
    with pytest.raises(save.Superseded):
        save.save_progress(state(6, saving=1), 5)
    with pytest.raises(UserError, match="restarted during the backup"):
        save.save_progress(state(0), 5)


# --- the whole wait ----------------------------------------------------------------------------


def test_waits_out_a_rewrite_then_for_its_own_save() -> None:
    fake = FakeRedis(
        [
            state(4, rewriting=1),
            state(4, rewriting=1),
            state(4),  # idle
            state(4),  # read in the paused instant, just before the fork
            state(5, saving=1),
            state(5, saving=1),
            state(5),  # ours is done
            state(5),  # still ours after the copy
        ]
    )
    snapshot, rec = run(fake)

    assert snapshot.save_number == 5
    assert snapshot.keyspace == {0: DbKeys(2, 1), 3: DbKeys(1, 0)}
    assert rec.copies == 1
    assert fake.pipelines == [
        [
            ("CLIENT PAUSE", "10000", "WRITE"),
            ("INFO", "keyspace"),
            ("INFO", "persistence"),
            ("BGSAVE",),  # never SCHEDULE: a scheduled save forks after the counts
            ("CLIENT UNPAUSE",),
        ]
    ]


def test_a_refused_bgsave_is_waited_out_and_retried() -> None:
    fake = FakeRedis(
        [state(0), state(0), state(0, rewriting=1), state(0), state(0), state(1), state(1)],
        bgsave=[redis.ResponseError(BUSY_AOF), True],
    )
    snapshot, rec = run(fake)

    assert snapshot.save_number == 1
    assert len(fake.pipelines) == 2
    assert rec.copies == 1
    assert rec.said == [f"Redis was busy ({BUSY_AOF}): waiting for it, then saving again"]


def test_a_failed_save_is_never_reported_as_success() -> None:
    fake = FakeRedis([state(0), state(0), state(1, saving=1), state(1, status="err")])
    with pytest.raises(UserError, match="could not write its snapshot"):
        run(fake)


def test_a_save_overtaking_ours_before_the_copy_ends_means_saving_again() -> None:
    fake = FakeRedis(
        [
            state(0),
            state(0),
            state(1),  # ours done
            state(2, saving=1),  # after the copy: another save started meanwhile
            state(2),  # idle again
            state(2),  # paused read
            state(3),  # ours done
            state(3),  # after the copy
        ],
        bgsave=[True, True],
    )
    snapshot, rec = run(fake)

    assert snapshot.save_number == 3
    assert rec.copies == 2


def test_gives_up_after_bounded_attempts() -> None:
    refusals: list[object] = [redis.ResponseError(BUSY_AOF)] * save.SAVE_ATTEMPTS
    fake = FakeRedis([state(0)], bgsave=refusals)
    with pytest.raises(UserError, match=f"busy with other saves {save.SAVE_ATTEMPTS} times"):
        run(fake)
    assert len(fake.pipelines) == save.SAVE_ATTEMPTS


def test_a_save_that_never_ends_times_out() -> None:
    fake = FakeRedis([state(0), state(0), state(1, saving=1)])
    with pytest.raises(UserError, match="gave up waiting for the snapshot"):
        run(fake, deadline=0)


def test_other_bgsave_errors_are_not_retried() -> None:
    fake = FakeRedis([state(0)], bgsave=[redis.ResponseError("ERR MISCONF disk full")])
    with pytest.raises(UserError, match="Redis refused BGSAVE"):
        run(fake)
    assert len(fake.pipelines) == 1


def test_a_server_without_client_pause_write_is_refused() -> None:
    fake = FakeRedis([state(0)])
    fake.pause_reply = redis.ResponseError("ERR syntax error")
    with pytest.raises(UserError, match="CLIENT PAUSE WRITE"):
        run(fake)


# --- disk space and describing the copy --------------------------------------------------------


def test_not_enough_disk_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(files, "free_bytes", lambda path: 1024)
    with pytest.raises(UserError, match=r"not enough disk space in .*: 1.0 KiB free") as caught:
        save.prepare_folder(tmp_path / "out", 10 * 1024**2)
    assert "\n" not in str(caught.value)


def test_folder_that_cannot_be_made_is_one_line(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(UserError, match="cannot create the backup folder"):
        save.prepare_folder(blocker / "out", 0)


def test_a_file_given_as_the_folder_is_refused(tmp_path: Path) -> None:
    given = tmp_path / "file"
    given.write_text("mine")
    with pytest.raises(UserError, match=r"file is a file, not a folder: choose another"):
        save.prepare_folder(given, 0)
    assert given.read_text() == "mine"


def test_a_folder_that_cannot_be_written_is_refused_before_any_snapshot(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As root, permission bits do not stop the write: the probe itself is made to fail."""

    def refuse(**kwargs: object) -> tuple[int, str]:
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr("kcdev.backup.save.tempfile.mkstemp", refuse)
    with pytest.raises(UserError) as caught:
        save.prepare_folder(tmp_path, 0)
    assert str(caught.value) == (
        f"cannot write to the backup folder {tmp_path} (Permission denied): make it writable "
        "for this user, or choose another --output-dir"
    )
    assert list(tmp_path.iterdir()) == []


def snapshot() -> save.Snapshot:
    taken = datetime(2025, 1, 2, 3, 4, 5, 678000, tzinfo=UTC)
    return save.Snapshot(7, {0: DbKeys(2, 1), 3: DbKeys(1, 0)}, taken)


def fetched(data: bytes, check: str = CHECK_OK, returncode: int = 0) -> save.Fetched:
    return save.Fetched(rdb.parse_check_output(check, returncode), hashlib.sha256(data).hexdigest())


def test_fetch_dump_copies_while_the_container_checks_its_dump_and_hashes_the_copy(
    tmp_path: Path, runner: FakeRunner, docker: Docker
) -> None:
    dest = tmp_path / "dump.partial"
    dest.write_bytes(b"REDIS0010rest")  # what `docker cp` would have written
    runner.on("docker", "exec", stdout=CHECK_OK)

    result = save.fetch_dump(docker, TARGET, "/data/dump.rdb", dest, timeout=60)

    assert result == fetched(b"REDIS0010rest")
    assert sorted(runner.argvs) == [
        ["docker", "cp", "c0ffee:/data/dump.rdb", str(dest)],
        ["docker", "exec", "c0ffee", "redis-check-rdb", "/data/dump.rdb"],
    ]


def test_fetch_dump_reports_what_the_check_found(
    tmp_path: Path, runner: FakeRunner, docker: Docker
) -> None:
    dest = tmp_path / "dump.partial"
    dest.write_bytes(b"REDIS0010")
    runner.on("docker", "exec", returncode=1, stdout=CHECK_TRUNCATED)

    result = save.fetch_dump(docker, TARGET, "/data/dump.rdb", dest, timeout=60)

    assert not result.check.ok
    assert result.check.problem.startswith("Unexpected EOF")


def test_a_failed_copy_is_one_line(tmp_path: Path, runner: FakeRunner, docker: Docker) -> None:
    runner.on("docker", "cp", returncode=1, stderr="Error: No such container:path: c0ffee:/x\n")
    with pytest.raises(UserError, match="could not copy /x out of the Redis container: Error"):
        save.fetch_dump(docker, TARGET, "/x", tmp_path / "d", timeout=60)


def dump_file(tmp_path: Path, data: bytes = b"REDIS0010rest") -> Path:
    dump = tmp_path / "dump.partial"
    dump.write_bytes(data)
    return dump


def test_describe_records_what_was_checked(tmp_path: Path) -> None:
    dump = dump_file(tmp_path)

    manifest = save.describe(
        dump, fetched(b"REDIS0010rest"), snapshot(), "7.0.15", "test", "backup"
    )

    assert manifest.file == "redis-20250102T030405.678Z.rdb"
    assert manifest.created == "2025-01-02T03:04:05.678Z"
    assert manifest.sha256 == hashlib.sha256(b"REDIS0010rest").hexdigest()
    assert (manifest.size, manifest.rdb_version, manifest.keys) == (13, 10, 3)
    assert manifest.databases == {0: DbKeys(2, 1), 3: DbKeys(1, 0)}


def test_describe_refuses_a_dump_that_fails_the_check(tmp_path: Path) -> None:
    bad = fetched(b"REDIS0010rest", CHECK_TRUNCATED, 1)
    with pytest.raises(UserError, match=r"fails redis-check-rdb \(Unexpected EOF"):
        save.describe(dump_file(tmp_path), bad, snapshot(), "7.0.15", "test", "backup")


def test_describe_refuses_counts_that_do_not_match(tmp_path: Path) -> None:
    more = fetched(b"REDIS0010rest", CHECK_OK.replace("3 keys read", "4 keys read"))
    with pytest.raises(UserError, match="holds 4 keys but Redis counted 3"):
        save.describe(dump_file(tmp_path), more, snapshot(), "7.0.15", "test", "backup")


def test_describe_refuses_what_is_not_an_rdb(tmp_path: Path) -> None:
    html = dump_file(tmp_path, b"<html>")
    with pytest.raises(UserError, match="not an RDB file"):
        save.describe(html, fetched(b"<html>"), snapshot(), "7.0.15", "test", "backup")


def test_keep_below_one_is_refused_before_anything_runs(runner: FakeRunner, docker: Docker) -> None:
    with pytest.raises(UserError, match="--keep=0"):
        save.backup(TARGET, Path("/nonexistent"), keep=0, docker=docker)
    assert runner.calls == []


# --- what --keep says -------------------------------------------------------------------------


def test_prune_report_names_what_it_removed_and_what_it_spared(tmp_path: Path) -> None:
    from kcdev.backup import store

    a, b, c = (tmp_path / f"redis-{n}.rdb" for n in "abc")
    assert save.prune_report(store.Pruned([a, b], None), 1) == (
        "pruned 2 older backup(s): redis-a.rdb, redis-b.rdb"
    )
    assert save.prune_report(store.Pruned([], None), 3) == "nothing to prune (--keep=3)"
    assert save.prune_report(store.Pruned([a], c), 1) == (
        "pruned 1 older backup(s): redis-a.rdb; kept redis-c.rdb beyond --keep=1: it is the "
        "newest backup with keys, the newer ones are empty"
    )
