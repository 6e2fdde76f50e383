"""Fault injection: `invoke restore-redis` and `invoke backup-redis` cut short at every step.

A real `invoke` process is held at a named point (KC_RESTORE_HOLD_AT, kcdev/backup/holdpoints.py;
inside the restore's container, kc-redis-journal) and sent a real signal there; or the restore's
temporary Redis is killed. Then the next `invoke ps`, `up` or `restore-redis` (or a plain
`docker start`) must finish or roll back the restore and say which, and Redis must hold exactly
the data from before (rolled back) or exactly the file's data (finished): every key compared by
type, value and absolute expiry time, before and after a restart from the AOF.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from kcdev.backup import store
from kcdev.backup.journal import LABEL
from kcdev.backup.save import backup
from kcdev.paths import ROOT
from kcdev.stack import readiness
from tests.support.redis_data import Contents, contents, difference, with_ttl, write_keys
from tests.support.redis_target import FixedPortRedis
from tests.support.stack import StackUnderTest

from .conftest import StackRedis, data_files

pytestmark = pytest.mark.integration

DBS = (0, 1, 3)
BEFORE = "rolled it back, Redis has its data from before"
AFTER = "finished it, Redis has the restored data"


def quiet(line: str) -> None:
    pass


def write_dataset(server: object, prefix: str, count: int) -> None:
    """Every type, TTLs (long enough to outlast the module), three databases."""
    client = server.client()  # type: ignore[attr-defined]
    write_keys(client, count, prefix=prefix, db=0, ttl_every=5, ttl_ms=3 * 3_600_000)
    write_keys(client, count // 2, prefix=prefix, db=1, ttl_every=3)
    write_keys(client, 12, prefix=f"{prefix}-few", db=3)
    client.close()


@pytest.fixture(scope="module")
def the_file(stack_images: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A backup of other data than the stack's, so whether it was restored shows."""
    with FixedPortRedis(stack_images["REDIS_IMAGE"]) as other:
        write_dataset(other, "restored", 600)
        return backup(other.target(), tmp_path_factory.mktemp("file"), say=quiet)


@pytest.fixture(scope="module")
def restored(the_file: Path, stack_images: dict[str, str]) -> Contents:
    """The file's data as a Redis that loaded it holds it."""
    with FixedPortRedis(stack_images["REDIS_IMAGE"]) as other:
        from kcdev.backup.restore import restore

        restore(other.target(), the_file, yes=True, backups_dir=the_file.parent, say=quiet)
        return contents(other, DBS)


@pytest.fixture
def before(stack: StackUnderTest, stack_redis: StackRedis) -> Contents:
    """The stack's Redis, running, with its own data (whatever the previous case left)."""
    ready = stack.invoke("up", "--backend=none")
    assert ready.returncode == 0, ready.stderr
    client = stack_redis.client()
    client.flushall()
    client.close()
    write_dataset(stack_redis, "before", 500)
    found = contents(stack_redis, DBS)
    assert with_ttl(found) > 100 and {db for db, _ in found} == set(DBS)
    return found


@dataclass
class Held:
    """A running `invoke` process and what it printed."""

    process: subprocess.Popen[str]
    lines: list[str]
    reader: threading.Thread

    def signal(self, signum: int) -> None:
        self.process.send_signal(signum)

    def finish(self, timeout: float = 300) -> tuple[int, str]:
        self.process.wait(timeout=timeout)
        self.reader.join(timeout=10)  # it has read the last lines once the pipe closes
        return self.process.returncode, "".join(self.lines)


def start_invoke(stack: StackUnderTest, hold_at: str, *args: str) -> Held:
    env = {**stack.env, "KC_RESTORE_HOLD_AT": hold_at}
    process = subprocess.Popen(
        [sys.executable, "-m", "invoke", *args],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    lines: list[str] = []
    assert process.stdout is not None
    stream = process.stdout
    reader = threading.Thread(target=lambda: lines.extend(iter(stream.readline, "")), daemon=True)
    reader.start()
    return Held(process, lines, reader)


def restore_containers(volume: str) -> list[str]:
    found = subprocess.run(
        ["docker", "ps", "-q", "--filter", f"label={LABEL}={volume}"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    return found.stdout.split()


def wait_held(held: Held, volume: str, point: str) -> str | None:
    """Until the process, or one of the restore's containers, says it holds at `point`; returns
    the container's id when it is one."""
    line = f"kc-restore: holding at {point}"
    found: list[str] = []

    def check() -> str | None:
        if any(line in printed for printed in held.lines):
            return None
        for container in restore_containers(volume):
            logs = subprocess.run(
                ["docker", "logs", container], capture_output=True, text=True, check=False
            )
            if line in logs.stderr:
                found.append(container)
                return None
        if held.process.poll() is not None:
            raise AssertionError(f"invoke ended before {point}: {''.join(held.lines)}")
        return f"not at {point} yet"

    readiness.wait_until(check, time.monotonic() + 180)
    return found[0] if found else None


def assert_data(stack_redis: StackRedis, want: Contents, when: str) -> None:
    got = contents(stack_redis, DBS)
    assert got == want, f"{when}: {difference(want, got)}"


def restart(stack: StackUnderTest, stack_redis: StackRedis) -> None:
    subprocess.run(["docker", "restart", stack_redis.container_id()], check=True, timeout=120)
    target = stack.env

    def ready() -> str | None:
        return readiness.redis_ready(
            "127.0.0.1", int(target["REDIS_PORT"]), target["REDIS_PASSWORD"]
        )

    readiness.wait_until(ready, time.monotonic() + 60)


def assert_settled(stack: StackUnderTest, stack_redis: StackRedis, want: Contents) -> None:
    """The data is `want`, stays so across a restart (the AOF holds it), nothing is left over."""
    assert_data(stack_redis, want, "after recovery")
    restart(stack, stack_redis)
    assert_data(stack_redis, want, "after a restart")
    assert data_files(stack_redis) == ["appendonlydir", "dump.rdb"]
    assert restore_containers(stack_redis.volume()) == []


# --- restore: every point, SIGTERM and SIGKILL ----------------------------------------------------

# Where the restore is held, and whether recovery after a SIGKILL there finishes it (the new data
# is complete from "built" on) or rolls it back.
POINTS = [
    ("begun", False),  # journal started, Redis untouched
    ("saved", False),  # safety backup taken
    ("stopped", False),  # Redis stopped
    ("copying", False),  # the file half-way into the volume (container)
    ("building", False),  # the temporary Redis about to load it (container)
    ("loaded", False),  # loaded, AOF not yet written (container)
    ("rewritten", False),  # new AOF written, temporary Redis still up (container)
    ("built", True),  # new data complete, switch not begun (container)
    ("switching", True),  # old AOF moved aside, new one not yet in: no AOF at all (container)
    ("switched", True),  # new data in place (container)
    ("started", True),  # Redis started on it, counts not yet checked
    ("checked", True),  # counts checked, old data not yet deleted
]
RECOVERED_BY = ["ps", "up", "restore-redis"]


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGKILL], ids=["SIGTERM", "SIGKILL"])
@pytest.mark.parametrize(("point", "forward"), POINTS, ids=[p for p, _ in POINTS])
def test_a_restore_cut_short_is_finished_or_rolled_back(
    point: str,
    forward: bool,
    signum: int,
    stack: StackUnderTest,
    stack_redis: StackRedis,
    before: Contents,
    restored: Contents,
    the_file: Path,
    tmp_path: Path,
) -> None:
    volume = stack_redis.volume()
    args = ("restore-redis", f"--file={the_file}", "--yes", f"--backups-dir={tmp_path}")
    held = start_invoke(stack, point, *args)
    wait_held(held, volume, point)

    held.signal(signum)
    code, output = held.finish()

    if signum == signal.SIGTERM:  # caught: the restore rolls back at once and says so
        assert code == 1, output
        last = output.strip().splitlines()[-1]
        assert last == (
            f"error: restore interrupted by SIGTERM: rolled back, Redis is on its data from "
            f"before; {the_file.name} is unchanged"
        ), output
        assert_settled(stack, stack_redis, before)
        quiet_ps = stack.invoke("ps")
        assert "restore" not in quiet_ps.stdout, quiet_ps.stdout  # nothing left to report
        return

    assert code == -signal.SIGKILL
    # The next task (cycling through the three that recover) finishes or rolls back, in one line.
    task = RECOVERED_BY[[p for p, _ in POINTS].index(point) % len(RECOVERED_BY)]
    if task == "restore-redis":  # recovers the cut one, then restores the file again
        again = stack.invoke(*args)
        assert again.returncode == 0, again.stderr
        report = again.stdout
    else:
        extra = ["--backend=none"] if task == "up" else []
        after = stack.invoke(task, *extra)
        assert after.returncode == 0, after.stderr
        report = after.stdout
    outcome = AFTER if forward else BEFORE
    lines = [ln for ln in report.splitlines() if ln.startswith(f"the restore of {the_file.name}")]
    assert len(lines) == 1 and lines[0].endswith(outcome), report
    want = restored if forward or task == "restore-redis" else before
    assert_settled(stack, stack_redis, want)


@pytest.mark.parametrize(
    ("point", "signum"),
    [("building", signal.SIGINT), ("switching", signal.SIGHUP)],
    ids=["SIGINT-building", "SIGHUP-switching"],
)
def test_sigint_and_sighup_roll_back_at_once(
    point: str,
    signum: int,
    stack: StackUnderTest,
    stack_redis: StackRedis,
    before: Contents,
    the_file: Path,
    tmp_path: Path,
) -> None:
    held = start_invoke(
        stack, point, "restore-redis", f"--file={the_file}", "--yes", f"--backups-dir={tmp_path}"
    )
    wait_held(held, stack_redis.volume(), point)
    held.signal(signum)
    code, output = held.finish()
    assert code == 1, output
    assert "rolled back, Redis is on its data from before" in output.strip().splitlines()[-1]
    assert_settled(stack, stack_redis, before)


@pytest.mark.parametrize("point", ["loaded", "rewritten"])
def test_the_temporary_redis_dying_rolls_back(
    point: str,
    stack: StackUnderTest,
    stack_redis: StackRedis,
    before: Contents,
    the_file: Path,
    tmp_path: Path,
) -> None:
    held = start_invoke(
        stack, point, "restore-redis", f"--file={the_file}", "--yes", f"--backups-dir={tmp_path}"
    )
    container = wait_held(held, stack_redis.volume(), point)
    assert container is not None
    subprocess.run(
        ["docker", "exec", container, "sh", "-c",
         "kill -KILL $(cat /data/kc-restore/temp.pid) && touch /tmp/kc-restore-release"],
        check=True,
    )  # fmt: skip
    code, output = held.finish()
    assert code == 1, output
    last = output.strip().splitlines()[-1]
    assert "the temporary Redis" in last, output
    assert last.endswith(
        f"rolled back, Redis is on its data from before; {the_file.name} is unchanged"
    )
    assert_settled(stack, stack_redis, before)


def test_killed_while_rolling_back_the_rollback_is_finished(
    stack: StackUnderTest,
    stack_redis: StackRedis,
    before: Contents,
    the_file: Path,
    tmp_path: Path,
) -> None:
    held = start_invoke(
        stack, "switched,rolling-back", "restore-redis", f"--file={the_file}", "--yes",
        f"--backups-dir={tmp_path}",
    )  # fmt: skip
    volume = stack_redis.volume()
    wait_held(held, volume, "switched")
    held.signal(signal.SIGTERM)  # rolls back: the old data is being put back...
    wait_held(held, volume, "rolling-back")
    held.signal(signal.SIGKILL)  # ...when the rollback itself is killed
    assert held.finish()[0] == -signal.SIGKILL

    after = stack.invoke("ps")
    assert after.returncode == 0, after.stderr
    assert f"the restore of {the_file.name} was cut short while it rolled back: {BEFORE}" in (
        after.stdout
    )
    assert_settled(stack, stack_redis, before)


@pytest.mark.parametrize(("point", "forward"), [("building", False), ("switching", True)])
def test_redis_started_by_hand_never_serves_half_restored_data(
    point: str,
    forward: bool,
    stack: StackUnderTest,
    stack_redis: StackRedis,
    before: Contents,
    restored: Contents,
    the_file: Path,
    tmp_path: Path,
) -> None:
    held = start_invoke(
        stack, point, "restore-redis", f"--file={the_file}", "--yes", f"--backups-dir={tmp_path}"
    )
    volume = stack_redis.volume()
    wait_held(held, volume, point)
    held.signal(signal.SIGKILL)
    held.finish()
    for leftover in restore_containers(volume):  # what a reboot would do to the held step
        subprocess.run(["docker", "rm", "--force", leftover], check=True, capture_output=True)

    # `docker compose up`, or the restart policy after a reboot: no `invoke` involved.
    subprocess.run(["docker", "start", stack_redis.container_id()], check=True)
    env = stack.env
    readiness.wait_until(
        lambda: readiness.redis_ready("127.0.0.1", int(env["REDIS_PORT"]), env["REDIS_PASSWORD"]),
        time.monotonic() + 60,
    )
    assert_data(stack_redis, restored if forward else before, "started by hand")
    # The next task reports it and, for a switched restore, checks and commits it.
    after = stack.invoke("ps")
    outcome = AFTER if forward else BEFORE
    assert any(ln.endswith(outcome) for ln in after.stdout.splitlines()), after.stdout
    assert_settled(stack, stack_redis, restored if forward else before)


# --- backup: every point, SIGTERM and SIGKILL -----------------------------------------------------

BACKUP_POINTS = ["backup-saved", "backup-copied", "backup-published", "backup-described"]


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGKILL], ids=["SIGTERM", "SIGKILL"])
@pytest.mark.parametrize("point", BACKUP_POINTS)
def test_a_backup_cut_short_is_never_listed_as_verified(
    point: str,
    signum: int,
    stack: StackUnderTest,
    stack_redis: StackRedis,
    before: Contents,
    tmp_path: Path,
) -> None:
    held = start_invoke(stack, point, "backup-redis", f"--output-dir={tmp_path}")
    wait_held(held, stack_redis.volume(), point)
    held.signal(signum)
    code, output = held.finish()
    assert code == (130 if signum == signal.SIGTERM else -signal.SIGKILL), output

    listed = store.list_backups(tmp_path)
    verified = [b for b in listed if b.problem is None]
    complete = point == "backup-described"  # the manifest was written: the backup is whole
    assert len(verified) == (1 if complete else 0), listed
    for b in verified:  # whatever is listed as verified is the whole, sound backup
        assert b.manifest is not None
        assert b.manifest.keys == len(before)
    if signum == signal.SIGTERM:  # cleaned up: nothing half-written is left
        assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
            [p.name for b in verified for p in (b.rdb, store.manifest_path(b.rdb))]
        )
    listing = stack.invoke("backups", f"--folder={tmp_path}")
    assert listing.stdout.count(" yes ") == len(verified), listing.stdout
    # The next backup sweeps away what a killed one left half-copied.
    again = stack.invoke("backup-redis", f"--output-dir={tmp_path}")
    assert again.returncode == 0, again.stderr
    assert not list(tmp_path.glob(".kc-backup-*"))
    assert_data(stack_redis, before, "after the backups")


@pytest.fixture(autouse=True)
def no_leftover_hold(stack_redis: StackRedis) -> Iterator[None]:
    """A failed case must not leave a held container behind for the next one."""
    yield
    for leftover in restore_containers(stack_redis.volume()):
        subprocess.run(["docker", "rm", "--force", leftover], capture_output=True, check=False)
