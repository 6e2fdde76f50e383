"""The Celery tasks, run in process with `.apply()` against an in-memory LLM server.

`.apply()` runs a task eagerly, retries included (without their waits), and needs no broker.
"""

from __future__ import annotations

import os
from typing import Any

import httpx
import pytest
from celery.result import EagerResult

from kcdev.settings import load_settings
from tests.support.fake_llm import FakeLLMServer
from worker import tasks
from worker.llm import ContextExceeded, LLMUnavailable

BUSY = httpx.Response(503, json={"error": {"code": 503, "message": "Loading model"}})


@pytest.fixture
def server(monkeypatch: pytest.MonkeyPatch) -> FakeLLMServer:
    """The fake server every task in this test talks to."""
    fake = FakeLLMServer(n_ctx=512)
    client = fake.client()
    monkeypatch.setattr(tasks, "llm_client", lambda: client)
    return fake


def succeeded(result: EagerResult[Any]) -> dict[str, Any]:
    assert result.successful(), result.traceback
    value = result.result
    assert isinstance(value, dict)
    return value


# --- results ---------------------------------------------------------------------------------


def test_generate_returns_the_text_and_its_token_counts(server: FakeLLMServer) -> None:
    result = tasks.generate.apply(kwargs={"prompt": "Once", "max_tokens": 8, "temperature": 0})
    assert result.successful(), result.traceback
    assert result.result == {
        "text": "gist gist gist gist",
        "model": "fake-model",
        "finish_reason": "stop",
        "prompt_tokens": 1,
        "completion_tokens": server.tokens("gist gist gist gist"),
    }


def test_chat_returns_the_reply(server: FakeLLMServer) -> None:
    messages = [{"role": "user", "content": "Hello?"}]
    result = tasks.chat.apply(kwargs={"messages": messages, "max_tokens": 4})
    assert result.successful(), result.traceback
    assert succeeded(result)["text"] == "gist gist"
    assert server.generation_requests()[0]["messages"] == messages


def test_summarize_splits_a_document_longer_than_the_context(server: FakeLLMServer) -> None:
    document = "\n\n".join(f"Paragraph {i} says something worth keeping." for i in range(200))
    assert server.tokens(document) > 4 * server.n_ctx
    result = tasks.summarize.apply(kwargs={"document": document, "max_tokens": 64})
    assert result.successful(), result.traceback
    summary = succeeded(result)
    assert summary["chunks"] > 1
    assert summary["rounds"] >= 2
    assert isinstance(summary["text"], str)


def test_results_are_plain_json(server: FakeLLMServer) -> None:
    import json

    result = tasks.generate.apply(kwargs={"prompt": "x"})
    assert json.loads(json.dumps(result.result)) == result.result


def test_ping_needs_no_llm_server() -> None:
    assert tasks.ping.apply().result == "pong"


# --- retries ---------------------------------------------------------------------------------


def test_a_server_that_comes_back_gets_the_task_done(server: FakeLLMServer) -> None:
    server.failures = [httpx.ConnectError("refused"), BUSY]
    result = tasks.generate.apply(kwargs={"prompt": "x"})
    assert result.successful(), result.traceback
    assert [r.url.path for r in server.requests].count("/v1/completions") == 3


def test_retries_are_bounded(server: FakeLLMServer) -> None:
    server.failures = [BUSY] * 100
    result = tasks.generate.apply(kwargs={"prompt": "x"})
    assert result.failed()
    assert isinstance(result.result, LLMUnavailable)
    attempts = [r.url.path for r in server.requests].count("/v1/completions")
    assert attempts == tasks.generate.max_retries + 1


def test_a_prompt_longer_than_the_context_fails_at_once(server: FakeLLMServer) -> None:
    result = tasks.generate.apply(kwargs={"prompt": "word " * 1000})
    assert result.failed()
    assert isinstance(result.result, ContextExceeded)
    assert [r.url.path for r in server.requests].count("/v1/completions") == 1


def test_the_retry_policy_is_declared_on_every_llm_task() -> None:
    settings = load_settings()
    for task in (tasks.generate, tasks.chat, tasks.summarize):
        assert task.autoretry_for == (LLMUnavailable,)
        assert Exception not in task.autoretry_for
        assert task.retry_backoff == tasks.RETRY_BACKOFF
        assert task.retry_jitter is True
        assert task.retry_backoff_max == tasks.longest_retry_wait(
            settings.visibility_timeout, settings.task_time_limit
        )
        assert task.max_retries == settings.llm_max_retries


@pytest.mark.parametrize(("visibility", "limit"), [(3600, 900), (60, 30), (61, 60), (7200, 10)])
def test_a_retry_never_waits_long_enough_to_be_redelivered(visibility: int, limit: int) -> None:
    wait = tasks.longest_retry_wait(visibility, limit)
    assert 1 <= wait <= tasks.RETRY_BACKOFF_MAX
    if visibility - limit >= 2:
        assert wait + limit < visibility


# --- input validation: fails at once, never retried, never reaches the server ----------------


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"prompt": ""}, "prompt is empty"),
        ({"prompt": "  \n "}, "prompt is empty"),
        ({"prompt": 42}, "prompt must be a string, not int"),
        ({"prompt": ["a"]}, "prompt must be a string, not list"),
        ({"prompt": "x" * (tasks.MAX_PROMPT_CHARS + 1)}, "the limit is 100,000"),
        ({"prompt": "x", "max_tokens": 0}, "max_tokens=0 is outside"),
        ({"prompt": "x", "max_tokens": True}, "max_tokens must be a whole number, not bool"),
        ({"prompt": "x", "max_tokens": "5"}, "max_tokens must be a whole number, not str"),
        ({"prompt": "x", "temperature": 3}, "temperature=3 is outside"),
        ({"prompt": "x", "temperature": "hot"}, "temperature must be a number, not str"),
    ],
)
def test_generate_refuses_bad_input(
    server: FakeLLMServer, kwargs: dict[str, Any], message: str
) -> None:
    result = tasks.generate.apply(kwargs=kwargs)
    assert result.failed()
    assert isinstance(result.result, tasks.InvalidInput)
    assert message in str(result.result)
    assert server.requests == []


@pytest.mark.parametrize(
    ("messages", "message"),
    [
        ([], "give 1 to"),
        ("hello", "messages must be a list, not str"),
        ([{"role": "user"}], "must be {'role': ..., 'content': ...}"),
        ([{"role": "user", "content": "x", "name": "n"}], "must be {'role'"),
        ([{"role": "robot", "content": "x"}], "role 'robot'"),
        ([{"role": "user", "content": 5}], "content must be a string"),
        ([{"role": "system", "content": "Be brief."}], "no user message"),
        ([{"role": "user", "content": " "}], "no user message"),
        ([{"role": "user", "content": "x" * (tasks.MAX_PROMPT_CHARS + 1)}], "the limit is"),
    ],
)
def test_chat_refuses_bad_messages(server: FakeLLMServer, messages: Any, message: str) -> None:
    result = tasks.chat.apply(kwargs={"messages": messages})
    assert result.failed()
    assert isinstance(result.result, tasks.InvalidInput)
    assert message in str(result.result)
    assert server.requests == []


def test_summarize_refuses_a_document_over_its_limit(server: FakeLLMServer) -> None:
    result = tasks.summarize.apply(kwargs={"document": "x" * (tasks.MAX_DOCUMENT_CHARS + 1)})
    assert isinstance(result.result, tasks.InvalidInput)
    assert "200,000" in str(result.result)
    assert server.requests == []


def test_invalid_input_is_not_retryable() -> None:
    assert not issubclass(tasks.InvalidInput, LLMUnavailable)
    assert tasks.InvalidInput("x").args == ("x",)  # rebuilt from JSON results as cls(*args)


def test_each_worker_process_makes_its_own_client(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tasks, "_clients", {})
    first = tasks.llm_client()
    assert tasks.llm_client() is first
    monkeypatch.setattr(os, "getpid", lambda: -1)  # as in a freshly forked child
    second = tasks.llm_client()
    assert second is not first
    first.close()
    second.close()
