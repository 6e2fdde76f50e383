"""Test data for backup and restore: keys of every type, and a comparable picture of them.

`contents` reads every key back by type, with its expiry as an absolute time (PEXPIRETIME: RDB
files and AOFs keep absolute expiry times, so a restored key has exactly the same one), so "the
same data" is one equality instead of spot checks: types, values and TTLs, key by key.
"""

from __future__ import annotations

from typing import Any

import redis
from redis.client import Pipeline

TYPES = ("string", "hash", "list", "set", "zset", "stream")
# (db, key) -> (type, value, expiry in Unix ms or -1 without a TTL)
Contents = dict[tuple[int, str], tuple[str, Any, int]]
ClientFactory = Any  # a callable (db=..., decode_responses=...) -> redis.Redis


def write_keys(
    client: redis.Redis,
    count: int,
    *,
    prefix: str = "k",
    db: int = 0,
    ttl_every: int = 0,
    ttl_ms: int = 3_600_000,
) -> None:
    """`count` keys cycling through the six types; every `ttl_every`-th gets a TTL."""
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
        elif kind == "zset":
            pipe.zadd(key, {f"z{j}": j * 1.5 + i for j in range(3)})
        else:
            for j in range(i % 3 + 1):
                pipe.xadd(key, {"n": str(i), "part": str(j)}, id=f"{i + 1}-{j}")
            pipe.xgroup_create(key, f"readers-{i % 2}", id=f"{i + 1}-0")
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
    elif kind == "zset":
        pipe.zrange(key, 0, -1, withscores=True)
    elif kind == "stream":
        pipe.xrange(key)
        pipe.xinfo_groups(key)
    else:
        raise AssertionError(f"no reader for {kind} ({key})")


def comparable(kind: str, replies: list[Any]) -> Any:
    """One key's replies as a value that compares equal exactly when the data is the same."""
    if kind == "set":
        return sorted(replies[0])
    if kind == "stream":
        entries, groups = replies
        return (
            [(entry_id, sorted(fields.items()) if isinstance(fields, dict) else fields)
             for entry_id, fields in entries],
            sorted(repr(sorted(g.items()) if isinstance(g, dict) else g) for g in groups),
        )  # fmt: skip
    return replies[0]


def reads(kind: str) -> int:
    return 2 if kind == "stream" else 1


def contents(server: Any, dbs: tuple[int, ...] = (0, 1)) -> Contents:
    """Every live key of `dbs` (on a container with `.client(db=...)`) with type, value, expiry."""
    found: Contents = {}
    for db in dbs:
        # Text where it is text; binary values compare as the same escaped bytes.
        client: redis.Redis = server.client(
            db=db, decode_responses=True, encoding_errors="surrogateescape"
        )
        try:
            # Not kombu's own routing tables (`_kombu.binding*`): `invoke ps` asks the workers
            # through Celery's control API, and kombu records its reply queue's binding there.
            keys = sorted(k for k in client.scan_iter(count=1000) if not k.startswith("_kombu."))
            pipe = client.pipeline(transaction=False)
            for key in keys:
                pipe.type(key)
            typed = [(k, t) for k, t in zip(keys, pipe.execute(), strict=True) if t != "none"]
            for key, kind in typed:
                queue_read(pipe, key, kind)
                pipe.execute_command("PEXPIRETIME", key)  # type: ignore[no-untyped-call]
            # A key that expires between its TYPE and its read fails that read (XINFO on no
            # key is an error): judged by its expiry, read last, not by the error.
            replies = pipe.execute(raise_on_error=False)
            at = 0
            for key, kind in typed:
                n = reads(kind)
                read, expiry = replies[at : at + n], replies[at + n]
                at += n + 1
                if expiry == -2:  # expired between SCAN and here
                    continue
                for reply in (*read, expiry):
                    if isinstance(reply, Exception):
                        raise reply
                found[(db, key)] = (kind, comparable(kind, read), int(expiry))
        finally:
            client.close()
    return found


def with_ttl(found: Contents) -> int:
    return sum(1 for _, _, expiry in found.values() if expiry > 0)


def difference(want: Contents, got: Contents, limit: int = 5) -> str:
    """What differs, key by key, for an assertion message ("" when nothing does)."""
    missing = sorted(set(want) - set(got))
    extra = sorted(set(got) - set(want))
    changed = sorted(k for k in set(want) & set(got) if want[k] != got[k])
    parts = []
    if missing:
        parts.append(f"{len(missing)} keys missing, e.g. {missing[:limit]}")
    if extra:
        parts.append(f"{len(extra)} keys extra, e.g. {extra[:limit]}")
    for key in changed[:limit]:
        parts.append(f"{key}: {want[key]!r} != {got[key]!r}")
    if len(changed) > limit:
        parts.append(f"... {len(changed)} keys changed")
    return "; ".join(parts)
