"""How kc-devenv talks to Redis: one client factory, and the keyspace as INFO reports it.

Every probe, `invoke ps`, backup and restore goes through `client()`, so they time out and fail
alike; the keyspace types describe what a backup holds without needing Docker or a server.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry


@dataclass(frozen=True)
class DbKeys:
    """One database's key count, and how many of those keys carry a TTL."""

    keys: int
    expires: int


Keyspace = dict[int, DbKeys]


def client(
    host: str,
    port: int,
    password: str,
    *,
    db: int = 0,
    timeout: float = 30,
    connect_timeout: float = 5,
    tls: Mapping[str, Any] | None = None,
) -> redis.Redis:
    """A client that does not retry: redis-py's default retries a refused connection for about
    4 s, which would delay every "Redis is down" by that, make each readiness probe that slow
    while Redis starts, and could send a BGSAVE twice after a dropped connection.

    `tls`: redis-py's ssl_* options (a worker node's CA, certificate and key for the central).
    """
    return redis.Redis(
        host=host,
        port=port,
        db=db,
        password=password or None,
        socket_timeout=timeout,
        socket_connect_timeout=connect_timeout,
        retry=Retry(NoBackoff(), 0),
        **({"ssl": True, **tls} if tls else {}),
    )


def client_from_url(
    url: str, *, timeout: float, tls: Mapping[str, Any] | None = None
) -> redis.Redis:
    """The same kind of client for a redis:// or rediss:// URL (the worker's broker URL)."""
    return redis.Redis.from_url(
        url,
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        retry=Retry(NoBackoff(), 0),
        **(dict(tls) if tls else {}),
    )


def keyspace(info: dict[str, Any]) -> Keyspace:
    """Keys per database from INFO (keyspace section): {0: DbKeys(keys=..., expires=...)}."""
    return {
        int(name[2:]): DbKeys(int(value["keys"]), int(value["expires"]))
        for name, value in info.items()
        if name.startswith("db") and name[2:].isdigit() and isinstance(value, dict)
    }


def parse_keyspace_lines(text: str) -> Keyspace:
    """`db0:keys=2,expires=1,avg_ttl=0` lines, as redis-cli prints INFO keyspace."""
    found: Keyspace = {}
    for line in text.splitlines():
        name, _, fields = line.strip().partition(":")
        if not (name.startswith("db") and name[2:].isdigit()):
            continue
        values = dict(pair.split("=", 1) for pair in fields.split(",") if "=" in pair)
        found[int(name[2:])] = DbKeys(int(values["keys"]), int(values["expires"]))
    return found


def total_keys(space: Keyspace) -> int:
    return sum(db.keys for db in space.values())
