"""Two "machines" on this one: a central stack and a worker node, as two compose projects on
separate Docker networks that reach each other only through the central Redis' TLS port.

The central publishes that port (and its LLM server) on the Docker bridge's gateway address,
which containers of any network reach through the host and which is not loopback, so Redis
must speak TLS there; the node's workers reach it at that address, as a second machine would
reach the first. Each stack runs the tiny test model under a name of its own (model-a,
model-b), so a task's answer says which node ran it. The stacks are session-scoped: the module
runs in one pytest-xdist process, where module scope would tear them down whenever a test of
another module ran in between.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.stack import StackUnderTest, free_port, isolated_stack

# Short enough that a killed node's unacknowledged tasks come back within the test.
SHORT_VISIBILITY = {"VISIBILITY_TIMEOUT": "60", "TASK_TIME_LIMIT": "30"}


@pytest.fixture(scope="session")
def gateway(stack_images: dict[str, str]) -> str:
    """The address containers reach the host at (Docker's `host-gateway`), asked of Docker."""
    found = subprocess.run(
        ["docker", "run", "--rm", "--add-host", "kc-gateway:host-gateway", "--entrypoint",
         "getent", stack_images["REDIS_IMAGE"], "hosts", "kc-gateway"],
        capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    return found.stdout.split()[0]


def start(stack: StackUnderTest, *args: str) -> None:
    done = stack.invoke("up", *args, timeout=1200)
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.fixture(scope="session")
def central(
    tiny_model: Path, gateway: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[StackUnderTest]:
    port = free_port()
    with isolated_stack(
        tiny_model.parent, tiny_model.name,
        BIND_HOST=gateway, PORT=str(port), LLM_SERVER_URL=f"http://{gateway}:{port}",
        REDIS_TLS_PORT=str(free_port()), SERVED_MODEL_NAME="model-a",
        CLUSTER_DIR=str(tmp_path_factory.mktemp("central-cluster")),
        WORKER_CONCURRENCY="2", FLOWER_PORT=str(free_port()), FLOWER_PASSWORD="flower-pw-42",
        **SHORT_VISIBILITY,
    ) as stack:  # fmt: skip
        start(stack, "--workers", "2")
        yield stack


@pytest.fixture(scope="session")
def join_file(central: StackUnderTest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("join") / "node-b.join"
    done = central.invoke("cluster-export", "--node", "node-b", "--out", str(path))
    assert done.returncode == 0, done.stderr
    return path


@pytest.fixture(scope="session")
def node(
    central: StackUnderTest,
    join_file: Path,
    tiny_model: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[StackUnderTest]:
    """Node b, joined to the central with two workers of its own."""
    port = free_port()
    with isolated_stack(
        tiny_model.parent, tiny_model.name,
        PORT=str(port), LLM_SERVER_URL=f"http://127.0.0.1:{port}", SERVED_MODEL_NAME="model-b",
        CLUSTER_DIR=str(tmp_path_factory.mktemp("node-cluster")), WORKER_CONCURRENCY="2",
        **SHORT_VISIBILITY,
    ) as stack:  # fmt: skip
        start(stack, "--join", str(join_file), "--workers", "2")
        yield stack
