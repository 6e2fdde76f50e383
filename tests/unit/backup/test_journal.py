"""The journal seen from Python: where its commands run, what they answer, and the host lock."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest

from kcdev.backup import journal
from kcdev.backup.journal import Journal, JournalError, Outcome, parse_status
from kcdev.errors import UserError
from kcdev.redis_client import DbKeys
from kcdev.stack.docker_cli import Docker
from tests.unit.conftest import FakeRunner

STATUS = "active=yes\nphase=building\nname=redis-x.rdb\nexpect=0:10:2 3:1:0 \noutcome=\n"


def test_parse_status_of_an_unfinished_restore() -> None:
    status = parse_status(STATUS)
    assert (status.active, status.phase, status.name, status.outcome) == (
        True, "building", "redis-x.rdb", None,
    )  # fmt: skip
    assert status.expect is not None
    assert status.expect.databases == {0: DbKeys(10, 2), 3: DbKeys(1, 0)}


def test_parse_status_of_a_finished_one() -> None:
    status = parse_status("active=no\nphase=\nname=\nexpect=\noutcome=finished built dump.rdb\n")
    assert not status.active and status.expect is None
    assert status.outcome == Outcome("finished", "built", "dump.rdb")


@pytest.mark.parametrize(
    ("outcome", "line"),
    [
        (
            Outcome("rolled-back", "building", "redis-x.rdb"),
            "the restore of redis-x.rdb was cut short while it rebuilt the AOF from the backup: "
            "rolled it back, Redis has its data from before",
        ),
        (
            Outcome("finished", "switched", "dump.rdb"),
            "the restore of dump.rdb was cut short after the new data was in place: finished it, "
            "Redis has the restored data",
        ),
        (
            Outcome("rolled-back", "odd", "x.rdb"),
            "the restore of x.rdb was cut short in phase odd: rolled it back, Redis has its data "
            "from before",
        ),
    ],
)
def test_outcome_lines(outcome: Outcome, line: str) -> None:
    assert outcome.line() == line


def test_commands_run_inside_a_running_redis(runner: FakeRunner, docker: Docker) -> None:
    Journal(docker, "vol", "sha256:img", "c0ffee").commit()
    assert runner.argvs == [["docker", "exec", "c0ffee", "kc-redis-journal", "commit", "/data"]]


def test_without_a_running_redis_they_run_beside_its_volume(
    runner: FakeRunner, docker: Docker, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KC_RESTORE_HOLD_AT", "rolling-back")
    Journal(docker, "vol", "sha256:img", None).back()
    argv = runner.argvs[0]
    assert argv[:3] == ["docker", "run", "--rm"]
    assert argv[argv.index("--label") + 1] == "kc-devenv.restore-volume=vol"
    assert argv[argv.index("--mount") + 1] == "type=volume,source=vol,target=/data"
    assert argv[argv.index("--env") + 1] == "KC_RESTORE_HOLD_AT=rolling-back"
    assert argv[-3:] == ["sha256:img", "back", "/data"]


def test_a_failing_command_says_its_kc_restore_line(runner: FakeRunner, docker: Docker) -> None:
    runner.on("docker", "exec", returncode=3, stderr="x\nkc-restore: no switched restore\n")
    with pytest.raises(JournalError, match=r"^no switched restore$"):
        Journal(docker, "vol", "img", "c0ffee").commit()


def test_an_interrupted_command_removes_its_container(runner: FakeRunner, docker: Docker) -> None:
    def interrupted(argv: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
        if argv[1] == "run":  # Ctrl-C while the step's container runs
            raise KeyboardInterrupt
        return runner(argv, **kwargs)

    runner.on("docker", "ps", stdout="d00d\n")
    docker.runner = interrupted
    with pytest.raises(KeyboardInterrupt):
        Journal(docker, "vol", "img", None).recover()
    assert ["docker", "rm", "--force", "d00d"] in runner.argvs


def test_the_host_lock_marks_a_live_restore(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(journal, "LOCK_DIR", tmp_path)
    assert not journal.restore_running("vol")
    with journal.restoring("vol"):
        assert journal.restore_running("vol")
        with (
            pytest.raises(UserError, match="another restore of this Redis is running"),
            journal.restoring("vol"),
        ):
            pass
    assert not journal.restore_running("vol")
