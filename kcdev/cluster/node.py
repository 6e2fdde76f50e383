"""A worker node's side of joining: its credentials on disk, and the stack it runs.

A node runs an LLM server and workers, and no Redis: its workers reach the central Redis at the
bundle's address over TLS. The bundle's parts are kept in CLUSTER_DIR/node/ (0700; keys 0600) so
that `invoke up`, `ps` and `down` on the node find the same central again; the workers get them
as mounted files, never as environment variables.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from kcdev.errors import UserError
from kcdev.files import write_atomically

if TYPE_CHECKING:  # the bundle module needs cryptography, slow to import for every task
    from kcdev.cluster.bundle import JoinBundle

NODE_DIR = "node"


@dataclass(frozen=True)
class Joined:
    """The central this node joined, as kept in CLUSTER_DIR/node/."""

    folder: Path  # ca.pem, client.pem, client-key.pem: mounted into the workers at /run/kc-tls
    node: str
    address: str
    port: int
    db: int
    password: str

    def __repr__(self) -> str:
        return f"Joined(node={self.node!r}, central={self.address}:{self.port})"

    def environment(self) -> dict[str, str]:
        """What compose substitutes into docker-compose.node.yml for this node's workers."""
        return {
            "WORKER_REDIS_HOST": self.address,
            "WORKER_REDIS_PORT": str(self.port),
            "REDIS_DB": str(self.db),
            "REDIS_PASSWORD": self.password,
            "NODE_TLS_DIR": str(self.folder),
        }


def node_dir(cluster_dir: Path) -> Path:
    return cluster_dir / NODE_DIR


def keep(bundle: JoinBundle, cluster_dir: Path, *, staged: bool = False) -> Joined:
    """Store the bundle's parts for this node. `staged`: beside the current ones, in node.new/,
    until `promote` (once the central accepted them) or `discard`."""
    folder = node_dir(cluster_dir)
    if staged:
        folder = folder.with_name(f"{NODE_DIR}.new")
    try:
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(folder, 0o700)
        write_atomically(folder / "ca.pem", bundle.ca.encode(), 0o600)
        write_atomically(folder / "client.pem", bundle.cert.encode(), 0o600)
        write_atomically(folder / "client-key.pem", bundle.key.encode(), 0o600)
        central = {
            "node": bundle.node, "address": bundle.address, "port": bundle.port,
            "db": bundle.db, "password": bundle.password,
        }  # fmt: skip
        write_atomically(folder / "join.json", json.dumps(central, indent=1).encode(), 0o600)
    except OSError as exc:
        raise UserError(f"cannot keep the join credentials in {folder}: {exc.strerror}") from None
    return Joined(folder, bundle.node, bundle.address, bundle.port, bundle.db, bundle.password)


def joined(cluster_dir: Path) -> Joined | None:
    """The central this machine joined, or None when it is not a worker node."""
    folder = node_dir(cluster_dir)
    path = folder / "join.json"
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
        return Joined(
            folder, str(data["node"]), str(data["address"]), int(data["port"]),
            int(data["db"]), str(data["password"]),
        )  # fmt: skip
    except (OSError, ValueError, KeyError, TypeError):
        raise UserError(f"{path} is damaged: join again with `invoke up --join FILE`") from None


def promote(cluster_dir: Path) -> Joined:
    """The staged join replaces the current one (the central accepted its credentials)."""
    staged, folder = node_dir(cluster_dir).with_name(f"{NODE_DIR}.new"), node_dir(cluster_dir)
    leave(cluster_dir)
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    for name in ("ca.pem", "client.pem", "client-key.pem", "join.json"):  # join.json last
        os.replace(staged / name, folder / name)
    staged.rmdir()
    found = joined(cluster_dir)
    assert found is not None
    return found


def discard(cluster_dir: Path) -> None:
    """Forget a staged join the central refused; the current one, if any, stays."""
    staged = node_dir(cluster_dir).with_name(f"{NODE_DIR}.new")
    for name in ("ca.pem", "client.pem", "client-key.pem", "join.json"):
        (staged / name).unlink(missing_ok=True)
    if staged.is_dir():
        staged.rmdir()


def leave(cluster_dir: Path) -> None:
    """Forget the central: this machine is a stand-alone stack again."""
    folder = node_dir(cluster_dir)
    for name in ("join.json", "ca.pem", "client.pem", "client-key.pem"):
        (folder / name).unlink(missing_ok=True)
