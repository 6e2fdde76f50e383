"""kcdev.models.hub through huggingface_hub, against a local Hub stand-in reached as HF_ENDPOINT."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator

import huggingface_hub.constants
import pytest

from kcdev.errors import UserError
from kcdev.models.digest import Digest
from kcdev.models.download import SourceFailed
from kcdev.models.hub import (
    DEFAULT_ENDPOINT,
    Hub,
    HubConfig,
    HubFile,
    check_repo_id,
    select_snapshot,
)
from tests.support.http_server import LocalServer, loopback_only
from tests.support.hub_standin import HubStandin, git_blob_id

WEIGHTS = b"\x01" * 5000
CONFIG = b'{"model_type": "llama"}'


@pytest.fixture(autouse=True)
def only_this_machine(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    refused = loopback_only(monkeypatch)
    # huggingface_hub's user-agent code fetches an "agent harness" list from its import-time
    # endpoint (huggingface.co) unless telemetry is off: keep it off, nothing may leave this host.
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_DISABLE_TELEMETRY", True)
    yield
    assert refused == []


@pytest.fixture
def standin() -> Iterator[HubStandin]:
    with LocalServer() as server:
        hub = HubStandin(server)
        hub.add_repo("owner/model", {"config.json": CONFIG, "model.safetensors": WEIGHTS})
        yield hub


def test_config_reads_endpoint_token_and_offline_from_the_environment() -> None:
    environ = {"HF_ENDPOINT": "http://127.0.0.1:9/", "HF_TOKEN": "t", "HF_HUB_OFFLINE": "1"}
    config = HubConfig.from_environ(environ, stored_token=lambda: None)
    assert config == HubConfig("http://127.0.0.1:9", "t", offline=True)


def test_config_defaults_to_the_public_hub_and_a_stored_token() -> None:
    config = HubConfig.from_environ({}, stored_token=lambda: "stored")
    assert config == HubConfig(DEFAULT_ENDPOINT, "stored", offline=False)


def test_a_malformed_endpoint_is_refused_in_one_line() -> None:
    with pytest.raises(UserError, match="HF_ENDPOINT="):
        HubConfig.from_environ({"HF_ENDPOINT": "huggingface.co"}, stored_token=lambda: None)


@pytest.mark.parametrize("good", ["owner/name", "Qwen/Qwen2.5-0.5B-Instruct", "a_b/c.d-e"])
def test_repo_ids_as_the_hub_spells_them_are_accepted(good: str) -> None:
    assert check_repo_id(good) == good


@pytest.mark.parametrize(
    "bad", ["name", "a/b/c", "/name", "owner/", "own er/name", "owner/na--me", "owner/-x", ""]
)
def test_malformed_repo_ids_are_refused_in_one_line(bad: str) -> None:
    with pytest.raises(UserError, match="is not a Hub repo id: use OWNER/NAME"):
        check_repo_id(bad)


def test_file_metadata_gives_the_lfs_sha256_and_size(standin: HubStandin) -> None:
    found = Hub(standin.config()).file("owner/model", "model.safetensors", "main")
    assert found.size == len(WEIGHTS)
    assert found.digest == Digest.sha256(hashlib.sha256(WEIGHTS).hexdigest())
    assert found.url == f"{standin.endpoint}/owner/model/resolve/main/model.safetensors"


def test_small_files_are_checked_by_their_git_blob_id(standin: HubStandin) -> None:
    found = Hub(standin.config()).file("owner/model", "config.json", "main")
    assert found.digest == Digest("git-sha1", git_blob_id(CONFIG))


@pytest.mark.parametrize(
    ("repo", "path", "revision", "message"),
    [
        ("owner/missing", "config.json", "main", "owner/missing not found on .* set HF_TOKEN"),
        ("owner/model", "absent.gguf", "main", "absent.gguf is not in owner/model"),
        ("owner/model", "config.json", "v9", "owner/model has no revision 'v9'"),
    ],
)
def test_lookups_that_find_nothing_say_what_is_missing(
    standin: HubStandin, repo: str, path: str, revision: str, message: str
) -> None:
    with pytest.raises(SourceFailed, match=message) as caught:
        Hub(standin.config()).file(repo, path, revision)
    assert "\n" not in str(caught.value)


def test_snapshot_pins_every_file_to_the_commit(standin: HubStandin) -> None:
    commit, files = Hub(standin.config()).snapshot("owner/model", "main")
    assert commit == standin.repos["owner/model"].commit
    assert sorted(f.path for f in files) == ["config.json", "model.safetensors"]
    assert all(f"/resolve/{commit}/" in f.url for f in files)


def test_offline_never_contacts_the_hub(standin: HubStandin) -> None:
    hub = Hub(standin.config(offline=True))
    with pytest.raises(SourceFailed, match="HF_HUB_OFFLINE is set"):
        hub.file("owner/model", "config.json", "main")
    with pytest.raises(SourceFailed, match="HF_HUB_OFFLINE is set"):
        hub.snapshot("owner/model", "main")
    assert standin.server.log == []


def test_an_unreachable_hub_fails_in_one_line() -> None:
    with LocalServer() as gone:
        endpoint = gone.base_url
    hub = Hub(HubConfig(endpoint=endpoint))
    with pytest.raises(
        SourceFailed, match=r"cannot reach the Hub at http://127\.0\.0\.1"
    ) as caught:
        hub.file("owner/model", "config.json", "main")
    assert "\n" not in str(caught.value)


def test_the_token_goes_with_downloads_only_when_there_is_one(standin: HubStandin) -> None:
    assert Hub(standin.config()).auth_headers() == {}
    assert Hub(standin.config(token="s3")).auth_headers() == {"Authorization": "Bearer s3"}


@pytest.mark.parametrize("status", [401, 403])
def test_refused_downloads_say_a_token_is_needed_and_the_repo_may_be_gated(status: int) -> None:
    message = str(Hub(HubConfig()).explain_status(status, "google/gemma", "model.gguf"))
    assert f"HTTP {status}" in message
    assert "set HF_TOKEN" in message
    assert "gated" in message


def test_missing_downloads_say_not_found() -> None:
    assert "not found" in str(Hub(HubConfig()).explain_status(404, "a/b", "x.gguf"))


def hub_file(path: str) -> HubFile:
    return HubFile(path, 1, Digest("git-sha1", "0" * 40), f"http://127.0.0.1/{path}")


def test_a_snapshot_takes_config_tokenizer_and_safetensors_only() -> None:
    files = [hub_file(p) for p in (
        "config.json", "tokenizer.json", "model-00001-of-00002.safetensors",
        "model-00002-of-00002.safetensors", "model.safetensors.index.json", "README.md",
        "pytorch_model.bin", "onnx/model.safetensors", "training_args.bin",
    )]  # fmt: skip
    chosen = [f.path for f in select_snapshot(files, "o/m")]
    assert chosen == [
        "config.json",
        "model-00001-of-00002.safetensors",
        "model-00002-of-00002.safetensors",
        "model.safetensors.index.json",
        "tokenizer.json",
    ]


def test_pickled_only_weights_are_refused_unless_allowed() -> None:
    files = [hub_file(p) for p in ("config.json", "tokenizer.json", "pytorch_model.bin")]
    with pytest.raises(UserError, match=r"only pickled \.bin weights.*--allow-pickle"):
        select_snapshot(files, "o/m")
    chosen = [f.path for f in select_snapshot(files, "o/m", allow_pickle=True)]
    assert chosen == ["config.json", "pytorch_model.bin", "tokenizer.json"]


def test_a_repo_without_config_or_weights_is_no_vllm_model() -> None:
    with pytest.raises(UserError, match=r"no config\.json"):
        select_snapshot([hub_file("model.safetensors")], "o/m")
    with pytest.raises(UserError, match="no safetensors weights"):
        select_snapshot([hub_file("config.json")], "o/m")
