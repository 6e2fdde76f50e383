"""The join file: what it holds, how it is written and read, and what a node keeps of it."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest

from kcdev.cluster import bundle, node
from kcdev.errors import UserError

PASSWORD = "p@ss/word:42"


def make(tmp_path: Path) -> bundle.JoinBundle:
    return bundle.issue(
        tmp_path / "central", node="gpu-box", address="10.0.0.5", port=6380, db=0,
        password=PASSWORD,
    )  # fmt: skip


def test_a_bundle_round_trips_through_a_private_file(tmp_path: Path) -> None:
    made = make(tmp_path)
    path = bundle.write(made, tmp_path / "gpu-box.join")

    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert bundle.read(path) == made
    assert PASSWORD not in repr(made)


def test_an_existing_file_is_never_replaced(tmp_path: Path) -> None:
    target = tmp_path / "gpu-box.join"
    target.write_text("mine")
    with pytest.raises(UserError, match="already exists"):
        bundle.write(make(tmp_path), target)
    assert target.read_text() == "mine"


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"\xff\xfe not utf-8", "is not a join file"),
        (b"{", "is not a join file"),
        (b'{"format": 2}', "is not a join file"),
        (b'{"format": 1, "node": "x"}', "is missing fields"),
    ],
)
def test_a_file_that_is_not_a_bundle_is_one_line(
    tmp_path: Path, content: bytes, message: str
) -> None:
    path = tmp_path / "bad.join"
    path.write_bytes(content)
    with pytest.raises(UserError, match=message):
        bundle.read(path)


def test_a_bundle_with_a_damaged_key_is_refused(tmp_path: Path) -> None:
    path = bundle.write(make(tmp_path), tmp_path / "gpu-box.join")
    data = json.loads(path.read_text())
    data["key"] = "garbage"
    path.write_text(json.dumps(data))
    with pytest.raises(UserError, match="its key is not PEM"):
        bundle.read(path)


def test_no_bundle_without_a_redis_password(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="nodes may join only with one"):
        bundle.issue(tmp_path, node="n", address="10.0.0.5", port=6380, db=0, password="")


@pytest.mark.parametrize(
    ("bind_host", "address", "expected"),
    [("10.0.0.5", None, "10.0.0.5"), ("0.0.0.0", "central.lan", "central.lan")],
)
def test_the_address_nodes_connect_to(bind_host: str, address: str | None, expected: str) -> None:
    assert bundle.export_address(bind_host, address) == expected


@pytest.mark.parametrize(
    ("bind_host", "message"),
    [("0.0.0.0", "pass --address"), ("127.0.0.1", "is loopback"), ("::", "pass --address")],
)
def test_no_address_nodes_could_not_reach(bind_host: str, message: str) -> None:
    with pytest.raises(UserError, match=message):
        bundle.export_address(bind_host, None)


def test_a_node_keeps_the_parts_privately_and_finds_them_again(tmp_path: Path) -> None:
    cluster_dir = tmp_path / "node-machine"
    kept = node.keep(make(tmp_path), cluster_dir)

    assert node.joined(cluster_dir) == kept
    for name in ("ca.pem", "client.pem", "client-key.pem", "join.json"):
        assert stat.S_IMODE((kept.folder / name).stat().st_mode) == 0o600
    assert stat.S_IMODE(kept.folder.stat().st_mode) == 0o700
    assert kept.environment()["WORKER_REDIS_HOST"] == "10.0.0.5"
    assert PASSWORD not in repr(kept)

    node.leave(cluster_dir)
    assert node.joined(cluster_dir) is None
