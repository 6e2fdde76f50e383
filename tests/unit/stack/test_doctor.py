"""`invoke doctor`'s checks against a faked Docker: one ok or FAIL line each, with the fix."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from kcdev import files
from kcdev.errors import UserError
from kcdev.settings import Settings
from kcdev.stack import doctor, images, preflight
from kcdev.stack.docker_cli import Docker
from kcdev.stack.doctor import GIB, Check
from tests.unit.conftest import FakeRunner, MakeSettings

SERVER_VERSION = ("docker", "version", "--format", "{{.Server.Version}}")
API_VERSION = ("docker", "version", "--format", "{{.Server.APIVersion}}")
DAEMON = ("docker", "info", "--format", "{{.ServerVersion}}")
COMPOSE_V2 = ("docker", "compose", "version", "--short")
COMPOSE_V1 = ("docker-compose", "version", "--short")
PULL = ("docker", "pull", "--quiet", images.REDIS_BASE)
INSPECT = ("docker", "image", "inspect", "--format", "{{.Id}}")
RUNTIMES = ("docker", "info", "--format", "{{json .Runtimes}}")
REDIS_VERSION = ("docker", "run", "--rm", "--network", "none", "--entrypoint", "redis-server")
MODEL_BYTES = 3 * GIB // 1000  # a 3 MB stand-in: sizes are only compared, never allocated


@pytest.fixture
def runner() -> FakeRunner:
    """A healthy machine: Engine 27 (API 1.47), compose 2.40, registry reachable, images built."""
    fake = FakeRunner()
    fake.on(*SERVER_VERSION, stdout="27.3.1\n")
    fake.on(*API_VERSION, stdout="1.47\n")
    fake.on(*COMPOSE_V2, stdout="2.40.3\n")
    fake.on(*REDIS_VERSION, stdout="Redis server v=7.0.15 sha=00000000:0 malloc=jemalloc\n")
    return fake


@pytest.fixture
def host(monkeypatch: pytest.MonkeyPatch) -> dict[str, int | None]:
    """Free ports, 100 GiB of disk and 16 GiB of memory unless a test says otherwise."""
    facts: dict[str, int | None] = {"disk": 100 * GIB, "memory": 16 * GIB}
    monkeypatch.setattr(preflight, "port_is_free", lambda host, port: True)
    monkeypatch.setattr(files, "free_bytes", lambda path: facts["disk"])
    monkeypatch.setattr(preflight, "memory_available", lambda: facts["memory"])
    return facts


@pytest.fixture
def settings(make_settings: MakeSettings, tmp_path: Path) -> Callable[..., Settings]:
    """Settings whose GGUF model exists (MODEL_BYTES long) under tmp_path."""
    (tmp_path / "gguf").mkdir()
    with (tmp_path / "gguf" / "model.gguf").open("wb") as model:
        model.truncate(MODEL_BYTES)

    def make(**overrides: str) -> Settings:
        return make_settings(gguf_dir=str(tmp_path / "gguf"), **overrides)

    return make


def run(docker: Docker, settings: Settings | UserError, backend: str | None = None) -> list[Check]:
    def load() -> Settings:
        if isinstance(settings, UserError):
            raise settings
        return settings

    return list(doctor.run_checks(backend, docker, load))


def by_name(checks: list[Check]) -> dict[str, Check]:
    return {check.name: check for check in checks}


def test_check_line_marks_ok_and_fail() -> None:
    assert Check("ports", True, "free").line() == "ok    ports: free"
    assert Check("ports", False, "taken").line() == "FAIL  ports: taken"


def test_healthy_machine_passes_every_check(
    docker: Docker, settings: Callable[..., Settings], host: object, tmp_path: Path
) -> None:
    lines = [check.line() for check in run(docker, settings())]

    assert lines == [
        "ok    .env: values valid",
        "ok    docker daemon: engine 27.3.1 answers",
        "ok    compose: v2.40.3",
        "ok    healthcheck start_interval: supported (Engine 25+)",
        "ok    registry: registry mode, official base images present",
        "ok    stack images: built",
        f"ok    redis: {images.REDIS_IMAGE} runs Redis 7.0.15",
        f"ok    model: {tmp_path / 'gguf' / 'model.gguf'} present",
        "ok    exposure: published on 127.0.0.1 only",
        "ok    ports: free or held by this stack",
        "ok    disk: 100.0 GiB free",
        "ok    memory: 16.0 GiB available for a 3.1 MiB model",
    ]


def test_a_redis_image_from_an_older_dockerfile_fails_naming_its_version(
    docker: Docker, runner: FakeRunner, settings: Callable[..., Settings], host: object
) -> None:
    runner.on(*REDIS_VERSION, stdout="Redis server v=7.4.1 sha=00000000:0\n")
    assert by_name(run(docker, settings()))["redis"].line() == (
        f"FAIL  redis: {images.REDIS_IMAGE} runs Redis 7.4.1, not {images.REDIS_SERIES}: it was "
        "built from an older Dockerfile; rebuild it with `invoke build`"
    )


def test_daemon_down_stops_after_the_daemon_line(
    docker: Docker, runner: FakeRunner, settings: Callable[..., Settings], host: object
) -> None:
    runner.on(*DAEMON, returncode=1, stderr="Cannot connect to the Docker daemon at unix://x\n")

    checks = run(docker, settings())

    assert [c.name for c in checks] == [".env", "docker daemon"]
    assert not checks[-1].ok
    assert checks[-1].message.startswith("Docker is not running: start the daemon")
    assert [argv for argv in runner.argvs if argv[:2] != ["docker", "info"]] == []


def test_daemon_permission_denied_says_how_to_get_access(
    docker: Docker, runner: FakeRunner, settings: Callable[..., Settings], host: object
) -> None:
    runner.on(*DAEMON, returncode=1, stderr="permission denied while trying to connect\n")

    checks = run(docker, settings())

    assert checks[-1].line().startswith("FAIL  docker daemon: cannot talk to the Docker daemon")
    assert "docker group" in checks[-1].message


def test_compose_v1_only_fails_the_compose_check(
    docker: Docker, runner: FakeRunner, settings: Callable[..., Settings], host: object
) -> None:
    runner.on(*COMPOSE_V2, returncode=1, stderr="docker: 'compose' is not a docker command.\n")
    runner.on(*COMPOSE_V1, stdout="1.29.2\n")

    compose = by_name(run(docker, settings()))["compose"]

    assert not compose.ok
    assert compose.message.startswith("only v1 (1.29.2): the tasks need compose v2")
    assert "--wait" not in compose.message  # `up` no longer uses it: the reason must be true


def test_no_compose_at_all_fails_and_stops(
    docker: Docker, runner: FakeRunner, settings: Callable[..., Settings], host: object
) -> None:
    runner.on(*COMPOSE_V2, returncode=1)
    runner.on(*COMPOSE_V1, returncode=127)

    checks = run(docker, settings())

    assert [c.name for c in checks] == [".env", "docker daemon", "compose"]
    assert checks[-1].line().startswith("FAIL  compose: docker compose is not installed")


def test_engine_before_25_uses_the_pre25_files_without_failing(
    docker: Docker, runner: FakeRunner, settings: Callable[..., Settings], host: object
) -> None:
    runner.on(*SERVER_VERSION, stdout="20.10.24+dfsg1\n")
    runner.on(*API_VERSION, stdout="1.41\n")

    checks = by_name(run(docker, settings()))

    assert checks["docker daemon"].message == "engine 20.10.24+dfsg1 answers"
    interval = checks["healthcheck start_interval"]
    assert interval.ok
    assert "engine-pre25" in interval.message
    assert "not supported" in interval.message


@pytest.mark.parametrize("source", ["registry", "local"])
def test_forced_image_source_does_not_probe_the_registry(
    docker: Docker,
    runner: FakeRunner,
    settings: Callable[..., Settings],
    host: object,
    source: str,
) -> None:
    checks = by_name(run(docker, settings(image_source=source)))

    assert checks["registry"].line() == f"ok    registry: {source} mode, IMAGE_SOURCE={source}"
    assert [argv for argv in runner.argvs if argv[:2] == ["docker", "pull"]] == []


def test_auto_image_source_without_registry_is_local_mode_with_the_reason(
    docker: Docker, runner: FakeRunner, settings: Callable[..., Settings], host: object
) -> None:
    runner.on(*INSPECT, images.PYTHON_BASE, returncode=1)
    runner.on(
        *PULL,
        returncode=1,
        stderr="Get https://registry-1.docker.io/v2/: dial tcp: lookup registry-1.docker.io: "
        "no such host\n",
    )

    checks = by_name(run(docker, settings()))

    assert checks["registry"].message == (
        "local mode, no registry (Get https://registry-1.docker.io/v2/: dial tcp: "
        "lookup registry-1.docker.io: no such host)"
    )
    assert checks["base images"].line() == f"ok    base images: {images.LOCAL_BASE} present"
    assert [c.name for c in checks.values() if not c.ok] == []


def test_auto_image_source_with_registry_has_no_base_image_check(
    docker: Docker, runner: FakeRunner, settings: Callable[..., Settings], host: object
) -> None:
    runner.on(*INSPECT, images.PYTHON_BASE, returncode=1)
    checks = by_name(run(docker, settings()))

    assert checks["registry"].message == f"registry mode, pulled {images.REDIS_BASE}"
    assert "base images" not in checks
    assert list(PULL) in runner.argvs


def test_doctor_asks_the_registry_through_the_probe_the_build_uses(
    docker: Docker,
    runner: FakeRunner,
    settings: Callable[..., Settings],
    host: object,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    runner.on(*INSPECT, images.PYTHON_BASE, returncode=1)
    probed: list[Docker] = []

    def probe(asked: Docker) -> tuple[bool, str]:
        probed.append(asked)
        return False, "no registry (the one probe)"

    monkeypatch.setattr(images, "probe_registry", probe)

    checks = by_name(run(docker, settings()))

    assert probed == [docker]
    assert checks["registry"].message == "local mode, no registry (the one probe)"
    assert [
        argv for argv in runner.argvs if argv[:2] in (["docker", "pull"], ["docker", "manifest"])
    ] == []


def test_local_mode_without_the_base_image_fails_with_invoke_build(
    docker: Docker, runner: FakeRunner, settings: Callable[..., Settings], host: object
) -> None:
    runner.on(*INSPECT, images.LOCAL_BASE, returncode=1, stderr="No such image\n")

    base = by_name(run(docker, settings(image_source="local")))["base images"]

    assert base.line() == (
        f"FAIL  base images: {images.LOCAL_BASE} missing: "
        "`invoke build` makes it (debootstrap, ~90 s)"
    )


def test_missing_stack_images_fail_naming_them(
    docker: Docker, runner: FakeRunner, settings: Callable[..., Settings], host: object
) -> None:
    runner.on(*INSPECT, images.LLAMACPP_IMAGE, returncode=1)

    stack_images = by_name(run(docker, settings()))["stack images"]

    assert stack_images.line() == (
        f"FAIL  stack images: missing {images.LLAMACPP_IMAGE}: run `invoke build`"
    )


def test_doctor_agrees_with_up_when_official_bases_are_present_offline(
    docker: Docker, runner: FakeRunner, settings: Callable[..., Settings], host: object
) -> None:
    runner.on(*PULL, returncode=1, stderr="no such host\n")
    runner.on(*INSPECT, images.LOCAL_BASE, returncode=1)
    runner.on(*INSPECT, images.LLAMACPP_IMAGE, returncode=1)  # so `up` would build

    checks = run(docker, settings())

    assert images.resolve_source(settings(), docker)[0] == "registry"
    assert [c.line() for c in checks if not c.ok] == [
        f"FAIL  stack images: missing {images.LLAMACPP_IMAGE}: run `invoke build`"
    ]


def test_missing_model_fails_with_fetch_model(
    docker: Docker, settings: Callable[..., Settings], host: object
) -> None:
    model = by_name(run(docker, settings(model_path="/models/absent.gguf")))["model"]

    assert not model.ok
    assert "absent.gguf (MODEL_PATH=/models/absent.gguf) not found" in model.message
    assert "`invoke fetch-model`" in model.message


def test_backend_argument_beats_the_setting(
    docker: Docker, runner: FakeRunner, settings: Callable[..., Settings], host: object
) -> None:
    checks = by_name(run(docker, settings(model_path="/models/absent.gguf"), backend="none"))

    assert checks["model"].line() == "ok    model: none needed"
    assert "memory" not in checks  # no model, nothing to weigh
    inspected = [argv[-1] for argv in runner.argvs if tuple(argv[:5]) == INSPECT]
    stack_images = [name for name in inspected if name.startswith("kc-devenv/")]
    assert stack_images == [images.REDIS_IMAGE]


def test_taken_ports_fail_listing_each(
    docker: Docker,
    settings: Callable[..., Settings],
    host: object,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(preflight, "port_is_free", lambda host, port: False)

    ports = by_name(run(docker, settings()))["ports"]

    assert ports.line() == (
        "FAIL  ports: port 6379 on 127.0.0.1 is taken by another program: stop it, or set "
        "REDIS_PORT to a free port in .env; port 8000 on 127.0.0.1 is taken by another program: "
        "stop it, or set PORT to a free port in .env"
    )


def test_nvidia_runtime_is_not_checked_on_cpu(
    docker: Docker, runner: FakeRunner, settings: Callable[..., Settings], host: object
) -> None:
    checks = by_name(run(docker, settings()))

    assert "nvidia runtime" not in checks
    assert list(RUNTIMES) not in runner.argvs


@pytest.mark.parametrize(
    ("runtimes", "ok"),
    [('{"nvidia":{"path":"nvidia-container-runtime"},"runc":{}}', True), ('{"runc":{}}', False)],
)
def test_nvidia_runtime_is_checked_when_layers_are_offloaded(
    docker: Docker,
    runner: FakeRunner,
    settings: Callable[..., Settings],
    host: object,
    runtimes: str,
    ok: bool,
) -> None:
    runner.on(*RUNTIMES, stdout=runtimes + "\n")

    gpu = by_name(run(docker, settings(n_gpu_layers="-1")))["nvidia runtime"]

    assert gpu.ok is ok
    if ok:
        assert gpu.message == "present"
    else:
        assert gpu.message.startswith("N_GPU_LAYERS=-1 needs an NVIDIA GPU")


def test_nvidia_runtime_is_checked_for_vllm(
    docker: Docker,
    runner: FakeRunner,
    settings: Callable[..., Settings],
    host: object,
    tmp_path: Path,
) -> None:
    (tmp_path / "hf" / "model").mkdir(parents=True)
    (tmp_path / "hf" / "model" / "config.json").write_text("{}")

    checks = by_name(run(docker, settings(hf_dir=str(tmp_path / "hf")), backend="vllm"))

    assert checks["nvidia runtime"].line().startswith("FAIL  nvidia runtime: the vLLM backend")
    assert checks["model"].ok


def test_low_disk_fails_with_the_need(
    docker: Docker, settings: Callable[..., Settings], host: dict[str, int | None]
) -> None:
    host["disk"] = GIB

    disk = by_name(run(docker, settings()))["disk"]

    assert disk.line() == ("FAIL  disk: 1.0 GiB free: at least 2.0 GiB needed for images and data")


def test_low_memory_for_the_model_fails(
    docker: Docker, settings: Callable[..., Settings], host: dict[str, int | None]
) -> None:
    host["memory"] = GIB // 4

    memory = by_name(run(docker, settings()))["memory"]

    assert memory.line() == (
        "FAIL  memory: 256.0 MiB available for a 3.1 MiB model: use a smaller model or quantization"
    )


def test_unknown_memory_skips_the_memory_check(
    docker: Docker, settings: Callable[..., Settings], host: dict[str, int | None]
) -> None:
    host["memory"] = None

    assert "memory" not in by_name(run(docker, settings()))


def test_bad_env_fails_its_line_and_skips_the_checks_that_need_settings(
    docker: Docker, runner: FakeRunner, host: object
) -> None:
    bad = UserError("N_CTX='abc' (from .env) is invalid: not a whole number; fix it in .env")

    checks = run(docker, bad)

    assert [c.line() for c in checks] == [
        "FAIL  .env: N_CTX='abc' (from .env) is invalid: not a whole number; fix it in .env",
        "ok    docker daemon: engine 27.3.1 answers",
        "ok    compose: v2.40.3",
        "ok    healthcheck start_interval: supported (Engine 25+)",
        "FAIL  remaining checks: skipped: fix .env first",
    ]
    assert [argv for argv in runner.argvs if argv[:2] == ["docker", "pull"]] == []


def test_bad_env_with_the_daemon_down_reports_both(
    docker: Docker, runner: FakeRunner, host: object
) -> None:
    runner.on(*DAEMON, returncode=1)

    checks = run(docker, UserError("REDIS_PORT='x' is invalid"))

    assert [(c.name, c.ok) for c in checks] == [(".env", False), ("docker daemon", False)]


def test_a_non_loopback_bind_host_without_credentials_fails_its_check(
    make_settings: MakeSettings, tmp_path: Path
) -> None:
    (tmp_path / "gguf").mkdir(exist_ok=True)
    settings = make_settings(bind_host="0.0.0.0", gguf_dir=str(tmp_path / "gguf"))

    (exposure,) = [c for c in doctor._stack_checks(settings, Docker(runner=FakeRunner()), "none")
                   if c.name == "exposure"]  # fmt: skip

    assert not exposure.ok
    assert exposure.line() == (
        "FAIL  exposure: BIND_HOST=0.0.0.0 publishes the stack beyond this machine, but "
        "REDIS_PASSWORD is empty: set it in .env, or set BIND_HOST=127.0.0.1"
    )
