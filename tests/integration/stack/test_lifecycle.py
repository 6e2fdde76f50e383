"""`invoke up/ps/down` for real: the stack comes up on a tiny model, serves, switches, goes away."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from kcdev.paths import ROOT
from tests.support.stack import StackUnderTest, isolated_stack

pytestmark = pytest.mark.integration


def health_shown_by_ps(stack: StackUnderTest, settle: float = 10) -> dict[str, str]:
    """Service -> HEALTH column of `invoke ps`, once no service shows "starting" (or `settle`
    seconds have passed)."""
    deadline = time.monotonic() + settle
    while True:
        shown = stack.invoke("ps")
        assert shown.returncode == 0, shown.stderr
        rows = [line.split() for line in shown.stdout.splitlines()[1:]]
        health = {row[0]: row[2] for row in rows if len(row) >= 3 and row[1] == "running"}
        if "starting" not in health.values() or time.monotonic() > deadline:
            return health
        time.sleep(0.5)


def test_up_serves_then_switches_backend_then_down_removes_everything(
    stack_images: dict[str, str], tiny_model: Path
) -> None:
    with isolated_stack(tiny_model.parent, tiny_model.name) as stack:
        started = stack.invoke("up", "--backend=llamacpp", "--timeout=300")
        assert started.returncode == 0, started.stderr
        assert "ready in" in started.stdout
        assert stack.env["REDIS_PASSWORD"] not in started.stdout + started.stderr

        completion = httpx.post(
            f"{stack.llm_url}/v1/completions",
            json={"model": "tiny-llama", "prompt": "Hello", "max_tokens": 4},
            headers=stack.llm_auth,
            timeout=60,
        )
        completion.raise_for_status()
        assert completion.json()["usage"]["completion_tokens"] > 0

        # `up` returns once the services answer; Docker's own healthcheck probes once a second,
        # so `ps` may say "starting" for about that long.
        assert health_shown_by_ps(stack) == {"redis": "healthy", "llm-server": "healthy"}

        switched = stack.invoke("up", "--backend=none", "--timeout=120")
        assert switched.returncode == 0, switched.stderr
        assert switched.stdout.startswith(
            "removing the running llm-server (llamacpp): --backend=none runs Redis alone"
        )
        assert stack.containers() == [f"{stack.project}-redis-1"]

        stopped = stack.invoke("down")
        assert stopped.returncode == 0, stopped.stderr
        assert stack.containers() == []


def test_up_with_a_missing_model_fails_before_starting_anything(
    stack_images: dict[str, str], tmp_path: Path
) -> None:
    with isolated_stack(tmp_path, "absent.gguf") as stack:
        result = stack.invoke("up", "--backend=llamacpp", "--timeout=60")
        assert result.returncode == 1
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and "absent.gguf" in lines[0] and "fetch-model" in lines[0]
        assert stack.containers() == []


def test_up_with_a_corrupt_model_cleans_up_and_shows_the_log(
    stack_images: dict[str, str], tmp_path: Path
) -> None:
    (tmp_path / "broken.gguf").write_bytes(b"GGUF" + b"\0" * 64)
    tmp_path.chmod(0o755)
    (tmp_path / "broken.gguf").chmod(0o644)
    with isolated_stack(tmp_path, "broken.gguf") as stack:
        result = stack.invoke("up", "--backend=llamacpp", "--timeout=120")
        assert result.returncode == 1
        first, *log = result.stderr.strip().splitlines()
        assert first.startswith("error: llm-server")
        assert any("llm-server's log" in line for line in log)
        assert "Traceback" not in result.stderr
        assert stack.containers() == []


def test_up_on_a_taken_port_says_which(stack_images: dict[str, str], tiny_model: Path) -> None:
    import socket

    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        taken = holder.getsockname()[1]
        with isolated_stack(tiny_model.parent, tiny_model.name, REDIS_PORT=str(taken)) as stack:
            result = stack.invoke("up", "--backend=none", "--timeout=60")
            assert result.returncode == 1
            assert f"port {taken}" in result.stderr and "REDIS_PORT" in result.stderr
            assert stack.containers() == []


COMPLETION = {"model": "tiny-llama", "prompt": "Hello", "max_tokens": 4, "temperature": 0}


def test_the_llm_server_refuses_a_foreign_page_without_the_key(
    stack_images: dict[str, str], tiny_model: Path
) -> None:
    """Any web page the developer opens could call a loopback server: CORS lets it read the
    answer. Without LLM_API_KEY there is none to read."""
    with isolated_stack(tiny_model.parent, tiny_model.name, LLM_CPUS="1") as stack:
        started = stack.invoke("up", "--backend=llamacpp", "--timeout=300")
        assert started.returncode == 0, started.stderr
        key = stack.env["LLM_API_KEY"]
        assert key not in started.stdout + started.stderr

        foreign = {"Origin": "http://attacker.example"}
        for method, path in [
            ("POST", "/v1/completions"),
            ("GET", "/v1/models"),
            ("GET", "/metrics"),
        ]:
            body = COMPLETION if method == "POST" else None
            refused = httpx.request(
                method, stack.llm_url + path, json=body, headers=foreign, timeout=60
            )
            assert refused.status_code == 401, (path, refused.text)
            assert "choices" not in refused.text and "tiny-llama" not in refused.text

        answered = httpx.post(
            f"{stack.llm_url}/v1/completions", json=COMPLETION, timeout=60,
            headers={**foreign, **stack.llm_auth},
        )  # fmt: skip
        assert answered.status_code == 200
        assert answered.json()["usage"]["completion_tokens"] > 0

        # The key is in neither the container's configuration nor its command line.
        (llm,) = [name for name in stack.containers() if "llm-server" in name]
        inspected = subprocess.run(
            ["docker", "inspect", llm], capture_output=True, text=True, check=True
        ).stdout
        assert key not in inspected
        assert json.loads(inspected)[0]["HostConfig"]["NanoCpus"] == 1_000_000_000

        shown = stack.invoke("ps")
        assert shown.returncode == 0, shown.stderr
        assert key not in shown.stdout
        header, *rows = shown.stdout.splitlines()
        assert header.split() == ["SERVICE", "STATE", "HEALTH", "PORTS", "CPU", "MEMORY", "LIMITS"]
        llm_row = next(row for row in rows if row.startswith("llm-server"))
        assert llm_row.endswith("1 CPU, 8.0 GiB")
        assert re.search(r"\d+\.\d+%\s+[\d.]+[KMG]i?B", llm_row), llm_row
        assert any(line.startswith("llm-server: ") and "=" in line for line in rows), rows


def test_a_killed_llm_server_is_shown_exited_and_up_brings_it_back_at_once(
    stack_images: dict[str, str], tiny_model: Path
) -> None:
    """Killing the server leaves its clients' keep-alive connections on the port for a minute
    (TIME_WAIT/FIN_WAIT): `up` used to call the port taken by another program."""
    with isolated_stack(tiny_model.parent, tiny_model.name) as stack:
        started = stack.invoke("up", "--backend=llamacpp", "--timeout=300")
        assert started.returncode == 0, started.stderr
        with httpx.Client(base_url=stack.llm_url, headers=stack.llm_auth, timeout=60) as client:
            assert client.post("/v1/completions", json=COMPLETION).status_code == 200
            (llm,) = [name for name in stack.containers() if "llm-server" in name]
            subprocess.run(["docker", "kill", llm], capture_output=True, check=True)
            # The client's connection stays open, as a worker's pool keeps it.

            shown = stack.invoke("ps")
            assert shown.returncode == 0, shown.stderr
            assert "llm-server is exited (exit code 137): bring it back with `invoke up`" in (
                shown.stdout
            )

            began = time.monotonic()
            back = stack.invoke("up", "--timeout=120")
            assert back.returncode == 0, back.stderr
            assert time.monotonic() - began < 60
            assert "taken by another program" not in back.stderr
        answered = httpx.post(
            f"{stack.llm_url}/v1/completions", json=COMPLETION, headers=stack.llm_auth, timeout=60
        )
        assert answered.status_code == 200


def test_restart_without_a_stack_fails_at_once(
    stack_images: dict[str, str], tmp_path: Path
) -> None:
    with isolated_stack(tmp_path, "absent.gguf") as stack:
        began = time.monotonic()
        result = stack.invoke("restart", "--timeout=600")
        assert result.returncode == 1
        assert result.stderr.strip() == (
            f"error: stack {stack.project} is not running: start it with `invoke up`"
        )
        assert time.monotonic() - began < 30


def test_three_ups_at_once_each_wait_their_turn_and_all_succeed(
    stack_images: dict[str, str], tmp_path: Path
) -> None:
    """Before, the second of two `invoke up` started together failed on compose's "container name
    already in use" (exit 1)."""
    with isolated_stack(tmp_path, "absent.gguf") as stack:
        command = [sys.executable, "-m", "invoke", "up", "--backend=none", "--timeout=120"]

        def start() -> subprocess.Popen[str]:
            return subprocess.Popen(
                command, cwd=ROOT, env=stack.env, text=True,
                stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            )  # fmt: skip

        running = [start() for _ in range(3)]
        outputs = [process.communicate(timeout=300) for process in running]

        assert [process.returncode for process in running] == [0, 0, 0], outputs
        waited = [
            out for out, _ in outputs
            if f"another up, down, restart or restore of stack {stack.project} is running" in out
        ]  # fmt: skip
        assert len(waited) == 2, outputs  # the first `up` never waits; the others did
        assert stack.containers() == [f"{stack.project}-redis-1"]
