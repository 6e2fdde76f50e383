"""The stack's lifecycle with Docker faked: preflight, `compose up`, the readiness wait and the
crash watch beside it, failures, cleanup."""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol

import pytest
from dotenv import dotenv_values

from kcdev import paths
from kcdev.errors import UserError
from kcdev.stack import lifecycle, preflight, readiness
from kcdev.stack.compose import BASE_FILE, GPU_FILE, PRE25_DIR, ComposeProject
from kcdev.stack.docker_cli import Docker
from kcdev.stack.lifecycle import Container, ServiceState
from tests.unit.conftest import (
    FakeClock,
    FakeReadiness,
    MakeSettings,
    ScriptedRunner,
    compose_subcommands,
    inspect_entry,
    ps_entry,
    ps_lines,
    script_containers,
)

API_KEY = "k3y-0123456789abcdef_XYZ"
LLAMACPP_FILE = paths.DOCKER_DIR / "docker-compose.llamacpp.yml"
VLLM_FILE = paths.DOCKER_DIR / "docker-compose.vllm.yml"
PS_JSON = ("ps", "--all", "--format", "json")
UP = ["up", "--detach", "--remove-orphans"]
PS_PROJECT = [
    "docker", "ps", "-aq", "--filter", "label=com.docker.compose.project=kc-devenv",
    "--filter", "label=com.docker.compose.oneoff=False",
]  # fmt: skip
RUNTIMES = ("docker", "info", "--format", "{{json .Runtimes}}")
NVIDIA_RUNTIMES = '{"nvidia":{"path":"nvidia-container-runtime"},"runc":{"path":"runc"}}\n'
LLM_LOG = "llama_model_loader: loaded meta data\nkc-llm-start: /models/model.gguf is not GGUF\n"
LLM_DOWN = "LLM server does not answer (ConnectError)"
PORT_TAKEN = (
    "Error response from daemon: driver failed programming external connectivity on endpoint "
    "kc-devenv-redis-1 (3f1c): Bind for 127.0.0.1:6379 failed: port is already allocated\n"
)
Snapshot = Sequence[dict[str, Any]]
# The stack just after `compose up`: Redis already healthy, the LLM server loading its model.
STARTING: Snapshot = [
    inspect_entry("redis", "r1"),
    inspect_entry("llm-server", "l1", health="starting"),
]


def compose_files_of(argv: list[str]) -> list[str]:
    return [argv[i + 1] for i, arg in enumerate(argv) if arg == "--file"]


def one_up_call(runner: ScriptedRunner) -> list[str]:
    ups = [argv for argv in runner.argvs if argv[-len(UP) :] == UP]
    assert len(ups) == 1, runner.argvs
    return ups[0]


def llm_crashed(code: int, *, status: str = "exited", restarts: int = 0) -> Snapshot:
    """Redis healthy; the LLM server (no longer probed) gone down with `code`."""
    return [
        inspect_entry("redis", "r1"),
        inspect_entry("llm-server", "l1", status=status, exit_code=code, restarts=restarts),
    ]


class MakeProject(Protocol):
    def __call__(
        self, backend: str = "llamacpp", *, warm: bool = True, **overrides: str
    ) -> ComposeProject: ...


@pytest.fixture
def model_dirs(tmp_path: Path) -> tuple[Path, Path]:
    """GGUF_DIR with /models/model.gguf, HF_DIR with /models/model/config.json."""
    gguf, hf = tmp_path / "gguf", tmp_path / "hf"
    gguf.mkdir()
    (gguf / "model.gguf").write_bytes(b"GGUF" + bytes(60))
    (hf / "model").mkdir(parents=True)
    (hf / "model" / "config.json").write_text("{}")
    return gguf, hf


@pytest.fixture
def ports_asked(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, int]]:
    """Every port counts as free (no real socket is bound); records which were asked about."""
    asked: list[tuple[str, int]] = []

    def free(host: str, port: int) -> bool:
        asked.append((host, port))
        return True

    monkeypatch.setattr(preflight, "port_is_free", free)
    return asked


@pytest.fixture
def make_project(
    make_settings: MakeSettings,
    runner: ScriptedRunner,
    model_dirs: tuple[Path, Path],
    ports_asked: list[tuple[str, int]],
    ready: FakeReadiness,
    clock: FakeClock,
) -> MakeProject:
    """A project on the fake runner, models present, ports free, services ready at once.

    `warm` runs compose detection up front and forgets those calls, so `runner.argvs` holds only
    what the code under test ran.
    """
    gguf, hf = model_dirs

    def make(backend: str = "llamacpp", *, warm: bool = True, **overrides: str) -> ComposeProject:
        given = {"llm_api_key": API_KEY, **overrides}
        settings = make_settings(
            gguf_dir=str(gguf), hf_dir=str(hf), build_ca_bundle="none", **given
        )
        project = ComposeProject(settings, backend, Docker(runner=runner))
        if warm:
            project.argv()
            runner.calls.clear()
        return project

    return make


def compose(project: ComposeProject, *args: str) -> tuple[str, ...]:
    """The full argv prefix of a compose command, for the runner's rules."""
    return tuple(project.argv(*args))


def script_failed_up(
    runner: ScriptedRunner,
    project: ComposeProject,
    *,
    after: Snapshot,
    before: Snapshot = (),
    stderr: str = "Error response from daemon: something failed\n",
    log: str = LLM_LOG,
) -> None:
    """`compose up` fails; the containers are `before` until then, `after` from then on."""
    script_containers(runner, before, after)
    runner.on(*compose(project, "up"), returncode=1, stderr=stderr)
    runner.on(*compose(project, "logs"), stdout=log)
    runner.calls.clear()


def script_up(
    runner: ScriptedRunner,
    project: ComposeProject,
    *looks: Snapshot,
    before: Snapshot = (),
    log: str = LLM_LOG,
) -> None:
    """`compose up` succeeds; the containers are `before` until then, and each later look at them
    (the crash watch's, the cleanup's) sees the next of `looks`, the last one from then on."""
    script_containers(runner, before, *looks)
    runner.on(*compose(project, "logs"), stdout=log)
    runner.calls.clear()


def record_container_looks(monkeypatch: pytest.MonkeyPatch, clock: FakeClock) -> list[float]:
    """The fake time of each call to `lifecycle.containers`, which still answers from the runner."""
    looks: list[float] = []
    real = lifecycle.containers

    def recorded(project: ComposeProject) -> dict[str, Container]:
        looks.append(clock.now)
        return real(project)

    monkeypatch.setattr(lifecycle, "containers", recorded)
    return looks


def removals(runner: ScriptedRunner) -> list[list[str]]:
    return [cmd for cmd in compose_subcommands(runner) if cmd[0] == "rm"]


def raised(call: Callable[[], object]) -> UserError:
    with pytest.raises(UserError) as caught:
        call()
    return caught.value


def assert_one_line(error: UserError) -> None:
    assert "\n" not in str(error), str(error)


# --- service_states --------------------------------------------------------------------------


def test_service_states_reads_one_object_per_line(
    make_project: MakeProject, runner: ScriptedRunner
) -> None:
    project = make_project()
    runner.on(
        *compose(project, *PS_JSON),
        stdout=ps_lines(
            ps_entry("redis", "r1", port=6379),
            ps_entry("llm-server", "l1", state="exited", health="", exit_code=139),
        ),
    )

    states = lifecycle.service_states(project)

    assert states == {
        "redis": ServiceState("redis", "r1", "running", "healthy", 0, "127.0.0.1:6379->6379"),
        "llm-server": ServiceState("llm-server", "l1", "exited", "", 139, ""),
    }
    assert compose_subcommands(runner) == [list(PS_JSON)]


def test_service_states_reads_a_json_array(
    make_project: MakeProject, runner: ScriptedRunner
) -> None:
    """Compose before 2.21 prints one JSON array instead of one object per line."""
    project = make_project()
    array = json.dumps([ps_entry("redis", "r1"), ps_entry("llm-server", "l1", health="starting")])
    runner.on(*compose(project, *PS_JSON), stdout=array + "\n")

    states = lifecycle.service_states(project)

    assert list(states) == ["redis", "llm-server"]
    assert states["llm-server"].health == "starting"
    assert states["llm-server"].container_id == "l1"


def test_service_states_lists_only_published_ports_and_skips_blank_lines(
    make_project: MakeProject, runner: ScriptedRunner
) -> None:
    project = make_project()
    entry = ps_entry("redis", "r1")
    entry["Publishers"] = [
        {"URL": "127.0.0.1", "TargetPort": 6379, "PublishedPort": 6390},
        {"URL": "", "TargetPort": 9121, "PublishedPort": 0},
    ]
    del entry["Health"], entry["ExitCode"]
    runner.on(*compose(project, *PS_JSON), stdout="\n" + json.dumps(entry) + "\n\n")

    states = lifecycle.service_states(project)

    assert states["redis"].ports == "127.0.0.1:6390->6379"
    assert states["redis"].health == ""
    assert states["redis"].exit_code == 0


def test_service_states_without_containers_is_empty(make_project: MakeProject) -> None:
    assert lifecycle.service_states(make_project()) == {}


# --- check_service, service_log, running_backend -----------------------------------------------


@pytest.mark.parametrize("service", [None, "redis", "llm-server"])
def test_check_service_accepts_known_services(service: str | None) -> None:
    assert lifecycle.check_service(service) == service


def test_check_service_rejects_unknown_listing_the_valid_ones() -> None:
    error = raised(lambda: lifecycle.check_service("workers"))

    assert str(error) == "unknown service 'workers': use one of redis, llm-server, worker, flower"


def test_service_log_asks_for_the_last_lines_and_labels_them(
    make_project: MakeProject, runner: ScriptedRunner
) -> None:
    project = make_project()
    runner.on(*compose(project, "logs"), stdout="line 1\n", stderr="line 2\n")

    log = lifecycle.service_log(project, "redis", lines=5)

    assert log == "--- last 5 lines of redis's log ---\nline 1\nline 2"
    assert compose_subcommands(runner)[-1] == [
        "logs",
        "--no-color",
        "--no-log-prefix",
        "--tail",
        "5",
        "redis",
    ]


def test_service_log_of_a_silent_service_is_empty(make_project: MakeProject) -> None:
    assert lifecycle.service_log(make_project(), "redis") == ""


def test_running_backend_is_none_without_containers(
    make_project: MakeProject, runner: ScriptedRunner
) -> None:
    assert lifecycle.running_backend(make_project()) is None
    assert [argv for argv in runner.argvs if argv[:2] == ["docker", "inspect"]] == []


def test_running_backend_is_none_string_with_redis_alone(
    make_project: MakeProject, runner: ScriptedRunner
) -> None:
    project = make_project()
    runner.on(*compose(project, *PS_JSON), stdout=ps_lines(ps_entry("redis", "r1")))

    assert lifecycle.running_backend(project) == "none"


@pytest.mark.parametrize(
    ("override", "expected"),
    [("docker-compose.vllm.yml", "vllm"), ("docker-compose.llamacpp.yml", "llamacpp")],
)
def test_running_backend_reads_the_llm_servers_compose_files_label(
    make_project: MakeProject, runner: ScriptedRunner, override: str, expected: str
) -> None:
    project = make_project()
    runner.on(
        *compose(project, *PS_JSON),
        stdout=ps_lines(ps_entry("redis", "r1"), ps_entry("llm-server", "l1")),
    )
    label = f"/repo/docker/docker-compose.yml,/repo/docker/{override}\n"
    runner.on("docker", "inspect", stdout=label)

    assert lifecycle.running_backend(project) == expected
    inspects = [argv for argv in runner.argvs if argv[:2] == ["docker", "inspect"]]
    assert inspects == [
        [
            "docker",
            "inspect",
            "--format",
            '{{index .Config.Labels "com.docker.compose.project.config_files"}}',
            "l1",
        ]
    ]


# --- containers: `docker ps` for the ids, one `docker inspect` for all of them -----------------

LLM_ID = "5f0c3e1a9b7d" + "4e2a" * 13  # a full id: `docker ps -q` prints its first 12 characters


def test_containers_lists_the_projects_ids_then_inspects_them_in_one_call(
    make_project: MakeProject, runner: ScriptedRunner
) -> None:
    project = make_project()
    script_containers(
        runner,
        [
            inspect_entry("redis", "r1"),
            inspect_entry(
                "llm-server",
                LLM_ID,
                status="restarting",
                exit_code=137,
                restarts=2,
                health="unhealthy",
            ),
        ],
    )
    runner.calls.clear()

    found = lifecycle.containers(project)

    assert found == {
        "redis": Container("redis", "r1", "running", 0, 0, "healthy"),
        "llm-server": Container(
            "llm-server", LLM_ID, "restarting", 137, 2, "unhealthy", backend="llamacpp"
        ),
    }
    assert runner.argvs == [PS_PROJECT, ["docker", "inspect", "r1", LLM_ID[:12]]]


def test_containers_of_the_settings_project(
    make_project: MakeProject, runner: ScriptedRunner
) -> None:
    project = make_project(compose_project_name="other_stack")

    assert lifecycle.containers(project) == {}
    assert runner.argvs == [
        [
            *["docker", "ps", "-aq", "--filter", "label=com.docker.compose.project=other_stack"],
            *["--filter", "label=com.docker.compose.oneoff=False"],
        ]
    ]


def test_containers_without_any_inspects_nothing(
    make_project: MakeProject, runner: ScriptedRunner
) -> None:
    assert lifecycle.containers(make_project()) == {}
    assert runner.argvs == [PS_PROJECT]


def test_containers_ignores_containers_without_a_service_label(
    make_project: MakeProject, runner: ScriptedRunner
) -> None:
    project = make_project()
    script_containers(
        runner,
        [inspect_entry(None, "x1", status="exited", exit_code=1), inspect_entry("redis", "r1")],
    )

    assert list(lifecycle.containers(project)) == ["redis"]


def test_containers_without_a_healthcheck_or_restart_count_reads_as_blank_and_zero(
    make_project: MakeProject, runner: ScriptedRunner
) -> None:
    project = make_project()
    entry = inspect_entry("redis", "r1", health=None)
    del entry["RestartCount"], entry["State"]["ExitCode"]
    script_containers(runner, [entry])

    assert lifecycle.containers(project) == {"redis": Container("redis", "r1", "running", 0, 0, "")}


def test_containers_skips_one_removed_between_ps_and_inspect(
    make_project: MakeProject, runner: ScriptedRunner
) -> None:
    """`docker inspect` fails for the missing id but still describes the others."""
    project = make_project()
    runner.on(*PS_PROJECT, stdout="r1\nl1\n")
    runner.on(
        "docker",
        "inspect",
        "r1",
        "l1",
        returncode=1,
        stdout=json.dumps([inspect_entry("redis", "r1")]) + "\n",
        stderr="Error: No such object: l1\n",
    )

    assert list(lifecycle.containers(project)) == ["redis"]


@pytest.mark.parametrize(
    ("status", "restarts", "crashed"),
    [
        ("created", 0, False),
        ("running", 0, False),
        ("exited", 0, True),
        ("dead", 0, True),
        ("restarting", 0, True),
        ("running", 1, True),  # a crash loop between two restarts
    ],
)
def test_container_crashed_when_down_or_restarted_by_its_policy(
    status: str, restarts: int, crashed: bool
) -> None:
    assert Container("redis", "r1", status, 1, restarts, "").crashed_since(0) is crashed


# --- up: preflight stops it before anything runs ---------------------------------------------

PREFLIGHT_COMMANDS = (["docker", "ps"], ["docker", "info"], ["docker", "inspect"])


def assert_only_preflight_ran(runner: ScriptedRunner) -> None:
    """Nothing was built, created or started: only the read-only preflight queries ran."""
    assert [argv for argv in runner.argvs if argv[:2] not in PREFLIGHT_COMMANDS] == []


def test_up_with_missing_gguf_model_stops_before_compose(
    make_project: MakeProject, runner: ScriptedRunner, model_dirs: tuple[Path, Path]
) -> None:
    project = make_project(warm=False, model_path="/models/absent.gguf")

    error = raised(lambda: lifecycle.up(project, timeout=600, say=lambda _: None))

    assert str(error).startswith(f"model file {model_dirs[0] / 'absent.gguf'} ")
    assert "(MODEL_PATH=/models/absent.gguf) not found" in str(error)
    assert "`invoke fetch-model`" in str(error)
    assert_one_line(error)
    assert_only_preflight_ran(runner)


def test_up_with_missing_vllm_model_folder_stops_before_compose(
    make_project: MakeProject, runner: ScriptedRunner, model_dirs: tuple[Path, Path]
) -> None:
    runner.on(*RUNTIMES, stdout=NVIDIA_RUNTIMES)
    project = make_project("vllm", warm=False, model_name="/models/absent")

    error = raised(lambda: lifecycle.up(project, timeout=600, say=lambda _: None))

    assert str(error).startswith(f"model folder {model_dirs[1] / 'absent'} ")
    assert "`invoke fetch-model --backend vllm`" in str(error)
    assert_only_preflight_ran(runner)


@pytest.mark.parametrize(("taken", "setting"), [(6379, "REDIS_PORT"), (8000, "PORT")])
def test_up_with_a_port_taken_by_another_program_stops_before_compose(
    make_project: MakeProject,
    runner: ScriptedRunner,
    monkeypatch: pytest.MonkeyPatch,
    taken: int,
    setting: str,
) -> None:
    monkeypatch.setattr(preflight, "port_is_free", lambda host, port: port != taken)
    project = make_project(warm=False)

    error = raised(lambda: lifecycle.up(project, timeout=600, say=lambda _: None))

    assert str(error) == (
        f"port {taken} on 127.0.0.1 is taken by another program: "
        f"stop it, or set {setting} to a free port in .env"
    )
    assert_only_preflight_ran(runner)


def test_up_with_gpu_layers_but_no_nvidia_runtime_stops_before_compose(
    make_project: MakeProject, runner: ScriptedRunner
) -> None:
    runner.on(*RUNTIMES, stdout='{"io.containerd.runc.v2":{"path":"runc"},"runc":{"path":"runc"}}')
    project = make_project(warm=False, n_gpu_layers="-1")

    error = raised(lambda: lifecycle.up(project, timeout=600, say=lambda _: None))

    assert "N_GPU_LAYERS=-1" in str(error)
    assert "NVIDIA" in str(error)
    assert "set N_GPU_LAYERS=0" in str(error)
    assert_one_line(error)
    assert_only_preflight_ran(runner)


def test_up_reports_the_missing_model_first_when_several_things_are_wrong(
    make_project: MakeProject, runner: ScriptedRunner, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(preflight, "port_is_free", lambda host, port: False)
    project = make_project(warm=False, model_path="/models/absent.gguf")

    error = raised(lambda: lifecycle.up(project, timeout=600, say=lambda _: None))

    assert str(error).startswith("model file ")
    assert_only_preflight_ran(runner)


def test_up_rerun_on_a_running_stack_does_not_count_its_own_ports_as_taken(
    make_project: MakeProject, runner: ScriptedRunner, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(preflight, "port_is_free", lambda host, port: False)
    runner.on("docker", "ps", "-q", stdout="r1\nl1\n")
    runner.on(
        "docker",
        "inspect",
        "--format",
        "{{json .NetworkSettings.Ports}}",
        stdout='{"6379/tcp":[{"HostIp":"127.0.0.1","HostPort":"6379"}]}\n'
        '{"8000/tcp":[{"HostIp":"127.0.0.1","HostPort":"8000"}]}\n',
    )
    project = make_project()

    lifecycle.up(project, timeout=600, say=lambda _: None)

    assert [
        "docker", "ps", "-q", "--filter", "label=com.docker.compose.project=kc-devenv",
        "--filter", "label=com.docker.compose.oneoff=False",
    ] in runner.argvs  # fmt: skip
    one_up_call(runner)


# --- up: the compose command and readiness ---------------------------------------------------


@pytest.mark.parametrize(
    ("backend", "layers", "files"),
    [
        ("none", "0", [BASE_FILE]),
        ("llamacpp", "0", [BASE_FILE, LLAMACPP_FILE]),
        ("llamacpp", "-1", [BASE_FILE, LLAMACPP_FILE, GPU_FILE]),
        ("vllm", "0", [BASE_FILE, VLLM_FILE, GPU_FILE]),
    ],
)
def test_up_runs_compose_up_detached_with_the_backends_files(
    make_project: MakeProject,
    runner: ScriptedRunner,
    backend: str,
    layers: str,
    files: list[Path],
) -> None:
    runner.on(*RUNTIMES, stdout=NVIDIA_RUNTIMES)
    project = make_project(backend, n_gpu_layers=layers)

    lifecycle.up(project, timeout=90, say=lambda _: None)

    up = one_up_call(runner)
    assert up[:4] == ["docker", "compose", "--project-name", "kc-devenv"]
    assert compose_files_of(up) == [str(path) for path in files]
    assert compose_subcommands(runner) == [UP]


def test_up_on_an_old_engine_adds_the_pre25_files(
    make_project: MakeProject, runner: ScriptedRunner
) -> None:
    runner.on("docker", "version", stdout="1.41\n")
    project = make_project()

    lifecycle.up(project, timeout=600, say=lambda _: None)

    assert compose_files_of(one_up_call(runner)) == [
        str(path)
        for path in (
            BASE_FILE,
            LLAMACPP_FILE,
            PRE25_DIR / "redis.yml",
            PRE25_DIR / "llm-server.yml",
        )
    ]


def test_up_says_what_it_starts_and_returns_the_time_taken(
    make_project: MakeProject, clock: FakeClock, ready: FakeReadiness
) -> None:
    ready.llm = ["loading", "loading", None]
    said: list[str] = []

    took = lifecycle.up(make_project(), timeout=600, say=said.append)

    assert said == ["starting redis, llm-server (backend llamacpp, project kc-devenv)"]
    assert took == pytest.approx(2 * readiness.POLL)


def test_up_waits_for_redis_then_the_llm_server_with_the_settings(
    make_project: MakeProject, ready: FakeReadiness
) -> None:
    project = make_project(
        redis_port="6390", redis_password="s3cret", served_model_name="gemma", port="8001"
    )

    lifecycle.up(project, timeout=600, say=lambda _: None)

    assert ready.redis_calls == [("127.0.0.1", 6390, "s3cret")]
    assert ready.llm_calls == [("http://127.0.0.1:8000", "gemma")]


def test_up_with_backend_none_waits_for_redis_only(
    make_project: MakeProject, ready: FakeReadiness
) -> None:
    lifecycle.up(make_project("none"), timeout=600, say=lambda _: None)

    assert len(ready.redis_calls) == 1
    assert ready.llm_calls == []


def test_up_asks_vllm_for_the_folder_name_as_model(
    make_project: MakeProject, runner: ScriptedRunner, ready: FakeReadiness
) -> None:
    runner.on(*RUNTIMES, stdout=NVIDIA_RUNTIMES)

    lifecycle.up(make_project("vllm"), timeout=600, say=lambda _: None)

    assert ready.llm_calls == [("http://127.0.0.1:8000", "model")]


def test_up_of_services_ready_at_once_looks_at_the_containers_only_before_starting(
    make_project: MakeProject, runner: ScriptedRunner
) -> None:
    """The crash watch runs only while a readiness check fails."""
    project = make_project()
    script_up(runner, project, STARTING)

    lifecycle.up(project, timeout=600, say=lambda _: None)

    assert runner.argvs.count(PS_PROJECT) == 1


@pytest.mark.parametrize(
    ("service", "reason"),
    [
        ("redis", "Redis is loading its dataset"),
        ("llm-server", "server lists ['other'], not 'model'"),
    ],
)
def test_up_not_ready_by_the_deadline_names_the_service_and_reason(
    make_project: MakeProject,
    runner: ScriptedRunner,
    ready: FakeReadiness,
    clock: FakeClock,
    service: str,
    reason: str,
) -> None:
    project = make_project()
    ready.redis = [reason if service == "redis" else None]
    ready.llm = [reason if service == "llm-server" else None]
    script_up(runner, project, STARTING, log="last words\n")
    start = clock.now

    error = raised(lambda: lifecycle.up(project, timeout=30, say=lambda _: None))

    assert str(error) == (
        f"{service} not ready within 30 s ({reason}): "
        "raise --timeout (large models load for minutes), or see its log below"
    )
    assert error.details == f"--- last 20 lines of {service}'s log ---\nlast words"
    assert clock.now - start == pytest.approx(30, abs=readiness.POLL)
    assert removals(runner) == [["rm", "--stop", "--force", "redis", "llm-server"]]
    if service == "redis":
        assert ready.llm_calls == []


# --- up: `compose up` itself fails -----------------------------------------------------------


def test_up_port_already_allocated_names_the_port_settings(
    make_project: MakeProject, runner: ScriptedRunner, ready: FakeReadiness
) -> None:
    project = make_project()
    script_failed_up(
        runner,
        project,
        stderr=" Container kc-devenv-redis-1  Starting\n" + PORT_TAKEN,
        after=[inspect_entry("redis", "r1", status="created", health=None)],
    )

    error = raised(lambda: lifecycle.up(project, timeout=600, say=lambda _: None))

    assert str(error) == (
        f"a port the stack publishes is taken ({PORT_TAKEN.strip()}): "
        "stop the other program, or set REDIS_PORT / PORT in .env"
    )
    assert removals(runner) == [["rm", "--stop", "--force", "redis"]]
    assert ready.redis_calls == []


def test_up_failure_explained_by_a_container_that_exited(
    make_project: MakeProject, runner: ScriptedRunner, ready: FakeReadiness
) -> None:
    project = make_project()
    script_failed_up(
        runner,
        project,
        after=[inspect_entry("redis", "r1", status="dead", exit_code=132, health=None)],
        log="",
    )

    error = raised(lambda: lifecycle.up(project, timeout=600, say=lambda _: None))

    assert str(error) == (
        "redis exited while starting (exit code 132): illegal instruction: the image was built "
        "for another CPU; rebuild with `invoke build --no-cache` on this machine"
    )
    assert ready.redis_calls == []


@pytest.mark.parametrize(
    ("stderr", "after"),
    [
        ("validating docker-compose.yml: services.redis Additional property x\n", []),
        (
            "Error response from daemon: failed to create shim task: OCI runtime create failed: "
            'exec: "kc-redis-start": executable file not found in $PATH: unknown\n',
            [inspect_entry("redis", "r1", status="created", exit_code=127, health=None)],
        ),
    ],
)
def test_up_failure_without_a_known_cause_quotes_compose(
    make_project: MakeProject, runner: ScriptedRunner, stderr: str, after: Snapshot
) -> None:
    project = make_project()
    script_failed_up(runner, project, stderr=stderr, after=after)

    error = raised(lambda: lifecycle.up(project, timeout=600, say=lambda _: None))

    assert str(error) == f"docker compose up failed: {stderr.strip()}"


# --- up: the crash watch beside the readiness wait -------------------------------------------


@pytest.mark.parametrize(
    ("code", "log", "hint"),
    [
        (64, LLM_LOG, "kc-llm-start: /models/model.gguf is not GGUF"),
        (64, "", "check that the model is a valid file that fits in memory"),
        (
            132,
            LLM_LOG,
            "illegal instruction: the image was built for another CPU; "
            "rebuild with `invoke build --no-cache` on this machine",
        ),
        (
            137,
            LLM_LOG,
            "killed, most likely out of memory: raise LLM_MEMORY / REDIS_MEMORY, or use a "
            "smaller model or lower N_CTX",
        ),
        (1, LLM_LOG, "check that the model is a valid file that fits in memory"),
    ],
)
def test_up_service_that_exited_gets_a_hint_by_exit_code(
    make_project: MakeProject,
    runner: ScriptedRunner,
    ready: FakeReadiness,
    code: int,
    log: str,
    hint: str,
) -> None:
    project = make_project()
    ready.llm = [LLM_DOWN]
    script_up(runner, project, llm_crashed(code), log=log)

    error = raised(lambda: lifecycle.up(project, timeout=600, say=lambda _: None))

    assert str(error) == f"llm-server exited while starting (exit code {code}): {hint}"
    assert error.details == (
        f"--- last 20 lines of llm-server's log ---\n{log.strip()}" if log else ""
    )
    assert_one_line(error)


def test_up_redis_that_died_is_reported_while_waiting_for_redis(
    make_project: MakeProject, runner: ScriptedRunner, ready: FakeReadiness
) -> None:
    project = make_project()
    ready.redis = ["Redis does not answer (Connection refused)"]
    script_up(
        runner,
        project,
        [inspect_entry("redis", "r1", status="dead", exit_code=137), STARTING[1]],
        log="Killed\n",
    )

    error = raised(lambda: lifecycle.up(project, timeout=600, say=lambda _: None))

    assert str(error).startswith("redis exited while starting (exit code 137): killed")
    assert error.details == "--- last 20 lines of redis's log ---\nKilled"
    assert ready.llm_calls == []


@pytest.mark.parametrize(
    ("status", "code", "health", "said"),
    [
        ("restarting", 137, "starting", "exited while starting (exit code 137): killed, most"),
        # running again, between two crashes (Docker has reset the exit code)
        ("running", 0, "starting", "crashed while starting and was restarted: check that the"),
        ("running", 0, "unhealthy", "crashed while starting"),  # a crash, not just unhealthy
    ],
)
def test_up_crash_loop_is_reported_as_a_crash(
    make_project: MakeProject,
    runner: ScriptedRunner,
    ready: FakeReadiness,
    status: str,
    code: int,
    health: str,
    said: str,
) -> None:
    """The restart policy turns a crash into a loop: the restart count gives it away."""
    project = make_project()
    ready.llm = [LLM_DOWN]
    crash_loop = inspect_entry(
        "llm-server", "l1", status=status, exit_code=code, restarts=3, health=health
    )
    script_up(runner, project, [STARTING[0], crash_loop])

    error = raised(lambda: lifecycle.up(project, timeout=600, say=lambda _: None))

    assert str(error).startswith(f"llm-server {said}")
    assert "kc-llm-start" in error.details


def test_up_unhealthy_service_says_so_with_its_log(
    make_project: MakeProject, runner: ScriptedRunner, ready: FakeReadiness
) -> None:
    project = make_project()
    ready.redis = ["Redis refused the password: check REDIS_PASSWORD"]
    script_up(
        runner,
        project,
        [inspect_entry("redis", "r1", health="unhealthy"), STARTING[1]],
        log="NOAUTH Authentication required.\n",
    )

    error = raised(lambda: lifecycle.up(project, timeout=600, say=lambda _: None))

    assert str(error) == "redis is unhealthy: see its log below"
    assert error.details == "--- last 20 lines of redis's log ---\nNOAUTH Authentication required."


def test_up_crash_watch_looks_at_the_containers_at_most_once_a_second(
    make_project: MakeProject,
    runner: ScriptedRunner,
    ready: FakeReadiness,
    clock: FakeClock,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    project = make_project()
    ready.llm = ["loading"]
    script_up(runner, project, STARTING)
    looks = record_container_looks(monkeypatch, clock)

    raised(lambda: lifecycle.up(project, timeout=10, say=lambda _: None))

    watch = looks[1:-1]  # the first look is before `compose up`, the last the cleanup's
    assert 9 <= len(watch) <= 11, watch
    assert all(later - earlier >= 1.0 for earlier, later in itertools.pairwise(watch)), watch
    assert len(ready.llm_calls) >= 4 * len(watch), "readiness is polled more often than that"


def test_up_crash_seen_mid_wait_ends_the_wait_early(
    make_project: MakeProject, runner: ScriptedRunner, ready: FakeReadiness, clock: FakeClock
) -> None:
    project = make_project()
    ready.llm = [LLM_DOWN]  # the readiness check alone would keep failing until the deadline
    script_up(runner, project, STARTING, STARTING, llm_crashed(137))
    start = clock.now

    error = raised(lambda: lifecycle.up(project, timeout=600, say=lambda _: None))

    assert str(error).startswith("llm-server exited while starting (exit code 137): killed")
    assert 2 <= clock.now - start < 3  # the third look, two seconds in
    assert len(ready.llm_calls) > 10
    assert removals(runner) == [["rm", "--stop", "--force", "redis", "llm-server"]]


def test_up_does_not_blame_a_running_service_for_restarts_before_this_up(
    make_project: MakeProject, runner: ScriptedRunner, ready: FakeReadiness
) -> None:
    """Redis restarted once by its policy days ago and has served since; `compose up` leaves it
    alone and recreates only the LLM server, which loads for a while."""
    project = make_project()
    ready.llm = ["loading", "loading", None]
    old_redis = inspect_entry("redis", "r1", restarts=1)
    script_up(
        runner,
        project,
        [old_redis, inspect_entry("llm-server", "l2", health="starting")],
        before=[old_redis, inspect_entry("llm-server", "l1")],
    )

    lifecycle.up(project, timeout=600, say=lambda _: None)


# --- up: cleanup after a failure -------------------------------------------------------------


def test_up_failure_removes_only_containers_it_created(
    make_project: MakeProject, runner: ScriptedRunner, ready: FakeReadiness
) -> None:
    project = make_project()
    ready.llm = [LLM_DOWN]
    script_up(runner, project, llm_crashed(1), before=[inspect_entry("redis", "r1")])

    raised(lambda: lifecycle.up(project, timeout=600, say=lambda _: None))

    assert removals(runner) == [["rm", "--stop", "--force", "llm-server"]]


def test_up_failure_removes_containers_it_recreated(
    make_project: MakeProject, runner: ScriptedRunner, ready: FakeReadiness
) -> None:
    project = make_project()
    ready.llm = ["loading"]
    script_up(
        runner,
        project,
        [inspect_entry("redis", "r0"), inspect_entry("llm-server", "l1", health="starting")],
        before=[inspect_entry("redis", "r0"), inspect_entry("llm-server", "l0")],
    )

    error = raised(lambda: lifecycle.up(project, timeout=5, say=lambda _: None))

    assert str(error).startswith("llm-server not ready within 5 s (loading)")
    assert removals(runner) == [["rm", "--stop", "--force", "llm-server"]]


def test_up_failure_leaves_unchanged_containers_alone(
    make_project: MakeProject, runner: ScriptedRunner, ready: FakeReadiness
) -> None:
    project = make_project()
    ready.llm = ["one-token completion answered 500: boom"]
    running = [inspect_entry("redis", "r1"), inspect_entry("llm-server", "l1", health="unhealthy")]
    script_up(runner, project, running, before=running)

    error = raised(lambda: lifecycle.up(project, timeout=600, say=lambda _: None))

    assert str(error) == "llm-server is unhealthy: see its log below"
    assert removals(runner) == []


def test_up_keep_on_failure_removes_nothing(
    make_project: MakeProject, runner: ScriptedRunner, ready: FakeReadiness
) -> None:
    project = make_project()
    ready.llm = [LLM_DOWN]
    script_up(runner, project, llm_crashed(1))

    error = raised(
        lambda: lifecycle.up(project, timeout=600, keep_on_failure=True, say=lambda _: None)
    )

    assert str(error).startswith("llm-server exited while starting")
    assert removals(runner) == []


def test_up_success_removes_nothing(make_project: MakeProject, runner: ScriptedRunner) -> None:
    project = make_project()
    script_up(runner, project, STARTING)

    lifecycle.up(project, timeout=600, say=lambda _: None)

    assert removals(runner) == []


# --- down and restart ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("volumes", "expected"),
    [(False, ["down", "--remove-orphans"]), (True, ["down", "--remove-orphans", "--volumes"])],
)
def test_down_adds_volumes_only_when_asked(
    make_project: MakeProject, runner: ScriptedRunner, volumes: bool, expected: list[str]
) -> None:
    lifecycle.down(make_project("none"), volumes=volumes)

    assert compose_subcommands(runner) == [expected]


def test_down_failure_quotes_compose(make_project: MakeProject, runner: ScriptedRunner) -> None:
    project = make_project("none")
    runner.on(*compose(project, "down"), returncode=1, stderr="permission denied\n")

    error = raised(lambda: lifecycle.down(project, volumes=False))

    assert str(error) == "docker compose down failed: permission denied"


@pytest.mark.parametrize(
    ("service", "expected"), [(None, ["restart"]), ("llm-server", ["restart", "llm-server"])]
)
def test_restart_restarts_then_waits_for_readiness(
    make_project: MakeProject,
    runner: ScriptedRunner,
    ready: FakeReadiness,
    service: str | None,
    expected: list[str],
) -> None:
    ready.llm = ["loading", None]
    script_containers(runner, STARTING)

    took = lifecycle.restart(make_project(), service, timeout=60, say=lambda _: None)

    assert compose_subcommands(runner) == [expected]
    assert len(ready.redis_calls) == 1
    assert len(ready.llm_calls) == 2
    assert took == pytest.approx(readiness.POLL)


def test_restart_failure_does_not_wait(
    make_project: MakeProject, runner: ScriptedRunner, ready: FakeReadiness
) -> None:
    project = make_project()
    script_containers(runner, STARTING)
    runner.on(*compose(project, "restart"), returncode=1, stderr="no such service: llm-server\n")

    error = raised(lambda: lifecycle.restart(project, "llm-server", timeout=60, say=lambda _: None))

    assert str(error) == "docker compose restart failed: no such service: llm-server"
    assert ready.redis_calls == []


def test_restart_not_ready_in_time_names_the_service(
    make_project: MakeProject, runner: ScriptedRunner, ready: FakeReadiness
) -> None:
    ready.llm = ["LLM server does not answer (ConnectError)"]
    script_containers(runner, STARTING)

    error = raised(lambda: lifecycle.restart(make_project(), None, timeout=5, say=lambda _: None))

    assert str(error) == (
        "llm-server not ready within 5 s (LLM server does not answer (ConnectError)): "
        "raise --timeout (large models load for minutes), or see its log below"
    )


def test_restart_reports_a_crash_seen_while_waiting(
    make_project: MakeProject, runner: ScriptedRunner, ready: FakeReadiness
) -> None:
    project = make_project()
    ready.llm = [LLM_DOWN]
    script_containers(runner, llm_crashed(137))
    runner.on(*compose(project, "logs"), stdout=LLM_LOG)

    error = raised(lambda: lifecycle.restart(project, "llm-server", timeout=60, say=lambda _: None))

    assert str(error).startswith("llm-server exited while starting (exit code 137): killed")
    assert compose_subcommands(runner)[0] == ["restart", "llm-server"]
    assert removals(runner) == []


# --- the LLM server's API key ----------------------------------------------------------------


def test_up_without_a_key_generates_one_into_env_unprinted(
    make_project: MakeProject, ready: FakeReadiness, tmp_path: Path
) -> None:
    env_file = tmp_path / ".env"
    env_file.write_text("# mine\nLLM_BACKEND=llamacpp\n")
    project = make_project(llm_api_key="")
    said: list[str] = []

    lifecycle.up(project, timeout=600, say=said.append, env_file=env_file)

    key = dotenv_values(env_file)["LLM_API_KEY"]
    assert key and len(key) >= 32
    assert ready.llm_keys == [key]  # the readiness probe sends it
    assert said[0] == (
        f"generated LLM_API_KEY into {env_file}: the LLM server answers only clients that send "
        "it (the worker reads it from there)"
    )
    assert key not in "".join(said)
    assert env_file.read_text().startswith("# mine\nLLM_BACKEND=llamacpp\n")


@pytest.mark.parametrize(
    "overrides",
    [{"model_path": "/models/absent.gguf"}, {"bind_host": "0.0.0.0"}],
    ids=["missing-model", "exposed-without-redis-password"],
)
def test_up_refused_before_starting_leaves_env_without_a_key(
    make_project: MakeProject, runner: ScriptedRunner, tmp_path: Path, overrides: dict[str, str]
) -> None:
    """A refused `up` changes nothing: the key is generated only once the checks pass."""
    env_file = tmp_path / ".env"
    env_file.write_text("# mine\nLLM_BACKEND=llamacpp\n")
    project = make_project(warm=False, llm_api_key="", **overrides)
    said: list[str] = []

    raised(lambda: lifecycle.up(project, timeout=600, say=said.append, env_file=env_file))

    assert env_file.read_text() == "# mine\nLLM_BACKEND=llamacpp\n"
    assert said == []
    assert_only_preflight_ran(runner)


def test_up_keeps_a_key_that_is_set(
    make_project: MakeProject, ready: FakeReadiness, tmp_path: Path
) -> None:
    lifecycle.up(make_project(), timeout=600, say=lambda _: None, env_file=tmp_path / ".env")

    assert not (tmp_path / ".env").exists()
    assert ready.llm_keys == [API_KEY]


def test_up_of_redis_alone_needs_no_key(make_project: MakeProject, tmp_path: Path) -> None:
    project = make_project("none", llm_api_key="")

    lifecycle.up(project, timeout=600, say=lambda _: None, env_file=tmp_path / ".env")

    assert not (tmp_path / ".env").exists()


def test_a_key_emptied_by_the_environment_is_refused_not_regenerated(
    make_project: MakeProject, runner: ScriptedRunner, tmp_path: Path
) -> None:
    project = make_project(llm_api_key="")

    error = raised(
        lambda: lifecycle.ensure_api_key(
            project, tmp_path / ".env", lambda _: None, environ={"LLM_API_KEY": ""}
        )
    )

    assert str(error).startswith("LLM_API_KEY is empty in the environment, which overrides .env")
    assert not (tmp_path / ".env").exists()


def test_up_fails_and_cleans_up_when_the_server_answers_without_the_key(
    make_project: MakeProject, runner: ScriptedRunner, ready: FakeReadiness
) -> None:
    """An image from before the key ignores it: the server would serve any web page."""
    project = make_project()
    ready.anonymous = ["it answered 200 to a request without LLM_API_KEY"]
    script_up(runner, project, STARTING)

    error = raised(lambda: lifecycle.up(project, timeout=600, say=lambda _: None))

    assert str(error) == (
        "llm-server serves clients without LLM_API_KEY (it answered 200 to a request without "
        "LLM_API_KEY): its image predates the key; rebuild it with `invoke build` and run "
        "`invoke up` again"
    )
    assert ready.anonymous_calls == [("http://127.0.0.1:8000", "model")]
    assert removals(runner) == [["rm", "--stop", "--force", "redis", "llm-server"]]


# --- exposure and limits checked before anything starts -------------------------------------


@pytest.mark.parametrize(
    ("overrides", "missing"),
    [
        ({"bind_host": "0.0.0.0"}, "REDIS_PASSWORD is empty: set it"),
        ({"bind_host": "0.0.0.0", "llm_api_key": ""}, "REDIS_PASSWORD is empty: set it"),
        ({"bind_host": "192.168.1.5"}, "REDIS_PASSWORD is empty: set it"),
    ],
)
def test_up_refuses_a_non_loopback_bind_host_without_credentials(
    make_project: MakeProject,
    runner: ScriptedRunner,
    tmp_path: Path,
    overrides: dict[str, str],
    missing: str,
) -> None:
    project = make_project(
        bind_host=overrides["bind_host"], llm_api_key=overrides.get("llm_api_key", API_KEY)
    )

    error = raised(
        lambda: lifecycle.up(project, timeout=600, say=lambda _: None, env_file=tmp_path / ".env")
    )

    assert str(error) == (
        f"BIND_HOST={overrides['bind_host']} publishes the stack beyond this machine, but "
        f"{missing} in .env, or set BIND_HOST=127.0.0.1"
    )
    assert compose_subcommands(runner) == []


def test_up_on_every_interface_with_both_credentials_starts(
    make_project: MakeProject, runner: ScriptedRunner
) -> None:
    project = make_project(bind_host="0.0.0.0", redis_password="s3cret-Pa55word")

    lifecycle.up(project, timeout=600, say=lambda _: None)

    assert one_up_call(runner)


def test_up_refuses_more_cpus_than_docker_has(
    make_project: MakeProject, runner: ScriptedRunner
) -> None:
    runner.on("docker", "info", "--format", "{{.NCPU}}", stdout="2\n")
    project = make_project(llm_cpus="4")

    error = raised(lambda: lifecycle.up(project, timeout=600, say=lambda _: None))

    assert (
        str(error)
        == "LLM_CPUS=4 but Docker has 2 CPUs: set LLM_CPUS to 2 or less, or empty for no limit"
    )
    assert compose_subcommands(runner) == []


# --- backend switches say what they remove ---------------------------------------------------


@pytest.mark.parametrize(
    ("running", "backend", "line"),
    [
        (
            "llamacpp",
            "none",
            "removing the running llm-server (llamacpp): --backend=none runs Redis alone; "
            "`invoke up --backend=llamacpp` brings it back",
        ),
        ("llamacpp", "vllm", "replacing the running llm-server (llamacpp) with vllm"),
    ],
)
def test_a_backend_switch_that_removes_the_llm_server_says_so(
    make_project: MakeProject,
    runner: ScriptedRunner,
    running: str,
    backend: str,
    line: str,
) -> None:
    runner.on(*RUNTIMES, stdout=NVIDIA_RUNTIMES)
    project = make_project(backend)
    script_up(
        runner, project, before=[inspect_entry("redis", "r1"), inspect_entry("llm-server", "l1")]
    )
    said: list[str] = []

    lifecycle.up(project, timeout=600, say=said.append)

    assert said[0] == line


def test_up_of_the_same_backend_says_nothing_about_switching(
    make_project: MakeProject, runner: ScriptedRunner
) -> None:
    project = make_project()
    script_up(runner, project, before=[inspect_entry("llm-server", "l1", status="exited")])
    said: list[str] = []

    lifecycle.up(project, timeout=600, say=said.append)

    assert said == ["starting redis, llm-server (backend llamacpp, project kc-devenv)"]


# --- long waits are never silent -------------------------------------------------------------


def test_a_long_wait_says_what_it_waits_for_every_ten_seconds(
    make_project: MakeProject, ready: FakeReadiness, clock: FakeClock
) -> None:
    polls = int(25 / readiness.POLL)
    ready.llm = ["model list answered 503"] * polls + [None]
    said: list[str] = []

    lifecycle.up(make_project(), timeout=600, say=said.append)

    assert said[1:] == [
        "waiting for llm-server: model list answered 503 (10 s of 600 s)",
        "waiting for llm-server: model list answered 503 (20 s of 600 s)",
    ]


# --- restart ------------------------------------------------------------------------------------


def test_restart_without_a_stack_fails_at_once(
    make_project: MakeProject, runner: ScriptedRunner, clock: FakeClock
) -> None:
    start = clock.now

    error = raised(lambda: lifecycle.restart(make_project(), None, timeout=600, say=print))

    assert str(error) == "stack kc-devenv is not running: start it with `invoke up`"
    assert clock.now == start
    assert compose_subcommands(runner) == []


def test_restart_of_a_service_the_stack_lacks_fails_at_once(
    make_project: MakeProject, runner: ScriptedRunner
) -> None:
    script_containers(runner, [inspect_entry("redis", "r1")])

    error = raised(lambda: lifecycle.restart(make_project(), "llm-server", timeout=600, say=print))

    assert str(error).startswith("llm-server is not part of stack kc-devenv (services: redis)")
    assert compose_subcommands(runner) == []


# --- secrets never reach a printed log -------------------------------------------------------


def test_a_service_log_is_printed_with_its_secrets_masked(
    make_project: MakeProject, runner: ScriptedRunner
) -> None:
    project = make_project(redis_password="s3cret-Pa55word")
    runner.on(
        *compose(project, "logs"),
        stdout=(
            "*** FATAL CONFIG FILE ERROR ***\n>>> 'requirepass \"s3cret-Pa55word'\n"
            f"auth with {API_KEY} failed\nredis://:s3cret-Pa55word@127.0.0.1:6379/0\n"
        ),
    )

    log = lifecycle.service_log(project, "redis")

    assert "s3cret" not in log and "Pa55" not in log and API_KEY not in log
    assert log.splitlines()[2:] == [
        ">>> 'requirepass ********",
        "auth with ******** failed",
        "redis://:********@127.0.0.1:6379/0",
    ]


def test_no_hint_suggests_a_command_that_removes_a_running_service() -> None:
    """`invoke up --backend=none` removes a running LLM server: hints for a Redis that is down
    must say `invoke up`, which keeps the stack's backend."""
    hints = [
        path
        for path in sorted((paths.ROOT / "kcdev").rglob("*.py"))
        if "`invoke up --backend=none`" in path.read_text()
        or "`invoke up --backend none`" in path.read_text()
    ]
    assert hints == []


def test_a_compose_error_is_quoted_with_its_secrets_masked(
    make_project: MakeProject, runner: ScriptedRunner
) -> None:
    project = make_project(redis_password="s3cret-Pa55word")
    stderr = "Error response from daemon: bad value 's3cret-Pa55word' for REDIS_PASSWORD\n"
    script_failed_up(runner, project, stderr=stderr, after=[])

    error = raised(lambda: lifecycle.up(project, timeout=600, say=lambda _: None))

    assert str(error) == (
        "docker compose up failed: Error response from daemon: bad value '********' for "
        "REDIS_PASSWORD"
    )
