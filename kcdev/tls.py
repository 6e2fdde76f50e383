"""Which CA bundle to trust: behind a TLS-intercepting proxy the host's bundle holds the proxy's CA,
which neither pip inside an image build nor a fresh Python HTTP client knows about."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from kcdev import paths
from kcdev.errors import UserError
from kcdev.settings import Settings

EMPTY_CA_BUNDLE = paths.DOCKER_DIR / "no-extra-ca.pem"
SYSTEM_CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")


def ca_bundle(settings: Settings, environ: Mapping[str, str] = os.environ) -> Path:
    """The CA bundle handed to builds as a BuildKit secret; an empty file means none."""
    choice = settings.build_ca_bundle
    if choice == "none":
        return EMPTY_CA_BUNDLE
    if choice != "auto":
        path = Path(choice).expanduser()
        if not path.is_file():
            raise UserError(
                f"BUILD_CA_BUNDLE={choice} is not a file: point it at a PEM bundle or use none"
            )
        return path.resolve()
    for var in ("PIP_CERT", "REQUESTS_CA_BUNDLE", "SSL_CERT_FILE"):
        if environ.get(var) and Path(environ[var]).is_file():
            return Path(environ[var]).resolve()
    return SYSTEM_CA_BUNDLE if SYSTEM_CA_BUNDLE.is_file() else EMPTY_CA_BUNDLE
