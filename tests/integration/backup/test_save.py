"""Backup and restore against the stack's real Redis image, AOF on, as `invoke` runs them.

Each test has a container of its own on a fixed loopback port (a restore stops and starts it).
The negative control shows why the restore works the way it does: the usual "copy dump.rdb in and
restart" brings back the AOF's data, not the backup's.
"""

from __future__ import annotations

import hashlib
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from kcdev.backup import rdb, store
from kcdev.backup.restore import restore
from kcdev.backup.save import backup
from kcdev.redis_client import DbKeys
from kcdev.stack import readiness
from kcdev.stack.docker_cli import Docker
from tests.support.redis_data import contents, with_ttl, write_keys
from tests.support.redis_target import FixedPortRedis

pytestmark = pytest.mark.integration


def quiet(line: str) -> None:
    pass


@pytest.fixture
def server(stack_images: dict[str, str]) -> Iterator[FixedPortRedis]:
    with FixedPortRedis(stack_images["REDIS_IMAGE"]) as container:
        yield container


def gone(client: redis.Redis, keys: list[str]) -> str | None:
    """None once none of `keys` exists (EXISTS expires a key whose TTL ran out, on the spot)."""
    left = client.exists(*keys)
    return f"{left} of {len(keys)} keys still there" if left else None


def test_round_trip_of_10000_keys_survives_the_restore_and_two_restarts(
    server: FixedPortRedis, tmp_path: Path
) -> None:
    client = server.client(decode_responses=True)
    write_keys(client, 8_000, prefix="k", db=0, ttl_every=20)  # 400 keys with a 1 h TTL
    write_keys(client, 2_000, prefix="k", db=1, ttl_every=20)  # 100 more
    # Canaries, with the same TTLs in a database the backup keeps and the test never flushes:
    # when one is gone, so are its twins inside the backup.
    write_keys(client, 100, prefix="short", ttl_ms=4_000, ttl_every=1)  # gone before the restore
    write_keys(client, 1, prefix="short-canary", db=2, ttl_ms=4_000, ttl_every=1)
    # Long enough to outlast the backup and restore on a loaded machine (tests run in parallel).
    write_keys(client, 100, prefix="mid", ttl_ms=60_000, ttl_every=1)  # gone before restart 2
    lasting = {k: v for k, v in contents(server).items() if not k[1].startswith(("short", "mid"))}
    mid = {k: v for k, v in contents(server).items() if k[1].startswith("mid")}
    mid_keys = [key for _, key in mid]
    assert len(lasting) == 10_000 and with_ttl(lasting) == 500

    path = backup(server.target(), tmp_path, say=quiet)

    manifest = store.read_manifest(path)
    assert manifest.databases == {0: DbKeys(8_200, 600), 1: DbKeys(2_000, 100), 2: DbKeys(1, 1)}
    # What the restore must replace: other data, written after the backup.
    for db in (0, 1):
        server.client(db=db).flushdb()
    write_keys(client, 50, prefix="after-backup")
    canary = server.client(db=2)
    readiness.wait_until(lambda: gone(canary, ["short-canary:0"]), time.monotonic() + 30)

    found = restore(server.target(), path, yes=True, backups_dir=tmp_path, say=quiet)

    assert found == {0: DbKeys(8_100, 500), 1: DbKeys(2_000, 100)}  # short:* expired on load
    assert contents(server) == lasting | mid  # values and the very same expiry times
    assert 0 < min(client.pttl(key) for key in mid_keys) <= 60_000
    assert client.config_get("appendonly") == {"appendonly": "yes"}
    data = server.docker("exec", server.container_id, "ls", "-A", "/data").stdout.split()
    assert sorted(data) == ["appendonlydir", "dump.rdb"]  # the old AOF, set aside, is gone
    safety = [b for b in store.list_backups(tmp_path) if b.kind == "pre-restore"]
    assert len(safety) == 1 and safety[0].manifest and safety[0].manifest.keys == 50

    server.restart_and_wait()
    assert contents(server) == lasting | mid  # the AOF holds the restored data

    readiness.wait_until(lambda: gone(client, mid_keys), time.monotonic() + 90)  # they expire
    server.restart_and_wait()
    assert contents(server) == lasting  # and stay gone: the AOF did not bring them back
    assert all(0 < client.ttl(f"k:{i}") <= 3600 for i in range(0, 8_000, 20))


def test_negative_control_copying_the_dump_in_and_restarting_loses_the_backup(
    server: FixedPortRedis, tmp_path: Path
) -> None:
    client = server.client(decode_responses=True)
    write_keys(client, 200, prefix="in-backup")
    path = backup(server.target(), tmp_path, say=quiet)
    client.flushall()
    write_keys(client, 10, prefix="later")

    # The usual guide: stop Redis, put the backup in as dump.rdb (owned by redis), start again.
    server.docker("stop", server.container_id)
    copied = server.docker(
        "run", "--rm", "--volumes-from", server.container_id, "--user", "root",
        "--mount", rdb.bind_mount(path, "/backup.rdb"), "--entrypoint", "sh",
        server.target().image, "-c",
        "cp /backup.rdb /data/dump.rdb && chown redis /data/dump.rdb && sha256sum /data/dump.rdb",
    ).stdout  # fmt: skip
    server.docker("start", server.container_id)
    server.wait_ready()

    assert copied.split()[0] == hashlib.sha256(path.read_bytes()).hexdigest()  # it was in place
    assert client.keys("in-backup:*") == []  # the backup was silently ignored...
    assert len(client.keys("later:*")) == 10  # ...in favour of the AOF


def test_backup_while_writes_run_is_one_consistent_snapshot(
    server: FixedPortRedis, stack_images: dict[str, str], tmp_path: Path
) -> None:
    written = 0
    stop = threading.Event()

    def write() -> None:
        nonlocal written
        writer = server.client()
        while not stop.is_set():
            writer.set(f"w:{written}", written)
            written += 1

    thread = threading.Thread(target=write)
    thread.start()
    try:
        readiness.wait_until(
            lambda: None if written >= 3_000 else f"{written} writes", time.monotonic() + 60
        )
        path = backup(server.target(), tmp_path, say=quiet)
        at_backup_end = written
        readiness.wait_until(  # writes go on after the snapshot too
            lambda: None if written > at_backup_end else "no write since", time.monotonic() + 10
        )
    finally:
        stop.set()
        thread.join()

    saved = store.read_manifest(path).keys
    check = rdb.check_rdb(Docker(), server.target().image, path)
    assert check.ok and check.keys == saved
    assert 3_000 <= saved < at_backup_end  # writes went on during and after the snapshot

    # Sequential writes from one client: a point-in-time snapshot holds exactly a prefix of them.
    with FixedPortRedis(stack_images["REDIS_IMAGE"]) as other:
        restore(other.target(), path, yes=True, backups_dir=tmp_path, say=quiet)
        keys = other.client(decode_responses=True).keys("w:*")
        assert sorted(int(str(k).split(":")[1]) for k in keys) == list(range(saved))


def slow_child_process(client: redis.Redis, start: str) -> None:
    """Start a save or AOF rewrite that lasts a few seconds.

    rdb-key-save-delay (microseconds per key, a setting Redis' own test suite uses) is read by
    the child when it forks; setting it back at once leaves the child slow and the server not.
    """
    client.config_set("rdb-key-save-delay", 1000)
    try:
        if start == "BGSAVE":
            client.bgsave(schedule=False)
        else:
            client.bgrewriteaof()
    finally:
        client.config_set("rdb-key-save-delay", 0)


@pytest.mark.parametrize(
    ("start", "running"),
    [("BGREWRITEAOF", "aof_rewrite_in_progress"), ("BGSAVE", "rdb_bgsave_in_progress")],
)
def test_a_backup_requested_while_a_child_runs_waits_for_it(
    server: FixedPortRedis, tmp_path: Path, start: str, running: str
) -> None:
    client = server.client()
    write_keys(client, 3_000)  # 3 s at 1 ms per key
    saves_before = client.info("persistence")["rdb_saves"]
    slow_child_process(client, start)
    assert client.info("persistence")[running] == 1

    said: list[str] = []
    path = backup(server.target(), tmp_path, say=said.append)

    after = client.info("persistence")
    assert after[running] == 0
    assert after["aof_last_bgrewrite_status"] == "ok" and after["rdb_last_bgsave_status"] == "ok"
    assert after["rdb_saves"] == saves_before + (2 if start == "BGSAVE" else 1)
    assert store.read_manifest(path).keys == 3_000
    assert rdb.check_rdb(Docker(), server.target().image, path).keys == 3_000


def test_keep_prunes_older_backups_but_not_the_new_one(
    server: FixedPortRedis, tmp_path: Path
) -> None:
    write_keys(server.client(), 10)
    made = [backup(server.target(), tmp_path, keep=2, say=quiet) for _ in range(3)]
    assert [b.rdb for b in store.list_backups(tmp_path)] == made[1:]
    assert all(b.problem is None for b in store.list_backups(tmp_path))


def test_backup_files_are_private(server: FixedPortRedis, tmp_path: Path) -> None:
    path = backup(server.target(), tmp_path, say=quiet)
    assert path.stat().st_mode & 0o777 == 0o600
    listing = subprocess.run(["ls", "-A", str(tmp_path)], capture_output=True, text=True)
    assert sorted(listing.stdout.split()) == [store.manifest_path(path).name, path.name]
