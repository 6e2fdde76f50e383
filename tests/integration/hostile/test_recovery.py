"""Issue 11, cases 4 and 5: the way back after a crash, and what `ps` shows of use and limits.

A service killed under the stack (`docker kill`, by container id) is shown as exited with the way
back, and `invoke up` brings it back at once, data and the other service untouched; no line on
the way suggests a command that would tear a running service down. `ps` shows each container's
CPU and memory use and its limits, in columns whose values parse.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator

import httpx
import pytest

from tests.integration.hostile.harness import (
    TEARDOWN_HINTS,
    SharedStack,
    Workspace,
    docker,
    error_line,
)
from tests.support.redis_data import contents

pytestmark = pytest.mark.integration

COMPLETION = {"model": "tiny-llama", "prompt": "Hello", "max_tokens": 2, "temperature": 0}
SIZE = re.compile(r"^\d+(\.\d+)?\s?[KMGT]?i?B$")


@pytest.fixture
def on_stack(shared_stack: SharedStack, workspace: Workspace) -> Iterator[Workspace]:
    """A workspace of its own with the shared stack's settings; the stack is running again
    after the test, whatever it did to it."""
    workspace.env.update(shared_stack.settings)
    yield workspace
    back = workspace.invoke("up", "--timeout=300")
    assert back.returncode == 0, str(back)


def started_at(container: str) -> str:
    return docker("inspect", "--format", "{{.State.StartedAt}}", container).strip()


def no_teardown_hint(text: str) -> None:
    """No line suggests tearing down; but `up`'s last line, which says how to stop the stack
    when the user is done with it, is no hint."""
    for line in text.splitlines():
        if line.startswith("ready in "):
            continue
        for hint in TEARDOWN_HINTS:
            assert hint not in line, f"a hint tears a service down: {line}"


def keys_held(stack: SharedStack) -> int:
    """Every key Redis holds: the data, and kombu's routing table once a `ps` asked the workers
    (Celery's control API records its reply queue's binding there)."""
    client = stack.redis.client(db=0)
    try:
        return sum(db["keys"] for name, db in client.info("keyspace").items() if name[:2] == "db")
    finally:
        client.close()


def test_ps_shows_use_and_limits_in_columns_that_parse(
    shared_stack: SharedStack, on_stack: Workspace
) -> None:
    held = keys_held(shared_stack)  # ps counts before it asks the workers (see below)
    shown = on_stack.invoke("ps")
    assert shown.returncode == 0, str(shown)
    header, *rows = shown.stdout.splitlines()
    assert header.split() == ["SERVICE", "STATE", "HEALTH", "PORTS", "CPU", "MEMORY", "LIMITS"]
    table = {row.split()[0]: row for row in rows[:2]}  # the table, then Redis' and the server's
    limits = {"redis": "0.5 CPU, 256.0 MiB", "llm-server": "1 CPU, 1.0 GiB"}
    for service, row in table.items():
        # SERVICE STATE HEALTH PORTS CPU MEMORY LIMITS(the rest)
        found = re.fullmatch(
            r"(\S+)\s+(running)\s+(\S+)\s+(127\.0\.0\.1:\d+->\d+)\s+(\S+)\s+(\S+)\s+(.+)", row
        )
        assert found, row
        cpu, memory, limit = found[5], found[6], found[7]
        assert 0 <= float(cpu.removesuffix("%")) < 400 and cpu.endswith("%"), row
        assert SIZE.match(memory), row
        assert limit == limits[service], row
    assert set(table) == {"redis", "llm-server"}, shown.stdout
    summary = re.search(r"^redis 7\.0\.\d+: \S+ used, (\d+) keys, \d+ ops/s", shown.stdout, re.M)
    assert summary, shown.stdout
    assert int(summary[1]) == held, shown.stdout
    assert held - len(contents(shared_stack.redis)) <= 1, "only kombu's binding table is extra"
    assert re.search(r"^llm-server: \w+=", shown.stdout, re.M), shown.stdout


def test_a_killed_llm_server_is_shown_exited_and_up_brings_it_back_at_once(
    shared_stack: SharedStack, on_stack: Workspace
) -> None:
    llm, redis_id = shared_stack.container("llm-server"), shared_stack.container("redis")
    redis_since = started_at(redis_id)
    data = contents(shared_stack.redis)
    url, key = shared_stack.settings["LLM_SERVER_URL"], shared_stack.settings["LLM_API_KEY"]
    auth = {"Authorization": f"Bearer {key}"}
    with httpx.Client(base_url=url, headers=auth, timeout=60) as client:
        assert client.post("/v1/completions", json=COMPLETION).status_code == 200
        docker("kill", llm)  # by id; the client's keep-alive connection stays open

        shown = on_stack.invoke("ps")
        assert shown.returncode == 0, str(shown)
        assert re.search(r"^llm-server\s+exited \(137\)", shown.stdout, re.M), shown.stdout
        assert "llm-server is exited (exit code 137): bring it back with `invoke up`" in (
            shown.stdout
        )
        no_teardown_hint(shown.output)

        began = time.monotonic()
        back = on_stack.invoke("up", "--timeout=120")
        assert back.returncode == 0, str(back)
        assert time.monotonic() - began < 60, str(back)
        assert "taken by another program" not in back.output
        no_teardown_hint(back.output)
    assert httpx.post(url + "/v1/completions", json=COMPLETION, headers=auth, timeout=60).is_success
    assert shared_stack.container("llm-server") == llm  # the same container, started again
    assert started_at(redis_id) == redis_since  # Redis was left alone
    assert contents(shared_stack.redis) == data


def test_a_killed_redis_is_shown_exited_refused_in_one_line_and_brought_back_with_its_data(
    shared_stack: SharedStack, on_stack: Workspace
) -> None:
    redis_id, llm = shared_stack.container("redis"), shared_stack.container("llm-server")
    llm_since = started_at(llm)
    data = contents(shared_stack.redis)
    docker("kill", redis_id)

    shown = on_stack.invoke("ps")
    assert shown.returncode == 0, str(shown)
    assert "redis is exited (exit code 137): bring it back with `invoke up`" in shown.stdout
    no_teardown_hint(shown.output)
    # A file restore-redis accepts on its own (it is checked before Redis is looked for).
    (on_stack.root / "dump.rdb").write_bytes(b"REDIS0010\xfa\x09redis-ver\x067.0.15\xff")
    for args in (
        ("backup-redis",),
        ("restore-redis", "--file=dump.rdb", "--yes"),
        ("ask", "hello", "--timeout=30"),
    ):
        refused = on_stack.invoke(*args)
        line = error_line(refused, [shared_stack.settings["REDIS_PASSWORD"]])
        assert "`invoke up`" in line, line

    back = on_stack.invoke("up", "--timeout=120")
    assert back.returncode == 0, str(back)
    assert "keeping backend" not in back.stdout  # it runs the backend it had: llamacpp
    no_teardown_hint(back.output)
    assert contents(shared_stack.redis) == data
    assert shared_stack.container("llm-server") == llm
    assert started_at(llm) == llm_since  # the running LLM server was not touched
