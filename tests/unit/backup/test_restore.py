"""Restore: the file (with or without a manifest), the key counts, the docker steps, and the way
back from each step."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from kcdev.backup import restore, store
from kcdev.backup.incoming import Expectation, verify_file
from kcdev.backup.journal import Journal
from kcdev.backup.rdb import CheckResult
from kcdev.backup.redis_target import RedisTarget
from kcdev.backup.restore import RestoreFailed, Restorer
from kcdev.errors import UserError
from kcdev.redis_client import DbKeys
from kcdev.stack.docker_cli import Docker
from tests.unit.conftest import FakeRunner

from .test_rdb import CHECK_OK, CHECK_TRUNCATED

TARGET = RedisTarget("c0ffee", "127.0.0.1", 6379, "", "sha256:abc", "test", "kc-devenv_redis-data")


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


def test_expectation_accepts_exact_counts_and_expired_ttl_keys() -> None:
    want = Expectation.of_databases({0: DbKeys(10, 4), 2: DbKeys(1, 0)})
    assert want.problem({0: DbKeys(10, 4), 2: DbKeys(1, 0)}) is None
    # up to 4 keys with a TTL may have expired since the backup
    assert want.problem({0: DbKeys(6, 0), 2: DbKeys(1, 0)}) is None


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
def test_expectation_names_the_database(found: dict[int, DbKeys], problem: str) -> None:
    want = Expectation.of_databases({0: DbKeys(10, 4), 2: DbKeys(1, 0)})
    assert problem in (want.problem(found) or "")


def test_a_file_without_manifest_is_checked_by_its_total() -> None:
    want = Expectation(None, DbKeys(10, 4))
    assert want.problem({0: DbKeys(3, 0), 7: DbKeys(4, 0)}) is None
    assert want.problem({0: DbKeys(5, 0)}) == "5 keys, the file 10 (4 of them with a TTL)"
    assert want.problem({0: DbKeys(11, 0)}) == "11 keys, the file 10 (4 of them with a TTL)"


@pytest.mark.parametrize(
    "want",
    [
        Expectation.of_databases({0: DbKeys(10, 4), 2: DbKeys(1, 0)}),
        Expectation(None, DbKeys(7, 2)),
        Expectation.of_databases({}),
    ],
)
def test_expectation_round_trips_through_the_journal(want: Expectation) -> None:
    assert Expectation.parse(" ".join(want.args())) == want


def test_expectation_refuses_what_it_cannot_read() -> None:
    with pytest.raises(ValueError, match="unexpected item"):
        Expectation.parse("0:1")


# --- the file -----------------------------------------------------------------------------------


def test_verify_file_accepts_a_backup_that_matches_its_manifest(tmp_path: Path) -> None:
    incoming = verify_file(backup_file(tmp_path))
    assert incoming.manifest is not None and incoming.manifest.keys == 3
    assert incoming.expectation(CheckResult(True, 99, 0, "")).databases == {0: DbKeys(3, 1)}


def test_verify_file_accepts_an_rdb_file_from_elsewhere(tmp_path: Path) -> None:
    path = tmp_path / "dump.rdb"
    path.write_bytes(b"REDIS0010someone else's dump")

    incoming = verify_file(path)

    assert incoming.manifest is None
    assert incoming.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert (incoming.size, incoming.rdb_version) == (len(path.read_bytes()), 10)
    # redis-check-rdb's count, less the keys a server drops on load because they expired
    check = CheckResult(True, keys=12, expires=5, problem="", already_expired=2)
    assert incoming.expectation(check) == Expectation(None, DbKeys(10, 3))
    assert "no manifest" in incoming.described()


@pytest.mark.parametrize(
    ("prepare", "message"),
    [
        (lambda p: p.unlink(), "no backup file"),
        (lambda p: (p.unlink(), p.mkdir()), "is a folder: pass a backup file in it"),
        (lambda p: p.write_bytes(b""), "is empty"),
        (lambda p: p.write_bytes(b"PK\x03\x04zip"), "is not a Redis RDB file"),
        (lambda p: p.write_bytes(b"REDIS0010resT"), "does not match its manifest"),
        (lambda p: p.write_bytes(b"REDIS0010re"), "does not match its manifest"),
        (lambda p: store.manifest_path(p).write_text("{"), "manifest .* is unreadable"),
    ],
    ids=["missing", "folder", "empty", "foreign", "changed", "truncated", "bad-manifest"],
)
def test_verify_file_refuses_bad_files_in_one_line(
    tmp_path: Path, prepare: object, message: str
) -> None:
    path = backup_file(tmp_path)
    prepare(path)  # type: ignore[operator]
    with pytest.raises(UserError, match=message) as caught:
        verify_file(path)
    assert "\n" not in str(caught.value)


def test_a_newer_rdb_version_is_refused_before_any_check(
    tmp_path: Path, runner: FakeRunner, docker: Docker
) -> None:
    path = tmp_path / "from-redis-7.4.rdb"
    path.write_bytes(b"REDIS0012rest")  # no manifest: refused all the same
    with pytest.raises(
        UserError,
        match=r"^from-redis-7\.4\.rdb is RDB version 12, which Redis 7\.0\.15 cannot read "
        r"\(it reads up to 10\): restore it into a newer Redis$",
    ):
        restore.verify_for_server(verify_file(path), docker, TARGET, "7.0.15")
    assert runner.calls == []


def test_the_servers_own_check_decides(tmp_path: Path, runner: FakeRunner, docker: Docker) -> None:
    incoming = verify_file(backup_file(tmp_path))
    runner.on("docker", "run", stdout=CHECK_OK)
    assert restore.verify_for_server(incoming, docker, TARGET, "7.0.15").keys == 3

    runner.on("docker", "run", returncode=1, stdout=CHECK_TRUNCATED)
    with pytest.raises(
        UserError, match=r"fails redis-check-rdb \(Unexpected EOF reading RDB file\)"
    ):
        restore.verify_for_server(incoming, docker, TARGET, "7.0.15")


# --- the docker steps ----------------------------------------------------------------------------


@pytest.fixture
def restorer(docker: Docker, monkeypatch: pytest.MonkeyPatch) -> Restorer:
    monkeypatch.setattr(Restorer, "wait_ready", lambda self: None)
    monkeypatch.setattr(Restorer, "check", lambda self, expect: {0: DbKeys(3, 1)})
    journal = Journal(docker, TARGET.volume, TARGET.image, TARGET.container_id, timeout=60)
    return Restorer(docker, TARGET, journal, timeout=60)


def steps(runner: FakeRunner) -> list[str]:
    """The docker commands run: `stop`, `start`, or the journal command and where it ran."""
    shown = []
    for argv in runner.argvs:
        if argv[1] == "run":
            shown.append(f"{argv[argv.index('kc-redis-journal') + 2]} (throwaway)")
        elif argv[1] == "exec":
            shown.append(f"{argv[argv.index('kc-redis-journal') + 1]} (exec)")
        elif argv[1] in ("stop", "start", "rm"):
            shown.append(argv[1])
    return shown


def test_replace_runs_the_steps_in_order(
    runner: FakeRunner, restorer: Restorer, tmp_path: Path
) -> None:
    incoming = verify_file(backup_file(tmp_path))

    found = restorer.replace(incoming, Expectation.of_databases({0: DbKeys(3, 1)}), say=print)

    assert found == {0: DbKeys(3, 1)}
    assert steps(runner) == ["stop", "restore (throwaway)", "start"]
    (run,) = runner.calls_starting("docker", "run")
    argv = run.argv
    assert argv[argv.index("--user") + 1] == "root"
    assert "--network" in argv and argv[argv.index("--network") + 1] == "none"
    assert f"kc-devenv.restore-volume={TARGET.volume}" in argv
    mounts = [argv[i + 1] for i, a in enumerate(argv) if a == "--mount"]
    assert f"type=volume,source={TARGET.volume},target=/data" in mounts
    assert any("readonly" in m and "/kc-restore/backup.rdb" in m for m in mounts)
    assert argv[-6:] == [
        "kc-redis-journal",
        TARGET.image,
        "restore",
        "/data",
        incoming.sha256,
        "1024",
    ]


def test_a_failing_step_reports_its_own_line(
    runner: FakeRunner, restorer: Restorer, tmp_path: Path
) -> None:
    runner.on(
        "docker", "run", returncode=3,
        stderr="noise\nkc-restore: the temporary Redis stopped while loading the backup\nlog\n",
    )  # fmt: skip
    with pytest.raises(RestoreFailed, match=r"^the temporary Redis stopped while loading"):
        restorer.replace(
            verify_file(backup_file(tmp_path)), Expectation.of_databases({}), say=print
        )


def test_roll_back_before_the_stop_leaves_redis_running(
    runner: FakeRunner, restorer: Restorer
) -> None:
    restorer.roll_back()
    assert steps(runner) == ["abandon (exec)"]


def test_roll_back_after_the_stop_puts_the_old_data_back(
    runner: FakeRunner, restorer: Restorer
) -> None:
    runner.on("docker", "ps", stdout="d00d\n")  # a step left running (interrupted)
    restorer.stopped = True

    restorer.roll_back()

    assert steps(runner) == ["rm", "stop", "back (throwaway)", "start"]
    back = runner.calls_starting("docker", "run")[0].argv
    assert "--mount" in back and not any("backup.rdb" in a for a in back)  # the file may be gone
    assert back[back.index("--user") + 1] == "redis"


# --- the whole restore, docker and Redis faked ---------------------------------------------------


@pytest.fixture
def quick(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> list[str]:
    """restore._run with the safety backup and the docker steps recorded instead of run."""
    done: list[str] = []

    def safety(*args: object, **kwargs: object) -> Path:
        done.append("safety")
        return tmp_path

    monkeypatch.setattr(restore, "backup", safety)
    monkeypatch.setattr(Journal, "begin", lambda self, *a: done.append("begin"))
    monkeypatch.setattr(Journal, "commit", lambda self: done.append("commit"))
    monkeypatch.setattr(Journal, "seen", lambda self: done.append("seen"))
    monkeypatch.setattr(Restorer, "roll_back", lambda self: done.append("roll back"))
    return done


def run_restore(restorer: Restorer, tmp_path: Path) -> object:
    incoming = verify_file(backup_file(tmp_path))
    expect = Expectation.of_databases({0: DbKeys(3, 1)})
    layout = ["dump.rdb", "appendonlydir", "appendonly.aof", "16"]
    return restore._run(restorer, incoming, expect, layout, tmp_path, 60, lambda line: None)


def test_a_restore_that_succeeds_commits_and_forgets_its_outcome(
    quick: list[str], restorer: Restorer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(Restorer, "replace", lambda self, *a: {0: DbKeys(3, 1)})
    assert run_restore(restorer, tmp_path) == {0: DbKeys(3, 1)}
    assert quick == ["begin", "safety", "commit", "seen"]


@pytest.mark.parametrize(
    ("failure", "said"),
    [
        (
            RestoreFailed("the new AOF has no manifest"),
            "restore failed (the new AOF has no manifest)",
        ),
        (KeyboardInterrupt(), "restore interrupted by SIGINT (Ctrl-C)"),
    ],
)
def test_a_restore_that_fails_or_is_interrupted_rolls_back_and_says_so(
    quick: list[str],
    restorer: Restorer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    failure: BaseException,
    said: str,
) -> None:
    def replace(self: Restorer, *args: object) -> None:
        raise failure

    monkeypatch.setattr(Restorer, "replace", replace)
    with pytest.raises(UserError) as caught:
        run_restore(restorer, tmp_path)
    assert str(caught.value) == (
        f"{said}: rolled back, Redis is on its data from before; "
        "redis-20250101T000000.000Z.rdb is unchanged"
    )
    assert quick == ["begin", "safety", "roll back", "seen"]


def test_a_failed_rollback_says_where_the_old_data_is(
    quick: list[str], restorer: Restorer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def fail(self: Restorer, *args: object) -> None:
        raise RestoreFailed("docker start: no such container")

    monkeypatch.setattr(Restorer, "replace", fail)
    monkeypatch.setattr(Restorer, "roll_back", fail)
    with pytest.raises(UserError, match=r"rolling back failed too .*kc-restore/old.*invoke ps"):
        run_restore(restorer, tmp_path)
