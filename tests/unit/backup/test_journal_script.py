"""kc-redis-journal on a real folder: every state an interruption can leave is finished or undone.

The script runs here as it runs in the image (POSIX sh, flock, sync), on a temporary folder that
stands for Redis' data volume; the Docker-only commands (restore, build) are left to the
integration tests. Each state below is what a kill between two renames of the switch leaves.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from kcdev.backup.journal import parse_status
from kcdev.paths import DOCKER_DIR

SCRIPT = DOCKER_DIR / "redis" / "kc-redis-journal"
LAYOUT = ["dump.rdb", "appendonlydir", "appendonly.aof", "16"]
OLD = {"appendonlydir/appendonly.aof.1.base.rdb": "old base", "dump.rdb": "old dump"}
NEW = {"appendonlydir/appendonly.aof.1.base.rdb": "new base", "dump.rdb": "new dump"}

pytestmark = pytest.mark.skipif(
    shutil.which("flock") is None or shutil.which("sh") is None, reason="needs sh and flock"
)


def journal(data: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["sh", str(SCRIPT), args[0], str(data), *args[1:]],
        capture_output=True, text=True, check=check, timeout=30,
    )  # fmt: skip


def write_tree(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def tree(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): p.read_text() for p in sorted(root.rglob("*")) if p.is_file()}


def data_only(root: Path) -> dict[str, str]:
    return {k: v for k, v in tree(root).items() if not k.startswith("kc-restore")}


def begun(data: Path, phase: str) -> Path:
    journal(data, "begin", "redis-x.rdb", *LAYOUT, "0:2:1")
    (data / "kc-restore" / "phase").write_text(phase + "\n")
    return data / "kc-restore"


@pytest.fixture
def data(tmp_path: Path) -> Path:
    folder = tmp_path / "data"
    write_tree(folder, OLD)
    return folder


def test_begin_records_the_restore_and_refuses_a_second_one(data: Path) -> None:
    journal(data, "begin", "redis-x.rdb", *LAYOUT, "0:10:2", "3:1:0")

    status = parse_status(journal(data, "status").stdout)
    assert (status.active, status.phase, status.name) == (True, "preparing", "redis-x.rdb")
    assert status.expect is not None and status.expect.args() == ["0:10:2", "3:1:0"]
    again = journal(data, "begin", "redis-y.rdb", *LAYOUT, "0:1:0", check=False)
    assert again.returncode == 3
    assert again.stderr.strip() == "kc-restore: an earlier restore (redis-x.rdb) is unfinished"
    assert data_only(data) == OLD


@pytest.mark.parametrize("phase", ["preparing", "building", ""])
@pytest.mark.parametrize("command", ["recover", "back", "abandon"])
def test_a_restore_that_had_not_switched_is_rolled_back(
    data: Path, phase: str, command: str
) -> None:
    j = begun(data, phase)
    write_tree(j / "new", {"dump.rdb": "half a cop", "appendonlydir/x": "half an AOF"})

    journal(data, command)

    assert tree(data) == {
        **OLD,
        "kc-restore.outcome": f"rolled-back {phase or 'preparing'} redis-x.rdb\n",
    }


# The switch moves the AOF folder, then the dump; each one old-aside, then new-in.
SWITCH_STATES = {
    "nothing-moved": ({}, {"dump.rdb", "appendonlydir"}),
    "old-aof-aside": ({"appendonlydir"}, {"dump.rdb", "appendonlydir"}),
    "aof-switched": ({"appendonlydir"}, {"dump.rdb"}),
    "old-dump-aside": ({"appendonlydir", "dump.rdb"}, {"dump.rdb"}),
    "all-switched": ({"appendonlydir", "dump.rdb"}, set()),
}


def switch_state(data: Path, name: str, phase: str) -> Path:
    """The data folder as a kill during the switch leaves it."""
    aside, still_new = SWITCH_STATES[name]
    j = begun(data, phase)
    write_tree(j / "new", NEW)
    (j / "old").mkdir()
    for item in ("appendonlydir", "dump.rdb"):
        if item in aside:
            shutil.move(data / item, j / "old" / item)
        if item not in still_new:
            shutil.move(j / "new" / item, data / item)
    return j


@pytest.mark.parametrize("state", SWITCH_STATES)
def test_recover_finishes_a_built_restore_from_any_point_of_the_switch(
    data: Path, state: str
) -> None:
    switch_state(data, state, "built")

    journal(data, "recover")

    assert data_only(data) == NEW
    assert parse_status(journal(data, "status").stdout).phase == "switched"
    journal(data, "recover")  # again: nothing more to do
    assert data_only(data) == NEW

    journal(data, "commit")
    assert tree(data) == {**NEW, "kc-restore.outcome": "finished switched redis-x.rdb\n"}
    journal(data, "seen")
    assert tree(data) == NEW


@pytest.mark.parametrize("phase", ["built", "switched", "rolling-back"])
@pytest.mark.parametrize("state", SWITCH_STATES)
def test_back_puts_the_old_data_back_from_any_point(data: Path, state: str, phase: str) -> None:
    switch_state(data, state, phase)

    journal(data, "back")

    assert tree(data) == {**OLD, "kc-restore.outcome": f"rolled-back {phase} redis-x.rdb\n"}


@pytest.mark.parametrize("state", SWITCH_STATES)
def test_recover_finishes_an_interrupted_rollback(data: Path, state: str) -> None:
    switch_state(data, state, "rolling-back")
    journal(data, "recover")
    assert data_only(data) == OLD


def test_a_dump_that_did_not_exist_before_is_removed_on_rollback(data: Path) -> None:
    (data / "dump.rdb").unlink()
    switch_state(data, "nothing-moved", "built")
    journal(data, "recover")
    assert data_only(data) == NEW
    assert (data / "kc-restore" / "old" / ".absent-dump.rdb").exists()

    journal(data, "back")

    assert data_only(data) == {"appendonlydir/appendonly.aof.1.base.rdb": "old base"}


def test_abandon_refuses_a_restore_that_changed_the_data(data: Path) -> None:
    switch_state(data, "aof-switched", "built")
    refused = journal(data, "abandon", check=False)
    assert refused.returncode == 3
    assert "the restore is built: it changed the data" in refused.stderr


def test_commit_needs_a_switched_restore(data: Path) -> None:
    begun(data, "building")
    refused = journal(data, "commit", check=False)
    assert refused.returncode == 3 and "no switched restore to commit" in refused.stderr
    assert (data / "kc-restore").is_dir()


@pytest.mark.parametrize("name", ["..", "a/b", "."])
def test_unsafe_names_in_the_layout_are_refused(data: Path, name: str) -> None:
    journal(data, "begin", "redis-x.rdb", name, "appendonlydir", "appendonly.aof", "16", "0:1:0")
    (data / "kc-restore" / "phase").write_text("built\n")
    refused = journal(data, "recover", check=False)
    assert refused.returncode == 3 and "unsafe file" in refused.stderr
    assert data_only(data) == OLD


def test_leftovers_of_a_journal_being_created_or_deleted_are_tidied(data: Path) -> None:
    write_tree(data, {"kc-restore.partial/name": "x", "kc-restore.done/old/dump.rdb": "older"})
    journal(data, "recover")
    assert tree(data) == OLD


def test_status_without_a_journal(data: Path) -> None:
    status = parse_status(journal(data, "status").stdout)
    assert not status.active and status.outcome is None and status.expect is None


def test_an_unknown_command_says_where_the_usage_is(data: Path) -> None:
    refused = journal(data, "frobnicate", check=False)
    assert refused.returncode == 3 and "unknown command 'frobnicate'" in refused.stderr
