"""The stack's tasks (up, down, ps, logs, restart, doctor): in process with Docker faked, and as
`invoke` subprocesses that must fail in one line before touching Docker."""

from __future__ import annotations

import dataclasses
import functools
import importlib
import io
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import ClassVar

import pytest
from filelock import FileLock
from invoke.context import Context
from invoke.exceptions import Exit

from kcdev import files, paths
from kcdev.settings import Settings
from kcdev.stack import doctor, lifecycle, preflight, status
from kcdev.stack.compose import BASE_FILE, ComposeProject
from kcdev.stack.docker_cli import Docker
from kcdev.stack.doctor import GIB, Check
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
from worker import cli as worker_cli

REPO_ROOT = Path(__file__).resolve().parents[2]
VLLM_FILE = paths.DOCKER_DIR / "docker-compose.vllm.yml"
PS_JSON = ("ps", "--all", "--format", "json")
LABEL_INSPECT = (
    "docker",
    "inspect",
    "--format",
    '{{index .Config.Labels "com.docker.compose.project.config_files"}}',
)


LIMITS_FORMAT = "{{.Id}} {{.HostConfig.NanoCpus}} {{.HostConfig.Memory}}"
STATS = (
    '{"Container":"r1","ID":"r1","CPUPerc":"0.31%","MemUsage":"3.2MiB / 1GiB"}\n'
    '{"Container":"l1","ID":"l1","CPUPerc":"148.02%","MemUsage":"301.5MiB / 23.4GiB"}\n'
)


class FakeTerminal(io.StringIO):
    """Standard input that claims to be a terminal."""

    def isatty(self) -> bool:
        return True


@pytest.fixture
def settings(make_settings: MakeSettings, tmp_path: Path) -> Settings:
    """Defaults, with the GGUF model present under tmp_path and no CA bundle to look for."""
    (tmp_path / "gguf").mkdir()
    (tmp_path / "gguf" / "model.gguf").write_bytes(b"GGUF")
    return make_settings(
        gguf_dir=str(tmp_path / "gguf"),
        build_ca_bundle="none",
        image_source="registry",
        llm_api_key="k3y-0123456789abcdef_XYZ",
    )


@pytest.fixture
def tasks(
    monkeypatch: pytest.MonkeyPatch,
    settings: Settings,
    runner: ScriptedRunner,
    ready: FakeReadiness,
    clock: FakeClock,
) -> ModuleType:
    """tasks.py with these settings, Docker on the fake runner, free ports, services ready."""
    monkeypatch.syspath_prepend(str(REPO_ROOT))
    module = importlib.import_module("tasks")
    monkeypatch.setattr(module, "load_settings", lambda: settings)
    monkeypatch.setattr(module, "Docker", lambda: Docker(runner=runner))
    monkeypatch.setattr(preflight, "port_is_free", lambda host, port: True)
    return module


def compose_prefix(settings: Settings, backend: str, runner: ScriptedRunner) -> list[str]:
    """`docker compose --project-name N --file ...` for `backend`, without recording the call."""
    seen = len(runner.calls)
    argv = ComposeProject(settings, backend, Docker(runner=runner)).argv()
    del runner.calls[seen:]
    return argv


def exits(call: functools.partial[object], code: int = 1) -> None:
    with pytest.raises(Exit) as caught:
        call()
    assert caught.value.code == code


# --- up --------------------------------------------------------------------------------------


def test_up_prints_the_endpoints_and_the_time(
    tasks: ModuleType, ready: FakeReadiness, capsys: pytest.CaptureFixture[str]
) -> None:
    ready.llm = ["loading", None]

    tasks.up(Context(), backend="llamacpp", timeout=60)

    assert capsys.readouterr().out.splitlines() == [
        "starting redis, llm-server (backend llamacpp, project kc-devenv)",
        "redis      redis://127.0.0.1:6379/0",
        "llm-server http://127.0.0.1:8000/v1 (model model)",
        "ready in 0.1 s; stop with `invoke down`",
    ]


def test_up_without_backend_keeps_the_backend_of_the_existing_stack(
    tasks: ModuleType,
    runner: ScriptedRunner,
    settings: Settings,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """`invoke up` brings a stack back as it was: with LLM_BACKEND=none in .env it must not
    remove an LLM server started with --backend=llamacpp."""
    monkeypatch.setattr(
        tasks, "load_settings", lambda: dataclasses.replace(settings, llm_backend="none")
    )
    stack = ps_lines(
        ps_entry("redis", "r1", state="exited", exit_code=137), ps_entry("llm-server", "l1")
    )
    runner.on(*compose_prefix(settings, "none", runner), *PS_JSON, stdout=stack)
    runner.on(
        *LABEL_INSPECT, stdout=f"{BASE_FILE},{paths.DOCKER_DIR / 'docker-compose.llamacpp.yml'}\n"
    )

    tasks.up(Context(), timeout=60)

    out = capsys.readouterr().out.splitlines()
    assert out[0] == (
        "keeping backend llamacpp of the existing stack (LLM_BACKEND=none): "
        "`invoke up --backend=none` would remove its LLM server"
    )
    assert out[1] == "starting redis, llm-server (backend llamacpp, project kc-devenv)"


def test_up_backend_none_prints_redis_only(
    tasks: ModuleType, runner: ScriptedRunner, capsys: pytest.CaptureFixture[str]
) -> None:
    tasks.up(Context(), backend="none", timeout=60)

    out = capsys.readouterr().out
    assert "redis      redis://127.0.0.1:6379/0" in out
    assert "llm-server" not in out.split("\n", 1)[1]
    (up,) = [argv for argv in runner.argvs if argv[-3:] == ["up", "--detach", "--remove-orphans"]]
    assert [up[i + 1] for i, arg in enumerate(up) if arg == "--file"] == [str(BASE_FILE)]


def test_up_failure_prints_one_error_line_then_the_log(
    tasks: ModuleType,
    runner: ScriptedRunner,
    settings: Settings,
    ready: FakeReadiness,
    capsys: pytest.CaptureFixture[str],
) -> None:
    ready.llm = ["LLM server does not answer (ConnectError)"]
    script_containers(
        runner,
        [],
        [
            inspect_entry("redis", "r1"),
            inspect_entry("llm-server", "l1", status="exited", exit_code=1, health="unhealthy"),
        ],
    )
    runner.on(
        *compose_prefix(settings, "llamacpp", runner),
        "logs",
        stdout="error: failed to load model\n",
    )

    exits(functools.partial(tasks.up, Context(), backend="llamacpp"))

    assert capsys.readouterr().err.splitlines() == [
        "error: llm-server exited while starting (exit code 1): "
        "check that the model is a valid file that fits in memory",
        "--- last 20 lines of llm-server's log ---",
        "error: failed to load model",
    ]
    assert compose_subcommands(runner)[-1] == ["rm", "--stop", "--force", "redis", "llm-server"]


@pytest.mark.parametrize("timeout", [0, -5])
def test_up_refuses_a_timeout_that_is_not_positive_before_docker(
    tasks: ModuleType, runner: ScriptedRunner, capsys: pytest.CaptureFixture[str], timeout: int
) -> None:
    exits(functools.partial(tasks.up, Context(), timeout=timeout))

    assert capsys.readouterr().err == f"error: --timeout={timeout} must be at least 1\n"
    assert runner.calls == []


def test_up_refuses_a_mistyped_backend_without_waiting_for_another_task(
    tasks: ModuleType,
    runner: ScriptedRunner,
    capsys: pytest.CaptureFixture[str],
    settings: Settings,
    own_stack_locks: Path,
) -> None:
    other = FileLock(own_stack_locks / f"{settings.compose_project_name}.lock")
    other.acquire()  # another `up` of this stack is running
    try:
        exits(functools.partial(tasks.up, Context(), backend="llamcpp"))
    finally:
        other.release()

    out, err = capsys.readouterr()
    assert (out, err) == ("", "error: unknown backend 'llamcpp': use one of llamacpp, vllm, none\n")
    assert runner.calls == []


# --- down ------------------------------------------------------------------------------------


def test_down_keeps_volumes_by_default(
    tasks: ModuleType, runner: ScriptedRunner, capsys: pytest.CaptureFixture[str]
) -> None:
    tasks.down(Context())

    downs = [argv for argv in runner.argvs if "down" in argv]
    assert len(downs) == 1
    assert downs[0][-2:] == ["down", "--remove-orphans"]
    assert [downs[0][i + 1] for i, a in enumerate(downs[0]) if a == "--file"] == [str(BASE_FILE)]
    assert capsys.readouterr().out == "stack kc-devenv is down\n"


def test_down_volumes_with_yes_deletes_them_without_asking(
    tasks: ModuleType,
    runner: ScriptedRunner,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setattr(sys, "stdin", io.StringIO(""))

    tasks.down(Context(), volumes=True, yes=True)

    assert compose_subcommands(runner) == [["down", "--remove-orphans", "--volumes"]]
    assert capsys.readouterr().out == "stack kc-devenv is down and its volumes deleted\n"


def test_down_volumes_without_a_terminal_refuses_and_changes_nothing(
    tasks: ModuleType,
    runner: ScriptedRunner,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setattr(sys, "stdin", io.StringIO("y\n"))

    exits(functools.partial(tasks.down, Context(), volumes=True))

    assert capsys.readouterr().err == (
        "error: Delete the Redis data volume of project 'kc-devenv'? "
        "refusing without a terminal: pass --yes\n"
    )
    assert compose_subcommands(runner) == []


@pytest.mark.parametrize(("answer", "deleted"), [("y", True), ("n", False)])
def test_down_volumes_asks_on_a_terminal(
    tasks: ModuleType,
    runner: ScriptedRunner,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    answer: str,
    deleted: bool,
) -> None:
    monkeypatch.setattr(sys, "stdin", FakeTerminal(answer + "\n"))

    if deleted:
        tasks.down(Context(), volumes=True)
        assert compose_subcommands(runner) == [["down", "--remove-orphans", "--volumes"]]
    else:
        exits(functools.partial(tasks.down, Context(), volumes=True))
        assert capsys.readouterr().err == "error: cancelled: nothing was changed\n"
        assert compose_subcommands(runner) == []


# --- ps --------------------------------------------------------------------------------------


def test_ps_without_a_running_stack_says_how_to_start_it(
    tasks: ModuleType, capsys: pytest.CaptureFixture[str]
) -> None:
    tasks.ps(Context())

    assert capsys.readouterr().out == "stack kc-devenv is not running: start it with `invoke up`\n"


def test_ps_shows_the_table_and_summaries_of_the_running_backend(
    tasks: ModuleType,
    runner: ScriptedRunner,
    settings: Settings,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    running = ps_lines(ps_entry("redis", "r1", port=6379), ps_entry("llm-server", "l1", port=8000))
    runner.on(*compose_prefix(settings, "llamacpp", runner), *PS_JSON, stdout=running)
    runner.on(*compose_prefix(settings, "vllm", runner), *PS_JSON, stdout=running)
    runner.on(*LABEL_INSPECT, stdout=f"{BASE_FILE},{VLLM_FILE}\n")
    runner.on(
        "docker", "inspect", "--format", LIMITS_FORMAT, stdout="r1 1000000000 1073741824\nl1 0 0\n"
    )
    runner.on("docker", "stats", stdout=STATS)
    monkeypatch.setattr(status, "redis_summary", lambda s: f"redis: summary of {s.redis_port}")
    monkeypatch.setattr(status, "llm_summary", lambda s: f"llm-server: summary of {s.port}")
    monkeypatch.setattr(status, "model_summary", lambda s, backend: f"model: of {backend}")
    monkeypatch.setattr(worker_cli, "workers_report", lambda: "workers: table")

    tasks.ps(Context())

    assert capsys.readouterr().out.splitlines() == [
        "SERVICE     STATE    HEALTH   PORTS                 CPU      MEMORY    LIMITS",
        "redis       running  healthy  127.0.0.1:6379->6379  0.31%    3.2MiB    1 CPU, 1.0 GiB",
        "llm-server  running  healthy  127.0.0.1:8000->8000  148.02%  301.5MiB  "
        "no CPU limit, no memory limit",
        "redis: summary of 6379",
        "llm-server: summary of 8000",
        "model: of vllm",
        "workers: table",
    ]
    stats = [argv for argv in runner.argvs if argv[:2] == ["docker", "stats"]]
    assert stats == [["docker", "stats", "--no-stream", "--format", "{{json .}}", "r1", "l1"]]
    ps_calls = [argv for argv in runner.argvs if argv[-4:] == list(PS_JSON)]
    assert str(VLLM_FILE) in ps_calls[-1], "the table should use the running backend's files"


def test_ps_with_redis_alone_skips_the_llm_summary(
    tasks: ModuleType,
    runner: ScriptedRunner,
    settings: Settings,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    for backend in ("llamacpp", "none"):
        runner.on(
            *compose_prefix(settings, backend, runner),
            *PS_JSON,
            stdout=ps_lines(ps_entry("redis", "r1")),
        )
    monkeypatch.setattr(status, "redis_summary", lambda s: "redis: ok")

    def no_llm(s: Settings) -> str:
        raise AssertionError("llm_summary asked without an llm-server")

    monkeypatch.setattr(status, "llm_summary", no_llm)
    monkeypatch.setattr(worker_cli, "workers_report", lambda: "workers: table")

    tasks.ps(Context())

    assert capsys.readouterr().out.splitlines()[-2:] == ["redis: ok", "workers: table"]


def test_ps_shows_an_exited_llm_server_as_exited_with_the_way_back(
    tasks: ModuleType,
    runner: ScriptedRunner,
    settings: Settings,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    killed = ps_lines(
        ps_entry("redis", "r1", port=6379),
        ps_entry("llm-server", "l1", state="exited", health="", exit_code=137),
    )
    runner.on(*compose_prefix(settings, "llamacpp", runner), *PS_JSON, stdout=killed)
    runner.on(
        *LABEL_INSPECT, stdout=f"{BASE_FILE},{paths.DOCKER_DIR / 'docker-compose.llamacpp.yml'}\n"
    )
    monkeypatch.setattr(status, "redis_summary", lambda s: "redis: ok")

    def no_llm(s: Settings) -> str:
        raise AssertionError("llm_summary asked of an exited server")

    monkeypatch.setattr(status, "llm_summary", no_llm)
    monkeypatch.setattr(worker_cli, "workers_report", lambda: "workers: table")

    tasks.ps(Context())

    lines = capsys.readouterr().out.splitlines()
    assert lines[2].split()[:3] == ["llm-server", "exited", "(137)"]
    assert lines[3:] == [
        "llm-server is exited (exit code 137): bring it back with `invoke up`",
        "redis: ok",
        "workers: table",
    ]


# --- logs ------------------------------------------------------------------------------------


class FakePopen:
    """Stands in for subprocess.Popen in `invoke logs`: records argv, prints `LINES`."""

    LINES = ""
    started: ClassVar[list[list[str]]] = []

    def __init__(self, argv: list[str], **kwargs: object) -> None:
        FakePopen.started.append(argv)
        self.stdout = io.StringIO(self.LINES)
        self.returncode = 0

    def __enter__(self) -> FakePopen:
        return self

    def __exit__(self, *exc: object) -> None:
        return None


@pytest.fixture
def popen(monkeypatch: pytest.MonkeyPatch) -> type[FakePopen]:
    FakePopen.started = []
    FakePopen.LINES = ""
    monkeypatch.setattr(lifecycle, "POPEN", FakePopen)
    return FakePopen


def test_logs_streams_every_service_by_default(tasks: ModuleType, popen: type[FakePopen]) -> None:
    tasks.logs(Context())

    assert [argv[-3:] for argv in popen.started] == [["logs", "--tail", "100"]]


def test_logs_of_one_service_followed(tasks: ModuleType, popen: type[FakePopen]) -> None:
    tasks.logs(Context(), service="redis", follow=True, tail=5)

    assert popen.started[0][-5:] == ["logs", "--tail", "5", "--follow", "redis"]


def test_logs_mask_the_secrets(
    tasks: ModuleType,
    popen: type[FakePopen],
    settings: Settings,
    capsys: pytest.CaptureFixture[str],
) -> None:
    popen.LINES = (
        f"redis-1  | >>> 'requirepass \"{settings.llm_api_key}'\n"
        f"llm-server-1  | key {settings.llm_api_key} seen\n"
    )

    tasks.logs(Context())

    out = capsys.readouterr().out
    assert settings.llm_api_key not in out
    assert out.splitlines() == [
        "redis-1  | >>> 'requirepass ********",
        "llm-server-1  | key ******** seen",
    ]


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        (
            {"service": "bogus"},
            "error: unknown service 'bogus': use one of redis, llm-server, worker, flower\n",
        ),
        ({"tail": -1}, "error: --tail=-1 must be at least 0\n"),
    ],
)
def test_logs_bad_input_fails_before_docker(
    tasks: ModuleType,
    runner: ScriptedRunner,
    capsys: pytest.CaptureFixture[str],
    kwargs: dict[str, object],
    error: str,
) -> None:
    exits(functools.partial(tasks.logs, Context(), **kwargs))

    assert capsys.readouterr().err == error
    assert runner.calls == []


# --- restore-redis ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "error"),
    [
        ("missing.rdb", "error: no backup file {path}: see `invoke backups`\n"),
        (
            ".",
            "error: {path} is a folder: pass a backup file in it "
            "(`invoke backups --folder={path}`)\n",
        ),
    ],
    ids=["missing", "folder"],
)
def test_restore_tells_a_mistyped_file_before_it_looks_for_redis(
    tasks: ModuleType,
    runner: ScriptedRunner,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    name: str,
    error: str,
) -> None:
    """Before: a wrong path with the stack down said "Redis is not running", and once it was
    started, that the file was missing."""
    path = (tmp_path / name).absolute()
    exits(functools.partial(tasks.restore_redis, Context(), file=str(tmp_path / name), yes=True))

    assert capsys.readouterr().err == error.format(path=path)
    assert runner.calls == []


# --- restart ---------------------------------------------------------------------------------


def test_restart_one_service_waits_and_reports(
    tasks: ModuleType,
    runner: ScriptedRunner,
    ready: FakeReadiness,
    capsys: pytest.CaptureFixture[str],
) -> None:
    ready.redis = ["Redis is loading its dataset", None]
    script_containers(runner, [inspect_entry("redis", "r1")])

    tasks.restart(Context(), service="redis", timeout=30)

    assert compose_subcommands(runner)[-1] == ["restart", "redis"]
    assert capsys.readouterr().out == "redis ready again in 0.1 s\n"


def test_restart_unknown_service_fails_before_docker(
    tasks: ModuleType, runner: ScriptedRunner, capsys: pytest.CaptureFixture[str]
) -> None:
    exits(functools.partial(tasks.restart, Context(), service="workers"))

    assert capsys.readouterr().err == (
        "error: unknown service 'workers': use one of redis, llm-server, worker, flower\n"
    )
    assert runner.calls == []


# --- doctor ----------------------------------------------------------------------------------


def fake_checks(*checks: Check) -> object:
    def run_checks(backend: str | None, docker: Docker) -> Iterator[Check]:
        yield from checks

    return run_checks


def test_doctor_all_ok_prints_each_line_and_succeeds(
    tasks: ModuleType, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(
        doctor, "run_checks", fake_checks(Check("a", True, "fine"), Check("b", True, "fine"))
    )

    tasks.doctor(Context())

    out, err = capsys.readouterr()
    assert out.splitlines() == ["ok    a: fine", "ok    b: fine"]
    assert err == ""


def test_doctor_counts_the_failures_and_exits_1(
    tasks: ModuleType, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(
        doctor,
        "run_checks",
        fake_checks(Check("a", False, "x"), Check("b", True, "y"), Check("c", False, "z")),
    )

    exits(functools.partial(tasks.doctor, Context()))

    out, err = capsys.readouterr()
    assert out.splitlines() == ["FAIL  a: x", "ok    b: y", "FAIL  c: z"]
    assert err == "error: 2 check(s) failed: see the FAIL lines above\n"


def test_doctor_with_the_real_checks_on_a_fake_docker(
    tasks: ModuleType,
    runner: ScriptedRunner,
    settings: Settings,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setattr(
        doctor, "run_checks", functools.partial(doctor.run_checks, load=lambda: settings)
    )
    monkeypatch.setattr(files, "free_bytes", lambda path: 50 * GIB)
    monkeypatch.setattr(preflight, "memory_available", lambda: 8 * GIB)
    runner.on(
        "docker", "run", "--rm", "--network", "none", "--entrypoint", "redis-server",
        stdout="Redis server v=7.0.15 sha=00000000:0\n",
    )  # fmt: skip

    tasks.doctor(Context())
    assert "FAIL" not in capsys.readouterr().out

    runner.on("docker", "info", "--format", "{{.ServerVersion}}", returncode=1)
    exits(functools.partial(tasks.doctor, Context()))
    out, err = capsys.readouterr()
    assert out.splitlines()[-1].startswith("FAIL  docker daemon: Docker is not running")
    assert err == "error: 1 check(s) failed: see the FAIL lines above\n"


def test_doctor_unknown_backend_fails_before_docker(
    tasks: ModuleType, runner: ScriptedRunner, capsys: pytest.CaptureFixture[str]
) -> None:
    exits(functools.partial(tasks.doctor, Context(), backend="ollama"))

    assert capsys.readouterr().err == (
        "error: unknown backend 'ollama': use one of llamacpp, vllm, none\n"
    )
    assert runner.calls == []


# --- `invoke` as a subprocess: bad input fails in one line, no traceback, no Docker -----------


def run_invoke(tmp_path: Path, *args: str, **extra_env: str) -> subprocess.CompletedProcess[str]:
    """`python -m invoke ARGS` in the repository, scrubbed environment, no reachable Docker."""
    env = {
        "PATH": os.environ.get("PATH", os.defpath),
        "HOME": str(tmp_path),
        "LANG": "C.UTF-8",
        "DOCKER_HOST": "unix:///nonexistent.sock",
        **extra_env,
    }
    return subprocess.run(
        [sys.executable, "-m", "invoke", *args],
        cwd=REPO_ROOT,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def assert_one_error_line(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


@pytest.mark.parametrize(
    ("args", "error"),
    [
        (
            ("up", "--backend=bogus"),
            "error: unknown backend 'bogus': use one of llamacpp, vllm, none",
        ),
        (
            ("doctor", "--backend=bogus"),
            "error: unknown backend 'bogus': use one of llamacpp, vllm, none",
        ),
        (("up", "--timeout=0"), "error: --timeout=0 must be at least 1"),
        (("up", "--timeout=nan"), "error: --timeout=nan is not a finite number"),
        (("up", "--timeout=inf"), "error: --timeout=inf is not a finite number"),
        (("restart", "--timeout=-inf"), "error: --timeout=-inf is not a finite number"),
        (("ask", "hi", "--timeout=NaN"), "error: --timeout=NaN is not a finite number"),
        (("logs", "--tail=-1"), "error: --tail=-1 must be at least 0"),
        (
            ("logs", "--service=bogus"),
            "error: unknown service 'bogus': use one of redis, llm-server, worker, flower",
        ),
        (
            ("restart", "--service=bogus"),
            "error: unknown service 'bogus': use one of redis, llm-server, worker, flower",
        ),
    ],
)
def test_invoke_bad_argument_prints_one_line(
    tmp_path: Path, args: tuple[str, ...], error: str
) -> None:
    assert assert_one_error_line(run_invoke(tmp_path, *args)) == error


@pytest.mark.parametrize("task", ["up", "restart"])
def test_invoke_fractional_timeout_is_accepted(tmp_path: Path, task: str) -> None:
    result = run_invoke(tmp_path, task, "--timeout=1.5")

    assert "Traceback" not in result.stderr
    assert result.stderr.startswith("error: Docker is not running"), result.stderr


@pytest.mark.parametrize("task", ["up", "down", "logs"])  # ps and restart share up's path
def test_invoke_bad_env_value_prints_one_line(tmp_path: Path, task: str) -> None:
    line = assert_one_error_line(run_invoke(tmp_path, task, N_CTX="abc"))

    assert line.startswith("error: N_CTX='abc' (from environment) is invalid: not a whole number")
    assert "Docker" not in line


def test_invoke_doctor_with_bad_env_value_fails_the_env_line(tmp_path: Path) -> None:
    result = run_invoke(tmp_path, "doctor", N_CTX="abc")

    line = assert_one_error_line(result)
    assert line.endswith("check(s) failed: see the FAIL lines above")
    assert result.stdout.splitlines()[0].startswith(
        "FAIL  .env: N_CTX='abc' (from environment) is invalid: not a whole number"
    )
    assert "FAIL  docker daemon: " in result.stdout


def test_invoke_down_volumes_without_a_terminal_refuses_before_touching_docker(
    tmp_path: Path,
) -> None:
    """Deleting data needs a yes: with no terminal to ask on, refuse, whether Docker runs or not."""
    line = assert_one_error_line(run_invoke(tmp_path, "down", "--volumes"))

    assert line.endswith("refusing without a terminal: pass --yes")
