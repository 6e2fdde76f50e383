"""Readiness: the LLM server over httpx.MockTransport, Redis faked, polling on a fake clock."""

from __future__ import annotations

import json
import ssl
from collections.abc import Callable
from typing import Any, ClassVar

import httpx
import pytest
import redis

from kcdev.stack import readiness
from tests.unit.conftest import FakeClock

BASE_URL = "http://127.0.0.1:8000"
MODELS = {"object": "list", "data": [{"id": "model", "object": "model", "owned_by": "me"}]}
COMPLETION = {"id": "cmpl-1", "object": "text_completion", "choices": [{"text": "!", "index": 0}]}

Handler = Callable[[httpx.Request], httpx.Response]


@pytest.fixture
def serve(monkeypatch: pytest.MonkeyPatch) -> Callable[[Handler], list[httpx.Request]]:
    """Route llm_ready's httpx.Client to a handler; returns the requests it received."""
    real_client = httpx.Client

    def install(handler: Handler) -> list[httpx.Request]:
        seen: list[httpx.Request] = []

        def recording(request: httpx.Request) -> httpx.Response:
            seen.append(request)
            return handler(request)

        def client(**kwargs: Any) -> httpx.Client:
            return real_client(transport=httpx.MockTransport(recording), **kwargs)

        monkeypatch.setattr(httpx, "Client", client)
        return seen

    return install


def server(
    models: tuple[int, Any] = (200, MODELS), completion: tuple[int, Any] = (200, COMPLETION)
) -> Handler:
    """An OpenAI-compatible server answering the model list and completions as told."""

    def handle(request: httpx.Request) -> httpx.Response:
        code, body = models if request.url.path == "/v1/models" else completion
        if isinstance(body, str):
            return httpx.Response(code, text=body)
        return httpx.Response(code, json=body)

    return handle


# --- llm_ready -------------------------------------------------------------------------------


def test_llm_ready_when_the_model_is_listed_and_completes(
    serve: Callable[[Handler], list[httpx.Request]],
) -> None:
    seen = serve(server())

    assert readiness.llm_ready(BASE_URL, "model") is None
    assert [(r.method, str(r.url)) for r in seen] == [
        ("GET", f"{BASE_URL}/v1/models"),
        ("POST", f"{BASE_URL}/v1/completions"),
    ]
    assert json.loads(seen[1].content) == {
        "model": "model",
        "prompt": "Hi",
        "max_tokens": 1,
        "temperature": 0,
    }


def test_llm_ready_names_both_models_when_another_is_listed(
    serve: Callable[[Handler], list[httpx.Request]],
) -> None:
    seen = serve(server(models=(200, {"data": [{"id": "gemma-3-270m"}]})))

    reason = readiness.llm_ready(BASE_URL, "model")

    assert reason == "server lists ['gemma-3-270m'], not 'model'"
    assert len(seen) == 1  # no completion asked of the wrong model


def test_llm_ready_model_list_not_200(serve: Callable[[Handler], list[httpx.Request]]) -> None:
    serve(server(models=(503, {"error": {"message": "Loading model", "code": 503}})))

    assert readiness.llm_ready(BASE_URL, "model") == "model list answered 503"


def test_llm_ready_completion_503_gives_code_and_body(
    serve: Callable[[Handler], list[httpx.Request]],
) -> None:
    serve(server(completion=(503, {"error": {"message": "Loading model"}})))

    reason = readiness.llm_ready(BASE_URL, "model")

    assert reason == ('one-token completion answered 503: {"error":{"message":"Loading model"}}')


def test_llm_ready_completion_error_body_is_cut_short(
    serve: Callable[[Handler], list[httpx.Request]],
) -> None:
    serve(server(completion=(500, "x" * 5000)))

    reason = readiness.llm_ready(BASE_URL, "model")

    assert reason == "one-token completion answered 500: " + "x" * 200


@pytest.mark.parametrize("error", [httpx.ConnectError("refused"), httpx.ReadTimeout("timed out")])
def test_llm_ready_transport_error(
    serve: Callable[[Handler], list[httpx.Request]], error: httpx.TransportError
) -> None:
    def fail(request: httpx.Request) -> httpx.Response:
        raise error

    serve(fail)

    assert readiness.llm_ready(BASE_URL, "model") == (
        f"LLM server does not answer ({type(error).__name__})"
    )


def test_llm_ready_non_json_model_list(serve: Callable[[Handler], list[httpx.Request]]) -> None:
    serve(server(models=(200, "<html>proxy login</html>")))

    assert readiness.llm_ready(BASE_URL, "model") == (
        "LLM server's answer is not an OpenAI-compatible model list"
    )


def test_llm_ready_passes_base_url_and_timeout_to_the_client(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    made: list[dict[str, Any]] = []
    real_client = httpx.Client

    def client(**kwargs: Any) -> httpx.Client:
        made.append(kwargs)
        return real_client(transport=httpx.MockTransport(server()), **kwargs)

    monkeypatch.setattr(httpx, "Client", client)

    readiness.llm_ready("http://127.0.0.1:8001", "model", timeout=7)
    readiness.llm_ready("http://127.0.0.1:8001", "model", timeout=7)

    assert [(m["base_url"], m["timeout"]) for m in made] == [("http://127.0.0.1:8001", 7)] * 2
    # One TLS context for every probe: building one loads the CA store (40 ms) each time.
    assert made[0]["verify"] is made[1]["verify"]
    assert isinstance(made[0]["verify"], ssl.SSLContext)


# --- redis_ready -----------------------------------------------------------------------------


class FakeRedis:
    """redis.Redis stand-in answering INFO persistence, or raising."""

    answer: ClassVar[dict[str, Any] | redis.RedisError] = {"loading": 0}
    made: ClassVar[list[dict[str, Any]]] = []

    def __init__(self, **kwargs: Any) -> None:
        FakeRedis.made.append(kwargs)

    def info(self, section: str) -> dict[str, Any]:
        assert section == "persistence"
        if isinstance(FakeRedis.answer, Exception):
            raise FakeRedis.answer
        return FakeRedis.answer

    def close(self) -> None:
        pass


@pytest.fixture
def fake_redis(monkeypatch: pytest.MonkeyPatch) -> type[FakeRedis]:
    monkeypatch.setattr(FakeRedis, "made", [])
    monkeypatch.setattr(redis, "Redis", FakeRedis)  # readiness looks it up at each call
    return FakeRedis


@pytest.mark.parametrize(
    ("answer", "reason"),
    [
        ({"loading": 0, "aof_enabled": 1}, None),
        ({"loading": 1}, "Redis is loading its dataset"),
        (
            redis.AuthenticationError("WRONGPASS"),
            "Redis refused the password: check REDIS_PASSWORD",
        ),
        (
            redis.ConnectionError("Error 111 connecting to 127.0.0.1:6379. Connection refused."),
            "Redis does not answer (Error 111 connecting to 127.0.0.1:6379. Connection refused.)",
        ),
        (
            redis.BusyLoadingError("Redis is loading the dataset in memory"),
            "Redis does not answer (Redis is loading the dataset in memory)",
        ),
    ],
)
def test_redis_ready(
    fake_redis: type[FakeRedis],
    monkeypatch: pytest.MonkeyPatch,
    answer: dict[str, Any] | redis.RedisError,
    reason: str | None,
) -> None:
    monkeypatch.setattr(FakeRedis, "answer", answer)

    assert readiness.redis_ready("127.0.0.1", 6379, "pw", db=2) == reason
    assert fake_redis.made[0]["password"] == "pw"
    assert fake_redis.made[0]["db"] == 2


def test_redis_ready_without_password_sends_none(fake_redis: type[FakeRedis]) -> None:
    readiness.redis_ready("127.0.0.1", 6379, "")

    assert fake_redis.made[0]["password"] is None


# --- wait_until ------------------------------------------------------------------------------


def reasons(*answers: str | None) -> Callable[[], str | None]:
    """A check answering each of `answers` in turn, then the last one forever."""
    queue = list(answers)
    return lambda: queue.pop(0) if len(queue) > 1 else queue[0]


def test_wait_until_returns_at_the_first_ready(clock: FakeClock) -> None:
    calls: list[float] = []

    def check() -> str | None:
        calls.append(clock.now)
        return None if len(calls) == 3 else "loading"

    readiness.wait_until(check, deadline=clock.now + 60)

    assert len(calls) == 3
    assert clock.sleeps == [readiness.POLL, readiness.POLL]


def test_wait_until_ready_at_once_does_not_sleep(clock: FakeClock) -> None:
    readiness.wait_until(reasons(None), deadline=clock.now + 60)

    assert clock.sleeps == []


def test_wait_until_raises_not_ready_with_the_last_reason(clock: FakeClock) -> None:
    start = clock.now
    check = reasons("connection refused", "connection refused", "model list answered 503")

    with pytest.raises(readiness.NotReady) as caught:
        readiness.wait_until(check, deadline=start + 5)

    assert str(caught.value) == "model list answered 503"
    assert clock.now == pytest.approx(start + 5, abs=readiness.POLL)
    assert clock.now >= start + 5


def test_wait_until_checks_once_even_past_the_deadline(clock: FakeClock) -> None:
    with pytest.raises(readiness.NotReady, match=r"^loading$"):
        readiness.wait_until(reasons("loading"), deadline=clock.now - 1)

    assert clock.sleeps == []
    readiness.wait_until(reasons(None), deadline=clock.now - 1)  # ready counts even if late
