"""Benchmark: our Redis backup against `redis-cli --rdb` on about 1 GB, and the restore of it.

    python -m benchmarks.redis_backup_bench [--rounds 3] [--gigabytes 1.0]

Fills a container of the stack's Redis image (AOF on, a password, its own loopback port) with
pipelined writes of 8 KiB values (half random bytes, half text), then alternates, each round:

  ours       backup(): BGSAVE, docker cp out beside redis-check-rdb, sha256, manifest (fsynced)
  redis-cli  `docker exec` redis-cli --rdb /tmp/x.rdb in the Redis container, then docker cp out
  redis-cli, no delay   the same with repl-diskless-sync-delay 0: redis-cli --rdb is a replica
             sync, which by default waits 5 s for other replicas before it starts

Both include getting the file onto this machine. Prints the medians and ours/redis-cli (goal
<= 1.0), then the time to restore one of the backups (verify, safety backup, rebuild the AOF,
restart). Deletes its container and files; talks only to 127.0.0.1.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("TESTCONTAINERS_RYUK_DISABLED", "true")  # no registry for Ryuk's image

from kcdev.backup import store
from kcdev.backup.restore import restore
from kcdev.backup.save import backup
from kcdev.console import human_size
from kcdev.stack.images import REDIS_IMAGE
from tests.support.redis_target import FixedPortRedis

VALUE_SIZE = 8192
BATCH = 256


def fill(server: FixedPortRedis, gigabytes: float) -> int:
    client = server.client()
    keys = int(gigabytes * 1024**3 / VALUE_SIZE)
    text = (b"kc-devenv benchmark value " * (VALUE_SIZE // 52 + 1))[: VALUE_SIZE // 2]
    pipe = client.pipeline(transaction=False)
    for i in range(keys):
        pipe.set(f"bench:{i}", os.urandom(VALUE_SIZE // 2) + text)
        if i % BATCH == BATCH - 1:
            pipe.execute()
    pipe.execute()
    while any(
        client.info("persistence")[f] for f in ("aof_rewrite_in_progress", "rdb_bgsave_in_progress")
    ):
        time.sleep(0.5)  # let an automatic AOF rewrite started by the fill end first
    memory = client.info("memory")["used_memory_human"]
    client.close()
    print(f"filled {keys} keys of {VALUE_SIZE} bytes: used_memory {memory}")
    return keys


def docker(*args: str) -> None:
    result = subprocess.run(["docker", *args], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        sys.exit(f"docker {args[0]} failed: {result.stderr.strip()}")


def timed(run: Callable[[], object]) -> float:
    start = time.monotonic()
    run()
    return time.monotonic() - start


def ours(server: FixedPortRedis, folder: Path) -> None:
    path = backup(server.target(), folder, say=lambda line: None)
    path.unlink()
    store.manifest_path(path).unlink()


def redis_cli(server: FixedPortRedis, folder: Path) -> None:
    cid = server.container_id
    docker("exec", "-e", f"REDISCLI_AUTH={server.password}", cid,
           "redis-cli", "--no-auth-warning", "--rdb", "/tmp/bench.rdb")  # fmt: skip
    docker("cp", f"{cid}:/tmp/bench.rdb", str(folder / "bench.rdb"))
    (folder / "bench.rdb").unlink()
    docker("exec", cid, "rm", "-f", "/tmp/bench.rdb")


def with_sync_delay(server: FixedPortRedis, seconds: int, run: Callable[[], None]) -> None:
    client = server.client()
    client.config_set("repl-diskless-sync-delay", seconds)
    try:
        run()
    finally:
        client.config_set("repl-diskless-sync-delay", 5)
        client.close()


def compare(server: FixedPortRedis, folder: Path, rounds: int) -> None:
    times: dict[str, list[float]] = {"ours": [], "redis-cli": [], "redis-cli, no delay": []}
    for n in range(rounds):
        times["ours"].append(timed(lambda: ours(server, folder)))
        times["redis-cli"].append(timed(lambda: redis_cli(server, folder)))
        times["redis-cli, no delay"].append(
            timed(lambda: with_sync_delay(server, 0, lambda: redis_cli(server, folder)))
        )
        print(f"  round {n + 1}: " + ", ".join(f"{k} {v[-1]:.2f} s" for k, v in times.items()))
    medians = {name: statistics.median(values) for name, values in times.items()}
    print(f"backup, {rounds} rounds alternating (file on this machine at the end):")
    for name, values in times.items():
        shown = ", ".join(f"{v:.2f}" for v in values)
        print(f"  {name:<20}: median {medians[name]:6.2f} s  [{shown}]")
    for baseline in ("redis-cli", "redis-cli, no delay"):
        ratio = medians["ours"] / medians[baseline]
        print(f"  ratio ours/{baseline:<20}: {ratio:.2f}  (goal <= 1.0)")


def restore_time(server: FixedPortRedis, folder: Path, keys: int) -> None:
    path = backup(server.target(), folder, say=lambda line: None)
    server.client().flushall()  # something else to replace
    marks: list[tuple[float, str]] = []
    start = time.monotonic()
    found = restore(
        server.target(), path, yes=True, backups_dir=folder,
        say=lambda line: marks.append((time.monotonic() - start, line)),
    )  # fmt: skip
    took = time.monotonic() - start
    restored = sum(db.keys for db in found.values())
    assert restored == keys, f"restored {restored} keys, expected {keys}"
    print(f"restore of {human_size(path.stat().st_size)} ({keys} keys): {took:.2f} s")
    for at, line in marks:
        print(f"  {at:6.2f} s  {line}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--gigabytes", type=float, default=1.0, help="dataset size (max 4)")
    args = parser.parse_args()
    if not 0 < args.gigabytes <= 4:
        sys.exit("--gigabytes must be in (0, 4]: this machine is shared")
    with (
        tempfile.TemporaryDirectory(prefix="kc-redis-bench-") as tmp,
        FixedPortRedis(REDIS_IMAGE) as server,
    ):
        keys = fill(server, args.gigabytes)
        compare(server, Path(tmp), args.rounds)
        restore_time(server, Path(tmp), keys)


if __name__ == "__main__":
    main()
