"""`invoke fetch-model`: get a model the stack can serve, verified, and point `.env` at it.

The request becomes a plan first (kcdev.models.plan: no network, no files). A single file is then
tried from its sources in order (kcdev.models.sources: the Hub, then the preset's mirrors) under
one lock, each download resumable and verified before it is moved into place; a snapshot is
gathered in a hidden staging folder and renamed into place only when every file is verified. `.env`
changes only after success, so a failure leaves the previous model in use. A dry run describes the
plan instead (kcdev.models.describe).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from pathlib import Path

from kcdev import paths, tls
from kcdev.console import Say, human_size
from kcdev.envfile import EnvFileError, set_value
from kcdev.errors import UserError
from kcdev.models import folders, installed, pypi_mirror
from kcdev.models.catalog import Catalog, load_catalog
from kcdev.models.describe import describe
from kcdev.models.digest import Digest, hash_file
from kcdev.models.download import Downloader, SourceFailed, ensure_free_space, make_pool
from kcdev.models.hub import Hub, HubConfig, HubFile, select_snapshot
from kcdev.models.partial import Partial
from kcdev.models.plan import FetchRequest, FilePlan, HubSource, Plan, SnapshotPlan, plan_fetch
from kcdev.models.sources import Sources, could_not_fetch
from kcdev.settings import Settings

DOWNLOAD_CACHE = paths.CACHE_DIR / "downloads"


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
        self.downloader = downloader or Downloader(make_pool(tls.ca_bundle(settings)), say=say)
        self.sources = Sources(
            hub or Hub(HubConfig.from_environ(environ)), self.downloader, pypi_index, cache_dir
        )

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
            folders.check_writable(plan.dest.parent, plan.setting)
            for line in describe(plan, self.sources, env_file, no_env):
                self.say(line)
            return
        folders.ensure_writable(plan.dest.parent, plan.setting)
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
        if plan.digest is None:  # first: a repo or file that is not there stops here
            plan = self._with_hub_checksum(plan)
        digest = plan.digest
        assert digest is not None
        with self.downloader.lock(plan.dest):
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
        failures: list[tuple[str, SourceFailed]] = []
        for i, source in enumerate(plan.sources):
            name = self.sources.name(source)
            try:
                self.sources.fetch(source, plan.dest, digest, plan.size)
                return name
            except SourceFailed as exc:
                failures.append((name, exc))
                if i + 1 < len(plan.sources):
                    self.say(f"{name}: {exc}; trying {self.sources.name(plan.sources[i + 1])}")
        if len(failures) == 1:
            reason = str(failures[0][1])
        else:
            reason = "; ".join(f"{name}: {exc}" for name, exc in failures)
        raise UserError(f"could not fetch {plan.what}: {reason}")

    def _with_hub_checksum(self, plan: FilePlan) -> FilePlan:
        source = plan.sources[0]
        assert isinstance(source, HubSource)
        with could_not_fetch(plan.what):
            found = self.sources.hub.file(source.repo, source.path, source.revision)
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

    # --- a snapshot ----------------------------------------------------------------------------

    def _fetch_snapshot(self, plan: SnapshotPlan) -> None:
        hub = self.sources.hub
        with could_not_fetch(plan.what):
            commit, files = hub.snapshot(plan.repo, plan.revision)
        chosen = select_snapshot(files, plan.repo, plan.patterns, plan.allow_pickle)
        hf_dir, name = plan.dest.parent, plan.dest.name
        staging = hf_dir / f".{name}.partial"
        with self.downloader.lock(plan.dest):
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
        installed.record_folder(
            hf_dir, name, plan.repo, commit, [(f.path, f.digest) for f in chosen]
        )
        self.say(
            f"fetched {plan.what} at {commit[:12]} into {paths.shown(plan.dest)} "
            f"({len(chosen)} files, {human_size(total)}, each verified)"
        )

    def _fetch_snapshot_file(self, plan: SnapshotPlan, f: HubFile, staging: Path) -> None:
        with could_not_fetch(plan.what):
            self.sources.hub_download(
                f.url, staging / f.path, f.digest, f.size, plan.repo, f.path, label=f.path
            )

    # --- after success -------------------------------------------------------------------------

    def _point_env(self, plan: Plan, env_file: Path) -> None:
        """Point `.env` at the model; when it cannot be written, the model stays and the line says
        what to set by hand."""
        key, value = plan.env
        try:
            change = set_value(env_file, key, value)
        except (OSError, EnvFileError) as exc:
            reason = exc.problem if isinstance(exc, EnvFileError) else exc.strerror or str(exc)
            raise UserError(
                f"{paths.shown(plan.dest)} is in place, but {paths.shown(env_file)} cannot be "
                f"written ({reason}): set {key}={value} in it by hand"
            ) from None
        self.say(change.describe(env_file))
        if key in self.environ and self.environ[key] != value:
            self.say(
                f"note: {key}={self.environ[key]} in the environment overrides {env_file.name}"
            )
        if self.settings.llm_backend != plan.backend:
            self.say(
                f"note: LLM_BACKEND={self.settings.llm_backend}: serve this model with "
                f"`invoke up --backend {plan.backend}`"
            )


def _remove_all_but(folder: Path, keep: set[str]) -> None:
    """Drop what an older, different attempt left in the staging folder."""
    for path in sorted(folder.rglob("*"), reverse=True):
        rel = path.relative_to(folder).as_posix()
        if path.is_file() and rel not in keep:
            path.unlink()
        elif path.is_dir() and not any(path.iterdir()):
            path.rmdir()
