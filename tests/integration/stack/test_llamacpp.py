"""Each llama.cpp server flavor, for real, over its OpenAI-compatible API."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.integration.conftest import LLAMA_FLAVORS
from tests.support.containers import LlamaCppContainer

pytestmark = pytest.mark.integration


@pytest.fixture
def client(llama_server: LlamaCppContainer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=llama_server.base_url, timeout=60) as client:
        yield client


def test_lists_the_model(client: httpx.Client) -> None:
    response = client.get("/v1/models")
    response.raise_for_status()
    assert [model["id"] for model in response.json()["data"]] == ["tiny-llama"]


def test_completes_a_prompt(client: httpx.Client) -> None:
    response = client.post(
        "/v1/completions",
        json={"model": "tiny-llama", "prompt": "Hello", "max_tokens": 8, "temperature": 0},
    )
    response.raise_for_status()
    body = response.json()
    assert body["usage"]["completion_tokens"] > 0
    assert isinstance(body["choices"][0]["text"], str)


def test_health_route_matches_the_flavor(
    llama_server: LlamaCppContainer, client: httpx.Client
) -> None:
    """llama-server has a real /health; llama-cpp-python has none, hence the healthcheck script."""
    status = client.get("/health").status_code
    assert status == (200 if llama_server.flavor == "llama-server" else 404)


def test_healthcheck_script_passes_once_ready(llama_server: LlamaCppContainer) -> None:
    result = llama_server.exec(["kc-llm-health"])
    assert result.exit_code == 0, result.output


# --- with an API key, as the stack runs them ----------------------------------------------------

COMPLETION = {"model": "tiny-llama", "prompt": "Hello", "max_tokens": 4, "temperature": 0}


@pytest.fixture(scope="module", params=LLAMA_FLAVORS)
def keyed_server(
    request: pytest.FixtureRequest,
    stack_images: dict[str, str],
    tiny_model: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[LlamaCppContainer]:
    """Each flavor with a key file, on one CPU's quota (the machines here have two cores)."""
    key_file = tmp_path_factory.mktemp("key") / "llm_api_key"
    key_file.write_text(secrets.token_urlsafe(24))
    key_file.chmod(0o644)  # the server runs as an unprivileged user
    container = LlamaCppContainer(
        stack_images["LLAMACPP_IMAGE"], request.param, tiny_model.parent, tiny_model.name,
        key_file=key_file, nano_cpus=1_000_000_000,
    )  # fmt: skip
    with container:
        yield container


def test_a_request_without_the_key_from_a_foreign_origin_gets_401_and_no_answer(
    keyed_server: LlamaCppContainer,
) -> None:
    refused = httpx.post(
        f"{keyed_server.base_url}/v1/completions", json=COMPLETION, timeout=60,
        headers={"Origin": "http://attacker.example"},
    )  # fmt: skip
    assert refused.status_code == 401
    assert "choices" not in refused.text


def test_a_request_with_the_key_is_answered(keyed_server: LlamaCppContainer) -> None:
    answered = httpx.post(
        f"{keyed_server.base_url}/v1/completions", json=COMPLETION, timeout=60,
        headers={"Authorization": f"Bearer {keyed_server.key}", "Origin": "http://a.example"},
    )  # fmt: skip
    assert answered.status_code == 200
    assert answered.json()["usage"]["completion_tokens"] > 0


def test_a_wrong_key_gets_401(keyed_server: LlamaCppContainer) -> None:
    refused = httpx.get(
        f"{keyed_server.base_url}/v1/models", timeout=60,
        headers={"Authorization": f"Bearer {keyed_server.key}x"},
    )  # fmt: skip
    assert refused.status_code == 401


def test_the_healthcheck_passes_with_the_key(keyed_server: LlamaCppContainer) -> None:
    result = keyed_server.exec(["kc-llm-health"])
    assert result.exit_code == 0, result.output


def test_the_key_is_neither_in_the_configuration_nor_on_a_command_line(
    keyed_server: LlamaCppContainer,
) -> None:
    attrs = keyed_server.get_wrapped_container().attrs
    assert keyed_server.key not in str(attrs["Config"]["Env"])
    processes = keyed_server.exec(["sh", "-c", "cat /proc/[0-9]*/cmdline | tr '\\0' ' '"])
    assert keyed_server.key not in processes.output.decode()


def test_threads_follow_the_cpu_quota(keyed_server: LlamaCppContainer) -> None:
    """On one CPU's quota, one decoding thread, though the container sees every core."""
    assert keyed_server.exec(["nproc"]).output.decode().strip() != "1"
    if keyed_server.flavor == "llama-server":
        assert "n_threads = 1" in keyed_server.logs_text(tail=400)
    else:
        command = keyed_server.exec(["sh", "-c", "tr '\\0' ' ' < /proc/1/cmdline"])
        assert "--n_threads 1 " in command.output.decode()
