"""The Redis image itself: the password as a file, data from a newer Redis refused in one line,
and a container that fails to start explained by its own log."""

from __future__ import annotations

import secrets
import subprocess
import time
from collections.abc import Iterator

import pytest
import redis

from kcdev.stack import readiness
from tests.support.containers import RedisContainer
from tests.support.stack import StackUnderTest

from .conftest import StackRedis

pytestmark = pytest.mark.integration


def docker(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["docker", *args], capture_output=True, text=True, check=check)


def test_docker_inspect_of_the_stacks_redis_shows_no_password(
    stack: StackUnderTest, stack_redis: StackRedis
) -> None:
    password = stack.env["REDIS_PASSWORD"]
    container = stack_redis.container_id()

    inspected = docker("inspect", container).stdout
    environ = docker("exec", container, "cat", "/proc/1/environ").stdout  # redis-server's

    assert password not in inspected
    assert password not in environ and "REDIS_PASSWORD" not in environ
    # ...and yet Redis asks for it, and the healthcheck (which reads the file) gets in.
    with pytest.raises(redis.AuthenticationError):
        redis.Redis(host="127.0.0.1", port=int(stack.env["REDIS_PORT"])).ping()
    assert stack_redis.client().ping()

    def healthy() -> str | None:
        status = docker("inspect", "--format", "{{.State.Health.Status}}", container).stdout
        return None if status.strip() == "healthy" else f"health {status.strip()}"

    readiness.wait_until(healthy, time.monotonic() + 60)


@pytest.fixture
def volume() -> Iterator[str]:
    name = f"kc-test-newer-{secrets.token_hex(4)}"
    docker("volume", "create", name)
    yield name
    docker("volume", "rm", "--force", name, check=False)


def test_data_written_by_a_newer_redis_is_refused_in_one_line(
    volume: str, stack_images: dict[str, str]
) -> None:
    """What Redis 7.4 left in the volume (RDB 12 in the AOF's base): the 7.0 image must say so,
    not crash-loop on "Can't handle RDB format version 12" somewhere in its log."""
    image = stack_images["REDIS_IMAGE"]
    base = "/data/appendonlydir/appendonly.aof.1.base.rdb"
    docker(
        "run", "--rm", "--user", "root", "--network", "none", "--mount",
        f"type=volume,source={volume},target=/data", "--entrypoint", "sh", image, "-c",
        f"mkdir -p /data/appendonlydir && printf 'REDIS0012\\372\\011redis-ver' > {base} "
        "&& printf 'file appendonly.aof.1.base.rdb seq 1 type b\\n' "
        "> /data/appendonlydir/appendonly.aof.manifest && chown -R redis:redis /data",
    )  # fmt: skip
    name = f"kc-test-newer-{secrets.token_hex(4)}"
    try:
        ran = docker(
            "run", "--name", name, "--network", "none", "--mount",
            f"type=volume,source={volume},target=/data", image, check=False,
        )  # fmt: skip
        version = docker(
            "run", "--rm", "--entrypoint", "redis-server", image, "--version"
        ).stdout.split("v=")[1].split()[0]  # fmt: skip
    finally:
        docker("rm", "--force", name, check=False)

    assert ran.returncode == 64
    assert ran.stderr.strip().splitlines()[-1] == (
        f"kc-redis-start: {base} is RDB version 12, written by a newer Redis than this image's "
        f"{version} (reads up to 10): back it up with the Redis that wrote it, or start empty "
        "(`invoke down --volumes` deletes it)"
    )


def test_a_redis_that_dies_while_starting_is_explained_by_its_log(
    stack_images: dict[str, str],
) -> None:
    container = RedisContainer(stack_images["REDIS_IMAGE"]).with_command("--no-such-option yes")
    with pytest.raises(TimeoutError) as caught:
        container.start()
    try:
        assert "Redis container exited before it was ready" in str(caught.value)
        assert "Bad directive or wrong number of arguments" in str(caught.value)
    finally:
        container.stop()
