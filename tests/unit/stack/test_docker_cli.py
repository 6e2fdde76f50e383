"""The docker CLI wrapper: daemon check, compose detection, API version, output helpers."""

from __future__ import annotations

import os
import shutil
import stat
import sys
from pathlib import Path

import pytest

from kcdev.errors import UserError
from kcdev.stack.docker_cli import Docker, last_line, run_subprocess
from tests.unit.conftest import FakeRunner

NOT_RUNNING = (
    "Cannot connect to the Docker daemon at unix:///var/run/docker.sock. "
    "Is the docker daemon running?"
)
PERMISSION_DENIED = (
    "permission denied while trying to connect to the Docker daemon socket at "
    'unix:///var/run/docker.sock: Get "http://%2Fvar%2Frun%2Fdocker.sock/v1.24/info": '
    "dial unix /var/run/docker.sock: connect: permission denied"
)


# --- ensure_daemon ---------------------------------------------------------------------------


def test_ensure_daemon_passes_when_docker_info_succeeds(docker: Docker, runner: FakeRunner) -> None:
    runner.on("docker", "info", stdout="27.3.1\n")

    docker.ensure_daemon()

    assert runner.argvs == [["docker", "info", "--format", "{{.ServerVersion}}"]]
    assert runner.calls[0].kwargs == {"timeout": 30}


def test_ensure_daemon_says_not_running_when_docker_info_fails(
    docker: Docker, runner: FakeRunner
) -> None:
    runner.on("docker", "info", returncode=1, stderr=f"Client: ...\n{NOT_RUNNING}\n")

    with pytest.raises(UserError) as caught:
        docker.ensure_daemon()

    assert "not running" in str(caught.value)
    assert "\n" not in str(caught.value)


def test_ensure_daemon_reports_permission_denied(docker: Docker, runner: FakeRunner) -> None:
    runner.on("docker", "info", returncode=1, stderr=f"{PERMISSION_DENIED}\n")

    with pytest.raises(UserError) as caught:
        docker.ensure_daemon()

    message = str(caught.value)
    assert "permission denied" in message
    assert "docker group" in message
    assert "not running" not in message


def test_ensure_daemon_without_docker_cli_says_not_installed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(shutil, "which", lambda name: None)

    with pytest.raises(UserError, match=r"^docker is not installed"):
        Docker().ensure_daemon()


# --- compose detection -----------------------------------------------------------------------


def test_compose_prefers_v2(docker: Docker, runner: FakeRunner) -> None:
    assert docker.compose() == ["docker", "compose"]
    assert runner.argvs == [["docker", "compose", "version", "--short"]]


def test_compose_falls_back_to_v1(docker: Docker, runner: FakeRunner) -> None:
    runner.on(
        "docker", "compose", returncode=1, stderr="docker: 'compose' is not a docker command."
    )

    assert docker.compose() == ["docker-compose"]
    assert runner.argvs[-1] == ["docker-compose", "version", "--short"]


def test_compose_without_v2_or_v1_raises_user_error(docker: Docker, runner: FakeRunner) -> None:
    runner.on("docker", "compose", returncode=1)
    runner.on("docker-compose", returncode=127)

    with pytest.raises(UserError, match=r"^docker compose is not installed"):
        docker.compose()


def test_compose_is_detected_once(docker: Docker, runner: FakeRunner) -> None:
    docker.compose()
    docker.compose()

    assert len(runner.calls) == 1


def write_stub(folder: Path, name: str, exit_code: int) -> None:
    script = folder / name
    script.write_text(f"#!/bin/sh\nexit {exit_code}\n")
    script.chmod(script.stat().st_mode | stat.S_IXUSR)


def test_compose_with_real_runner_and_no_compose_raises_user_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_stub(tmp_path, "docker", 1)  # a docker CLI without the compose plugin
    monkeypatch.setenv("PATH", str(tmp_path))

    with pytest.raises(UserError):
        Docker().compose()


def test_compose_with_real_runner_and_no_compose_advises_the_v2_plugin(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_stub(tmp_path, "docker", 1)
    monkeypatch.setenv("PATH", str(tmp_path))

    with pytest.raises(UserError, match="compose v2 plugin"):
        Docker().compose()


# --- API version -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("stdout", "version", "supported"),
    [
        ("1.41\n", (1, 41), False),
        ("1.43", (1, 43), False),
        ("1.44\n", (1, 44), True),
        ("1.47\n", (1, 47), True),
        ("2.0", (2, 0), True),
        ("garbage", (0,), False),
        ("", (0,), False),
        ("1.4x", (0,), False),
    ],
)
def test_api_version_and_start_interval_support(
    docker: Docker, runner: FakeRunner, stdout: str, version: tuple[int, ...], supported: bool
) -> None:
    runner.on("docker", "version", stdout=stdout)

    assert docker.api_version() == version
    assert docker.supports_start_interval() is supported
    assert runner.argvs == [["docker", "version", "--format", "{{.Server.APIVersion}}"]]


def test_api_version_of_unreachable_daemon_is_zero(docker: Docker, runner: FakeRunner) -> None:
    runner.on("docker", "version", returncode=1, stdout="", stderr=NOT_RUNNING)

    assert docker.api_version() == (0,)
    assert docker.supports_start_interval() is False


# --- small helpers ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("one\ntwo\n", "two"),
        ("first\nError: the real cause  \n\n   \n", "Error: the real cause"),
        ("  only  ", "only"),
        ("", ""),
        ("\n \n\t\n", ""),
    ],
)
def test_last_line(text: str, expected: str) -> None:
    assert last_line(text) == expected


def test_run_prefixes_docker_and_forwards_keywords(docker: Docker, runner: FakeRunner) -> None:
    docker.run("ps", "-a", timeout=7)

    assert runner.calls[0].argv == ["docker", "ps", "-a"]
    assert runner.calls[0].kwargs == {"timeout": 7}


def test_image_exists_follows_the_inspect_exit_code(docker: Docker, runner: FakeRunner) -> None:
    runner.on("docker", "image", "inspect", "--format", "{{.Id}}", "absent:1", returncode=1)

    assert docker.image_exists("present:1") is True
    assert docker.image_exists("absent:1") is False


# --- run_subprocess (real processes, no Docker) ----------------------------------------------


def test_run_subprocess_captures_output_and_does_not_raise_on_failure() -> None:
    result = run_subprocess(
        [sys.executable, "-c", "import sys; print('out'); print('err', file=sys.stderr); exit(3)"]
    )

    assert (result.returncode, result.stdout, result.stderr) == (3, "out\n", "err\n")


def test_run_subprocess_passes_env_and_input() -> None:
    env = {**os.environ, "KC_UNIT_VALUE": "from-env"}

    result = run_subprocess(
        [
            sys.executable,
            "-c",
            "import os, sys; print(os.environ['KC_UNIT_VALUE'] + sys.stdin.read())",
        ],
        env=env,
        input="+stdin",
    )

    assert result.stdout == "from-env+stdin\n"


def test_run_subprocess_missing_program_is_a_user_error(tmp_path: Path) -> None:
    missing = str(tmp_path / "no-such-program")

    with pytest.raises(UserError, match=r"no-such-program is not installed"):
        run_subprocess([missing, "--version"])


def test_run_subprocess_timeout_is_a_user_error() -> None:
    with pytest.raises(UserError, match=r"did not finish within 0 s"):
        run_subprocess([sys.executable, "-c", "import time; time.sleep(10)"], timeout=0.2)
