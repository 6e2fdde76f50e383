"""RDB files: header versions, which versions a server reads, and reading redis-check-rdb."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from kcdev.backup import rdb
from kcdev.stack.docker_cli import Docker
from tests.unit.conftest import FakeRunner

CHECK_OK = """\
[offset 0] Checking RDB file /kc-check/dump.rdb
[offset 27] AUX FIELD redis-ver = '7.0.15'
[offset 82] Selecting DB ID 0
[offset 106] Selecting DB ID 3
[offset 123] Checksum OK
[offset 123] \\o/ RDB looks OK! \\o/
[info] 3 keys read
[info] 1 expires
[info] 0 already expired
"""

CHECK_TRUNCATED = """\
[offset 0] Checking RDB file /kc-check/dump.rdb
[offset 53] AUX FIELD ctime = '1795729130'
--- RDB ERROR DETECTED ---
[offset 55] Unexpected EOF reading RDB file
[additional info] While doing: read-aux
[info] 0 keys read
[info] 0 expires
[info] 0 already expired
"""


@pytest.mark.parametrize(
    ("head", "version"),
    [
        (b"REDIS0010\xfa\x09redis-ver", 10),
        (b"REDIS0012", 12),
        (b"REDIS0009", 9),
        (b"REDIS00", None),  # too short to hold a version
        (b"", None),
        (b"hello world", None),
        (b"REDISabcd", None),
        (b'{"format": 1}', None),
    ],
)
def test_header_version(head: bytes, version: int | None) -> None:
    assert rdb.header_version(head) == version


def test_file_version_reads_only_the_header(tmp_path: Path) -> None:
    path = tmp_path / "dump.rdb"
    path.write_bytes(b"REDIS0011" + b"\x00" * 1000)
    assert rdb.file_version(path) == 11


@pytest.mark.parametrize(
    ("redis_version", "readable"),
    [
        ("7.0.15", 10),
        ("7.2.4", 11),
        ("7.4.1", 12),
        ("6.2.14", 9),
        ("5.0.7", 9),
        ("4.0.14", 8),
        ("8.0.2", 12),
        ("99.0.0", None),  # newer than the table: the server's own redis-check-rdb decides
        ("2.4.0", None),
        ("unknown", None),
    ],
)
def test_max_readable_version(redis_version: str, readable: int | None) -> None:
    assert rdb.max_readable_version(redis_version) == readable


def test_parse_check_output_ok() -> None:
    result = rdb.parse_check_output(CHECK_OK, 0)
    assert result == rdb.CheckResult(
        ok=True, keys=3, expires=1, problem="", already_expired=0, redis_version="7.0.15"
    )


def test_parse_check_output_counts_keys_a_load_would_drop() -> None:
    output = CHECK_OK.replace("[info] 0 already expired", "[info] 2 already expired")
    assert rdb.parse_check_output(output, 0).already_expired == 2


def test_parse_check_output_names_the_problem() -> None:
    result = rdb.parse_check_output(CHECK_TRUNCATED, 1)
    assert not result.ok
    assert result.problem == "Unexpected EOF reading RDB file"


def test_parse_check_output_without_a_banner_uses_the_last_line() -> None:
    result = rdb.parse_check_output("docker: Error response from daemon: no such image\n", 125)
    assert not result.ok
    assert result.problem == "docker: Error response from daemon: no such image"


def test_exit_zero_without_the_ok_line_is_not_ok() -> None:
    assert not rdb.parse_check_output("", 0).ok


def test_check_rdb_runs_the_servers_image_offline_on_a_read_only_mount(
    runner: FakeRunner, docker: Docker, tmp_path: Path
) -> None:
    dump = tmp_path / "dump.rdb"
    dump.write_bytes(b"REDIS0010")
    runner.on("docker", "run", stdout=CHECK_OK)

    result = rdb.check_rdb(docker, "sha256:abc", dump)

    assert result.ok and result.keys == 3
    argv = runner.calls_starting("docker", "run")[0].argv
    assert argv[argv.index("--network") + 1] == "none"
    assert argv[argv.index("--entrypoint") + 1] == "redis-check-rdb"
    mount = argv[argv.index("--mount") + 1]
    assert mount.split(",") == [
        "type=bind",
        f"source={dump}",
        "target=/kc-check/dump.rdb",
        "readonly",
    ]
    assert argv[-2:] == ["sha256:abc", "/kc-check/dump.rdb"]


def test_check_in_container_runs_the_containers_own_binary_on_its_file(
    runner: FakeRunner, docker: Docker
) -> None:
    runner.on("docker", "exec", stdout=CHECK_OK)

    result = rdb.check_in_container(docker, "c0ffee", "/data/dump.rdb")

    assert result.ok and result.keys == 3
    assert runner.argvs == [["docker", "exec", "c0ffee", "redis-check-rdb", "/data/dump.rdb"]]


def test_bind_mount_quotes_paths_with_commas(tmp_path: Path) -> None:
    odd = tmp_path / "a,b.rdb"
    value = rdb.bind_mount(odd, "/x")
    assert next(csv.reader([value])) == ["type=bind", f"source={odd}", "target=/x", "readonly"]
