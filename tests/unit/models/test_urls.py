"""URLs from users: checked, and never shown or stored with their credentials."""

from __future__ import annotations

import base64

import pytest

from kcdev.errors import UserError
from kcdev.models.urls import check_url, has_credentials, host, redact, split_credentials


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("https://user:pw@host/a/m.gguf?x=1", "https://***@host/a/m.gguf?x=1"),
        ("https://token@host:8443/m.gguf", "https://***@host:8443/m.gguf"),
        ("https://a:b@c@host/m.gguf", "https://***@host/m.gguf"),  # '@' in the password
        ("https://host/m.gguf", "https://host/m.gguf"),
        ("http://u:p@[::1/x", "(a malformed URL)"),  # unparsable: hidden whole
    ],
)
def test_redact_hides_user_and_password(url: str, shown: str) -> None:
    assert redact(url) == shown


def test_host_never_carries_credentials() -> None:
    assert host("https://user:pw@example.org:8443/m.gguf") == "example.org:8443"
    assert host("https://example.org/m.gguf") == "example.org"


def test_split_credentials_gives_a_clean_url_and_a_basic_auth_header() -> None:
    url, headers = split_credentials("https://al%40ice:p%3Aw@host/m.gguf")
    assert url == "https://host/m.gguf"
    assert headers == {"Authorization": "Basic " + base64.b64encode(b"al@ice:p:w").decode()}
    assert split_credentials("https://host/m.gguf") == ("https://host/m.gguf", {})
    assert has_credentials("https://u:p@host/") and not has_credentials("https://host/")


@pytest.mark.parametrize(
    "bad", ["http://[::1/x.gguf", "https://user:pw@host:port/m.gguf", "ftp://user:pw@host/m"]
)
def test_a_bad_url_is_one_line_without_its_credentials(bad: str) -> None:
    with pytest.raises(UserError) as caught:
        check_url(bad)
    message = str(caught.value)
    assert message.startswith("--url=")
    assert "pw" not in message and "\n" not in message
