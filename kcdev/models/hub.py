"""The Hugging Face Hub through huggingface_hub: file metadata (size, sha256) and download URLs.

huggingface_hub does the talking, so the Hub's own rules apply: HF_ENDPOINT picks the server (a
mirror, or a local stand-in in tests), HF_TOKEN authenticates, HF_HUB_OFFLINE keeps us off the
network. The bytes themselves go through kcdev.models.download, so resume, lock, verification and
progress are the same for every source; the token goes with them as an Authorization header, which
urllib3 drops when the Hub redirects to its CDN on another host.
"""

from __future__ import annotations

import fnmatch
import os
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TypeVar

from huggingface_hub import HfApi, RepoFile, get_token, hf_hub_url
from huggingface_hub.errors import (
    EntryNotFoundError,
    GatedRepoError,
    HfHubHTTPError,
    OfflineModeIsEnabled,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)

from kcdev.errors import UserError
from kcdev.models.digest import Digest
from kcdev.models.download import SourceFailed
from kcdev.models.urls import check_url, redact

T = TypeVar("T")

# The Hub's rule for names (huggingface_hub's validate_repo_id), with the owner required.
_REPO_PART = r"[A-Za-z0-9](?:[\w.-]{0,94}[A-Za-z0-9_])?"
_REPO_ID = re.compile(f"{_REPO_PART}/{_REPO_PART}")

DEFAULT_ENDPOINT = "https://huggingface.co"
METADATA_TIMEOUT = 30.0

# What vLLM needs from a repo's top level: configuration, tokenizer, safetensors weights.
SNAPSHOT_PATTERNS = (
    "config.json",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "tokenizer.model",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.json",
    "vocab.txt",
    "merges.txt",
    "chat_template.jinja",
    "chat_template.json",
    "preprocessor_config.json",
    "*.safetensors",
    "*.safetensors.index.json",
)
# Pickled weights run code when loaded: only with --allow-pickle, and only without safetensors.
PICKLE_PATTERNS = ("pytorch_model*.bin", "pytorch_model.bin.index.json")


def _is_true(value: str | None) -> bool:
    return (value or "").strip().upper() in {"1", "ON", "YES", "TRUE"}  # huggingface_hub's rule


def check_repo_id(repo: str) -> str:
    """OWNER/NAME as the Hub spells it, or a one-line error before any network traffic."""
    if not _REPO_ID.fullmatch(repo) or "--" in repo or ".." in repo:
        raise UserError(
            f"--repo={repo!r} is not a Hub repo id: use OWNER/NAME (letters, digits, '-', '_', '.')"
        )
    return repo


def check_revision(revision: str) -> str:
    if not revision.strip() or any(c.isspace() for c in revision):
        raise UserError(f"--revision={revision!r} is not a branch, tag or commit")
    return revision


@dataclass(frozen=True)
class HubConfig:
    """Where the Hub is and who we are there, read when needed (not when huggingface_hub loads)."""

    endpoint: str = DEFAULT_ENDPOINT
    token: str | None = None
    offline: bool = False

    @classmethod
    def from_environ(
        cls,
        environ: Mapping[str, str] = os.environ,
        stored_token: Callable[[], str | None] = get_token,
    ) -> HubConfig:
        """HF_ENDPOINT, HF_TOKEN (else the token `hf auth login` stored) and HF_HUB_OFFLINE."""
        endpoint = check_url(environ.get("HF_ENDPOINT") or DEFAULT_ENDPOINT, "HF_ENDPOINT")
        return cls(
            endpoint=endpoint.rstrip("/"),
            token=environ.get("HF_TOKEN") or stored_token(),
            offline=_is_true(environ.get("HF_HUB_OFFLINE")),
        )


@dataclass(frozen=True)
class HubFile:
    """One file of a repo: where to download it and what it must hash to."""

    path: str
    size: int
    digest: Digest
    url: str


class Hub:
    """Metadata and URLs of one Hub (HubConfig); errors come back as one line each."""

    def __init__(self, config: HubConfig) -> None:
        self.config = config
        # token=False: never fall back to a stored token the config did not choose.
        self.api = HfApi(endpoint=config.endpoint, token=config.token or False)

    def ensure_online(self) -> None:
        if self.config.offline:
            raise SourceFailed("HF_HUB_OFFLINE is set: not contacting the Hub")

    def url(self, repo: str, path: str, revision: str) -> str:
        return hf_hub_url(repo, path, revision=revision, endpoint=self.config.endpoint)

    def auth_headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.config.token}"} if self.config.token else {}

    def file(self, repo: str, path: str, revision: str) -> HubFile:
        """One file's size and checksum, from the Hub's LFS metadata (git blob id otherwise)."""
        self.ensure_online()
        found = self._call(
            lambda: self.api.get_paths_info(repo, [path], revision=revision), repo, revision
        )
        for entry in found:
            if isinstance(entry, RepoFile) and entry.path == path:
                return self._hub_file(repo, revision, path, entry.size, entry.lfs, entry.blob_id)
        raise SourceFailed(f"{path} is not in {repo} at revision {revision} (404)")

    def snapshot(self, repo: str, revision: str) -> tuple[str, list[HubFile]]:
        """The commit `revision` points at, and every file of the repo, pinned to that commit."""
        self.ensure_online()
        info = self._call(
            lambda: self.api.model_info(
                repo, revision=revision, files_metadata=True, timeout=METADATA_TIMEOUT
            ),
            repo,
            revision,
        )
        commit = info.sha or revision
        files = [
            self._hub_file(repo, commit, s.rfilename, s.size, s.lfs, s.blob_id)
            for s in info.siblings or []
            if s.size is not None and (s.lfs is not None or s.blob_id is not None)
        ]
        return commit, files

    def explain_status(self, status: int, repo: str, what: str) -> SourceFailed:
        """A download's error status in the Hub's terms."""
        if status in (401, 403):
            return SourceFailed(
                f"the Hub refused {what} (HTTP {status}): a token is needed (set HF_TOKEN); {repo} "
                "may be gated: accept its terms on its Hub page with that account"
            )
        if status == 404:
            return SourceFailed(f"{what} not found on the Hub (HTTP 404)")
        return SourceFailed(f"the Hub answered HTTP {status} for {what}")

    def _hub_file(
        self,
        repo: str,
        revision: str,
        path: str,
        size: int,
        lfs: Mapping[str, object] | None,
        blob_id: str | None,
    ) -> HubFile:
        if lfs is not None:
            digest = Digest.sha256(str(lfs["sha256"]))
        elif blob_id:
            digest = Digest("git-sha1", blob_id)
        else:
            raise SourceFailed(f"the Hub gave no checksum for {repo}/{path}")
        return HubFile(path, int(size), digest, self.url(repo, path, revision))

    def _call(self, call: Callable[[], T], repo: str, revision: str) -> T:
        try:
            return call()
        except GatedRepoError:
            raise SourceFailed(
                f"{repo} is gated: accept its terms on its Hub page, then set HF_TOKEN to a token "
                "of that account"
            ) from None
        except RepositoryNotFoundError:
            raise SourceFailed(
                f"{repo} not found on {redact(self.config.endpoint)} "
                "(or it is private: set HF_TOKEN)"
            ) from None
        except RevisionNotFoundError:
            raise SourceFailed(f"{repo} has no revision {revision!r}") from None
        except EntryNotFoundError as exc:
            raise SourceFailed(f"not found in {repo}: {exc}") from None
        except HfHubHTTPError as exc:
            status = exc.response.status_code if exc.response is not None else 0
            raise self.explain_status(status, repo, f"the metadata of {repo}") from None
        except OfflineModeIsEnabled:
            raise SourceFailed("HF_HUB_OFFLINE is set: not contacting the Hub") from None
        except Exception as exc:
            # huggingface_hub's HTTP library has changed across versions (requests, httpx,
            # httpx2): its connection errors share no base class to name here.
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            raise SourceFailed(
                f"cannot reach the Hub at {redact(self.config.endpoint)}: "
                f"{type(exc).__name__} {first}"
            ) from None


def select_snapshot(
    files: Sequence[HubFile],
    repo: str,
    patterns: Iterable[str] = SNAPSHOT_PATTERNS,
    allow_pickle: bool = False,
) -> list[HubFile]:
    """The files a vLLM model folder needs; refuses pickled-only weights unless allowed."""
    top = [f for f in files if "/" not in f.path]
    chosen = [f for f in top if _matches(f.path, patterns)]
    if not any(f.path == "config.json" for f in chosen):
        raise UserError(f"{repo} has no config.json: not a Hugging Face transformers model")
    if not any(f.path.endswith(".safetensors") for f in chosen):
        pickled = [f for f in top if _matches(f.path, PICKLE_PATTERNS)]
        if not pickled:
            raise UserError(f"{repo} has no safetensors weights: vLLM cannot load it")
        if not allow_pickle:
            raise UserError(
                f"{repo} has only pickled .bin weights, which can run code when loaded: "
                "pass --allow-pickle if you trust it"
            )
        chosen += pickled
    return sorted(chosen, key=lambda f: f.path)


def _matches(path: str, patterns: Iterable[str]) -> bool:
    return any(fnmatch.fnmatchcase(path, pattern) for pattern in patterns)
