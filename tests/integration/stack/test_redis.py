"""The stack's Redis image, for real: password enforced, data round trip, AOF on."""

from __future__ import annotations

import pytest
import redis

from tests.support.containers import RedisContainer

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
