"""Test data for backup and restore: keys of every common type, and a comparable picture of them.

`contents` reads every key back by type, with whether it carries a TTL, so "the same data" can
be asserted as one equality instead of spot checks.
"""

from __future__ import annotations

from typing import Any

import redis
from redis.client import Pipeline

from tests.support.containers import RedisContainer

TYPES = ("string", "hash", "list", "set", "zset")
Contents = dict[tuple[int, str], tuple[str, Any, bool]]  # (db, key) -> (type, value, has TTL)


def write_keys(
    client: redis.Redis,
    count: int,
    *,
    prefix: str = "k",
    db: int = 0,
    ttl_every: int = 0,
    ttl_ms: int = 3_600_000,
) -> None:
    """`count` keys cycling through the five types; every `ttl_every`-th gets a TTL."""
    pipe = client.pipeline(transaction=False)
    pipe.select(db)
    for i in range(count):
        key = f"{prefix}:{i}"
        kind = TYPES[i % len(TYPES)]
        if kind == "string":
            pipe.set(key, f"value-{i}")
        elif kind == "hash":
            pipe.hset(key, mapping={"n": str(i), "name": f"item {i}", "tag": prefix})
        elif kind == "list":
            pipe.rpush(key, *[f"{i}-{j}" for j in range(3)])
        elif kind == "set":
            pipe.sadd(key, *[f"m{j}" for j in range(i % 4 + 1)])
        else:
            pipe.zadd(key, {f"z{j}": j * 1.5 + i for j in range(3)})
        if ttl_every and i % ttl_every == 0:
            pipe.pexpire(key, ttl_ms)
        if i % 1000 == 999:
            pipe.execute()
    pipe.execute()


def queue_read(pipe: Pipeline, key: str, kind: str) -> None:
    if kind == "string":
        pipe.get(key)
    elif kind == "hash":
        pipe.hgetall(key)
    elif kind == "list":
        pipe.lrange(key, 0, -1)
    elif kind == "set":
        pipe.smembers(key)
    else:
        pipe.zrange(key, 0, -1, withscores=True)


def contents(server: RedisContainer, dbs: tuple[int, ...] = (0, 1)) -> Contents:
    """Every live key of `dbs` with its type, value and whether it has a TTL."""
    found: Contents = {}
    for db in dbs:
        client = server.client(db=db, decode_responses=True)
        try:
            keys = sorted(client.scan_iter(count=1000))
            pipe = client.pipeline(transaction=False)
            for key in keys:
                pipe.type(key)
            typed = [(k, t) for k, t in zip(keys, pipe.execute(), strict=True) if t != "none"]
            for key, kind in typed:
                queue_read(pipe, key, kind)
                pipe.pttl(key)
            replies = pipe.execute()
            for n, (key, kind) in enumerate(typed):
                value, pttl = replies[2 * n], replies[2 * n + 1]
                if isinstance(value, set):
                    value = sorted(value)
                found[(db, key)] = (kind, value, pttl > 0)
        finally:
            client.close()
    return found
