"""Each llama.cpp server flavor, for real, over its OpenAI-compatible API."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

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
