"""Restoring the RDB files people actually have: written by another Redis process, no manifest.

The writer is Debian's own redis-server, run plain in another image (the registry-less base,
which carries the package) on a loopback port: no kc-redis-start, no AOF, none of our scripts.
Its `SAVE` dump and a `redis-cli --rdb` copy of it are restored into the stack's image, and must
give every key back identical (type, value, expiry), also after a restart from the AOF.
"""

from __future__ import annotations

import secrets
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from kcdev.backup import store
from kcdev.backup.restore import restore
from kcdev.errors import UserError
from kcdev.settings import Settings
from kcdev.stack import images
from kcdev.stack.docker_cli import Docker
from tests.support.containers import RedisContainer
from tests.support.redis_data import Contents, contents, difference, with_ttl, write_keys
from tests.support.redis_target import FixedPortRedis

pytestmark = pytest.mark.integration

DBS = (0, 1, 5, 15)


def quiet(line: str) -> None:
    pass


class PlainRedis(RedisContainer):
    """Debian's redis-server as it comes, in another image: the file's writer."""

    def __init__(self, image: str) -> None:
        super().__init__(image, password=secrets.token_urlsafe(12))
        self.with_command(
            f"redis-server --port 6379 --bind 0.0.0.0 --protected-mode no --dir /tmp "
            f"--save '' --appendonly no --requirepass {self.password}"
        )


@pytest.fixture(scope="module")
def writer(settings: Settings) -> Iterator[PlainRedis]:
    docker = Docker()
    try:
        images.ensure_local_base(settings, docker)  # fails, never skips, when it cannot be had
    except UserError as exc:
        pytest.fail(f"the other Redis' image is missing: {exc}", pytrace=False)
    with PlainRedis(images.LOCAL_BASE) as container:
        for db in DBS:
            client = container.client()
            write_keys(client, 300, prefix=f"db{db}", db=db, ttl_every=4)
            client.close()
        # A few odd ones: an empty-string value, binary bytes, a big hash, a long stream.
        client = container.client(db=0)
        client.set("empty", "")
        client.set("binary", bytes(range(256)))
        client.hset("big-hash", mapping={f"f{i}": "x" * (i % 50) for i in range(2_000)})
        for i in range(500):
            client.xadd("long-stream", {"i": str(i)})
        client.pexpire("long-stream", 7_200_000)
        client.close()
        yield container


@pytest.fixture(scope="module")
def written(writer: PlainRedis) -> Contents:
    found = contents(writer, DBS)
    assert {db for db, _ in found} == set(DBS) and with_ttl(found) > 250
    assert {kind for kind, _, _ in found.values()} == {
        "string", "hash", "list", "set", "zset", "stream",
    }  # fmt: skip
    return found


def dump_of(writer: PlainRedis, folder: Path) -> Path:
    """The writer's own dump.rdb, as a production server leaves it."""
    writer.client().save()
    path = folder / "dump.rdb"
    cid = writer.get_wrapped_container().id
    subprocess.run(["docker", "cp", f"{cid}:/tmp/dump.rdb", str(path)], check=True)
    return path


def cli_rdb_of(writer: PlainRedis, folder: Path) -> Path:
    """`redis-cli --rdb`: a replica's full sync, as people take backups by hand."""
    cid = writer.get_wrapped_container().id
    subprocess.run(
        ["docker", "exec", "-e", f"REDISCLI_AUTH={writer.password}", cid,
         "redis-cli", "--no-auth-warning", "--rdb", "/tmp/cli.rdb"],
        check=True, capture_output=True,
    )  # fmt: skip
    path = folder / "cli.rdb"
    subprocess.run(["docker", "cp", f"{cid}:/tmp/cli.rdb", str(path)], check=True)
    return path


@pytest.mark.parametrize("make", [dump_of, cli_rdb_of], ids=["dump.rdb", "redis-cli--rdb"])
def test_an_rdb_file_from_another_redis_restores_key_for_key(
    make: object,
    writer: PlainRedis,
    written: Contents,
    stack_images: dict[str, str],
    tmp_path: Path,
) -> None:
    file = make(writer, tmp_path)  # type: ignore[operator]
    assert not store.manifest_path(file).exists()

    with FixedPortRedis(stack_images["REDIS_IMAGE"]) as ours:
        write_keys(ours.client(), 50, prefix="replaced")
        said: list[str] = []
        found = restore(ours.target(), file, yes=True, backups_dir=tmp_path, say=said.append)

        assert sum(db.keys for db in found.values()) == len(written)
        assert set(found) == set(DBS)
        got = contents(ours, DBS)
        assert got == written, difference(written, got)
        ours.restart_and_wait()  # with AOF on: what Redis loads now is the new AOF
        got = contents(ours, DBS)
        assert got == written, difference(written, got)
        assert ours.client().config_get("appendonly") == {"appendonly": "yes"}
    assert store.read_manifest(next(tmp_path.glob("*-pre-restore.rdb"))).keys == 50
