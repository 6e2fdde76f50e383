"""The LLM client against in-memory servers of each kind: discovery, calls and error mapping."""

from __future__ import annotations

import json
import math
from pathlib import Path

import httpx
import pytest

from tests.support.fake_llm import FakeLLMServer
from tests.unit.conftest import MakeSettings
from worker.llm import (
    ESTIMATED_CHARS_PER_TOKEN,
    ContextExceeded,
    LLMClient,
    LLMProtocolError,
    LLMRejected,
    LLMUnavailable,
)
from worker.sampling import Sampling

KINDS = ("llama-server", "vllm", "llama-cpp-python")


def client_answering(*responses: httpx.Response | Exception) -> LLMClient:
    """A client whose completion requests get these answers in turn (the model list is fixed)."""
    server = FakeLLMServer(failures=list(responses))
    return server.client()


# --- model discovery and generation ----------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_discovers_the_model_and_completes(kind: str) -> None:
    server = FakeLLMServer(kind=kind, model="served-name")
    done = server.client().complete("Once upon a time", max_tokens=8, temperature=0)

    sent = server.generation_requests()[0]
    assert sent == {"model": "served-name", "prompt": "Once upon a time", "max_tokens": 8,
                    "temperature": 0}  # fmt: skip
    assert done.text == "gist gist gist gist"
    assert done.model == "served-name"
    assert done.finish_reason == "stop"
    assert done.completion_tokens == server.tokens(done.text)


def test_a_configured_model_name_is_used_without_asking() -> None:
    server = FakeLLMServer(model="listed")
    server.client(model="pinned").complete("x", max_tokens=4, temperature=0)
    assert [r.url.path for r in server.requests] == ["/v1/completions"]
    assert server.generation_requests()[0]["model"] == "pinned"


def test_the_model_list_is_asked_once() -> None:
    server = FakeLLMServer()
    client = server.client()
    for _ in range(3):
        client.complete("x", max_tokens=4, temperature=0)
    assert [r.url.path for r in server.requests].count("/v1/models") == 1


def test_chat_sends_the_messages_and_returns_the_reply() -> None:
    server = FakeLLMServer()
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    done = server.client().chat(messages, max_tokens=6, temperature=0.5)
    sent = server.generation_requests()[0]
    assert sent["messages"] == messages
    assert sent["max_tokens"] == 6
    assert done.text == "gist gist gist"


def test_an_empty_model_list_is_retryable() -> None:
    """llama.cpp servers list their one model once loaded; an empty list means not yet."""
    http = httpx.Client(
        base_url="http://llm.test",
        transport=httpx.MockTransport(lambda r: httpx.Response(200, json={"data": []})),
    )
    with pytest.raises(LLMUnavailable, match="no model"):
        LLMClient(http).model()


# --- context size and token counts -----------------------------------------------------------


@pytest.mark.parametrize(("kind", "expected"), [
    ("llama-server", 1000),  # /props
    ("vllm", 1000),  # max_model_len in the model list
    ("llama-cpp-python", 777),  # neither: the configured fallback
])  # fmt: skip
def test_context_size_comes_from_where_each_server_tells_it(kind: str, expected: int) -> None:
    server = FakeLLMServer(kind=kind, n_ctx=1000)
    assert server.client(fallback_context=777).context_size() == expected


@pytest.mark.parametrize("kind", KINDS)
def test_tokens_are_counted_by_the_servers_own_tokenizer(kind: str) -> None:
    server = FakeLLMServer(kind=kind, chars_per_token=2)
    assert server.client().count_tokens("abcdefghi") == 5


def test_tokens_are_estimated_where_the_server_cannot_count() -> None:
    server = FakeLLMServer(kind="other")
    client = server.client()
    text = "x" * 100
    assert client.count_tokens(text) == math.ceil(100 / ESTIMATED_CHARS_PER_TOKEN)
    client.count_tokens(text)
    # The missing route is tried once, not for every count.
    assert [r.url.path for r in server.requests].count("/extras/tokenize/count") == 1


def test_vllm_tokenize_names_the_model() -> None:
    server = FakeLLMServer(kind="vllm", model="m")
    server.client().count_tokens("hello")
    tokenize = next(r for r in server.requests if r.url.path == "/tokenize")
    assert json.loads(tokenize.content)["model"] == "m"


def test_a_server_that_went_away_is_asked_again_about_its_model_and_context() -> None:
    server = FakeLLMServer(n_ctx=512, failures=[httpx.ConnectError("refused")])
    client = server.client()
    assert client.context_size() == 512
    with pytest.raises(LLMUnavailable):
        client.complete("x", max_tokens=4, temperature=0)
    server.n_ctx, server.model = 2048, "new-model"  # restarted with other settings
    assert client.context_size() == 2048
    assert client.complete("x", max_tokens=4, temperature=0).model == "new-model"


# --- error mapping ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "failure",
    [
        httpx.ConnectError("[Errno 111] Connection refused"),
        httpx.ReadTimeout("timed out"),
        httpx.RemoteProtocolError("Server disconnected without sending a response."),
        httpx.Response(503, json={"error": {"code": 503, "message": "Loading model"}}),
        httpx.Response(429, json={"error": {"message": "Too many requests"}}),
        httpx.Response(500, text="Internal Server Error"),
        httpx.Response(502, text="Bad Gateway"),
    ],
    ids=["refused", "read-timeout", "disconnected", "503-loading", "429", "500", "502"],
)
def test_failures_that_may_pass_are_retryable(failure: httpx.Response | Exception) -> None:
    with pytest.raises(LLMUnavailable):
        client_answering(failure).complete("x", max_tokens=4, temperature=0)


@pytest.mark.parametrize("kind", [*KINDS, "other"])
def test_a_prompt_longer_than_the_context_is_final(kind: str) -> None:
    server = FakeLLMServer(kind=kind, n_ctx=64)
    with pytest.raises(ContextExceeded) as caught:
        server.client().complete("word " * 100, max_tokens=8, temperature=0)
    assert not isinstance(caught.value, LLMUnavailable)
    assert "400" in str(caught.value)


@pytest.mark.parametrize(
    "response",
    [
        httpx.Response(400, json={"error": {"message": "'temperature' must be a number"}}),
        httpx.Response(404, json={"detail": "Not Found"}),
        httpx.Response(422, json={"detail": [{"msg": "field required"}]}),
    ],
    ids=["400", "404", "422"],
)
def test_other_client_errors_are_final_and_not_context_errors(response: httpx.Response) -> None:
    with pytest.raises(LLMRejected) as caught:
        client_answering(response).complete("x", max_tokens=4, temperature=0)
    assert not isinstance(caught.value, ContextExceeded)


def test_the_servers_message_is_in_the_error() -> None:
    response = httpx.Response(503, json={"error": {"code": 503, "message": "Loading model"}})
    with pytest.raises(LLMUnavailable, match=r"answered 503 on /v1/completions: Loading model"):
        client_answering(response).complete("x", max_tokens=4, temperature=0)


@pytest.mark.parametrize(
    "response",
    [
        httpx.Response(200, text="<html>not an API</html>"),
        httpx.Response(200, json={"choices": []}),
        httpx.Response(200, json={"choices": [{"text": 42}]}),
    ],
    ids=["not-json", "no-choices", "text-not-a-string"],
)
def test_answers_that_are_not_the_api_are_protocol_errors(response: httpx.Response) -> None:
    with pytest.raises(LLMProtocolError):
        client_answering(response).complete("x", max_tokens=4, temperature=0)


def test_errors_carry_one_message_so_json_results_can_rebuild_them() -> None:
    """Celery stores a failed task's exception as (type, args) in JSON and rebuilds it with
    cls(*args): an error with more than its message would come back broken."""
    error = ContextExceeded("too long")
    assert error.args == ("too long",)
    assert type(error)(*error.args).args == error.args


# --- construction ----------------------------------------------------------------------------


def test_from_settings_uses_the_servers_root_and_the_timeouts(make_settings: MakeSettings) -> None:
    settings = make_settings(
        llm_server_url="http://127.0.0.1:9999/v1", llm_timeout="42", served_model_name="alias"
    )
    client = LLMClient.from_settings(settings)
    try:
        assert str(client.http.base_url) == "http://127.0.0.1:9999"
        assert client.http.timeout.read == 42
        assert client.http.timeout.connect == 5
        assert client.model() == "alias"  # configured: no request needed
        assert client.fallback_context == settings.n_ctx
    finally:
        client.close()


def test_from_settings_sends_the_api_key_with_every_request(make_settings: MakeSettings) -> None:
    seen: list[str | None] = []

    def server(request: httpx.Request) -> httpx.Response:
        seen.append(request.headers.get("Authorization"))
        return httpx.Response(200, json={"data": [{"id": "m"}]})

    settings = make_settings(llm_api_key="k3y-0123456789abcdef_XYZ")
    client = LLMClient.from_settings(settings, transport=httpx.MockTransport(server))
    try:
        client.models()
    finally:
        client.close()
    assert seen == ["Bearer k3y-0123456789abcdef_XYZ"]


def test_from_settings_without_a_key_sends_no_authorization(make_settings: MakeSettings) -> None:
    seen: list[str | None] = []

    def server(request: httpx.Request) -> httpx.Response:
        seen.append(request.headers.get("Authorization"))
        return httpx.Response(200, json={"data": [{"id": "m"}]})

    client = LLMClient.from_settings(make_settings(), transport=httpx.MockTransport(server))
    try:
        client.models()
    finally:
        client.close()
    assert seen == [None]


# --- chat templates --------------------------------------------------------------------------


def test_llama_server_reports_the_models_own_template() -> None:
    server = FakeLLMServer()
    client = server.client()
    assert client.has_chat_template()
    assert client.has_chat_template()  # asked once
    assert [r.url.path for r in server.requests] == ["/props"]


def test_llama_servers_chatml_fallback_means_no_template() -> None:
    """/props shows llama.cpp's ChatML fallback for a model that brought no template."""
    assert not FakeLLMServer(chat_template=None).client().has_chat_template()


def test_vllm_is_asked_with_one_token_of_chat() -> None:
    with_template = FakeLLMServer(kind="vllm")
    assert with_template.client().has_chat_template()
    [probe] = with_template.generation_requests()
    assert probe["max_tokens"] == 1
    assert not FakeLLMServer(kind="vllm", chat_template=None).client().has_chat_template()


def test_a_vllm_chat_refused_for_want_of_a_template_is_no_chat_template() -> None:
    from worker.llm import NoChatTemplate

    client = FakeLLMServer(kind="vllm", chat_template=None).client()
    with pytest.raises(NoChatTemplate, match="chat template"):
        client.chat([{"role": "user", "content": "Hi"}], max_tokens=4, temperature=0)


@pytest.mark.parametrize(("on_disk", "expected"), [(True, True), (False, False), (None, True)])
def test_llama_cpp_python_goes_by_the_served_file_else_assumes_one(
    on_disk: bool | None, expected: bool
) -> None:
    asked: list[str] = []

    def local(served: str) -> bool | None:
        asked.append(served)
        return on_disk

    server = FakeLLMServer(kind="llama-cpp-python", model="served")
    assert server.client(local_template=local).has_chat_template() is expected
    assert asked == ["served"]


def test_the_served_gguf_is_read_only_when_it_is_the_model_served(
    make_settings: MakeSettings, tmp_path: Path
) -> None:
    from tests.support.tiny_gguf import write_tiny_llama
    from worker.llm import _gguf_on_disk

    write_tiny_llama(tmp_path / "m.gguf")
    settings = make_settings(gguf_dir=str(tmp_path), model_path="/models/m.gguf")
    look = _gguf_on_disk(settings)
    assert look("m") is True  # the tiny model carries a template
    assert look("another-model") is None  # a server serving something else: not judged by m


# --- sampling ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "field"),
    [("llama-server", "repeat_penalty"), ("vllm", "repetition_penalty"),
     ("llama-cpp-python", "repeat_penalty")],
)  # fmt: skip
def test_requests_carry_the_damping_in_the_servers_names(kind: str, field: str) -> None:
    server = FakeLLMServer(kind=kind)
    client = server.client(sampling=Sampling(repeat_penalty=1.2, dry_multiplier=0.5))
    client.complete("x", max_tokens=4, temperature=0)
    client.chat([{"role": "user", "content": "x"}], max_tokens=4, temperature=0)
    for body in server.generation_requests()[-2:]:
        assert body[field] == 1.2
        assert ("dry_multiplier" in body) is (kind == "llama-server")


def test_a_request_may_replace_the_damping() -> None:
    server = FakeLLMServer()
    client = server.client(sampling=Sampling(repeat_penalty=1.2))
    client.complete("x", max_tokens=4, temperature=0, sampling=Sampling())
    assert "repeat_penalty" not in server.generation_requests()[0]


def test_from_settings_damps_by_default(make_settings: MakeSettings) -> None:
    client = LLMClient.from_settings(make_settings())
    assert client.sampling == Sampling.from_settings(make_settings())
    assert not client.sampling.neutral
