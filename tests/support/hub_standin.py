"""A stand-in for the Hugging Face Hub, on a LocalServer, reached through HF_ENDPOINT.

It answers just what huggingface_hub calls for kcdev.models.hub (model_info with file metadata, the
paths-info lookup) and the `/resolve/` downloads, with the Hub's shapes and error headers: LFS files
redirect to a CDN path as on the real Hub, gated repos answer 401 without a token and 403 with the
wrong one, unknown repos, revisions and files answer 404 with the Hub's X-Error-Code.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from urllib.parse import parse_qs, unquote

from kcdev.models.hub import HubConfig
from tests.support.http_server import LocalServer, Reply, Request, Resource

LFS_SUFFIXES = (".safetensors", ".gguf", ".bin")


def git_blob_id(content: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(content) + content).hexdigest()


@dataclass
class StandinRepo:
    repo_id: str
    files: dict[str, bytes]
    commit: str = "c0ffee" + "0" * 34
    gated_token: str | None = None  # set: downloads need `Authorization: Bearer <it>`
    lfs: set[str] = field(default_factory=set)

    def is_lfs(self, path: str) -> bool:
        return path in self.lfs or path.endswith(LFS_SUFFIXES)

    def entry(self, path: str) -> dict[str, object]:
        content = self.files[path]
        info: dict[str, object] = {"type": "file", "path": path, "size": len(content),
                                   "oid": git_blob_id(content)}  # fmt: skip
        if self.is_lfs(path):
            sha = hashlib.sha256(content).hexdigest()
            info["lfs"] = {"oid": sha, "size": len(content), "pointerSize": 134}
        return info

    def sibling(self, path: str) -> dict[str, object]:
        entry = self.entry(path)
        sibling: dict[str, object] = {"rfilename": path, "size": entry["size"],
                                      "blobId": entry["oid"]}  # fmt: skip
        if "lfs" in entry:
            lfs = entry["lfs"]
            assert isinstance(lfs, dict)
            sibling["lfs"] = {"sha256": lfs["oid"], "size": lfs["size"], "pointerSize": 134}
        return sibling


class HubStandin:
    """Repos served at `endpoint`; `config()` is the HubConfig a test hands to the Hub."""

    def __init__(self, server: LocalServer) -> None:
        self.server = server
        self.repos: dict[str, StandinRepo] = {}
        self.cdn: dict[str, Resource] = {}
        repo = r"[^/]+/[^/]+"
        server.route(rf"/api/models/({repo})(/revision/[^/]+)?", self._model_info)
        server.route(rf"/api/models/({repo})/paths-info/[^/]+", self._paths_info)
        server.route(rf"/({repo})/resolve/[^/]+/.+", self._resolve)
        server.route(r"/cdn/[0-9a-f]{64}", self._cdn)

    @property
    def endpoint(self) -> str:
        return self.server.base_url

    def config(self, token: str | None = None, offline: bool = False) -> HubConfig:
        return HubConfig(endpoint=self.endpoint, token=token, offline=offline)

    def add_repo(self, repo_id: str, files: dict[str, bytes], **options: object) -> StandinRepo:
        repo = StandinRepo(repo_id, dict(files), **options)  # type: ignore[arg-type]
        self.repos[repo_id] = repo
        for path in repo.files:
            if repo.is_lfs(path):
                sha = hashlib.sha256(repo.files[path]).hexdigest()
                self.cdn[sha] = Resource(repo.files[path], etag=f'"{sha}"')
        return repo

    def cdn_resource(self, content: bytes) -> Resource:
        """The CDN copy of an LFS file: tests make it misbehave (cut, no Range, ...)."""
        return self.cdn[hashlib.sha256(content).hexdigest()]

    # --- routes ----------------------------------------------------------------------------------

    def _repo(self, path: str) -> StandinRepo | Reply:
        parts = unquote(path.split("?", 1)[0]).split("/")
        repo_id = "/".join(parts[3:5]) if parts[1] == "api" else "/".join(parts[1:3])
        if repo_id not in self.repos:
            return Reply.json({"error": "Repo not found"}, 404, {"X-Error-Code": "RepoNotFound"})
        return self.repos[repo_id]

    def _revision_ok(self, repo: StandinRepo, revision: str) -> bool:
        return revision in ("main", repo.commit)

    def _model_info(self, request: Request) -> Reply:
        repo = self._repo(request.path)
        if isinstance(repo, Reply):
            return repo
        path = request.path.split("?", 1)[0]
        revision = unquote(path.split("/revision/", 1)[1]) if "/revision/" in path else "main"
        if not self._revision_ok(repo, revision):
            return _revision_not_found()
        siblings = [repo.sibling(p) for p in sorted(repo.files)]
        gated = "auto" if repo.gated_token else False
        info = {"id": repo.repo_id, "sha": repo.commit, "gated": gated, "siblings": siblings}
        return Reply.json(info)

    def _paths_info(self, request: Request) -> Reply:
        repo = self._repo(request.path)
        if isinstance(repo, Reply):
            return repo
        revision = unquote(request.path.split("?", 1)[0].rsplit("/", 1)[1])
        if not self._revision_ok(repo, revision):
            return _revision_not_found()
        asked = parse_qs(request.body.decode()).get("paths", [])
        return Reply.json([repo.entry(p) for p in asked if p in repo.files])

    def _resolve(self, request: Request) -> Reply:
        repo = self._repo(request.path)
        if isinstance(repo, Reply):
            return repo
        rest = unquote(request.path.split("?", 1)[0]).split("/resolve/", 1)[1]
        revision, path = rest.split("/", 1)
        if repo.gated_token is not None:
            given = request.headers.get("authorization")
            if given != f"Bearer {repo.gated_token}":
                status = 401 if given is None else 403
                return Reply(status, b"gated", {"X-Error-Code": "GatedRepo"})
        if not self._revision_ok(repo, revision):
            return _revision_not_found()
        if path not in repo.files:
            return Reply(404, b"", {"X-Error-Code": "EntryNotFound"})
        if repo.is_lfs(path):
            return Reply.redirect(f"/cdn/{hashlib.sha256(repo.files[path]).hexdigest()}")
        return Reply(resource=Resource(repo.files[path], etag=f'"{git_blob_id(repo.files[path])}"'))

    def _cdn(self, request: Request) -> Reply:
        sha = request.path.split("?", 1)[0].rsplit("/", 1)[1]
        if sha not in self.cdn:
            return Reply(404, b"")
        return Reply(resource=self.cdn[sha])


def _revision_not_found() -> Reply:
    return Reply.json({"error": "Revision not found"}, 404, {"X-Error-Code": "RevisionNotFound"})
