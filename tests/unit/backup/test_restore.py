"""Restore: checks on the file, key counts after it, the docker steps, and putting data back."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from kcdev.backup import restore, store
from kcdev.backup.redis_target import RedisTarget
from kcdev.backup.restore import DataLayout, RestoreFailed, Restorer
from kcdev.errors import UserError
from kcdev.redis_client import DbKeys, parse_keyspace_lines
from kcdev.stack.docker_cli import Docker
from tests.unit.conftest import FakeRunner

from .test_rdb import CHECK_OK, CHECK_TRUNCATED

TARGET = RedisTarget("c0ffee", "127.0.0.1", 6379, "", "sha256:abc", "test")
LAYOUT = DataLayout("/data", "dump.rdb", "appendonlydir", "appendonly.aof", "16")


def manifest(databases: dict[int, DbKeys], data: bytes = b"REDIS0010") -> store.Manifest:
    return store.Manifest(
        kind="backup",
        file="redis-x.rdb",
        created="2025-01-01T00:00:00.000Z",
        size=len(data),
        sha256=hashlib.sha256(data).hexdigest(),
        rdb_version=10,
        redis_version="7.0.15",
        databases=databases,
        source="test",
    )


def backup_file(folder: Path, data: bytes = b"REDIS0010rest") -> Path:
    path = folder / "redis-20250101T000000.000Z.rdb"
    path.write_bytes(data)
    store.write_manifest(path, manifest({0: DbKeys(3, 1)}, data))
    return path


# --- key counts --------------------------------------------------------------------------------


def test_keyspace_problem_accepts_exact_counts_and_expired_ttl_keys() -> None:
    m = manifest({0: DbKeys(10, 4), 2: DbKeys(1, 0)})
    assert restore.keyspace_problem({0: DbKeys(10, 4), 2: DbKeys(1, 0)}, m) is None
    # up to 4 keys with a TTL may have expired since the backup
    assert restore.keyspace_problem({0: DbKeys(6, 0), 2: DbKeys(1, 0)}, m) is None


@pytest.mark.parametrize(
    ("found", "problem"),
    [
        (
            {0: DbKeys(5, 0), 2: DbKeys(1, 0)},
            "db0 has 5 keys, the backup 10 (4 of them with a TTL)",
        ),
        ({0: DbKeys(11, 4), 2: DbKeys(1, 0)}, "db0 has 11 keys"),
        ({0: DbKeys(10, 4)}, "db2 has 0 keys"),
        ({0: DbKeys(10, 4), 2: DbKeys(1, 0), 5: DbKeys(1, 0)}, "db5 has 1 keys, the backup 0"),
    ],
)
def test_keyspace_problem_names_the_database(found: dict[int, DbKeys], problem: str) -> None:
    m = manifest({0: DbKeys(10, 4), 2: DbKeys(1, 0)})
    assert problem in (restore.keyspace_problem(found, m) or "")


def test_parse_keyspace_lines() -> None:
    text = "db0:keys=2,expires=1,avg_ttl=81398\ndb3:keys=1,expires=0,avg_ttl=0\nnoise\n"
    assert parse_keyspace_lines(text) == {0: DbKeys(2, 1), 3: DbKeys(1, 0)}


# --- verifying the file -------------------------------------------------------------------------


def test_verify_file_accepts_a_backup_that_matches_its_manifest(tmp_path: Path) -> None:
    path = backup_file(tmp_path)
    assert restore.verify_file(path).keys == 3


@pytest.mark.parametrize(
    ("prepare", "message"),
    [
        (lambda p: p.unlink(), "no backup file"),
        (lambda p: p.write_bytes(b""), "is empty"),
        (lambda p: p.write_bytes(b"PK\x03\x04zip"), "is not a Redis RDB file"),
        (lambda p: store.manifest_path(p).unlink(), "has no manifest"),
        (lambda p: p.write_bytes(b"REDIS0010resT"), "does not match its manifest"),
        (lambda p: p.write_bytes(b"REDIS0010re"), "does not match its manifest"),
    ],
    ids=["missing", "empty", "foreign", "no-manifest", "changed", "truncated"],
)
def test_verify_file_refuses_bad_files_in_one_line(
    tmp_path: Path, prepare: object, message: str
) -> None:
    path = backup_file(tmp_path)
    prepare(path)  # type: ignore[operator]
    with pytest.raises(UserError, match=message) as caught:
        restore.verify_file(path)
    assert "\n" not in str(caught.value)


def test_a_newer_rdb_version_is_refused_before_any_check(
    tmp_path: Path, runner: FakeRunner, docker: Docker
) -> None:
    path = backup_file(tmp_path, b"REDIS0012rest")
    with pytest.raises(
        UserError, match=r"RDB version 12, which Redis 7\.0\.15 cannot read \(it reads up to 10\)"
    ):
        restore.verify_for_server(path, docker, TARGET, "7.0.15")
    assert runner.calls == []


def test_the_servers_own_check_decides(tmp_path: Path, runner: FakeRunner, docker: Docker) -> None:
    path = backup_file(tmp_path)
    runner.on("docker", "run", stdout=CHECK_OK)
    restore.verify_for_server(path, docker, TARGET, "7.0.15")

    runner.on("docker", "run", returncode=1, stdout=CHECK_TRUNCATED)
    with pytest.raises(
        UserError, match=r"fails redis-check-rdb \(Unexpected EOF reading RDB file\)"
    ):
        restore.verify_for_server(path, docker, TARGET, "7.0.15")


# --- the docker steps ----------------------------------------------------------------------------


@pytest.fixture
def restorer(docker: Docker, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Restorer:
    monkeypatch.setattr(Restorer, "wait_ready", lambda self: None)
    monkeypatch.setattr(Restorer, "live_keyspace", lambda self: {0: DbKeys(3, 1)})
    return Restorer(docker, TARGET, LAYOUT, tmp_path / "backup.rdb", timeout=60)


def steps(runner: FakeRunner) -> list[str]:
    """The docker commands run, as `stop`, `start` or the throwaway container's step name."""
    shown = []
    for argv in runner.argvs:
        if argv[1] == "run":
            shown.append(argv[argv.index("--name") + 1].split("-", 4)[4])
        elif argv[1] in ("stop", "start", "exec", "inspect"):
            shown.append(argv[1])
    return shown


def test_replace_runs_the_steps_in_order(runner: FakeRunner, restorer: Restorer) -> None:
    runner.on("docker", "run", stdout="db0:keys=3,expires=1,avg_ttl=0\n")

    found = restorer.replace(manifest({0: DbKeys(3, 1)}), say=lambda line: None)

    assert found == {0: DbKeys(3, 1)}
    assert steps(runner) == ["stop", "stage", "rebuild", "start"]

    stage = runner.calls_starting("docker", "run")[0].argv
    assert stage[stage.index("--user") + 1] == "root"
    assert stage[stage.index("--volumes-from") + 1] == "c0ffee"
    assert "readonly" in stage[stage.index("--mount") + 1]
    rebuild = runner.calls_starting("docker", "run")[1].argv
    assert rebuild[rebuild.index("--user") + 1] == "redis"
    assert "--mount" not in rebuild
    assert rebuild[-5:] == ["/data", "dump.rdb", "appendonlydir", "appendonly.aof", "16"]


def test_a_temporary_server_with_other_counts_fails_before_the_start(
    runner: FakeRunner, restorer: Restorer
) -> None:
    runner.on("docker", "run", stdout="db0:keys=1,expires=0,avg_ttl=0\n")
    with pytest.raises(RestoreFailed, match="temporary Redis loaded other counts: db0 has 1"):
        restorer.replace(manifest({0: DbKeys(3, 1)}), say=lambda line: None)
    assert steps(runner) == ["stop", "stage", "rebuild"]


def test_a_failing_step_reports_its_own_line(runner: FakeRunner, restorer: Restorer) -> None:
    runner.on(
        "docker", "run", returncode=3,
        stderr="noise\nkc-restore: the new AOF has no manifest\nredis log line\n",
    )  # fmt: skip
    with pytest.raises(RestoreFailed, match=r"^stage: the new AOF has no manifest$"):
        restorer.replace(manifest({0: DbKeys(3, 1)}), say=lambda line: None)


def test_put_back_stops_undoes_and_starts(runner: FakeRunner, restorer: Restorer) -> None:
    restorer.put_back()
    assert steps(runner) == ["stop", "put-back", "start"]
    put_back = runner.calls_starting("docker", "run")[0].argv
    assert put_back[-4:] == ["/data", "dump.rdb", "appendonlydir", restorer.hold]
    assert "--mount" not in put_back  # works even if the backup file is gone


# --- the put-back script itself, on a real folder -----------------------------------------------


def run_put_back(data: Path, hold: str) -> None:
    subprocess.run(
        ["sh", "-c", restore.PUT_BACK, "sh", str(data), "dump.rdb", "appendonlydir", hold],
        check=True,
    )


def tree(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): p.read_text() for p in sorted(folder.rglob("*")) if p.is_file()
    }


@pytest.mark.skipif(shutil.which("sh") is None, reason="needs a POSIX shell")
def test_put_back_restores_moved_files_and_removes_new_ones(tmp_path: Path) -> None:
    hold = "kc-pre-restore-1234"
    (tmp_path / hold / "appendonlydir").mkdir(parents=True)
    (tmp_path / hold / "appendonlydir" / "appendonly.aof.1.base.rdb").write_text("old base")
    (tmp_path / hold / "dump.rdb").write_text("old dump")
    (tmp_path / "appendonlydir").mkdir()
    (tmp_path / "appendonlydir" / "appendonly.aof.2.base.rdb").write_text("new base")
    (tmp_path / "dump.rdb").write_text("the backup")

    run_put_back(tmp_path, hold)

    assert tree(tmp_path) == {
        "appendonlydir/appendonly.aof.1.base.rdb": "old base",
        "dump.rdb": "old dump",
    }


@pytest.mark.skipif(shutil.which("sh") is None, reason="needs a POSIX shell")
def test_put_back_deletes_what_did_not_exist_before(tmp_path: Path) -> None:
    hold = "kc-pre-restore-1234"
    (tmp_path / hold / "appendonlydir").mkdir(parents=True)
    (tmp_path / hold / "appendonlydir" / "appendonly.aof.manifest").write_text("old")
    (tmp_path / hold / ".absent-dump.rdb").write_text("")
    (tmp_path / "dump.rdb.kc-restoring").write_text("half a copy")

    run_put_back(tmp_path, hold)

    assert tree(tmp_path) == {"appendonlydir/appendonly.aof.manifest": "old"}


@pytest.mark.skipif(shutil.which("sh") is None, reason="needs a POSIX shell")
def test_put_back_without_its_folder_touches_nothing(tmp_path: Path) -> None:
    (tmp_path / "appendonlydir").mkdir()
    (tmp_path / "appendonlydir" / "a").write_text("current")
    (tmp_path / "kc-pre-restore-other").mkdir()  # another restore's: not ours to touch
    (tmp_path / "kc-pre-restore-other" / "dump.rdb").write_text("older")

    run_put_back(tmp_path, "kc-pre-restore-1234")

    assert tree(tmp_path) == {
        "appendonlydir/a": "current",
        "kc-pre-restore-other/dump.rdb": "older",
    }
    assert os.listdir(tmp_path / "kc-pre-restore-other") == ["dump.rdb"]
