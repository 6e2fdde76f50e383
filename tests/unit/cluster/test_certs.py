"""The cluster CA: made once, private keys, leaf certificates chaining to it, the right names."""

from __future__ import annotations

import ipaddress
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from kcdev.cluster import certs
from kcdev.errors import UserError


def load(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_the_ca_is_made_once_with_a_private_key(tmp_path: Path) -> None:
    first = certs.ensure_ca(tmp_path / "cluster")
    before = first.cert.read_bytes()

    again = certs.ensure_ca(tmp_path / "cluster")

    assert again.cert.read_bytes() == before  # kept: every node's certificate chains to it
    assert mode(first.key) == 0o600
    assert mode(tmp_path / "cluster") == 0o700
    ca = load(first.cert)
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca


def test_the_server_certificate_names_the_addresses_and_chains_to_the_ca(tmp_path: Path) -> None:
    pair = certs.ensure_server(tmp_path, ["172.17.0.1", "central.example"])

    cert = load(pair.cert)
    cert.verify_directly_issued_by(load(certs.ca_pair(tmp_path).cert))
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("172.17.0.1")]
    assert san.get_values_for_type(x509.DNSName) == ["central.example"]
    usage = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(usage) == [ExtendedKeyUsageOID.SERVER_AUTH]
    assert mode(pair.key) == 0o600


def test_the_server_certificate_is_kept_until_the_addresses_change(tmp_path: Path) -> None:
    first = certs.ensure_server(tmp_path, ["10.0.0.5"]).cert.read_bytes()
    assert certs.ensure_server(tmp_path, ["10.0.0.5"]).cert.read_bytes() == first
    assert certs.ensure_server(tmp_path, ["10.0.0.6"]).cert.read_bytes() != first


def test_a_client_certificate_is_for_client_auth_only(tmp_path: Path) -> None:
    pair = certs.issue_client(tmp_path / "ca", "gpu-box", tmp_path / "out")

    cert = load(pair.cert)
    cert.verify_directly_issued_by(load(certs.ca_pair(tmp_path / "ca").cert))
    assert cert.subject.rfc4514_string() == "CN=gpu-box"
    usage = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(usage) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    assert mode(pair.key) == 0o600


def test_a_damaged_ca_is_one_line_not_a_new_ca(tmp_path: Path) -> None:
    pair = certs.ensure_ca(tmp_path)
    pair.key.write_text("not a key")

    with pytest.raises(UserError, match="cannot read the cluster CA"):
        certs.issue_client(tmp_path, "node", tmp_path / "out")
    assert pair.key.read_text() == "not a key"  # never silently replaced
