"""Bad input never costs data: each case is one `error:` line, exit 1, and Redis as it was.

The functions run as the tasks run them (wrapped in `one_line_errors`), against one real Redis
whose keys, values and container start time are compared before and after every case. The last
tests fail a restore on purpose after Redis was stopped, and check that the old data comes back.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from invoke.exceptions import Exit

from kcdev import files
from kcdev.backup import restore, store
from kcdev.backup.restore import Restorer
from kcdev.backup.save import backup
from kcdev.console import one_line_errors
from kcdev.redis_client import DbKeys
from tests.support.redis_data import contents, write_keys
from tests.support.redis_target import FixedPortRedis

pytestmark = pytest.mark.integration


def quiet(line: str) -> None:
    pass


@pytest.fixture(scope="module")
def server(stack_images: dict[str, str]) -> Iterator[FixedPortRedis]:
    with FixedPortRedis(stack_images["REDIS_IMAGE"]) as container:
        write_keys(container.client(), 1_000, ttl_every=10)
        yield container


@pytest.fixture(scope="module")
def good_backup(server: FixedPortRedis, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A sound backup of *other* data than the server holds, so a restore would show."""
    with FixedPortRedis(server.image) as other:
        write_keys(other.client(), 300, prefix="other")
        return backup(other.target(), tmp_path_factory.mktemp("good"), say=quiet)


def started_at(server: FixedPortRedis) -> str:
    return server.docker("inspect", "--format", "{{.State.StartedAt}}", server.container_id).stdout


@pytest.fixture
def untouched(server: FixedPortRedis) -> Iterator[None]:
    """After the test: the same keys and values, and the container never restarted."""
    before, since = contents(server), started_at(server)
    yield
    assert contents(server) == before
    assert started_at(server) == since


def fails_in_one_line(capsys: pytest.CaptureFixture[str], call: Callable[[], object]) -> str:
    """Run like a task does; return the error line after checking it is the only output there."""
    with pytest.raises(Exit) as caught:
        one_line_errors(call)()
    assert caught.value.code == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: "), err
    return err.removeprefix("error: ").strip()


def with_manifest(path: Path, data: bytes, like: Path) -> Path:
    """A file described by a manifest that matches it, as if it had been backed up that way."""
    path.write_bytes(data)
    described = dataclasses.replace(
        store.read_manifest(like),
        file=path.name,
        size=len(data),
        sha256=hashlib.sha256(data).hexdigest(),
    )
    store.write_manifest(path, described)
    return path


def missing(good: Path, folder: Path) -> Path:
    return folder / "redis-nothing.rdb"


def empty(good: Path, folder: Path) -> Path:
    return with_manifest(folder / "empty.rdb", b"", good)


def truncated(good: Path, folder: Path) -> Path:
    return with_manifest(folder / "truncated.rdb", good.read_bytes()[:-100], good)


def corrupt(good: Path, folder: Path) -> Path:
    data = good.read_bytes()
    middle = len(data) // 2
    flipped = data[:middle] + bytes(b ^ 0x5A for b in data[middle : middle + 16])
    return with_manifest(folder / "corrupt.rdb", flipped + data[middle + 16 :], good)


def foreign(good: Path, folder: Path) -> Path:
    return with_manifest(folder / "foreign.rdb", b'{"not": "an rdb"}\n' * 50, good)


def newer_rdb_version(good: Path, folder: Path) -> Path:
    return with_manifest(folder / "newer.rdb", b"REDIS0099" + good.read_bytes()[9:], good)


def manifest_mismatch(good: Path, folder: Path) -> Path:
    path = with_manifest(folder / "changed.rdb", good.read_bytes(), good)
    path.write_bytes(good.read_bytes() + b"\0")
    return path


def newer_file_without_manifest(good: Path, folder: Path) -> Path:
    """No manifest: an RDB file from elsewhere, checked by its header like any other."""
    path = folder / "dump-from-redis-7.4.rdb"
    path.write_bytes(b"REDIS0012" + good.read_bytes()[9:])
    return path


BAD_FILES = [
    (missing, "no backup file"),
    (empty, "is empty"),
    (truncated, "fails redis-check-rdb"),
    (corrupt, "fails redis-check-rdb"),
    (foreign, "is not a Redis RDB file"),
    (newer_rdb_version, "is RDB version 99, which Redis 7.0.15 cannot read"),
    (manifest_mismatch, "does not match its manifest"),
    (
        newer_file_without_manifest,
        "is RDB version 12, which Redis 7.0.15 cannot read (it reads up to 10)",
    ),
]


@pytest.mark.parametrize(("make", "message"), BAD_FILES, ids=[f.__name__ for f, _ in BAD_FILES])
@pytest.mark.usefixtures("untouched")
def test_a_bad_file_is_refused_in_one_line(
    make: Callable[[Path, Path], Path],
    message: str,
    server: FixedPortRedis,
    good_backup: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    bad = make(good_backup, tmp_path)

    line = fails_in_one_line(
        capsys,
        lambda: restore.restore(server.target(), bad, yes=True, backups_dir=tmp_path, say=quiet),
    )

    assert message in line
    assert not list(tmp_path.glob("*pre-restore*"))  # refused before the safety backup


@pytest.mark.usefixtures("untouched")
def test_not_enough_disk_refuses_backup_and_restore(
    server: FixedPortRedis,
    good_backup: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(files, "free_bytes", lambda path: 4096)

    line = fails_in_one_line(capsys, lambda: backup(server.target(), tmp_path, say=quiet))
    assert line.startswith(f"not enough disk space in {tmp_path}: 4.0 KiB free")

    line = fails_in_one_line(
        capsys,
        lambda: restore.restore(
            server.target(), good_backup, yes=True, backups_dir=tmp_path, say=quiet
        ),
    )
    # For the safety backup: nothing replaced, and the journal it had begun is gone again.
    assert line.startswith(f"restore failed (not enough disk space in {tmp_path}")
    assert line.endswith(
        "rolled back, Redis is on its data from before; " + good_backup.name + " is unchanged"
    )
    assert list(tmp_path.iterdir()) == []


def test_redis_down_refuses_backup_and_restore(
    server: FixedPortRedis,
    good_backup: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    before = contents(server)
    target = server.target()
    server.docker("stop", server.container_id)
    try:
        line = fails_in_one_line(capsys, lambda: backup(target, tmp_path, say=quiet))
        assert line.startswith(f"Redis does not answer at {target.address}")
        assert line.endswith("start it with `invoke up`")

        line = fails_in_one_line(
            capsys, lambda: restore.restore(target, good_backup, yes=True, backups_dir=tmp_path)
        )
        assert line.startswith(f"Redis does not answer at {target.address}")
    finally:
        server.docker("start", server.container_id)
        server.wait_ready()
    assert contents(server) == before
    assert list(tmp_path.iterdir()) == []


@pytest.mark.usefixtures("untouched")
def test_without_yes_and_without_a_terminal_nothing_is_replaced(
    server: FixedPortRedis,
    good_backup: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    line = fails_in_one_line(
        capsys,
        lambda: restore.restore(server.target(), good_backup, backups_dir=tmp_path, say=quiet),
    )
    assert line.endswith("refusing without a terminal: pass --yes")


# --- failures after Redis was stopped: the old data comes back --------------------------------


def lying_manifest(good: Path, folder: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A manifest that matches the file's bytes but not its keys: the temporary Redis finds out."""
    path = with_manifest(folder / "lying.rdb", good.read_bytes(), good)
    manifest = dataclasses.replace(store.read_manifest(path), databases={0: DbKeys(5, 0)})
    store.manifest_path(path).unlink()
    store.write_manifest(path, manifest)
    return path


def fail_final_count(good: Path, folder: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    # The real server has loaded the new AOF already: the rollback must undo that too.
    def came_back_wrong(self: Restorer, expect: object) -> None:
        raise restore.RestoreFailed("Redis came back with other counts: db0 has 1 keys")

    monkeypatch.setattr(Restorer, "check", came_back_wrong)
    return good


@pytest.mark.parametrize(
    ("inject", "reason"),
    [
        (lying_manifest, "the temporary Redis loaded other counts: db0 has 300 keys, the backup 5"),
        (fail_final_count, "Redis came back with other counts: db0 has 1 keys"),
    ],
    ids=["in-the-temporary-redis", "after-the-real-start"],
)
def test_a_failure_after_the_stop_puts_the_old_data_back(
    server: FixedPortRedis,
    good_backup: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    inject: Callable[[Path, Path, pytest.MonkeyPatch], Path],
    reason: str,
) -> None:
    before = contents(server)
    file = inject(good_backup, tmp_path, monkeypatch)

    line = fails_in_one_line(
        capsys,
        lambda: restore.restore(server.target(), file, yes=True, backups_dir=tmp_path, say=quiet),
    )

    assert line.startswith(f"restore failed ({reason}")
    assert line.endswith(f"rolled back, Redis is on its data from before; {file.name} is unchanged")
    assert contents(server) == before
    server.restart_and_wait()
    assert contents(server) == before  # the AOF put back is the one Redis loads
    data = server.docker("exec", server.container_id, "ls", "-A", "/data").stdout.split()
    assert sorted(data) == ["appendonlydir", "dump.rdb"]  # nothing left behind, no journal
    assert store.mismatch(good_backup, store.read_manifest(good_backup)) is None
