"""Which CA bundle builds and downloads trust."""

from __future__ import annotations

from pathlib import Path

import pytest

from kcdev import tls
from kcdev.errors import UserError
from kcdev.tls import EMPTY_CA_BUNDLE
from tests.unit.conftest import MakeSettings

# --- ca_bundle -------------------------------------------------------------------------------


def test_ca_bundle_none_is_the_empty_file(make_settings: MakeSettings) -> None:
    bundle = tls.ca_bundle(make_settings(build_ca_bundle="none"), environ={})

    assert bundle == EMPTY_CA_BUNDLE
    assert bundle.is_file()
    assert bundle.read_bytes() == b""


def test_ca_bundle_explicit_missing_path_is_a_user_error(
    make_settings: MakeSettings, tmp_path: Path
) -> None:
    missing = tmp_path / "corp-ca.pem"

    with pytest.raises(UserError, match=r"^BUILD_CA_BUNDLE=.*corp-ca\.pem is not a file"):
        tls.ca_bundle(make_settings(build_ca_bundle=str(missing)), environ={})


def test_ca_bundle_explicit_existing_path_is_used(
    make_settings: MakeSettings, tmp_path: Path
) -> None:
    pem = tmp_path / "corp-ca.pem"
    pem.write_text("-----BEGIN CERTIFICATE-----\n")

    assert tls.ca_bundle(make_settings(build_ca_bundle=str(pem)), environ={}) == pem.resolve()


def test_ca_bundle_auto_prefers_pip_cert(make_settings: MakeSettings, tmp_path: Path) -> None:
    pip_cert = tmp_path / "pip.pem"
    requests_bundle = tmp_path / "requests.pem"
    pip_cert.write_text("pip")
    requests_bundle.write_text("requests")
    environ = {"PIP_CERT": str(pip_cert), "REQUESTS_CA_BUNDLE": str(requests_bundle)}

    assert tls.ca_bundle(make_settings(), environ=environ) == pip_cert.resolve()


def test_ca_bundle_auto_skips_a_variable_naming_a_missing_file(
    make_settings: MakeSettings, tmp_path: Path
) -> None:
    ssl_cert = tmp_path / "ssl.pem"
    ssl_cert.write_text("ssl")
    environ = {"PIP_CERT": str(tmp_path / "gone.pem"), "SSL_CERT_FILE": str(ssl_cert)}

    assert tls.ca_bundle(make_settings(), environ=environ) == ssl_cert.resolve()


def test_ca_bundle_auto_falls_back_to_the_system_bundle(
    make_settings: MakeSettings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    system = tmp_path / "ca-certificates.crt"
    system.write_text("system")
    monkeypatch.setattr(tls, "SYSTEM_CA_BUNDLE", system)

    assert tls.ca_bundle(make_settings(), environ={}) == system


def test_ca_bundle_auto_without_any_bundle_is_the_empty_file(
    make_settings: MakeSettings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tls, "SYSTEM_CA_BUNDLE", tmp_path / "absent.crt")

    assert tls.ca_bundle(make_settings(), environ={}) == EMPTY_CA_BUNDLE
