"""Benchmark: kcdev.models.download, sha256 check included, against `curl -o` from the same server.

    python -m benchmarks.download_bench [--size-mb 1024] [--rounds 5] [--keep]

Part 1 serves a file of --size-mb random bytes (made once in .cache/bench/) from a local server
(tests.support.http_server: threaded, `socket.sendfile`) and downloads it, alternating, with
`curl -o` and with Downloader.fetch, which also hashes the bytes, checks the sha256 and size, and
moves the file into place. It prints the medians and the throughput ratio ours/curl (goal >= 0.9).
`curl -o /dev/null` shows what the server alone can deliver.
Part 2 makes the server close the connection at 50% of the file, then resumes, and prints the bytes
sent again beyond those that were missing, as a share of the file (goal <= 1%).
Talks to 127.0.0.1 only. The big file is deleted at the end unless --keep.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import resource
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from kcdev.models.digest import Digest, hash_file
from kcdev.models.download import Downloader, SourceFailed, make_pool
from kcdev.paths import CACHE_DIR
from tests.support.http_server import LocalServer

BENCH_DIR = CACHE_DIR / "bench"
PATH = "/model.bin"


def make_file(size: int) -> tuple[Path, Digest]:
    """The random file to serve and its sha256: made once, reused while its size fits."""
    path = BENCH_DIR / f"download-{size >> 20}M.bin"
    BENCH_DIR.mkdir(parents=True, exist_ok=True)
    if not path.is_file() or path.stat().st_size != size:
        print(f"writing {path} ({size >> 20} MiB of random bytes)...", flush=True)
        with path.open("wb") as f:
            written = 0
            while written < size:
                block = os.urandom(min(64 << 20, size - written))
                f.write(block)
                written += len(block)
    hasher = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(16 << 20):
            hasher.update(block)
    return path, Digest.sha256(hasher.hexdigest())


def timed(action: Callable[[], object]) -> float:
    start = time.monotonic()
    action()
    return time.monotonic() - start


def cpu_seconds(who: int) -> float:
    usage = resource.getrusage(who)
    return usage.ru_utime + usage.ru_stime


@dataclass
class Run:
    wall: float
    cpu: float  # the client's CPU time: user + system


def measured(action: Callable[[], object]) -> tuple[float, float, float]:
    """Wall time, CPU of this process (the server's threads included), CPU of child processes."""
    self0, children0 = cpu_seconds(resource.RUSAGE_SELF), cpu_seconds(resource.RUSAGE_CHILDREN)
    wall = timed(action)
    return (
        wall,
        cpu_seconds(resource.RUSAGE_SELF) - self0,
        cpu_seconds(resource.RUSAGE_CHILDREN) - children0,
    )


def curl(url: str, dest: Path) -> None:
    subprocess.run(["curl", "-sS", "--fail", "-o", str(dest), url], check=True)


def throughput(server: LocalServer, size: int, digest: Digest, rounds: int) -> None:
    """Alternating rounds. Client CPU: curl's is its own process's; ours is this process's minus
    what the server thread took in the curl run just before (the same bytes, sent the same way)."""
    url, out = server.url(PATH), BENCH_DIR / "out"
    out.mkdir(exist_ok=True)
    downloader = Downloader(make_pool(), say=print, progress=False)

    def ours() -> None:
        downloader.fetch(url, out / "ours.bin", digest, size=size)

    def clean() -> None:
        for path in out.iterdir():
            path.unlink()

    server_alone = timed(lambda: curl(url, Path("/dev/null")))
    hash_alone = measured(lambda: hash_file(BENCH_DIR / f"download-{size >> 20}M.bin", digest))
    ours()  # warm-up, not counted: connections, page cache
    clean()
    runs: dict[str, list[Run]] = {"curl": [], "ours": []}
    for _ in range(rounds):
        wall, server_cpu, curl_cpu = measured(lambda: curl(url, out / "curl.bin"))
        runs["curl"].append(Run(wall, curl_cpu))
        clean()
        wall, own_cpu, _ = measured(ours)
        runs["ours"].append(Run(wall, own_cpu - server_cpu))
        clean()
    mib = size / (1 << 20)
    curl_s = statistics.median(r.wall for r in runs["curl"])
    ours_s = statistics.median(r.wall for r in runs["ours"])
    print(f"throughput, {mib:.0f} MiB file, {rounds} rounds alternating (medians; load average "
          f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs):")  # fmt: skip
    print(f"  {'curl -o /dev/null (the server alone)':<37}: {server_alone:6.2f} s")
    print(f"  {'sha256 alone (file in page cache)':<37}: {hash_alone[0]:6.2f} s  "
          f"cpu {hash_alone[1]:5.2f} s")  # fmt: skip
    for label, key in (("curl -o FILE", "curl"), ("kcdev.models.download + sha256 check", "ours")):
        wall = statistics.median(r.wall for r in runs[key])
        cpu = statistics.median(r.cpu for r in runs[key])
        walls = _fmt([r.wall for r in runs[key]])
        print(f"  {label:<37}: {wall:6.2f} s  cpu {cpu:5.2f} s  {mib / wall:5.0f} MiB/s  {walls}")
    print(f"  {'ratio ours/curl (throughput)':<37}: {curl_s / ours_s:.2f}  (goal >= 0.9)")


def resume(server: LocalServer, size: int, digest: Digest) -> None:
    url, dest = server.url(PATH), BENCH_DIR / "out" / "resumed.bin"
    said: list[str] = []
    server.cut_next(PATH, after=size // 2)
    before = server.body_bytes_for(PATH)
    try:
        Downloader(make_pool(), say=said.append, progress=False, attempts=1).fetch(
            url, dest, digest, size=size
        )
        sys.exit("the interrupted download did not fail: the server did not cut it")
    except SourceFailed:
        pass
    kept = dest.with_name(dest.name + ".part").stat().st_size
    first = server.body_bytes_for(PATH) - before
    took = timed(
        lambda: Downloader(make_pool(), say=said.append, progress=False).fetch(
            url, dest, digest, size=size
        )
    )
    second = server.body_bytes_for(PATH) - before - first
    again = second - (size - kept)
    print(f"resume after the server closed the connection at 50% ({first} of {size} bytes sent):")
    print(f"  kept on disk: {kept} bytes; the resumed run fetched {second} bytes in {took:.2f} s")
    print(f"  fetched again beyond what was missing: {again} bytes = {100 * again / size:.3f}% "
          "of the file (goal <= 1%)")  # fmt: skip
    dest.unlink()


def _fmt(values: list[float]) -> str:
    return "[" + ", ".join(f"{v:.2f}" for v in values) + "]" if values else ""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mb", type=int, default=1024, help="file size in MiB (>= 1024)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--keep", action="store_true", help="keep the big file for the next run")
    args = parser.parse_args()
    if shutil.which("curl") is None:
        sys.exit("curl is not installed")
    size = args.size_mb << 20
    source, digest = make_file(size)
    try:
        with LocalServer() as server:
            server.add(PATH, source, etag=f'"{digest.hexdigest[:16]}"')
            throughput(server, size, digest, args.rounds)
            resume(server, size, digest)
    finally:
        shutil.rmtree(BENCH_DIR / "out", ignore_errors=True)
        if not args.keep:
            source.unlink(missing_ok=True)


if __name__ == "__main__":
    main()
