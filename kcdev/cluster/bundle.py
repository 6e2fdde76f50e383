"""What a worker node needs to join the central Redis, as one private file.

`invoke cluster-export` on the central machine writes it: the address and TLS port nodes reach,
the Redis password, the cluster CA, and a client certificate issued for that node. It is JSON,
mode 0600, never printed; `invoke up --join FILE` on the node reads it and keeps its parts in
CLUSTER_DIR/node/ (ca.pem, client.pem, client-key.pem, join.json), from which the node's workers
get their TLS credentials and the password as mounted secrets.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from kcdev.cluster import certs
from kcdev.errors import UserError

FORMAT = 1
NODE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}")
WILDCARDS = ("0.0.0.0", "::")


@dataclass(frozen=True)
class JoinBundle:
    node: str  # the name the client certificate was issued to
    address: str  # where nodes reach the central Redis' TLS port
    port: int
    db: int
    password: str
    ca: str  # PEM
    cert: str  # PEM
    key: str  # PEM

    def __repr__(self) -> str:  # a bundle in a traceback or a log must not show its secrets
        return f"JoinBundle(node={self.node!r}, address={self.address!r}, port={self.port})"


def check_node_name(node: str) -> str:
    if not NODE_NAME.fullmatch(node):
        raise UserError(
            f"--node={node!r} is not a node name: letters, digits, '.', '-', '_' (up to 63)"
        )
    return node


def export_address(bind_host: str, address: str | None) -> str:
    """The address nodes will connect to: --address, else BIND_HOST unless it is a wildcard."""
    if address:
        if any(c.isspace() for c in address) or "/" in address or not address.strip():
            raise UserError(f"--address={address!r} is not a host name or IP address")
        return address
    if bind_host in WILDCARDS:
        raise UserError(
            f"BIND_HOST={bind_host} listens everywhere: pass --address with the name or IP "
            "address the nodes reach this machine at"
        )
    if ipaddress.ip_address(bind_host).is_loopback:
        raise UserError(
            f"BIND_HOST={bind_host} is loopback: no other machine can reach Redis; set BIND_HOST "
            "to an address of this machine on the nodes' network, then `invoke up` again"
        )
    return bind_host


def issue(
    cluster_dir: Path, *, node: str, address: str, port: int, db: int, password: str
) -> JoinBundle:
    """A bundle for `node`, with a client certificate issued now by the cluster's CA."""
    if not password:
        raise UserError("Redis has no password (REDIS_PASSWORD): nodes may join only with one")
    with tempfile.TemporaryDirectory(prefix="kc-join-") as tmp:
        pair = certs.issue_client(cluster_dir, check_node_name(node), Path(tmp))
        ca = certs.ca_pair(cluster_dir).cert.read_text()
        return JoinBundle(
            node, address, port, db, password, ca, pair.cert.read_text(), pair.key.read_text()
        )


def write(bundle: JoinBundle, path: Path) -> Path:
    """Write the bundle, 0600 from its first byte; an existing file is never replaced."""
    data = json.dumps({"format": FORMAT, **asdict(bundle)}, indent=1).encode() + b"\n"
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise UserError(f"{path} already exists: choose another --out, or remove it") from None
    except OSError as exc:
        raise UserError(f"cannot write {path}: {exc.strerror}") from None
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    return path


def read(path: Path) -> JoinBundle:
    """The bundle in `path`, or one line saying what is wrong with the file."""
    try:
        data: Any = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"no join file {path}: make one with `invoke cluster-export`") from None
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise UserError(
            f"{path} is not a join file made by `invoke cluster-export` ({type(exc).__name__})"
        ) from None
    if not isinstance(data, dict) or data.pop("format", None) != FORMAT:
        raise UserError(f"{path} is not a join file made by `invoke cluster-export`")
    try:
        bundle = JoinBundle(**data)
    except TypeError:
        raise UserError(f"{path} is missing fields: export it again") from None
    texts = (bundle.node, bundle.address, bundle.password, bundle.ca, bundle.cert, bundle.key)
    if not all(isinstance(v, str) and v for v in texts) or not isinstance(bundle.port, int):
        raise UserError(f"{path} has empty or malformed fields: export it again")
    for name, pem in (("ca", bundle.ca), ("cert", bundle.cert), ("key", bundle.key)):
        if "-----BEGIN " not in pem:
            raise UserError(f"{path}: its {name} is not PEM: export it again")
    return bundle
