"""The vLLM backend for real, on its CPU build: the image serves a tiny Hugging Face model over the
OpenAI API, and `invoke up --backend=vllm` brings it up and calls it ready only when it serves.

Slow by nature: the image takes about 4 minutes to build the first time, and vLLM about a minute
to start on 2 cores, so the server is started once per session.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support.stack import isolated_stack
from tests.support.vllm_server import VllmCpuContainer

pytestmark = pytest.mark.integration

MODEL = "tiny-llama"


@pytest.fixture
def client(vllm_server: VllmCpuContainer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=vllm_server.base_url, timeout=60) as client:
        yield client


def test_lists_the_model_under_its_folder_name(client: httpx.Client) -> None:
    response = client.get("/v1/models")
    response.raise_for_status()
    assert [model["id"] for model in response.json()["data"]] == [MODEL]


def test_completes_a_prompt(client: httpx.Client) -> None:
    response = client.post(
        "/v1/completions",
        json={
            "model": MODEL, "prompt": "Hello", "max_tokens": 8, "temperature": 0,
            "ignore_eos": True,
        },
    )  # fmt: skip
    response.raise_for_status()
    body = response.json()
    assert body["usage"]["completion_tokens"] == 8
    assert isinstance(body["choices"][0]["text"], str)


def test_chats_through_the_models_template(client: httpx.Client) -> None:
    response = client.post(
        "/v1/chat/completions",
        json={
            "model": MODEL,
            "messages": [{"role": "user", "content": "Summarize: the cat sat on the mat."}],
            "max_tokens": 8,
            "temperature": 0,
        },
    )
    response.raise_for_status()
    body = response.json()
    assert body["choices"][0]["message"]["role"] == "assistant"
    assert body["usage"]["completion_tokens"] > 0
    # The template ("user: ...\nassistant: ") counts in the prompt, beyond the message's bytes.
    assert body["usage"]["prompt_tokens"] > len("Summarize: the cat sat on the mat.")


def test_streams_a_completion(client: httpx.Client) -> None:
    chunks = []
    with client.stream(
        "POST",
        "/v1/completions",
        json={"model": MODEL, "prompt": "Hi", "max_tokens": 4, "stream": True, "ignore_eos": True},
    ) as response:
        response.raise_for_status()
        chunks = [line for line in response.iter_lines() if line.startswith("data: ")]
    assert chunks[-1] == "data: [DONE]"
    assert len(chunks) >= 2


def test_runs_unprivileged_and_its_healthcheck_passes(vllm_server: VllmCpuContainer) -> None:
    assert vllm_server.exec(["id", "-u"]).output.decode().strip() == "10001"
    result = vllm_server.exec(["kc-vllm-health"])
    assert result.exit_code == 0, result.output


def test_invoke_up_serves_the_model_then_down_removes_it(
    vllm_cpu_image: str, tiny_hf_model: Path
) -> None:
    hf_dir = tiny_hf_model.parent
    with isolated_stack(
        hf_dir,
        MODEL,
        VLLM_VARIANT="cpu",
        HF_DIR=str(hf_dir),
        MODEL_NAME=f"/models/{MODEL}",
        MAX_MODEL_LEN="512",
    ) as stack:
        started = stack.invoke("up", "--backend=vllm", "--timeout=600")
        assert started.returncode == 0, started.stderr
        assert "ready in" in started.stdout
        assert f"(model {MODEL})" in started.stdout

        # Ready means serving: the first request after `up` answers.
        completion = httpx.post(
            f"{stack.llm_url}/v1/completions",
            json={"model": MODEL, "prompt": "Hello", "max_tokens": 4, "ignore_eos": True},
            headers=stack.llm_auth,
            timeout=60,
        )
        completion.raise_for_status()
        assert completion.json()["usage"]["completion_tokens"] == 4

        stopped = stack.invoke("down")
        assert stopped.returncode == 0, stopped.stderr
        assert stack.containers() == []
