"""A stack of its own for the tests that drive `invoke` itself: Redis alone, on free ports."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from tests.support.stack import StackUnderTest, isolated_stack


class StackRedis:
    """The isolated stack's Redis, reached as the tasks reach it, for `contents()`."""

    def __init__(self, stack: StackUnderTest) -> None:
        self.stack = stack

    def client(self, db: int = 0, **kwargs: Any) -> redis.Redis:
        env = self.stack.env
        return redis.Redis(
            host="127.0.0.1", port=int(env["REDIS_PORT"]), password=env["REDIS_PASSWORD"],
            db=db, socket_timeout=30, **kwargs,
        )  # fmt: skip

    def container_id(self) -> str:
        project = f"label=com.docker.compose.project={self.stack.project}"
        found = subprocess.run(
            ["docker", "ps", "-aq", "--filter", project,
             "--filter", "label=com.docker.compose.service=redis"],
            capture_output=True, text=True, check=True,
        ).stdout.split()  # fmt: skip
        assert len(found) == 1, found
        return found[0]

    def volume(self) -> str:
        return subprocess.run(
            ["docker", "volume", "ls", "-q",
             "--filter", f"label=com.docker.compose.project={self.stack.project}"],
            capture_output=True, text=True, check=True,
        ).stdout.split()[0]  # fmt: skip


@pytest.fixture(scope="module")
def stack(
    stack_images: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[StackUnderTest]:
    """`invoke up --backend=none` in a compose project of its own, down with its volume after."""
    with isolated_stack(tmp_path_factory.mktemp("no-model"), "none.gguf") as under_test:
        started = under_test.invoke("up", "--backend=none", timeout=600)
        assert started.returncode == 0, started.stderr
        yield under_test


@pytest.fixture(scope="module")
def stack_redis(stack: StackUnderTest) -> StackRedis:
    return StackRedis(stack)


def data_files(stack_redis: StackRedis) -> list[str]:
    listing = subprocess.run(
        ["docker", "exec", stack_redis.container_id(), "ls", "-A", "/data"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    return sorted(listing.stdout.split())
