"""Checks made before anything starts: model on disk, ports, GPU runtime."""

from __future__ import annotations

import errno
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from kcdev import files, paths
from kcdev.settings import Settings
from kcdev.stack import preflight
from kcdev.stack.docker_cli import Docker
from tests.unit.conftest import FakeRunner, MakeSettings

PS_STACK = (
    "docker", "ps", "-q", "--filter", "label=com.docker.compose.project=kc-devenv",
    "--filter", "label=com.docker.compose.oneoff=False",
)  # fmt: skip
INSPECT_PORTS = ("docker", "inspect", "--format", "{{json .NetworkSettings.Ports}}")
RUNTIMES = ("docker", "info", "--format", "{{json .Runtimes}}")


@pytest.fixture
def dirs(tmp_path: Path, make_settings: MakeSettings) -> MakeSettings:
    """Settings whose GGUF_DIR and HF_DIR are empty folders under tmp_path."""
    (tmp_path / "gguf").mkdir()
    (tmp_path / "hf").mkdir()

    def make(**overrides: str) -> Settings:
        return make_settings(
            gguf_dir=str(tmp_path / "gguf"), hf_dir=str(tmp_path / "hf"), **overrides
        )

    return make


# --- host_model_path, model_problem, model_size ----------------------------------------------


def test_host_model_path_for_llamacpp_is_under_gguf_dir(dirs: MakeSettings, tmp_path: Path) -> None:
    settings = dirs(model_path="/models/team/gemma.gguf")

    assert preflight.host_model_path(settings, "llamacpp") == tmp_path / "gguf/team/gemma.gguf"


def test_host_model_path_for_vllm_is_under_hf_dir(dirs: MakeSettings, tmp_path: Path) -> None:
    settings = dirs(model_name="/models/qwen")

    assert preflight.host_model_path(settings, "vllm") == tmp_path / "hf/qwen"


def test_host_model_path_relative_dirs_are_under_the_repository(
    make_settings: MakeSettings,
) -> None:
    settings = make_settings(gguf_dir="models/gguf")

    assert preflight.host_model_path(settings, "llamacpp") == paths.GGUF_DIR / "model.gguf"


def test_host_model_path_for_none_is_none(dirs: MakeSettings) -> None:
    assert preflight.host_model_path(dirs(), "none") is None


def test_model_problem_none_when_the_gguf_file_exists(dirs: MakeSettings, tmp_path: Path) -> None:
    (tmp_path / "gguf" / "model.gguf").write_bytes(b"GGUF")

    assert preflight.model_problem(dirs(), "llamacpp") is None


def test_model_problem_names_the_missing_gguf_file_and_the_fix(
    dirs: MakeSettings, tmp_path: Path
) -> None:
    problem = preflight.model_problem(dirs(), "llamacpp")

    assert problem == (
        f"model file {tmp_path / 'gguf' / 'model.gguf'} (MODEL_PATH=/models/model.gguf) not found: "
        "run `invoke fetch-model`, or put a GGUF file there and set MODEL_PATH"
    )


def test_model_problem_shows_paths_in_the_repository_relative_to_it(
    make_settings: MakeSettings,
) -> None:
    settings = make_settings(model_path="/models/kc-unit-test-absent.gguf")

    problem = preflight.model_problem(settings, "llamacpp")

    assert problem is not None
    assert problem.startswith("model file models/gguf/kc-unit-test-absent.gguf ")


def test_model_problem_a_folder_is_not_a_gguf_file(dirs: MakeSettings, tmp_path: Path) -> None:
    (tmp_path / "gguf" / "model.gguf").mkdir()

    problem = preflight.model_problem(dirs(), "llamacpp")

    assert problem is not None
    assert problem.startswith("model file ")


def test_model_problem_none_when_the_hf_folder_has_config_json(
    dirs: MakeSettings, tmp_path: Path
) -> None:
    (tmp_path / "hf" / "model").mkdir()
    (tmp_path / "hf" / "model" / "config.json").write_text("{}")

    assert preflight.model_problem(dirs(), "vllm") is None


@pytest.mark.parametrize("folder_exists", [False, True])
def test_model_problem_names_the_hf_folder_without_config_json(
    dirs: MakeSettings, tmp_path: Path, folder_exists: bool
) -> None:
    if folder_exists:
        (tmp_path / "hf" / "model").mkdir()
        (tmp_path / "hf" / "model" / "model.safetensors").write_bytes(b"x")

    problem = preflight.model_problem(dirs(), "vllm")

    assert problem == (
        f"model folder {tmp_path / 'hf' / 'model'} (MODEL_NAME=/models/model) has no config.json: "
        "run `invoke fetch-model --backend vllm`, or set MODEL_NAME"
    )


def test_model_problem_none_for_backend_none(dirs: MakeSettings) -> None:
    assert preflight.model_problem(dirs(), "none") is None


def test_model_size_of_a_file_a_folder_and_nothing(dirs: MakeSettings, tmp_path: Path) -> None:
    (tmp_path / "gguf" / "model.gguf").write_bytes(bytes(1000))
    folder = tmp_path / "hf" / "model"
    (folder / "sub").mkdir(parents=True)
    (folder / "config.json").write_bytes(bytes(10))
    (folder / "sub" / "weights.safetensors").write_bytes(bytes(300))
    settings = dirs()

    assert preflight.model_size(settings, "llamacpp") == 1000
    assert preflight.model_size(settings, "vllm") == 310
    assert preflight.model_size(settings, "none") == 0
    assert preflight.model_size(dirs(model_path="/models/absent.gguf"), "llamacpp") == 0


# --- ports -----------------------------------------------------------------------------------


def test_ports_held_by_stack_without_running_containers_asks_no_more(
    docker: Docker, runner: FakeRunner
) -> None:
    assert preflight.ports_held_by_stack(docker, "kc-devenv") == set()
    assert runner.argvs == [list(PS_STACK)]


def test_ports_held_by_stack_reads_every_containers_host_ports(
    docker: Docker, runner: FakeRunner
) -> None:
    runner.on(*PS_STACK, stdout="3f1c\n9a2b\n77ee\n")
    runner.on(
        *INSPECT_PORTS,
        stdout=(
            '{"6379/tcp":[{"HostIp":"127.0.0.1","HostPort":"6390"}]}\n'
            '{"8000/tcp":[{"HostIp":"0.0.0.0","HostPort":"8000"},{"HostIp":"::","HostPort":"8000"}],'
            '"9000/tcp":null}\n'
            "{}\n"
        ),
    )

    held = preflight.ports_held_by_stack(docker, "kc-devenv")

    assert held == {6390, 8000}
    assert runner.argvs[-1] == [*INSPECT_PORTS, "3f1c", "9a2b", "77ee"]


def test_ports_held_by_stack_filters_on_the_project_name(
    docker: Docker, runner: FakeRunner
) -> None:
    preflight.ports_held_by_stack(docker, "other_stack")

    assert runner.argvs[0][:5] == [
        "docker", "ps", "-q", "--filter", "label=com.docker.compose.project=other_stack"
    ]  # fmt: skip


@pytest.fixture
def listening() -> Iterator[int]:
    """A port some other program listens on, on 127.0.0.1 (nothing connects to it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


def test_port_is_free_false_while_another_socket_listens(listening: int) -> None:
    assert preflight.port_is_free("127.0.0.1", listening) is False


def test_port_is_free_true_on_an_unused_port() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]

    assert preflight.port_is_free("127.0.0.1", port) is True


def test_port_is_free_true_while_dead_connections_linger_on_it() -> None:
    """After a server is killed, its clients' dead connections keep its port in TIME_WAIT for a
    minute; a plain bind() then fails although nothing listens, and `up` refused to start."""
    with socket.socket() as listener:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        client = socket.create_connection(("127.0.0.1", port))
        served, _ = listener.accept()
        served.close()  # the server side closes first: its socket on `port` waits in TIME_WAIT
        client.close()
    with socket.socket() as plain, pytest.raises(OSError) as caught:
        plain.bind(("127.0.0.1", port))  # the old probe's bind: proves the port lingers
    assert caught.value.errno == errno.EADDRINUSE

    assert preflight.port_is_free("127.0.0.1", port) is True


def test_port_is_free_does_not_keep_the_port() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]

    preflight.port_is_free("127.0.0.1", port)

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as again:
        again.bind(("127.0.0.1", port))  # would raise EADDRINUSE had the check kept it


@pytest.fixture
def ports_free(monkeypatch: pytest.MonkeyPatch) -> dict[int, bool]:
    """port_is_free answers from this table (default: free) and asks no real socket."""
    table: dict[int, bool] = {}
    monkeypatch.setattr(preflight, "port_is_free", lambda host, port: table.get(port, True))
    return table


def test_port_problems_none_when_ports_are_free(
    dirs: MakeSettings, docker: Docker, ports_free: dict[int, bool]
) -> None:
    assert preflight.port_problems(dirs(), "llamacpp", docker) == []


def test_port_problems_names_each_taken_port_and_its_setting(
    dirs: MakeSettings, docker: Docker, ports_free: dict[int, bool]
) -> None:
    ports_free.update({6390: False, 6391: False, 8001: False})
    settings = dirs(redis_port="6390", redis_tls_port="6391", port="8001", bind_host="0.0.0.0")

    problems = preflight.port_problems(settings, "vllm", docker)

    # Plain-text Redis is published on loopback only; beyond it, Redis' TLS port.
    assert problems == [
        "port 6390 on 127.0.0.1 is taken by another program: "
        "stop it, or set REDIS_PORT to a free port in .env",
        "port 6391 on 0.0.0.0 is taken by another program: "
        "stop it, or set REDIS_TLS_PORT to a free port in .env",
        "port 8001 on 0.0.0.0 is taken by another program: "
        "stop it, or set PORT to a free port in .env",
    ]


def test_a_worker_node_publishes_no_redis_and_flower_stays_on_loopback(
    dirs: MakeSettings, docker: Docker, ports_free: dict[int, bool]
) -> None:
    ports_free.update({6379: False, 5555: False})
    settings = dirs(bind_host="10.0.0.5")

    problems = preflight.port_problems(settings, "llamacpp", docker, node=True, monitor=True)

    assert problems == [
        "port 5555 on 127.0.0.1 is taken by another program: "
        "stop it, or set FLOWER_PORT to a free port in .env"
    ]


def test_port_problems_for_backend_none_ignore_the_llm_port(
    dirs: MakeSettings, docker: Docker, ports_free: dict[int, bool]
) -> None:
    ports_free[8000] = False

    assert preflight.port_problems(dirs(), "none", docker) == []


def test_port_problems_skip_ports_held_by_the_stack(
    dirs: MakeSettings, docker: Docker, runner: FakeRunner, monkeypatch: pytest.MonkeyPatch
) -> None:
    asked: list[int] = []

    def taken(host: str, port: int) -> bool:
        asked.append(port)
        return False

    monkeypatch.setattr(preflight, "port_is_free", taken)
    runner.on(*PS_STACK, stdout="3f1c\n")
    runner.on(*INSPECT_PORTS, stdout='{"6379/tcp":[{"HostIp":"127.0.0.1","HostPort":"6379"}]}\n')

    problems = preflight.port_problems(dirs(), "llamacpp", docker)

    assert asked == [8000]
    assert [p.split(" is taken")[0] for p in problems] == ["port 8000 on 127.0.0.1"]


def test_port_problems_on_a_really_taken_port(
    dirs: MakeSettings, docker: Docker, listening: int
) -> None:
    problems = preflight.port_problems(dirs(redis_port=str(listening)), "none", docker)

    assert problems == [
        f"port {listening} on 127.0.0.1 is taken by another program: "
        "stop it, or set REDIS_PORT to a free port in .env"
    ]


def test_port_problems_with_a_bind_host_not_on_this_machine_is_a_problem_not_a_crash(
    dirs: MakeSettings, docker: Docker, monkeypatch: pytest.MonkeyPatch
) -> None:
    class NoSuchAddressSocket(socket.socket):
        def bind(self, address: object) -> None:
            raise OSError(errno.EADDRNOTAVAIL, "Cannot assign requested address")

    monkeypatch.setattr(socket, "socket", NoSuchAddressSocket)

    problems = preflight.port_problems(dirs(bind_host="192.0.2.10"), "llamacpp", docker, node=True)

    assert len(problems) == 1
    assert "BIND_HOST" in problems[0]


# --- gpu_problem -----------------------------------------------------------------------------


def test_gpu_problem_none_without_asking_docker_when_no_gpu_is_wanted(
    dirs: MakeSettings, docker: Docker, runner: FakeRunner
) -> None:
    assert preflight.gpu_problem(dirs(), "llamacpp", docker, wants_gpu=False) is None
    assert runner.calls == []


@pytest.mark.parametrize("backend", ["vllm", "llamacpp"])
def test_gpu_problem_none_with_the_nvidia_runtime(
    dirs: MakeSettings, docker: Docker, runner: FakeRunner, backend: str
) -> None:
    runner.on(*RUNTIMES, stdout='{"nvidia":{"path":"nvidia-container-runtime"},"runc":{}}\n')

    assert preflight.gpu_problem(dirs(n_gpu_layers="-1"), backend, docker, wants_gpu=True) is None
    assert runner.argvs == [list(RUNTIMES)]


def test_gpu_problem_for_vllm_suggests_the_cpu_variant(
    dirs: MakeSettings, docker: Docker, runner: FakeRunner
) -> None:
    runner.on(*RUNTIMES, stdout='{"runc":{"path":"runc"}}\n')

    problem = preflight.gpu_problem(dirs(), "vllm", docker, wants_gpu=True)

    assert problem == (
        "the vLLM backend's cuda variant (VLLM_VARIANT=cuda) needs an NVIDIA GPU, but Docker has "
        "no nvidia runtime: install the NVIDIA Container Toolkit, or set VLLM_VARIANT=cpu for "
        "vLLM's CPU build (slow, no GPU needed)"
    )


def test_gpu_problem_for_llamacpp_names_n_gpu_layers(
    dirs: MakeSettings, docker: Docker, runner: FakeRunner
) -> None:
    runner.on(*RUNTIMES, stdout='{"runc":{"path":"runc"}}\n')

    problem = preflight.gpu_problem(dirs(n_gpu_layers="20"), "llamacpp", docker, wants_gpu=True)

    assert problem == (
        "N_GPU_LAYERS=20 needs an NVIDIA GPU, but Docker has no nvidia runtime: "
        "install the NVIDIA Container Toolkit, or set N_GPU_LAYERS=0"
    )


def test_gpu_problem_when_docker_info_fails_counts_as_no_runtime(
    dirs: MakeSettings, docker: Docker, runner: FakeRunner
) -> None:
    runner.on(*RUNTIMES, returncode=1, stderr="Cannot connect to the Docker daemon\n")

    problem = preflight.gpu_problem(dirs(), "vllm", docker, wants_gpu=True)

    assert problem is not None
    assert "no nvidia runtime" in problem


# --- disk and memory -------------------------------------------------------------------------


def test_disk_free_is_a_positive_byte_count(tmp_path: Path) -> None:
    assert files.free_bytes(tmp_path) > 0


def test_memory_available_reads_memavailable_in_bytes(monkeypatch: pytest.MonkeyPatch) -> None:
    meminfo = "MemTotal:       24576000 kB\nMemFree:  100 kB\nMemAvailable:   2048 kB\n"
    monkeypatch.setattr(Path, "read_text", lambda self: meminfo)

    assert preflight.memory_available() == 2048 * 1024


def test_memory_available_none_without_proc(monkeypatch: pytest.MonkeyPatch) -> None:
    def unreadable(self: Path) -> str:
        raise FileNotFoundError(str(self))

    monkeypatch.setattr(Path, "read_text", unreadable)

    assert preflight.memory_available() is None


# --- exposure beyond this machine -------------------------------------------------------------


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.2", "::1"])
def test_exposure_problem_none_on_loopback(make_settings: MakeSettings, host: str) -> None:
    assert preflight.exposure_problem(make_settings(bind_host=host), "llamacpp") is None


@pytest.mark.parametrize(
    ("overrides", "backend", "missing"),
    [
        ({}, "llamacpp", "REDIS_PASSWORD and LLM_API_KEY are empty: set them"),
        ({"redis_password": "s3cret-Pa55"}, "llamacpp", "LLM_API_KEY is empty: set it"),
        ({"llm_api_key": "k3y-0123456789abcdef"}, "vllm", "REDIS_PASSWORD is empty: set it"),
        ({}, "none", "REDIS_PASSWORD is empty: set it"),
    ],
)
def test_exposure_problem_names_the_missing_credentials(
    make_settings: MakeSettings, overrides: dict[str, str], backend: str, missing: str
) -> None:
    settings = make_settings(bind_host="0.0.0.0", **overrides)

    assert preflight.exposure_problem(settings, backend) == (
        f"BIND_HOST=0.0.0.0 publishes the stack beyond this machine, but {missing} in .env, "
        "or set BIND_HOST=127.0.0.1"
    )


def test_exposure_problem_none_with_both_credentials(make_settings: MakeSettings) -> None:
    settings = make_settings(
        bind_host="0.0.0.0", redis_password="s3cret-Pa55", llm_api_key="k3y-0123456789abcdef"
    )

    assert preflight.exposure_problem(settings, "llamacpp") is None


# --- CPU limits ---------------------------------------------------------------------------------

NCPU = ("docker", "info", "--format", "{{.NCPU}}")


def test_cpu_problems_name_each_limit_above_the_daemons_cores(
    make_settings: MakeSettings, runner: FakeRunner, docker: Docker
) -> None:
    runner.on(*NCPU, stdout="2\n")
    settings = make_settings(redis_cpus="3", llm_cpus="2.5")

    assert preflight.cpu_problems(settings, "llamacpp", docker) == [
        "REDIS_CPUS=3 but Docker has 2 CPUs: set REDIS_CPUS to 2 or less, or empty for no limit",
        "LLM_CPUS=2.5 but Docker has 2 CPUs: set LLM_CPUS to 2 or less, or empty for no limit",
    ]


def test_cpu_problems_none_within_the_cores_and_for_redis_alone(
    make_settings: MakeSettings, runner: FakeRunner, docker: Docker
) -> None:
    runner.on(*NCPU, stdout="2\n")

    assert preflight.cpu_problems(make_settings(llm_cpus="2"), "llamacpp", docker) == []
    assert preflight.cpu_problems(make_settings(llm_cpus="8"), "none", docker) == []


def test_cpu_problems_ask_docker_nothing_without_limits(
    make_settings: MakeSettings, runner: FakeRunner, docker: Docker
) -> None:
    assert preflight.cpu_problems(make_settings(redis_cpus=""), "llamacpp", docker) == []
    assert runner.calls == []
