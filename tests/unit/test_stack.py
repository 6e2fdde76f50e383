"""The stack's lifecycle with Docker faked: preflight, `compose up --wait`, failures, cleanup."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

import pytest

from kcdev import paths, preflight, readiness, stack
from kcdev.compose import BASE_FILE, GPU_FILE, PRE25_DIR, ComposeProject
from kcdev.docker_cli import Docker
from kcdev.errors import UserError
from kcdev.stack import ServiceState

from .conftest import (
    FakeClock,
    FakeReadiness,
    MakeSettings,
    ScriptedRunner,
    compose_subcommands,
    ps_entry,
    ps_lines,
)

LLAMACPP_FILE = paths.DOCKER_DIR / "docker-compose.llamacpp.yml"
VLLM_FILE = paths.DOCKER_DIR / "docker-compose.vllm.yml"
PS_JSON = ("ps", "--all", "--format", "json")
UP_ARGS = ["up", "--detach", "--wait", "--wait-timeout"]
EXIT_CODE = ("docker", "inspect", "--format", "{{.State.ExitCode}}")
RUNTIMES = ("docker", "info", "--format", "{{json .Runtimes}}")
NVIDIA_RUNTIMES = '{"nvidia":{"path":"nvidia-container-runtime"},"runc":{"path":"runc"}}\n'
LLM_LOG = "llama_model_loader: loaded meta data\nkc-llm-start: /models/model.gguf is not GGUF\n"
PORT_TAKEN = (
    "Error response from daemon: driver failed programming external connectivity on endpoint "
    "kc-devenv-redis-1 (3f1c): Bind for 127.0.0.1:6379 failed: port is already allocated\n"
)


def compose_files_of(argv: list[str]) -> list[str]:
    return [argv[i + 1] for i, arg in enumerate(argv) if arg == "--file"]


def one_up_call(runner: ScriptedRunner) -> list[str]:
    ups = [argv for argv in runner.argvs if "--wait" in argv]
    assert len(ups) == 1, runner.argvs
    return ups[0]


class MakeProject(Protocol):
    def __call__(
        self, backend: str = "llamacpp", *, warm: bool = True, **overrides: str
    ) -> ComposeProject: ...


@pytest.fixture
def runner() -> ScriptedRunner:
    """Compose v2 on Engine 27 (start_interval supported); every other command succeeds."""
    fake = ScriptedRunner()
    fake.on("docker", "version", stdout="1.47\n")
    return fake


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
def ready(monkeypatch: pytest.MonkeyPatch) -> FakeReadiness:
    fake = FakeReadiness()
    monkeypatch.setattr(readiness, "redis_ready", fake.redis_ready)
    monkeypatch.setattr(readiness, "llm_ready", fake.llm_ready)
    return fake


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
        settings = make_settings(
            gguf_dir=str(gguf), hf_dir=str(hf), build_ca_bundle="none", **overrides
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
    after: str,
    before: str = "",
    stderr: str = "Error response from daemon: something failed\n",
    log: str = LLM_LOG,
) -> None:
    """`compose up` fails; `compose ps` shows `before` first, `after` from then on."""
    runner.on_calls(*compose(project, *PS_JSON), results=[(0, before, ""), (0, after, "")])
    runner.on(*compose(project, "up"), returncode=1, stderr=stderr)
    runner.on(*compose(project, "logs"), stdout=log)
    runner.calls.clear()


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

    states = stack.service_states(project)

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

    states = stack.service_states(project)

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

    states = stack.service_states(project)

    assert states["redis"].ports == "127.0.0.1:6390->6379"
    assert states["redis"].health == ""
    assert states["redis"].exit_code == 0


def test_service_states_without_containers_is_empty(make_project: MakeProject) -> None:
    assert stack.service_states(make_project()) == {}


# --- check_service, service_log, running_backend -----------------------------------------------


@pytest.mark.parametrize("service", [None, "redis", "llm-server"])
def test_check_service_accepts_known_services(service: str | None) -> None:
    assert stack.check_service(service) == service


def test_check_service_rejects_unknown_listing_the_valid_ones() -> None:
    error = raised(lambda: stack.check_service("worker"))

    assert str(error) == "unknown service 'worker': use one of redis, llm-server"


def test_service_log_asks_for_the_last_lines_and_labels_them(
    make_project: MakeProject, runner: ScriptedRunner
) -> None:
    project = make_project()
    runner.on(*compose(project, "logs"), stdout="line 1\n", stderr="line 2\n")

    log = stack.service_log(project, "redis", lines=5)

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
    assert stack.service_log(make_project(), "redis") == ""


def test_running_backend_is_none_without_containers(
    make_project: MakeProject, runner: ScriptedRunner
) -> None:
    assert stack.running_backend(make_project()) is None
    assert [argv for argv in runner.argvs if argv[:2] == ["docker", "inspect"]] == []


def test_running_backend_is_none_string_with_redis_alone(
    make_project: MakeProject, runner: ScriptedRunner
) -> None:
    project = make_project()
    runner.on(*compose(project, *PS_JSON), stdout=ps_lines(ps_entry("redis", "r1")))

    assert stack.running_backend(project) == "none"


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

    assert stack.running_backend(project) == expected
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


# --- up: preflight stops it before anything runs ---------------------------------------------

PREFLIGHT_COMMANDS = (["docker", "ps"], ["docker", "info"], ["docker", "inspect"])


def assert_only_preflight_ran(runner: ScriptedRunner) -> None:
    """Nothing was built, created or started: only the read-only preflight queries ran."""
    assert [argv for argv in runner.argvs if argv[:2] not in PREFLIGHT_COMMANDS] == []


def test_up_with_missing_gguf_model_stops_before_compose(
    make_project: MakeProject, runner: ScriptedRunner, model_dirs: tuple[Path, Path]
) -> None:
    project = make_project(warm=False, model_path="/models/absent.gguf")

    error = raised(lambda: stack.up(project, timeout=600, say=lambda _: None))

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

    error = raised(lambda: stack.up(project, timeout=600, say=lambda _: None))

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

    error = raised(lambda: stack.up(project, timeout=600, say=lambda _: None))

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

    error = raised(lambda: stack.up(project, timeout=600, say=lambda _: None))

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

    error = raised(lambda: stack.up(project, timeout=600, say=lambda _: None))

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

    stack.up(project, timeout=600, say=lambda _: None)

    assert ["docker", "ps", "-q", "--filter", "label=com.docker.compose.project=kc-devenv"] in (
        runner.argvs
    )
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
def test_up_runs_compose_up_wait_with_the_backends_files(
    make_project: MakeProject,
    runner: ScriptedRunner,
    backend: str,
    layers: str,
    files: list[Path],
) -> None:
    runner.on(*RUNTIMES, stdout=NVIDIA_RUNTIMES)
    project = make_project(backend, n_gpu_layers=layers)

    stack.up(project, timeout=90, say=lambda _: None)

    up = one_up_call(runner)
    assert up[:4] == ["docker", "compose", "--project-name", "kc-devenv"]
    assert compose_files_of(up) == [str(path) for path in files]
    assert compose_subcommands(runner) == [
        list(PS_JSON),
        [*UP_ARGS, "90", "--remove-orphans"],
    ]


def test_up_on_an_old_engine_adds_the_pre25_files(
    make_project: MakeProject, runner: ScriptedRunner
) -> None:
    runner.on("docker", "version", stdout="1.41\n")
    project = make_project()

    stack.up(project, timeout=600, say=lambda _: None)

    assert compose_files_of(one_up_call(runner)) == [
        str(path)
        for path in (
            BASE_FILE,
            LLAMACPP_FILE,
            PRE25_DIR / "redis.yml",
            PRE25_DIR / "llm-server.yml",
        )
    ]


def test_up_gives_compose_at_least_one_second(
    make_project: MakeProject, runner: ScriptedRunner
) -> None:
    stack.up(make_project(), timeout=0.3, say=lambda _: None)

    assert compose_subcommands(runner)[-1] == [*UP_ARGS, "1", "--remove-orphans"]


def test_up_says_what_it_starts_and_returns_the_time_taken(
    make_project: MakeProject, clock: FakeClock, ready: FakeReadiness
) -> None:
    ready.llm = ["loading", "loading", None]
    said: list[str] = []

    took = stack.up(make_project(), timeout=600, say=said.append)

    assert said == ["starting redis, llm-server (backend llamacpp, project kc-devenv)"]
    assert took == pytest.approx(2 * readiness.POLL)


def test_up_waits_for_redis_then_the_llm_server_with_the_settings(
    make_project: MakeProject, ready: FakeReadiness
) -> None:
    project = make_project(
        redis_port="6390", redis_password="s3cret", served_model_name="gemma", port="8001"
    )

    stack.up(project, timeout=600, say=lambda _: None)

    assert ready.redis_calls == [("127.0.0.1", 6390, "s3cret")]
    assert ready.llm_calls == [("http://127.0.0.1:8000", "gemma")]


def test_up_with_backend_none_waits_for_redis_only(
    make_project: MakeProject, ready: FakeReadiness
) -> None:
    stack.up(make_project("none"), timeout=600, say=lambda _: None)

    assert len(ready.redis_calls) == 1
    assert ready.llm_calls == []


def test_up_asks_vllm_for_the_folder_name_as_model(
    make_project: MakeProject, runner: ScriptedRunner, ready: FakeReadiness
) -> None:
    runner.on(*RUNTIMES, stdout=NVIDIA_RUNTIMES)

    stack.up(make_project("vllm"), timeout=600, say=lambda _: None)

    assert ready.llm_calls == [("http://127.0.0.1:8000", "model")]


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
    runner.on_calls(
        *compose(project, *PS_JSON),
        results=[
            (0, "", ""),
            (0, ps_lines(ps_entry("redis", "r1"), ps_entry("llm-server", "l1")), ""),
        ],
    )
    runner.on(*compose(project, "logs"), stdout="last words\n")
    runner.calls.clear()
    start = clock.now

    error = raised(lambda: stack.up(project, timeout=30, say=lambda _: None))

    assert str(error) == (
        f"{service} did not become ready within 30 s ({reason}): "
        "raise --timeout, or see its log below"
    )
    assert error.details == f"--- last 20 lines of {service}'s log ---\nlast words"
    assert clock.now - start == pytest.approx(30, abs=readiness.POLL)
    assert compose_subcommands(runner)[-1] == ["rm", "--stop", "--force", "redis", "llm-server"]
    if service == "redis":
        assert ready.llm_calls == []


# --- up: why `compose up --wait` failed ------------------------------------------------------


def test_up_port_already_allocated_names_the_port_settings(
    make_project: MakeProject, runner: ScriptedRunner
) -> None:
    project = make_project()
    script_failed_up(
        runner,
        project,
        stderr=" Container kc-devenv-redis-1  Starting\n" + PORT_TAKEN,
        after=ps_lines(ps_entry("redis", "r1", state="created", health="")),
    )

    error = raised(lambda: stack.up(project, timeout=600, say=lambda _: None))

    assert str(error) == (
        f"a port the stack publishes is taken ({PORT_TAKEN.strip()}): "
        "stop the other program, or set REDIS_PORT / PORT in .env"
    )
    assert compose_subcommands(runner)[-1] == ["rm", "--stop", "--force", "redis"]


@pytest.mark.parametrize(
    ("code", "hint"),
    [
        (64, "kc-llm-start: /models/model.gguf is not GGUF"),
        (
            132,
            "illegal instruction: the image was built for another CPU; "
            "rebuild with `invoke build --no-cache` on this machine",
        ),
        (137, "killed, most likely out of memory: use a smaller model or lower N_CTX"),
        (1, "check that the model is a valid file that fits in memory"),
    ],
)
def test_up_service_that_exited_gets_a_hint_by_exit_code(
    make_project: MakeProject, runner: ScriptedRunner, code: int, hint: str
) -> None:
    project = make_project()
    script_failed_up(
        runner,
        project,
        after=ps_lines(
            ps_entry("redis", "r1"),
            ps_entry("llm-server", "l1", state="exited", health="", exit_code=code),
        ),
    )
    runner.on(*EXIT_CODE, stdout=f"{code}\n")

    error = raised(lambda: stack.up(project, timeout=600, say=lambda _: None))

    assert str(error) == f"llm-server exited while starting (exit code {code}): {hint}"
    assert error.details == f"--- last 20 lines of llm-server's log ---\n{LLM_LOG.strip()}"
    assert [*EXIT_CODE, "l1"] in runner.argvs


def test_up_restarting_service_takes_its_exit_code_from_docker_inspect(
    make_project: MakeProject, runner: ScriptedRunner
) -> None:
    """Compose says ExitCode 0 for a container its restart policy is bringing back."""
    project = make_project()
    script_failed_up(
        runner,
        project,
        after=ps_lines(
            ps_entry("redis", "r1"),
            ps_entry("llm-server", "l1", state="restarting", health="", exit_code=0),
        ),
    )
    runner.on(*EXIT_CODE, stdout="137\n")

    error = raised(lambda: stack.up(project, timeout=600, say=lambda _: None))

    assert str(error).startswith("llm-server exited while starting (exit code 137): killed")
    assert_one_line(error)
    assert "kc-llm-start" in error.details


def test_up_exit_code_falls_back_to_compose_when_inspect_fails(
    make_project: MakeProject, runner: ScriptedRunner
) -> None:
    project = make_project()
    script_failed_up(
        runner,
        project,
        after=ps_lines(ps_entry("redis", "r1", state="dead", health="", exit_code=132)),
    )
    runner.on(*EXIT_CODE, returncode=1, stderr="Error: No such object: r1\n")

    error = raised(lambda: stack.up(project, timeout=600, say=lambda _: None))

    assert str(error).startswith("redis exited while starting (exit code 132): illegal instruction")


def test_up_unhealthy_service_says_so_with_its_log(
    make_project: MakeProject, runner: ScriptedRunner
) -> None:
    project = make_project()
    script_failed_up(
        runner,
        project,
        stderr="dependency failed to start: container kc-devenv-redis-1 is unhealthy\n",
        after=ps_lines(ps_entry("redis", "r1", health="unhealthy")),
        log="NOAUTH Authentication required.\n",
    )

    error = raised(lambda: stack.up(project, timeout=600, say=lambda _: None))

    assert str(error) == "redis is unhealthy: see its log below"
    assert error.details == "--- last 20 lines of redis's log ---\nNOAUTH Authentication required."


def test_up_still_starting_at_the_timeout_says_raise_timeout(
    make_project: MakeProject, runner: ScriptedRunner
) -> None:
    project = make_project()
    script_failed_up(
        runner,
        project,
        stderr="container kc-devenv-llm-server-1 exited (1)\ntimeout waiting for containers\n",
        after=ps_lines(ps_entry("redis", "r1"), ps_entry("llm-server", "l1", health="starting")),
    )

    error = raised(lambda: stack.up(project, timeout=45, say=lambda _: None))

    assert str(error) == (
        "llm-server not ready within 45 s (still starting): "
        "raise --timeout (large models load for minutes), or see its log below"
    )
    assert "kc-llm-start" in error.details


def test_up_failure_without_a_known_cause_quotes_compose(
    make_project: MakeProject, runner: ScriptedRunner
) -> None:
    project = make_project()
    script_failed_up(
        runner,
        project,
        stderr="validating docker-compose.yml: services.redis Additional property x\n",
        after="",
    )

    error = raised(lambda: stack.up(project, timeout=600, say=lambda _: None))

    assert str(error) == (
        "docker compose up failed: validating docker-compose.yml: services.redis "
        "Additional property x"
    )


# --- up: cleanup after a failure -------------------------------------------------------------


def test_up_failure_removes_only_containers_it_created(
    make_project: MakeProject, runner: ScriptedRunner
) -> None:
    project = make_project()
    script_failed_up(
        runner,
        project,
        before=ps_lines(ps_entry("redis", "r1")),
        after=ps_lines(
            ps_entry("redis", "r1"), ps_entry("llm-server", "l1", state="exited", health="")
        ),
    )

    raised(lambda: stack.up(project, timeout=600, say=lambda _: None))

    removals = [cmd for cmd in compose_subcommands(runner) if cmd[0] == "rm"]
    assert removals == [["rm", "--stop", "--force", "llm-server"]]


def test_up_failure_removes_containers_it_recreated(
    make_project: MakeProject, runner: ScriptedRunner
) -> None:
    project = make_project()
    script_failed_up(
        runner,
        project,
        before=ps_lines(ps_entry("redis", "r0"), ps_entry("llm-server", "l0")),
        after=ps_lines(ps_entry("redis", "r0"), ps_entry("llm-server", "l1", health="starting")),
    )

    raised(lambda: stack.up(project, timeout=600, say=lambda _: None))

    removals = [cmd for cmd in compose_subcommands(runner) if cmd[0] == "rm"]
    assert removals == [["rm", "--stop", "--force", "llm-server"]]


def test_up_failure_leaves_unchanged_containers_alone(
    make_project: MakeProject, runner: ScriptedRunner
) -> None:
    project = make_project()
    running = ps_lines(ps_entry("redis", "r1"), ps_entry("llm-server", "l1", health="unhealthy"))
    script_failed_up(runner, project, before=running, after=running)

    raised(lambda: stack.up(project, timeout=600, say=lambda _: None))

    assert [cmd for cmd in compose_subcommands(runner) if cmd[0] == "rm"] == []


def test_up_keep_on_failure_removes_nothing(
    make_project: MakeProject, runner: ScriptedRunner
) -> None:
    project = make_project()
    script_failed_up(
        runner,
        project,
        after=ps_lines(ps_entry("redis", "r1"), ps_entry("llm-server", "l1", state="exited")),
    )

    error = raised(lambda: stack.up(project, timeout=600, keep_on_failure=True, say=lambda _: None))

    assert str(error).startswith("llm-server exited while starting")
    assert [cmd for cmd in compose_subcommands(runner) if cmd[0] == "rm"] == []


def test_up_success_removes_nothing(make_project: MakeProject, runner: ScriptedRunner) -> None:
    stack.up(make_project(), timeout=600, say=lambda _: None)

    assert [cmd for cmd in compose_subcommands(runner) if cmd[0] == "rm"] == []


# --- down and restart ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("volumes", "expected"),
    [(False, ["down", "--remove-orphans"]), (True, ["down", "--remove-orphans", "--volumes"])],
)
def test_down_adds_volumes_only_when_asked(
    make_project: MakeProject, runner: ScriptedRunner, volumes: bool, expected: list[str]
) -> None:
    stack.down(make_project("none"), volumes=volumes)

    assert compose_subcommands(runner) == [expected]


def test_down_failure_quotes_compose(make_project: MakeProject, runner: ScriptedRunner) -> None:
    project = make_project("none")
    runner.on(*compose(project, "down"), returncode=1, stderr="permission denied\n")

    error = raised(lambda: stack.down(project, volumes=False))

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

    took = stack.restart(make_project(), service, timeout=60, say=lambda _: None)

    assert compose_subcommands(runner) == [expected]
    assert len(ready.redis_calls) == 1
    assert len(ready.llm_calls) == 2
    assert took == pytest.approx(readiness.POLL)


def test_restart_failure_does_not_wait(
    make_project: MakeProject, runner: ScriptedRunner, ready: FakeReadiness
) -> None:
    project = make_project()
    runner.on(*compose(project, "restart"), returncode=1, stderr="no such service: llm-server\n")

    error = raised(lambda: stack.restart(project, "llm-server", timeout=60, say=lambda _: None))

    assert str(error) == "docker compose restart failed: no such service: llm-server"
    assert ready.redis_calls == []


def test_restart_not_ready_in_time_names_the_service(
    make_project: MakeProject, runner: ScriptedRunner, ready: FakeReadiness
) -> None:
    ready.llm = ["LLM server does not answer (ConnectError)"]

    error = raised(lambda: stack.restart(make_project(), None, timeout=5, say=lambda _: None))

    assert str(error).startswith(
        "llm-server did not become ready within 5 s (LLM server does not answer (ConnectError))"
    )


def test_up_crash_loop_reported_as_exit_even_when_compose_says_unhealthy(
    make_project: MakeProject, runner: ScriptedRunner
) -> None:
    """A restart policy turns a crash into a loop that compose reports as unhealthy."""
    project = make_project()
    script_failed_up(
        runner,
        project,
        after=ps_lines(
            ps_entry("redis", "r1"),
            ps_entry("llm-server", "l1", state="running", health="starting", exit_code=0),
        ),
    )
    runner.on("docker", "inspect", "--format", "{{.RestartCount}}", "l1", stdout="3\n")
    runner.on(*EXIT_CODE, stdout="1\n")

    error = raised(lambda: stack.up(project, timeout=600, say=lambda _: None))

    assert str(error).startswith("llm-server exited while starting (exit code 1): check")
