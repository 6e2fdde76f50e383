"""The central machine's side: Redis' TLS material, and the join files it hands to nodes.

Redis is published beyond loopback only over TLS (docker-compose.redis-tls.yml). Its server
certificate names every address nodes were told to connect to: BIND_HOST when it is a specific
address, and each `--address` a join file was exported for (kept in CLUSTER_DIR/addresses).
The certificate and the CA reach the Redis container as compose secrets, whose values `invoke`
passes in the environment of the compose command only; a label carrying the certificate's digest
makes compose recreate Redis when the certificate changes, which a secret's value alone does not.
"""

from __future__ import annotations

import hashlib
import json
import socket
from pathlib import Path

from kcdev.cluster import bundle, certs
from kcdev.errors import UserError
from kcdev.files import write_atomically
from kcdev.settings import Settings
from kcdev.stack.preflight import redis_tls

ADDRESSES = "addresses.json"


def exported_addresses(cluster_dir: Path) -> list[str]:
    try:
        data = json.loads((cluster_dir / ADDRESSES).read_text())
    except FileNotFoundError:
        return []
    except (OSError, ValueError):
        raise UserError(
            f"{cluster_dir / ADDRESSES} is damaged: remove it, then export the join files again"
        ) from None
    return [str(a) for a in data] if isinstance(data, list) else []


def server_addresses(settings: Settings) -> list[str]:
    """What Redis' certificate names: this machine's name, BIND_HOST when specific, and every
    address a join file was exported for."""
    names = {socket.gethostname(), *exported_addresses(Path(settings.cluster_dir))}
    if settings.bind_host not in bundle.WILDCARDS:
        names.add(settings.bind_host)
    return sorted(names)


def tls_environment(settings: Settings) -> dict[str, str]:
    """The values compose gives Redis' TLS secrets (made when missing); empty when Redis stays
    on loopback."""
    if not redis_tls(settings):
        return {}
    folder = Path(settings.cluster_dir)
    ca = certs.ensure_ca(folder)
    server = certs.ensure_server(folder, server_addresses(settings))
    cert = server.cert.read_text()
    return {
        "KC_REDIS_TLS_CERT": cert,
        "KC_REDIS_TLS_KEY": server.key.read_text(),
        "KC_REDIS_TLS_CA": ca.cert.read_text(),
        "KC_REDIS_TLS_ID": hashlib.sha256(cert.encode()).hexdigest()[:12],
    }


def export(settings: Settings, *, node: str, address: str | None, out: Path) -> tuple[Path, bool]:
    """Write `node`'s join file to `out`; returns it, and whether Redis' certificate gained the
    address (then Redis must restart to present it: `invoke up`)."""
    if not redis_tls(settings):
        raise UserError(
            f"BIND_HOST={settings.bind_host} keeps Redis on this machine: set BIND_HOST to the "
            "address nodes reach it at (Redis then speaks TLS there), `invoke up`, then export"
        )
    where = bundle.export_address(settings.bind_host, address)
    folder = Path(settings.cluster_dir)
    before = server_addresses(settings)
    if where not in before:
        known = [*exported_addresses(folder), where]
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        write_atomically(folder / ADDRESSES, json.dumps(sorted(set(known))).encode(), 0o600)
    made = bundle.issue(
        folder, node=node, address=where, port=settings.redis_tls_port, db=settings.redis_db,
        password=settings.redis_password,
    )  # fmt: skip
    return bundle.write(made, out), where not in before
