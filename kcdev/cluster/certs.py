"""The cluster's own certificate authority: Redis' server certificate and the nodes' client ones.

Redis beyond loopback speaks TLS only, and asks every client for a certificate signed by this CA
(`tls-auth-clients yes`) on top of the password: a stolen password alone does not let a machine
in, and a node's certificate alone does not either. The CA lives on the central machine, in
CLUSTER_DIR (ignored by git, private keys 0600); `invoke cluster-export` issues a node its client
certificate. Keys are EC P-256: small, fast, and what Redis' OpenSSL takes.
"""

from __future__ import annotations

import datetime
import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from kcdev.errors import UserError
from kcdev.files import write_atomically

CA_NAME = "kc-devenv cluster CA"
CA_DAYS = 3650
LEAF_DAYS = 825  # the longest validity clients such as Apple's accept for a leaf certificate


@dataclass(frozen=True)
class Pair:
    """A certificate and its private key, as PEM files."""

    cert: Path
    key: Path


def ca_pair(folder: Path) -> Pair:
    return Pair(folder / "ca.pem", folder / "ca-key.pem")


def server_pair(folder: Path) -> Pair:
    return Pair(folder / "redis-server.pem", folder / "redis-server-key.pem")


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _load(pair: Pair) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    try:
        cert = x509.load_pem_x509_certificate(pair.cert.read_bytes())
        key = serialization.load_pem_private_key(pair.key.read_bytes(), password=None)
    except (OSError, ValueError) as exc:
        raise UserError(
            f"cannot read the cluster CA in {pair.cert.parent} ({exc}): restore it from a copy, "
            "or move the folder away to make a new CA (every node must then join again)"
        ) from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise UserError(f"{pair.key} is not an EC key: move the folder away to make a new CA")
    return cert, key


def ensure_ca(folder: Path) -> Pair:
    """The cluster's CA, made on first use and kept: every node's certificate chains to it."""
    pair = ca_pair(folder)
    if pair.cert.is_file() and pair.key.is_file():
        _load(pair)
        return pair
    try:
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    except OSError as exc:
        raise UserError(f"cannot create the cluster folder {folder}: {exc.strerror}") from None
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, CA_NAME)])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(_now() - datetime.timedelta(minutes=5))
        .not_valid_after(_now() + datetime.timedelta(days=CA_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(key, hashes.SHA256())
    )
    write_atomically(pair.key, _key_pem(key), 0o600)
    write_atomically(pair.cert, cert.public_bytes(serialization.Encoding.PEM), 0o644)
    return pair


def _alt_names(addresses: Sequence[str]) -> list[x509.GeneralName]:
    names: list[x509.GeneralName] = []
    for address in addresses:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(address)))
        except ValueError:
            names.append(x509.DNSName(address))
    return names


def issue(
    folder: Path, pair: Pair, common_name: str, *, server: bool, addresses: Sequence[str] = ()
) -> Pair:
    """A leaf certificate signed by the CA in `folder`, written to `pair`."""
    ca_cert, ca_key = _load(ensure_ca(folder))
    key = ec.generate_private_key(ec.SECP256R1())
    usage = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(_now() - datetime.timedelta(minutes=5))
        .not_valid_after(_now() + datetime.timedelta(days=LEAF_DAYS))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    )
    if addresses:
        builder = builder.add_extension(
            x509.SubjectAlternativeName(_alt_names(list(addresses))), critical=False
        )
    cert = builder.sign(ca_key, hashes.SHA256())
    write_atomically(pair.key, _key_pem(key), 0o600)
    write_atomically(pair.cert, cert.public_bytes(serialization.Encoding.PEM), 0o644)
    return pair


def ensure_server(folder: Path, addresses: list[str]) -> Pair:
    """Redis' server certificate for `addresses` (what nodes connect to); reissued when the
    addresses change or it expires within a month, so nodes never see a name mismatch."""
    pair = server_pair(folder)
    wanted = sorted(set(addresses))
    if pair.cert.is_file() and pair.key.is_file():
        try:
            cert = x509.load_pem_x509_certificate(pair.cert.read_bytes())
            san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
            have = sorted(str(n.value) for n in san)
            fresh = cert.not_valid_after_utc - _now() > datetime.timedelta(days=30)
            if have == wanted and fresh:
                return pair
        except (ValueError, x509.ExtensionNotFound):
            pass
    return issue(folder, pair, "kc-devenv redis", server=True, addresses=wanted)


def issue_client(folder: Path, node: str, into: Path) -> Pair:
    """A client certificate for node `node`, written into the folder `into`."""
    into.mkdir(parents=True, exist_ok=True, mode=0o700)
    return issue(folder, Pair(into / "client.pem", into / "client-key.pem"), node, server=False)
