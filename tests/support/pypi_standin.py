"""A stand-in for a Python package index (PEP 691 JSON pages), serving wheels the tests build.

`chunk_wheels` splits some bytes into wheels laid out like PyPI's gemma3-270m chunk packages (one
member `<module>/data/<file>.partNN` each, plus dist-info), so the mirror code is exercised on the
real layout with small data.
"""

from __future__ import annotations

import hashlib
import zipfile
from pathlib import Path

from kcdev.models.catalog import ChunkPart, PypiChunks
from kcdev.models.pypi_mirror import SIMPLE_JSON, normalize
from tests.support.http_server import LocalServer, Reply, Request, Resource


def build_wheel(directory: Path, package: str, version: str, members: dict[str, bytes]) -> Path:
    """A minimal, valid wheel holding `members`."""
    module = normalize(package).replace("-", "_")
    path = directory / f"{module}-{version}-py3-none-any.whl"
    dist_info = f"{module}-{version}.dist-info"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as archive:
        archive.writestr(f"{module}/__init__.py", "")
        for name, data in members.items():
            archive.writestr(name, data)
        archive.writestr(f"{dist_info}/METADATA", f"Metadata-Version: 2.1\nName: {package}\n"
                                                  f"Version: {version}\n")  # fmt: skip
        archive.writestr(f"{dist_info}/WHEEL", "Wheel-Version: 1.0\nRoot-Is-Purelib: true\n")
        archive.writestr(f"{dist_info}/RECORD", "")
    return path


def chunk_wheels(
    directory: Path, content: bytes, parts: tuple[ChunkPart, ...], version: str
) -> list[Path]:
    """Split `content` into len(parts) pieces, each in its package's wheel at its member path."""
    step = -(-len(content) // len(parts))
    return [
        build_wheel(
            directory, part.package, version, {part.member: content[i * step : (i + 1) * step]}
        )
        for i, part in enumerate(parts)
    ]


def gemma_like_parts(file_name: str = "model.gguf", count: int = 4) -> tuple[ChunkPart, ...]:
    """Parts named and laid out like the real gemma3-270m chunk packages."""
    return tuple(
        ChunkPart(
            f"test-model-gguf-part{n}", f"test_model_gguf_part{n}/data/{file_name}.part{n - 1:02d}"
        )
        for n in range(1, count + 1)
    )


class PypiStandin:
    """Project pages at `{index}/<name>/` listing the wheels added, served from `/files/`."""

    def __init__(self, server: LocalServer) -> None:
        self.server = server
        self.projects: dict[str, list[dict[str, object]]] = {}
        server.route(r"/simple/[^/]+/", self._page)

    @property
    def index(self) -> str:
        return self.server.url("/simple")

    def add_wheel(
        self, package: str, wheel: Path, *, sha256: str | None = None, yanked: bool = False
    ) -> Resource:
        """List `wheel` under `package`; `sha256` overrides the true hash (a corrupt index)."""
        data = wheel.read_bytes()
        resource = self.server.add(f"/files/{wheel.name}", data, etag=f'"{wheel.name}"')
        self.projects.setdefault(normalize(package), []).append({
            "filename": wheel.name,
            "url": f"../../files/{wheel.name}",  # relative, as PEP 691 allows
            "hashes": {"sha256": sha256 or hashlib.sha256(data).hexdigest()},
            "size": len(data),
            "yanked": yanked,
        })  # fmt: skip
        return resource

    def add_mirror(self, directory: Path, content: bytes, mirror: PypiChunks) -> list[Resource]:
        wheels = chunk_wheels(directory, content, mirror.parts, mirror.version)
        return [self.add_wheel(p.package, w) for p, w in zip(mirror.parts, wheels, strict=True)]

    def _page(self, request: Request) -> Reply:
        name = request.path.split("?", 1)[0].rstrip("/").rsplit("/", 1)[1]
        if name not in self.projects:
            return Reply(404, b"not found")
        body = {"meta": {"api-version": "1.1"}, "name": name, "files": self.projects[name]}
        return Reply.json(body, headers={"Content-Type": SIMPLE_JSON})
