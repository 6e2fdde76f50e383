"""What `invoke up`, `ps` and `restore-redis` do about a restore cut short, docker faked."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kcdev.backup import journal, recovery
from kcdev.stack.compose import ComposeProject
from kcdev.stack.docker_cli import Docker
from tests.unit.conftest import FakeRunner, MakeSettings

STATUS = ("docker", "exec", "r1", "kc-redis-journal", "status", "/data")


@pytest.fixture
def project(
    runner: FakeRunner, docker: Docker, make_settings: MakeSettings, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> ComposeProject:  # fmt: skip
    """A stack whose Redis runs (container r1) on the volume kc-devenv_redis-data."""
    monkeypatch.setattr(journal, "LOCK_DIR", tmp_path)
    runner.on("docker", "volume", "ls", stdout="kc-devenv_redis-data\n")
    runner.on("docker", "ps", "-aq", "--filter", stdout="r1\n")
    entry = {
        "Id": "r1", "State": {"Status": "running"}, "RestartCount": 0,
        "Config": {"Labels": {"com.docker.compose.service": "redis"}},
    }  # fmt: skip
    runner.on("docker", "inspect", "r1", stdout=json.dumps([entry]))
    runner.on("docker", "inspect", "--format", "{{.Image}}", "r1", stdout="sha256:img\n")
    return ComposeProject(make_settings(), "none", docker)


def test_nothing_to_do_costs_a_few_docker_calls_and_says_nothing(
    project: ComposeProject, runner: FakeRunner
) -> None:
    runner.on(*STATUS, stdout="active=no\nphase=\nname=\nexpect=\noutcome=\n")
    said: list[str] = []

    recovery.settle(project, said.append)

    assert said == []
    assert [a[1] for a in runner.argvs] == ["volume", "ps", "inspect", "exec"]


def test_without_a_volume_there_is_nothing_to_look_at(
    project: ComposeProject, runner: FakeRunner
) -> None:
    runner.on("docker", "volume", "ls", stdout="")
    recovery.settle(project, print)
    assert [a[1] for a in runner.argvs] == ["volume"]


def test_an_image_from_before_the_journal_is_left_alone(
    project: ComposeProject, runner: FakeRunner
) -> None:
    runner.on(*STATUS, returncode=126, stderr="exec: kc-redis-journal: not found\n")
    said: list[str] = []
    recovery.settle(project, said.append)  # no error: `invoke ps` must still work
    assert said == []


def test_a_restore_finished_by_redis_itself_is_reported_once(
    project: ComposeProject, runner: FakeRunner
) -> None:
    runner.on(
        *STATUS, stdout="active=no\nphase=\nname=\nexpect=\noutcome=rolled-back building x.rdb\n"
    )
    said: list[str] = []

    recovery.settle(project, said.append)

    assert said == [
        "the restore of x.rdb was cut short while it rebuilt the AOF from the backup: rolled it "
        "back, Redis has its data from before"
    ]
    assert ["docker", "exec", "r1", "kc-redis-journal", "seen", "/data"] in runner.argvs


def test_a_live_restore_in_another_process_is_left_alone(
    project: ComposeProject, runner: FakeRunner
) -> None:
    said: list[str] = []
    with journal.restoring("kc-devenv_redis-data"):
        recovery.settle(project, said.append)
    assert said == ["a restore of Redis is running in another process: leaving it alone"]
    assert not any(a[1] == "exec" for a in runner.argvs)
