"""The compose project: files per backend, the compose command line and its environment."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from kcdev import paths
from kcdev.backends import BACKENDS
from kcdev.errors import UserError
from kcdev.stack import images
from kcdev.stack.compose import (
    BASE_FILE,
    GPU_FILE,
    PRE25_DIR,
    ComposeProject,
    check_backend,
    compose_files,
)
from kcdev.stack.docker_cli import Docker
from tests.unit.conftest import FakeRunner, MakeSettings

DOCKER_DIR = paths.DOCKER_DIR
LLAMACPP_FILE = DOCKER_DIR / "docker-compose.llamacpp.yml"
VLLM_FILE = DOCKER_DIR / "docker-compose.vllm.yml"


def file_args(files: list[Path]) -> list[str]:
    return [arg for path in files for arg in ("--file", str(path))]


@pytest.fixture
def modern_runner(runner: FakeRunner) -> FakeRunner:
    """Compose v2 present, Engine 27 (API 1.47: start_interval supported)."""
    runner.on("docker", "version", stdout="1.47\n")
    return runner


# --- compose_files ---------------------------------------------------------------------------


def test_files_for_none_are_the_base_file_only(make_settings: MakeSettings) -> None:
    assert compose_files(make_settings(), "none") == [BASE_FILE]


def test_files_for_llamacpp_on_cpu(make_settings: MakeSettings) -> None:
    assert compose_files(make_settings(), "llamacpp") == [BASE_FILE, LLAMACPP_FILE]


@pytest.mark.parametrize("layers", ["-1", "1", "33"])
def test_files_for_llamacpp_add_gpu_file_when_layers_are_offloaded(
    make_settings: MakeSettings, layers: str
) -> None:
    files = compose_files(make_settings(n_gpu_layers=layers), "llamacpp")

    assert files == [BASE_FILE, LLAMACPP_FILE, GPU_FILE]


@pytest.mark.parametrize("layers", ["0", "-1"])
def test_files_for_vllm_cuda_always_include_the_gpu_file(
    make_settings: MakeSettings, layers: str
) -> None:
    files = compose_files(make_settings(n_gpu_layers=layers), "vllm")

    assert files == [BASE_FILE, VLLM_FILE, GPU_FILE]


@pytest.mark.parametrize("layers", ["0", "-1"])
def test_files_for_vllm_cpu_never_include_the_gpu_file(
    make_settings: MakeSettings, layers: str
) -> None:
    files = compose_files(make_settings(n_gpu_layers=layers, vllm_variant="cpu"), "vllm")

    assert files == [BASE_FILE, VLLM_FILE]


def test_gpu_layers_do_not_add_gpu_file_without_llm_server(make_settings: MakeSettings) -> None:
    assert compose_files(make_settings(n_gpu_layers="-1"), "none") == [BASE_FILE]


def test_old_engine_adds_the_redis_pre25_file_for_none(make_settings: MakeSettings) -> None:
    files = compose_files(make_settings(), "none", start_interval=False)

    assert files == [BASE_FILE, PRE25_DIR / "redis.yml"]


def test_old_engine_adds_one_pre25_file_per_service(make_settings: MakeSettings) -> None:
    files = compose_files(make_settings(n_gpu_layers="-1"), "llamacpp", start_interval=False)

    assert files == [
        BASE_FILE,
        LLAMACPP_FILE,
        GPU_FILE,
        PRE25_DIR / "redis.yml",
        PRE25_DIR / "llm-server.yml",
    ]


@pytest.mark.parametrize(
    ("backend", "layers"),
    [("none", "0"), ("llamacpp", "0"), ("llamacpp", "-1")],
)
def test_every_compose_file_exists(make_settings: MakeSettings, backend: str, layers: str) -> None:
    files = compose_files(make_settings(n_gpu_layers=layers), backend, start_interval=False)

    assert [path for path in files if not path.is_file()] == []


def test_every_vllm_compose_file_exists(make_settings: MakeSettings) -> None:
    files = compose_files(make_settings(), "vllm", start_interval=False)

    assert [path for path in files if not path.is_file()] == []


def test_unknown_backend_lists_the_valid_ones(make_settings: MakeSettings) -> None:
    with pytest.raises(UserError) as caught:
        compose_files(make_settings(), "ollama")

    assert str(caught.value) == "unknown backend 'ollama': use one of llamacpp, vllm, none"


@pytest.mark.parametrize("backend", BACKENDS)
def test_check_backend_returns_a_valid_backend(backend: str) -> None:
    assert check_backend(backend) == backend


# --- ComposeProject.argv ---------------------------------------------------------------------


def test_argv_with_compose_v2(make_settings: MakeSettings, modern_runner: FakeRunner) -> None:
    project = ComposeProject(make_settings(), "llamacpp", Docker(runner=modern_runner))

    argv = project.argv("up", "-d")

    assert argv == [
        "docker",
        "compose",
        "--project-name",
        "kc-devenv",
        *file_args([BASE_FILE, LLAMACPP_FILE]),
        "up",
        "-d",
    ]


def test_argv_uses_the_configured_project_name(
    make_settings: MakeSettings, modern_runner: FakeRunner
) -> None:
    project = ComposeProject(
        make_settings(compose_project_name="other_stack"), "none", Docker(runner=modern_runner)
    )

    assert project.argv("ps")[2:4] == ["--project-name", "other_stack"]


def test_argv_falls_back_to_compose_v1(
    make_settings: MakeSettings, modern_runner: FakeRunner
) -> None:
    modern_runner.on("docker", "compose", "version", returncode=1, stderr="unknown command")
    project = ComposeProject(make_settings(), "none", Docker(runner=modern_runner))

    argv = project.argv("ps")

    assert argv == ["docker-compose", "--project-name", "kc-devenv", *file_args([BASE_FILE]), "ps"]
    assert ["docker-compose", "version", "--short"] in modern_runner.argvs


def test_argv_adds_pre25_files_on_old_engines(
    make_settings: MakeSettings, runner: FakeRunner
) -> None:
    runner.on("docker", "version", stdout="1.41\n")
    project = ComposeProject(make_settings(), "llamacpp", Docker(runner=runner))

    argv = project.argv("config")

    assert argv[4:-1] == file_args(
        [BASE_FILE, LLAMACPP_FILE, PRE25_DIR / "redis.yml", PRE25_DIR / "llm-server.yml"]
    )


def test_argv_with_unknown_backend_raises_user_error(
    make_settings: MakeSettings, modern_runner: FakeRunner
) -> None:
    project = ComposeProject(make_settings(), "bogus", Docker(runner=modern_runner))

    with pytest.raises(UserError, match=r"unknown backend 'bogus': use one of llamacpp, vllm"):
        project.argv("up")


# --- environment and run ---------------------------------------------------------------------


def test_environment_includes_the_settings(make_settings: MakeSettings) -> None:
    settings = make_settings(redis_port="6390", redis_password="pw")
    project = ComposeProject(settings, "none", Docker(runner=FakeRunner()))

    env = project.environment()

    assert env["REDIS_PORT"] == "6390"
    assert env["REDIS_PASSWORD"] == "pw"
    assert env["COMPOSE_PROJECT_NAME"] == "kc-devenv"
    assert settings.as_environment().items() <= env.items()


def test_environment_settings_beat_process_environment(
    make_settings: MakeSettings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("REDIS_PORT", "1111")
    monkeypatch.setenv("KC_UNIT_TEST_MARKER", "kept")
    project = ComposeProject(make_settings(), "none", Docker(runner=FakeRunner()))

    env = project.environment()

    assert env["REDIS_PORT"] == "6379"
    assert env["KC_UNIT_TEST_MARKER"] == "kept"


def test_environment_extra_env_wins(make_settings: MakeSettings) -> None:
    project = ComposeProject(make_settings(), "llamacpp", Docker(runner=FakeRunner()))

    env = project.environment({"REDIS_PORT": "7000", "PYTHON_BASE_IMAGE": "base:local"})

    assert env["REDIS_PORT"] == "7000"
    assert env["PYTHON_BASE_IMAGE"] == "base:local"
    assert "PYTHON_BASE_IMAGE" not in project.environment()  # nothing stuck to the project


@pytest.mark.parametrize(
    ("backend", "accel", "variant", "tag"),
    [
        ("llamacpp", "cpu", "cuda", ("LLAMACPP_IMAGE", images.LLAMACPP_IMAGE)),
        ("llamacpp", "cuda", "cuda", ("LLAMACPP_IMAGE", images.LLAMACPP_IMAGE + "-cuda")),
        ("vllm", "cpu", "cpu", ("VLLM_IMAGE", images.VLLM_CPU_IMAGE)),
        ("vllm", "cpu", "cuda", ("VLLM_IMAGE", images.VLLM_IMAGE)),
    ],
)
def test_every_command_gets_the_image_tags_and_versions(
    make_settings: MakeSettings,
    modern_runner: FakeRunner,
    backend: str,
    accel: str,
    variant: str,
    tag: tuple[str, str],
) -> None:
    """Not only builds: `up` of an image built earlier must run the tag the settings ask for
    (the CUDA build, say), not the compose file's by-hand default."""
    settings = make_settings(llamacpp_accel=accel, vllm_variant=variant)
    project = ComposeProject(settings, backend, Docker(runner=modern_runner))

    project.run("up", "--detach")

    env = modern_runner.calls_starting("docker", "compose", "--project-name")[-1].env
    assert env is not None
    assert env[tag[0]] == tag[1]
    assert env["REDIS_IMAGE"] == images.REDIS_IMAGE
    assert {k: env[k] for k in images.VERSION_ARGS} == images.VERSION_ARGS


def test_run_passes_argv_env_and_capture(
    make_settings: MakeSettings, modern_runner: FakeRunner
) -> None:
    project = ComposeProject(make_settings(), "none", Docker(runner=modern_runner))

    project.run("ps", "--quiet", timeout=5, extra_env={"X_EXTRA": "1"})

    call = modern_runner.calls_starting("docker", "compose", "--project-name")[-1]
    assert call.argv[-2:] == ["ps", "--quiet"]
    assert call.env is not None and call.env["X_EXTRA"] == "1"
    assert call.kwargs == {"capture": True, "timeout": 5}


def test_a_project_cannot_be_changed_after_it_is_made(make_settings: MakeSettings) -> None:
    project = ComposeProject(make_settings(), "none", Docker(runner=FakeRunner()))

    with pytest.raises(dataclasses.FrozenInstanceError):
        project.backend = "llamacpp"  # type: ignore[misc]


def test_with_backend_is_a_new_project_checked_for_its_backend(
    make_settings: MakeSettings, modern_runner: FakeRunner
) -> None:
    project = ComposeProject(make_settings(), "none", Docker(runner=modern_runner))

    other = project.with_backend("llamacpp")

    assert (project.backend, other.backend) == ("none", "llamacpp")
    assert other.docker is project.docker and other.settings is project.settings
    assert str(LLAMACPP_FILE) in other.argv("ps")
    with pytest.raises(UserError, match="unknown backend 'tgi'"):
        project.with_backend("tgi")


def test_build_streams_output_and_passes_no_cache(
    make_settings: MakeSettings, modern_runner: FakeRunner
) -> None:
    project = ComposeProject(make_settings(), "none", Docker(runner=modern_runner))

    project.build(["redis"], no_cache=True, extra_env={"REDIS_BASE_IMAGE": "base:local"})

    call = modern_runner.calls_starting("docker", "compose", "--project-name")[-1]
    assert call.argv[-3:] == ["build", "--no-cache", "redis"]
    assert call.kwargs["capture"] is False
    assert call.env is not None and call.env["REDIS_BASE_IMAGE"] == "base:local"


def test_build_failure_raises_user_error_with_exit_code(
    make_settings: MakeSettings, modern_runner: FakeRunner
) -> None:
    modern_runner.on("docker", "compose", "--project-name", returncode=17)
    project = ComposeProject(make_settings(), "none", Docker(runner=modern_runner))

    with pytest.raises(UserError, match=r"^image build failed \(exit 17\)"):
        project.build(["redis"])
