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
from worker.llm import ContextExceeded, LLMUnavailable, NoChatTemplate

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
        "guard": "clean",
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
    assert summary["rounds"] == 1  # no answer looped
    assert isinstance(summary["text"], str)


# --- chat needs a chat template ----------------------------------------------------------------


@pytest.mark.parametrize("kind", ["llama-server", "vllm"])
def test_chat_with_a_model_without_a_template_fails_at_once_saying_so(
    monkeypatch: pytest.MonkeyPatch, kind: str
) -> None:
    fake = FakeLLMServer(kind=kind, chat_template=None, model="gemma-3-270m-q4_k_m")
    client = fake.client()
    monkeypatch.setattr(tasks, "llm_client", lambda: client)
    result = tasks.chat.apply(kwargs={"messages": [{"role": "user", "content": "Hi"}]})
    assert result.failed()
    assert isinstance(result.result, NoChatTemplate)
    message = str(result.result)
    assert "gemma-3-270m-q4_k_m has no chat template" in message
    assert "preset smollm2-135m-instruct" in message and "\n" not in message
    chats = [r for r in fake.requests if r.url.path == "/v1/chat/completions"]
    assert len(chats) == (1 if kind == "vllm" else 0)  # vLLM's one probe; no retry either way


def test_generate_still_completes_with_a_model_without_a_template(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    fake = FakeLLMServer(chat_template=None)
    client = fake.client()
    monkeypatch.setattr(tasks, "llm_client", lambda: client)
    assert succeeded(tasks.generate.apply(kwargs={"prompt": "Once"}))["text"]


# --- the repetition guard --------------------------------------------------------------------

LOOP = "The model server stores results. " * 5 + "The model server"


def test_a_looping_answer_is_asked_again_more_damped(monkeypatch: pytest.MonkeyPatch) -> None:
    answers = iter([LOOP, "The model server stores the results of each task."])
    fake = FakeLLMServer(reply=lambda p, n: next(answers))
    client = fake.client()
    monkeypatch.setattr(tasks, "llm_client", lambda: client)
    done = succeeded(tasks.generate.apply(kwargs={"prompt": "Where are results?"}))
    assert done["text"] == "The model server stores the results of each task."
    assert done["guard"] == "asked again"
    first, second = fake.generation_requests()
    assert second.get("repeat_penalty", 1.0) > first.get("repeat_penalty", 1.0)


def test_a_loop_that_persists_is_cut_at_the_last_clean_sentence(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    fake = FakeLLMServer(reply=lambda p, n: LOOP)
    client = fake.client()
    monkeypatch.setattr(tasks, "llm_client", lambda: client)
    done = succeeded(tasks.chat.apply(kwargs={"messages": [{"role": "user", "content": "?"}]}))
    assert done["text"] == "The model server stores results."
    assert done["guard"] == "cut"


def test_raw_output_is_left_as_the_model_wrote_it(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakeLLMServer(reply=lambda p, n: LOOP)
    client = fake.client()
    monkeypatch.setattr(tasks, "llm_client", lambda: client)
    done = succeeded(tasks.generate.apply(kwargs={"prompt": "?", "raw": True}))
    assert (done["text"], done["guard"]) == (LOOP, "raw")
    assert len(fake.generation_requests()) == 1


def test_an_answer_cut_by_the_token_limit_ends_on_a_sentence(server: FakeLLMServer) -> None:
    server.reply = lambda p, n: "Results go to Redis. Each task stores its own resu"
    server.finish_reason = "length"
    done = succeeded(tasks.generate.apply(kwargs={"prompt": "?"}))
    assert (done["text"], done["guard"]) == ("Results go to Redis.", "trimmed")


def test_raw_must_be_a_boolean(server: FakeLLMServer) -> None:
    result = tasks.generate.apply(kwargs={"prompt": "x", "raw": "yes"})
    assert result.failed()
    assert "raw must be true or false" in str(result.result)


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
