"""Answers worth reading (issue 12), against real llama-server containers.

The stack's LLM server is driven with the official `openai` client, as users do, on the offline
fallback instruct model (SmolLM2 135M Instruct): model list, chat, completions and streaming, with
no chat-template junk (`<|im_end|>`) in the answers. A worker against a model without a chat
template (the tiny test model written without one) refuses `chat` at once, without retrying.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
from celery import Celery

from tests.support.containers import LlamaCppContainer, RedisContainer
from tests.support.real_models import fallback_model
from tests.support.tiny_gguf import write_tiny_llama
from tests.support.worker_process import WorkerProcess, probe_counts

pytestmark = pytest.mark.integration

RESULT_TIMEOUT = 180
TEMPLATE_JUNK = ("<|im_end|>", "<|im_start|>", "<end_of_turn>")
REDIS_DB = "14"


@pytest.fixture(scope="module")
def instruct_server(stack_images: dict[str, str]) -> Iterator[LlamaCppContainer]:
    model = fallback_model()
    server = LlamaCppContainer(
        stack_images["LLAMACPP_IMAGE"], "llama-server", model.parent, model.name
    )
    server.with_envs(N_CTX="1024", N_PARALLEL="2")
    with server:
        yield server


@pytest.fixture(scope="module")
def client(instruct_server: LlamaCppContainer) -> openai.OpenAI:
    # llama-server needs no key unless started with --api-key; the client insists on one.
    return openai.OpenAI(
        base_url=f"{instruct_server.base_url}/v1", api_key="unused", timeout=120, max_retries=0
    )


def test_the_model_list(client: openai.OpenAI) -> None:
    assert [m.id for m in client.models.list()] == ["SmolLM2-135M-Instruct.Q4_1"]


def test_chat_answers_without_template_junk(client: openai.OpenAI) -> None:
    done = client.chat.completions.create(
        model="SmolLM2-135M-Instruct.Q4_1",
        messages=[{"role": "user", "content": "What is the capital of France? Answer briefly."}],
        max_tokens=40,
        temperature=0,
    )
    text = done.choices[0].message.content or ""
    assert text.strip()
    assert not any(junk in text for junk in TEMPLATE_JUNK), text
    assert "Paris" in text
    assert done.usage is not None and 0 < done.usage.completion_tokens <= 40


def test_completions(client: openai.OpenAI) -> None:
    done = client.completions.create(
        model="SmolLM2-135M-Instruct.Q4_1", prompt="One, two, three,", max_tokens=8, temperature=0
    )
    assert done.choices[0].text.strip()
    assert done.choices[0].finish_reason in ("stop", "length")


def test_streaming_chat(client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(
        model="SmolLM2-135M-Instruct.Q4_1",
        messages=[{"role": "user", "content": "Name three colours."}],
        max_tokens=30,
        temperature=0,
        stream=True,
    )
    pieces = [c.choices[0].delta.content or "" for c in stream if c.choices]
    assert len([p for p in pieces if p]) > 1  # token by token, not in one piece
    text = "".join(pieces)
    assert text.strip() and not any(junk in text for junk in TEMPLATE_JUNK)


def test_the_worker_sends_its_damping_and_the_server_takes_it(client: openai.OpenAI) -> None:
    """The llama-server fields the worker adds pass through the OpenAI route (extra_body)."""
    done = client.chat.completions.create(
        model="SmolLM2-135M-Instruct.Q4_1",
        messages=[{"role": "user", "content": "Say hello."}],
        max_tokens=8,
        temperature=0,
        extra_body={"repeat_penalty": 1.1, "repeat_last_n": 256, "dry_multiplier": 0.8},
    )
    assert done.choices[0].message.content


# --- a model without a chat template -----------------------------------------------------------


@pytest.fixture(scope="module")
def base_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("base-gguf")
    folder.chmod(0o755)
    return write_tiny_llama(folder / "tiny-base.gguf", chat_template=False)


@pytest.fixture(scope="module")
def base_server(stack_images: dict[str, str], base_model: Path) -> Iterator[LlamaCppContainer]:
    with LlamaCppContainer(
        stack_images["LLAMACPP_IMAGE"], "llama-server", base_model.parent, base_model.name
    ) as server:
        yield server


@pytest.fixture(scope="module")
def worker_env(redis_server: RedisContainer, base_server: LlamaCppContainer) -> dict[str, str]:
    env = {
        **os.environ,
        "REDIS_HOST": "127.0.0.1",
        "REDIS_PORT": str(redis_server.get_exposed_port(6379)),
        "REDIS_PASSWORD": redis_server.password,
        "REDIS_DB": REDIS_DB,
        "LLM_SERVER_URL": base_server.base_url,
        "N_CTX": "512",
        "N_PARALLEL": "2",
        "SERVED_MODEL_NAME": "",
    }
    redis_server.client(db=int(REDIS_DB)).flushdb()
    return env


def test_chat_with_a_model_without_a_template_fails_at_once_in_one_line(
    app: Celery, worker: WorkerProcess, redis_server: RedisContainer
) -> None:
    messages: list[dict[str, Any]] = [{"role": "user", "content": "Hi"}]
    sent = app.send_task("worker.tasks.chat", kwargs={"messages": messages})
    with pytest.raises(Exception) as caught:
        sent.get(timeout=RESULT_TIMEOUT)
    assert type(caught.value).__name__ == "NoChatTemplate"
    message = str(caught.value)
    assert "tiny-base has no chat template" in message
    assert "preset smollm2-135m-instruct" in message and "\n" not in message
    counts = probe_counts(redis_server.client(db=int(REDIS_DB)))
    assert counts["started"][sent.id] == 1
    assert sent.id not in counts["retried"]


def test_generate_still_serves_a_model_without_a_template(
    app: Celery, worker: WorkerProcess
) -> None:
    done = app.send_task("worker.tasks.generate", kwargs={"prompt": "Once", "max_tokens": 8})
    result = done.get(timeout=RESULT_TIMEOUT)
    assert result["model"] == "tiny-base"
    assert result["guard"] in ("clean", "trimmed", "cut", "asked again")
