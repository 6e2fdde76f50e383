"""Finding the stack's Redis for backup and restore, and reading its keyspace."""

from __future__ import annotations

import json

import pytest

from kcdev.backup.redis_target import target_from_project
from kcdev.errors import UserError
from kcdev.redis_client import DbKeys, keyspace
from kcdev.stack.compose import ComposeProject
from kcdev.stack.docker_cli import Docker
from tests.unit.conftest import FakeRunner, MakeSettings


def ps_line(state: str) -> str:
    return json.dumps(
        {"Service": "redis", "ID": "0123456789abcdef", "State": state, "Publishers": []}
    )


def test_target_from_a_running_stack(
    runner: FakeRunner, docker: Docker, make_settings: MakeSettings
) -> None:
    runner.default = (0, ps_line("running") + "\n", "")  # `docker compose ... ps`
    runner.on("docker", "inspect", stdout="sha256:feed kc-devenv_redis-data\n")
    project = ComposeProject(
        make_settings(redis_password="s3cret", redis_port="6390"), "none", docker
    )

    target = target_from_project(project)

    assert (target.container_id, target.image) == ("0123456789abcdef", "sha256:feed")
    assert (target.host, target.port, target.password) == ("127.0.0.1", 6390, "s3cret")
    assert target.source == "project kc-devenv, container 0123456789ab"
    assert target.volume == "kc-devenv_redis-data"  # the journal's containers mount it by name


def test_a_redis_without_a_data_volume_is_refused_in_one_line(
    runner: FakeRunner, docker: Docker, make_settings: MakeSettings
) -> None:
    runner.default = (0, ps_line("running") + "\n", "")
    runner.on("docker", "inspect", stdout="sha256:feed \n")  # /data is not a volume
    project = ComposeProject(make_settings(), "none", docker)
    with pytest.raises(UserError, match=r"keeps /data outside a docker volume"):
        target_from_project(project)


@pytest.mark.parametrize("ps_output", ["", ps_line("exited") + "\n"])
def test_target_from_a_stopped_stack_says_how_to_start_it(
    runner: FakeRunner, docker: Docker, make_settings: MakeSettings, ps_output: str
) -> None:
    runner.default = (0, ps_output, "")
    project = ComposeProject(make_settings(), "none", docker)
    with pytest.raises(UserError, match=r"^Redis is not running: start it with `invoke up`$"):
        target_from_project(project)


def test_keyspace_from_info() -> None:
    info = {"db0": {"keys": 2, "expires": 1, "avg_ttl": 3}, "db15": {"keys": 7, "expires": 0}}
    assert keyspace(info) == {0: DbKeys(2, 1), 15: DbKeys(7, 0)}
    assert keyspace({}) == {}
