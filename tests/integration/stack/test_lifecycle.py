"""`invoke up/ps/down` for real: the stack comes up on a tiny model, serves, switches, goes away."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pytest

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
            timeout=60,
        )
        completion.raise_for_status()
        assert completion.json()["usage"]["completion_tokens"] > 0

        # `up` returns once the services answer; Docker's own healthcheck probes once a second,
        # so `ps` may say "starting" for about that long.
        assert health_shown_by_ps(stack) == {"redis": "healthy", "llm-server": "healthy"}

        switched = stack.invoke("up", "--backend=none", "--timeout=120")
        assert switched.returncode == 0, switched.stderr
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
