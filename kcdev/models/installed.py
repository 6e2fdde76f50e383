"""The models on this machine (`invoke models`) and the record of which ones were verified.

Each model is shown with whether it carries a chat template (read from the GGUF header or the
folder's tokenizer config each time: milliseconds), since the worker's chat task needs one.

Verification happens once, when a model is fetched; hashing gigabytes on every `invoke models`
would be slow, so fetch-model records what it verified in `.kc-verified.json` next to the models,
with each file's size and modification time. A file whose size or time no longer match is shown as
changed since verification rather than trusted.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from filelock import FileLock

from kcdev import chat_template, files, paths
from kcdev.console import human_size
from kcdev.models.digest import Digest
from kcdev.models.partial import Partial
from kcdev.settings import Settings

MANIFEST_NAME = ".kc-verified.json"
PARTIAL_SUFFIXES = (".part", ".part.json", ".mirror.part", ".lock", ".tmp")


def manifest_path(directory: Path) -> Path:
    return directory / MANIFEST_NAME


def read_manifest(directory: Path) -> dict[str, dict[str, Any]]:
    try:
        data = json.loads(manifest_path(directory).read_text())
    except (OSError, ValueError):
        return {}
    return (
        {str(k): v for k, v in data.items() if isinstance(v, dict)}
        if isinstance(data, dict)
        else {}
    )


def _stat_entry(path: Path, digest: Digest) -> dict[str, Any]:
    stat = path.stat()
    return {
        "algorithm": digest.algorithm,
        "hexdigest": digest.hexdigest,
        "size": stat.st_size,
        "mtime_ns": stat.st_mtime_ns,
    }


def record_file(directory: Path, name: str, digest: Digest, source: str) -> None:
    """Remember that `directory/name` was verified against `digest` (fetched from `source`)."""
    entry = {"kind": "file", **_stat_entry(directory / name, digest), "source": source}
    _update(directory, name, entry)


def record_folder(
    directory: Path, name: str, repo: str, revision: str, files: Iterable[tuple[str, Digest]]
) -> None:
    """Remember a verified Hub snapshot `directory/name`: each file with its checksum."""
    folder = directory / name
    entry = {
        "kind": "folder",
        "repo": repo,
        "revision": revision,
        "files": {path: _stat_entry(folder / path, digest) for path, digest in files},
    }
    _update(directory, name, entry)


def _update(directory: Path, name: str, entry: dict[str, Any]) -> None:
    """Rewrite the manifest under its own lock: fetches of different models may finish together."""
    with FileLock(directory / f"{MANIFEST_NAME}.lock"):
        manifest = read_manifest(directory)
        manifest[name] = {**entry, "verified_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        tmp = manifest_path(directory).with_suffix(".json.tmp")  # one writer at a time: the lock
        tmp.write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")
        os.replace(tmp, manifest_path(directory))


def _unchanged(path: Path, entry: object) -> bool:
    if not isinstance(entry, dict):  # a hand-edited manifest: unverified, never a traceback
        return False
    try:
        stat = path.stat()
    except OSError:
        return False
    return stat.st_size == entry.get("size") and stat.st_mtime_ns == entry.get("mtime_ns")


def file_is_verified(directory: Path, name: str, digest: Digest) -> bool:
    """Verified earlier against this very digest, and untouched since."""
    entry = read_manifest(directory).get(name)
    return (
        entry is not None
        and entry.get("kind") == "file"
        and entry.get("algorithm") == digest.algorithm
        and entry.get("hexdigest") == digest.hexdigest
        and _unchanged(directory / name, entry)
    )


def folder_is_verified(directory: Path, name: str, repo: str, revision: str | None = None) -> bool:
    """A snapshot of `repo` (at `revision`, if given) verified earlier, every file untouched."""
    entry = read_manifest(directory).get(name)
    if entry is None or entry.get("kind") != "folder" or entry.get("repo") != repo:
        return False
    if revision is not None and entry.get("revision") != revision:
        return False
    files = entry.get("files")
    if not isinstance(files, dict):
        return False
    return bool(files) and all(_unchanged(directory / name / p, e) for p, e in files.items())


@dataclass(frozen=True)
class LocalModel:
    backend: str
    name: str
    size: int
    state: str  # verified, changed since verification, not verified, partial download
    detail: str = ""
    in_use: bool = False
    chat: bool | None = None  # has a chat template; None: cannot tell (e.g. a partial download)


def _state(directory: Path, name: str) -> tuple[str, str]:
    entry = read_manifest(directory).get(name)
    if entry is None:
        return "not verified", ""
    if entry.get("kind") == "folder":
        ok = folder_is_verified(directory, name, str(entry.get("repo")))
        detail = f"{entry.get('repo')}@{str(entry.get('revision'))[:12]}"
    else:
        ok = _unchanged(directory / name, entry)
        detail = f"{entry.get('algorithm')} {str(entry.get('hexdigest'))[:12]}"
    return ("verified", detail) if ok else ("changed since verification", detail)


def _is_bookkeeping(path: Path) -> bool:
    return path.name.startswith(".") or path.name.endswith(PARTIAL_SUFFIXES)


@dataclass(frozen=True)
class _Kind:
    """How one backend's models folder holds its models and their partial downloads."""

    backend: str
    is_model: Callable[[Path], bool]
    has_template: Callable[[Path], bool | None]
    partial: Callable[[Path, Path], LocalModel | None]  # (folder, entry) -> a partial download


def _models(kind: _Kind, directory: Path, used: str) -> list[LocalModel]:
    """The models in `directory`, and the partial downloads beside them, sorted by name."""
    found: list[LocalModel] = []
    for path in sorted(directory.iterdir()) if directory.is_dir() else []:
        if kind.is_model(path):
            state, detail = _state(directory, path.name)
            found.append(
                LocalModel(
                    kind.backend, path.name, files.tree_size(path), state, detail,
                    path.name == used, kind.has_template(path),
                )
            )  # fmt: skip
        elif (partial := kind.partial(directory, path)) is not None:
            found.append(partial)
    return found


def _gguf_partial(directory: Path, path: Path) -> LocalModel | None:
    if path.name.endswith(".part") and not path.name.endswith(".mirror.part"):
        return _partial("llamacpp", directory, path)
    return None


def _snapshot_partial(directory: Path, path: Path) -> LocalModel | None:
    if not (path.is_dir() and path.name.endswith(".partial")):
        return None
    name = path.name.removeprefix(".").removesuffix(".partial")
    return LocalModel("vllm", name, files.tree_size(path), "partial download", "fetch again")


GGUF = _Kind(
    "llamacpp",
    lambda path: path.is_file() and not _is_bookkeeping(path),
    chat_template.gguf_has_template,
    _gguf_partial,
)
SNAPSHOT = _Kind(
    "vllm",
    lambda path: path.is_dir() and not path.name.startswith("."),
    chat_template.folder_has_template,
    _snapshot_partial,
)


def gguf_models(settings: Settings) -> list[LocalModel]:
    return _models(GGUF, Path(settings.gguf_dir), settings.model_path.removeprefix("/models/"))


def hf_models(settings: Settings) -> list[LocalModel]:
    return _models(SNAPSHOT, Path(settings.hf_dir), settings.model_name.removeprefix("/models/"))


def _partial(backend: str, directory: Path, path: Path) -> LocalModel:
    name = path.name.removesuffix(".part")
    expected = Partial(directory / name).read_meta().get("size")
    of = f"of {human_size(expected)}; " if isinstance(expected, int) else ""
    return LocalModel(backend, name, path.stat().st_size, "partial download", f"{of}fetch again")


def report(settings: Settings) -> str:
    """The `invoke models` table: both folders, each model's size and state, the one in use."""
    lines: list[str] = []
    sections = (
        ("llamacpp", Path(settings.gguf_dir), f"MODEL_PATH={settings.model_path}", gguf_models),
        ("vllm", Path(settings.hf_dir), f"MODEL_NAME={settings.model_name}", hf_models),
    )
    for backend, directory, setting, find in sections:
        models = find(settings)
        lines.append(f"{backend} models in {paths.shown(directory)} ({setting})")
        width = max((len(m.name) for m in models), default=0)
        for m in models:
            mark = "*" if m.in_use else " "
            detail = f" ({m.detail})" if m.detail else ""
            size = human_size(m.size)
            chat = f"; {chat_template.shown(m.chat)}" if m.chat is not None else ""
            lines.append(f"  {mark} {m.name:<{width}}  {size:>10}  {m.state}{detail}{chat}")
        if not models:
            lines.append("    (none)")
        if not any(m.in_use for m in models):
            used = setting.split("=", 1)[1].removeprefix("/models/")
            flag = "" if backend == "llamacpp" else " --backend vllm"
            lines.append(
                f"    {setting} is not here ({paths.shown(directory / used)}): "
                f"run `invoke fetch-model{flag}` or set {setting.split('=')[0]}"
            )
    lines.append(f"* = the model the settings use; LLM_BACKEND={settings.llm_backend}")
    return "\n".join(lines)
