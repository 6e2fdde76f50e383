"""What fetch-model is asked for, turned into a plan: the sources of one file, or a Hub snapshot.

Planning reads only the command line, the settings and the preset catalogue: any bad or
conflicting input stops here in one line, before any network traffic or any file is touched.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from urllib.parse import unquote, urlsplit

from kcdev.backends import LLM_BACKENDS
from kcdev.errors import UserError
from kcdev.models.catalog import Catalog, Mirror
from kcdev.models.digest import Digest, check_sha256
from kcdev.models.hub import SNAPSHOT_PATTERNS, check_repo_id, check_revision
from kcdev.models.urls import check_url, redact
from kcdev.settings import Settings


@dataclass(frozen=True)
class FetchRequest:
    """What the user asked for, as given on the command line (None: not given)."""

    preset: str | None = None
    repo: str | None = None
    file: str | None = None
    revision: str | None = None
    url: str | None = None
    sha256: str | None = None
    backend: str | None = None
    name: str | None = None
    allow_pickle: bool = False


@dataclass(frozen=True)
class HubSource:
    repo: str
    path: str
    revision: str


@dataclass(frozen=True)
class UrlSource:
    url: str  # may carry credentials: show it only through urls.redact


# Where one file can come from: the Hub, a URL given on the command line, or a preset's mirror (a
# new mirror kind in catalog.Mirror is one here too; mypy then points at the branches it needs in
# kcdev.models.sources).
Source = HubSource | UrlSource | Mirror


@dataclass(frozen=True)
class FilePlan:
    """One file for llama.cpp, from the first of its sources that delivers it."""

    what: str
    dest: Path
    digest: Digest | None  # None until the Hub's metadata gives it (--repo --file)
    size: int | None
    sources: tuple[Source, ...]
    licence: str | None = None
    backend: str = "llamacpp"
    setting: str = "GGUF_DIR"  # the setting that names dest's folder, for messages

    @property
    def env(self) -> tuple[str, str]:
        return "MODEL_PATH", f"/models/{self.dest.name}"


@dataclass(frozen=True)
class SnapshotPlan:
    """A Hub repo's config, tokenizer and weights for vLLM, as one folder."""

    what: str
    repo: str
    revision: str
    patterns: tuple[str, ...]
    allow_pickle: bool
    dest: Path
    licence: str | None = None
    backend: str = "vllm"
    setting: str = "HF_DIR"

    @property
    def env(self) -> tuple[str, str]:
        return "MODEL_NAME", f"/models/{self.dest.name}"


Plan = FilePlan | SnapshotPlan


def default_backend(settings: Settings) -> str:
    return settings.llm_backend if settings.llm_backend in LLM_BACKENDS else "llamacpp"


def check_name(name: str) -> str:
    """A plain file or folder name: it becomes part of a path inside the models folder."""
    if not name or "/" in name or "\\" in name or name.startswith(".") or name.strip() != name:
        raise UserError(f"--name={name!r} must be a plain file or folder name")
    return name


def plan_fetch(request: FetchRequest, settings: Settings, catalog: Catalog) -> Plan:
    """Turn the request into a plan, refusing any bad or conflicting input: no network here."""
    r = request
    if r.backend is not None and r.backend not in LLM_BACKENDS:
        raise UserError(f"--backend={r.backend!r}: use one of {', '.join(LLM_BACKENDS)}")
    if r.name is not None:
        check_name(r.name)
    if sum(x is not None for x in (r.preset, r.repo, r.url)) > 1:
        raise UserError("pass one of --preset, --repo or --url")
    if r.url is not None:
        return _url_plan(r, settings)
    if r.repo is not None:
        return _repo_plan(r, settings)
    if r.file is not None or r.revision is not None or r.sha256 is not None:
        raise UserError("--file, --revision and --sha256 go with --repo or --url, not a preset")
    backend = r.backend or default_backend(settings)
    preset = catalog.get(r.preset) if r.preset else catalog.default_for(backend)
    if r.backend is not None and r.backend != preset.backend:
        raise UserError(f"preset {preset.name} is for {preset.backend}, not {r.backend}")
    if preset.backend == "vllm":
        name = r.name or preset.repo.split("/")[-1]
        return SnapshotPlan(
            f"preset {preset.name} ({preset.repo})", preset.repo, preset.revision,
            preset.patterns or SNAPSHOT_PATTERNS, r.allow_pickle, Path(settings.hf_dir) / name,
            preset.licence,
        )  # fmt: skip
    assert preset.file is not None  # the catalogue checks this for llamacpp presets
    return FilePlan(
        f"preset {preset.name}",
        Path(settings.gguf_dir) / (r.name or preset.file),
        preset.digest,
        preset.size,
        (HubSource(preset.repo, preset.file, preset.revision), *preset.mirrors),
        preset.licence,
    )


def _url_plan(r: FetchRequest, settings: Settings) -> FilePlan:
    url = check_url(r.url or "")
    if r.sha256 is None:
        raise UserError("--url needs --sha256 HEX: every download is verified before it is used")
    digest = Digest.sha256(check_sha256(r.sha256))
    if r.backend == "vllm":
        raise UserError("--url fetches one GGUF file for llamacpp; vllm models come from --repo")
    if r.file is not None or r.revision is not None:
        raise UserError("--file and --revision go with --repo, not --url")
    name = r.name or PurePosixPath(unquote(urlsplit(url).path)).name
    if not name:
        raise UserError(f"cannot tell a file name from {redact(url)}: pass --name")
    check_name(name)
    return FilePlan(f"{name} from {redact(url)}", Path(settings.gguf_dir) / name, digest, None,
                    (UrlSource(url),))  # fmt: skip


def _repo_plan(r: FetchRequest, settings: Settings) -> Plan:
    repo = check_repo_id(r.repo or "")
    revision = check_revision(r.revision or "main")
    backend = r.backend or ("llamacpp" if r.file else default_backend(settings))
    if backend == "vllm":
        if r.file is not None or r.sha256 is not None:
            raise UserError(
                "--file and --sha256 are for one GGUF file (llamacpp); a vllm model is the repo's "
                "snapshot, checked against the Hub's own checksums"
            )
        name = r.name or repo.split("/")[-1]
        return SnapshotPlan(
            repo, repo, revision, SNAPSHOT_PATTERNS, r.allow_pickle, Path(settings.hf_dir) / name
        )
    if not r.file:
        raise UserError(
            "--repo needs --file FILE (the GGUF file in the repo) for llamacpp, "
            "or --backend vllm for a snapshot"
        )
    path = PurePosixPath(r.file)
    if path.is_absolute() or ".." in path.parts:
        raise UserError(f"--file={r.file!r} must be a path inside the repo")
    digest = Digest.sha256(check_sha256(r.sha256)) if r.sha256 else None
    dest = Path(settings.gguf_dir) / (r.name or check_name(path.name))
    return FilePlan(f"{r.file} from {repo}", dest, digest, None,
                    (HubSource(repo, r.file, revision),))  # fmt: skip
