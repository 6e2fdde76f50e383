"""URLs given by users: checked before any traffic, and never shown or stored with credentials.

A URL may carry credentials (`https://user:secret@host/...`). They go to the server as an
Authorization header and nowhere else: every URL that is printed, put in an error or written to
disk (the partial download's sidecar, the record of verified models) passes through `redact`
first, or is the credential-free URL `split_credentials` returns.
"""

from __future__ import annotations

import base64
from urllib.parse import unquote, urlsplit, urlunsplit

from kcdev.errors import UserError


def redact(url: str) -> str:
    """`url` with any user and password replaced by `***`; anything unparsable stays hidden."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "(a malformed URL)" if "@" in url else url
    if "@" not in parts.netloc:
        return url
    return urlunsplit(parts._replace(netloc="***@" + parts.netloc.rpartition("@")[2]))


def host(url: str) -> str:
    """The host (and port) a URL names, without credentials: what messages call the server."""
    try:
        netloc = urlsplit(url).netloc
    except ValueError:
        return redact(url)
    return netloc.rpartition("@")[2] or redact(url)


def check_url(url: str, what: str = "--url") -> str:
    """An http(s) URL with a host, or a one-line error: checked before any network traffic."""
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises on a malformed port
    except ValueError as exc:
        raise UserError(f"{what}={redact(url)!r} is not a valid URL ({exc})") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise UserError(f"{what}={redact(url)!r} is not an http(s) URL")
    return url


def split_credentials(url: str) -> tuple[str, dict[str, str]]:
    """The URL without credentials, and the header that carries them (empty when there are none).

    urllib3 would silently drop them from the URL; sent as Basic authentication they do what the
    user meant, and urllib3 drops the header on a redirect to another host.
    """
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url, {}
    userinfo, _, hostport = parts.netloc.rpartition("@")
    user, _, password = userinfo.partition(":")
    token = base64.b64encode(f"{unquote(user)}:{unquote(password)}".encode()).decode("ascii")
    return urlunsplit(parts._replace(netloc=hostport)), {"Authorization": f"Basic {token}"}


def has_credentials(url: str) -> bool:
    try:
        return "@" in urlsplit(url).netloc
    except ValueError:
        return False
