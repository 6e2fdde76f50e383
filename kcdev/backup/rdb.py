"""RDB files: which format version a file is, which versions a server reads, and redis-check-rdb.

A Redis refuses to load an RDB newer than its own format ("Can't handle RDB format version"), and
does so only when it starts, which is too late for a restore. The header says the version in its
first nine bytes ("REDIS0010"), so a restore can refuse such a file before touching anything.
"""

from __future__ import annotations

import csv
import io
import os
import re
from dataclasses import dataclass
from pathlib import Path

from kcdev.stack.docker_cli import Docker, last_line

MAGIC = b"REDIS"
HEADER_SIZE = 9

# The newest RDB format each Redis release reads and writes (src/rdb.h, RDB_VERSION).
RDB_VERSIONS: dict[tuple[int, int], int] = {
    (2, 6): 6,
    (3, 2): 7,
    (4, 0): 8,
    (5, 0): 9,
    (7, 0): 10,
    (7, 2): 11,
    (7, 4): 12,
    (8, 0): 12,
}


def header_version(head: bytes) -> int | None:
    """The format version from a file's first bytes, or None when it is not an RDB file."""
    digits = head[len(MAGIC) : HEADER_SIZE]
    if not head.startswith(MAGIC) or len(digits) != 4 or not digits.isdigit():
        return None
    return int(digits)


def file_version(path: Path) -> int | None:
    with path.open("rb") as f:
        return header_version(f.read(HEADER_SIZE))


def max_readable_version(redis_version: str) -> int | None:
    """The newest RDB format a Redis release reads; None for releases newer than this table.

    For those the server's own redis-check-rdb (same image) is the judge: it refuses formats its
    build cannot read, exactly as the server would.
    """
    match = re.match(r"(\d+)\.(\d+)", redis_version)
    if match is None:
        return None
    release = (int(match[1]), int(match[2]))
    if release > max(RDB_VERSIONS):
        return None
    known = [version for since, version in RDB_VERSIONS.items() if since <= release]
    return known[-1] if known else None


@dataclass(frozen=True)
class CheckResult:
    ok: bool
    keys: int  # keys read, all databases together, expired ones included
    expires: int  # keys with a TTL, expired ones included
    problem: str  # what redis-check-rdb found wrong; empty when ok
    already_expired: int = 0  # keys whose TTL had run out: a server drops them when loading
    redis_version: str = ""  # the Redis that wrote the file (its redis-ver field), if it says


def parse_check_output(output: str, returncode: int) -> CheckResult:
    """Read redis-check-rdb's report: "[info] N keys read", and the line after the error banner."""

    def count(label: str) -> int:
        found = re.search(rf"^\[info\] (\d+) {label}$", output, re.MULTILINE)
        return int(found[1]) if found else 0

    writer = re.search(r"AUX FIELD redis-ver = '([^']*)'", output)

    ok = returncode == 0 and "RDB looks OK" in output
    problem = ""
    if not ok:
        after = output.split("--- RDB ERROR DETECTED ---", 1)
        lines = after[1].strip().splitlines() if len(after) == 2 else []
        problem = lines[0] if lines else last_line(output) or f"exit code {returncode}"
        problem = re.sub(r"^\[offset \d+\] ", "", problem)
    return CheckResult(
        ok,
        count("keys read"),
        count("expires"),
        problem,
        count("already expired"),
        writer[1] if writer else "",
    )


def check_rdb(docker: Docker, image: str, path: Path, timeout: float = 1800) -> CheckResult:
    """Run redis-check-rdb from the server's own image on a file on this machine (a backup).

    A throwaway container with the file mounted read-only: it checks the very bytes a restore
    would use, works while Redis is stopped, and takes nothing from the server's container. It
    runs as our own user so it reads the file with the permissions we have (backups are 0600).
    """
    # Not one of the stack's containers: the image carries compose's project labels.
    result = docker.run(
        "run", "--rm", "--network", "none", "--user", f"{os.getuid()}:{os.getgid()}",
        "--label", "com.docker.compose.project=", "--label", "com.docker.compose.service=",
        "--mount", bind_mount(path, "/kc-check/dump.rdb"),
        "--entrypoint", "redis-check-rdb", image, "/kc-check/dump.rdb",
        timeout=timeout,
    )  # fmt: skip
    return parse_check_output(result.stdout + result.stderr, result.returncode)


def check_in_container(
    docker: Docker, container_id: str, path: str, timeout: float = 1800
) -> CheckResult:
    """Run redis-check-rdb inside the running Redis container on a file of its own (its dump).

    The backup uses this to check the dump while it is being copied out rather than after: the
    server's own binary, no container to start, and the copy and the check overlap.
    """
    result = docker.run("exec", container_id, "redis-check-rdb", path, timeout=timeout)
    return parse_check_output(result.stdout + result.stderr, result.returncode)


def bind_mount(path: Path, target: str) -> str:
    """A read-only `--mount` value; CSV-quoted, since --mount is parsed as CSV (commas in paths)."""
    line = io.StringIO()
    fields = ["type=bind", f"source={path.resolve()}", f"target={target}", "readonly"]
    csv.writer(line, lineterminator="").writerow(fields)
    return line.getvalue()
