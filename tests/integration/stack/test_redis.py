"""The stack's Redis image, for real: password enforced, data round trip, AOF on."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import redis

from kcdev.settings import load_settings
from tests.support.containers import RedisContainer
from worker.config import redis_url

pytestmark = pytest.mark.integration


def test_round_trip_with_password(redis_server: RedisContainer) -> None:
    client = redis_server.client(decode_responses=True)
    client.set("kc:greeting", "hello", ex=60)
    client.hset("kc:hash", mapping={"a": "1", "b": "2"})
    assert client.get("kc:greeting") == "hello"
    assert client.hgetall("kc:hash") == {"a": "1", "b": "2"}
    assert 0 < client.ttl("kc:greeting") <= 60


def test_password_is_required(redis_server: RedisContainer) -> None:
    anonymous = redis.Redis(host="127.0.0.1", port=int(redis_server.get_exposed_port(6379)))
    with pytest.raises(redis.AuthenticationError):
        anonymous.ping()


def test_append_only_file_is_on(redis_server: RedisContainer) -> None:
    client = redis_server.client()
    assert client.config_get("appendonly") == {"appendonly": "yes"}
    assert client.info("persistence")["aof_enabled"] == 1


def test_published_on_loopback_only(redis_server: RedisContainer) -> None:
    bindings = redis_server.get_wrapped_container().attrs["HostConfig"]["PortBindings"]
    assert [b["HostIp"] for b in bindings["6379/tcp"]] == ["127.0.0.1"]


@pytest.mark.parametrize(
    "password", ["p@ss:w/rd?#%\"\\'`$x{}", "two words inside", "ends-with-backslash\\"]
)
def test_every_password_the_settings_accept_works_in_redis_and_the_url(
    stack_images: dict[str, str], password: str
) -> None:
    """settings.py refuses what Redis' config file or the URL cannot carry; the rest must work
    through the image's start script, the healthcheck and the worker's redis:// URL."""
    settings = load_settings(Path("/nonexistent/.env"), environ={"REDIS_PASSWORD": password})
    with RedisContainer(stack_images["REDIS_IMAGE"], password=settings.redis_password) as server:
        port = int(server.get_exposed_port(6379))
        url = redis_url(dataclasses.replace(settings, redis_port=port))
        client = redis.Redis.from_url(url)
        try:
            assert client.ping()
        finally:
            client.close()
        assert server.exec(["kc-redis-health"]).exit_code == 0
        anonymous = redis.Redis(host="127.0.0.1", port=port)
        with pytest.raises(redis.AuthenticationError):
            anonymous.ping()
