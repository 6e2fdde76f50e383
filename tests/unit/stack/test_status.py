"""What `invoke ps` shows, with Redis and the LLM server faked: no network."""

from __future__ import annotations

import fnmatch
from typing import Any, ClassVar
from unittest.mock import ANY

import httpx
import pytest
import redis

from kcdev.stack import status
from kcdev.stack.compose import ComposeProject
from kcdev.stack.docker_cli import Docker
from kcdev.stack.lifecycle import ServiceState
from tests.unit.conftest import FakeRunner, MakeSettings

# As llama-server (b5000-era) answers GET /metrics with --metrics.
LLAMA_SERVER_METRICS = """\
# HELP llamacpp:prompt_tokens_total Number of prompt tokens processed.
# TYPE llamacpp:prompt_tokens_total counter
llamacpp:prompt_tokens_total 184
# HELP llamacpp:tokens_predicted_total Number of generation tokens processed.
# TYPE llamacpp:tokens_predicted_total counter
llamacpp:tokens_predicted_total 2048
# HELP llamacpp:tokens_predicted_seconds_total Predict process time
# TYPE llamacpp:tokens_predicted_seconds_total counter
llamacpp:tokens_predicted_seconds_total 19.5
# HELP llamacpp:predicted_tokens_seconds Average generation throughput in tokens/s.
# TYPE llamacpp:predicted_tokens_seconds gauge
llamacpp:predicted_tokens_seconds 105.02
# HELP llamacpp:kv_cache_usage_ratio KV-cache usage. 1 means 100 percent usage.
# TYPE llamacpp:kv_cache_usage_ratio gauge
llamacpp:kv_cache_usage_ratio 0.12
# HELP llamacpp:requests_processing Number of requests processing.
# TYPE llamacpp:requests_processing gauge
llamacpp:requests_processing 2
# HELP llamacpp:requests_deferred Number of requests deferred.
# TYPE llamacpp:requests_deferred gauge
llamacpp:requests_deferred 1
"""

# As vLLM's OpenAI server answers GET /metrics: labelled series, histograms, process metrics.
VLLM_METRICS = """\
# HELP python_gc_objects_collected_total Objects collected during gc
# TYPE python_gc_objects_collected_total counter
python_gc_objects_collected_total{generation="0"} 12345.0
# HELP vllm:num_requests_running Number of requests in model execution batches.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{engine="0",model_name="tiny model"} 1.0
vllm:num_requests_running{engine="1",model_name="tiny model"} 2.0
# HELP vllm:num_requests_waiting Number of requests waiting to be processed.
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{engine="0",model_name="tiny model"} 0.0
vllm:num_requests_waiting{engine="1",model_name="tiny model"} 3.0
# HELP vllm:generation_tokens_total Number of generation tokens processed.
# TYPE vllm:generation_tokens_total counter
vllm:generation_tokens_total{engine="0",model_name="tiny model"} 1536.0
# HELP vllm:generation_tokens_created Number of generation tokens processed.
# TYPE vllm:generation_tokens_created gauge
vllm:generation_tokens_created{engine="0",model_name="tiny model"} 1.7325086e+09
# HELP vllm:time_to_first_token_seconds Histogram of time to first token in seconds.
# TYPE vllm:time_to_first_token_seconds histogram
vllm:time_to_first_token_seconds_bucket{engine="0",le="0.001",model_name="tiny model"} 0.0
vllm:time_to_first_token_seconds_count{engine="0",model_name="tiny model"} 7.0
"""


# --- parse_metrics ---------------------------------------------------------------------------


def test_parse_metrics_from_llama_server() -> None:
    assert status.parse_metrics(LLAMA_SERVER_METRICS) == {
        "llamacpp:tokens_predicted_total": 2048.0,
        "llamacpp:predicted_tokens_seconds": 105.02,
        "llamacpp:requests_processing": 2.0,
        "llamacpp:requests_deferred": 1.0,
    }


def test_parse_metrics_from_vllm_sums_over_labels() -> None:
    assert status.parse_metrics(VLLM_METRICS) == {
        "vllm:num_requests_running": 3.0,
        "vllm:num_requests_waiting": 3.0,
        "vllm:generation_tokens_total": 1536.0,
    }


def test_parse_metrics_skips_values_that_are_not_numbers() -> None:
    text = "llamacpp:requests_processing two\n\nllamacpp:requests_deferred 4\n"

    assert status.parse_metrics(text) == {"llamacpp:requests_deferred": 4.0}


def test_parse_metrics_of_nothing_known_is_empty() -> None:
    assert status.parse_metrics("# HELP x y\nprocess_cpu_seconds_total 4.2\n") == {}


# --- services_table --------------------------------------------------------------------------


def test_services_table_aligns_columns_and_marks_what_is_missing() -> None:
    states = {
        "redis": ServiceState("redis", "r1", "running", "healthy", 0, "127.0.0.1:6379->6379"),
        "llm-server": ServiceState("llm-server", "l1", "exited", "", 139, ""),
    }
    used = {
        "redis": status.Usage(0.5, 512 * 1024**2, "1.02%", "3.1MiB"),
        "llm-server": status.Usage(None, None),
    }

    assert status.services_table(states, used).splitlines() == [
        "SERVICE     STATE         HEALTH   PORTS                 CPU    MEMORY  LIMITS",
        "redis       running       healthy  127.0.0.1:6379->6379  1.02%  3.1MiB  "
        "0.5 CPU, 512.0 MiB",
        "llm-server  exited (139)  -        -                     -      -       "
        "no CPU limit, no memory limit",
    ]


def test_services_table_shows_exit_code_only_for_exited() -> None:
    states = {"redis": ServiceState("redis", "r1", "restarting", "starting", 0, "")}

    row = status.services_table(states).splitlines()[1]

    assert row.split() == ["redis", "restarting", "starting", "-", "-", "-", "-"]


# --- usage: one docker inspect, one docker stats ----------------------------------------------

LIMITS_FORMAT = "{{.Id}} {{.HostConfig.NanoCpus}} {{.HostConfig.Memory}}"


def test_usage_reads_limits_and_stats_in_one_call_each(
    make_settings: MakeSettings, runner: FakeRunner
) -> None:
    states = {
        "redis": ServiceState("redis", "r1", "running", "healthy", 0, ""),
        "llm-server": ServiceState("llm-server", "l1", "exited", "", 137, ""),
    }
    runner.on(
        "docker", "inspect", "--format", LIMITS_FORMAT,
        stdout="r1aaaa 1500000000 1073741824\nl1bbbb 0 0\n",
    )  # fmt: skip
    runner.on(
        "docker", "stats",
        stdout='{"Container":"r1","ID":"r1aaaa","CPUPerc":"2.50%","MemUsage":"9MiB / 1GiB"}\n',
    )  # fmt: skip
    project = ComposeProject(make_settings(), "llamacpp", Docker(runner=runner))

    used = status.usage(project, states)

    assert used == {
        "redis": status.Usage(1.5, 1024**3, "2.50%", "9MiB"),
        "llm-server": status.Usage(None, None),
    }
    assert runner.argvs == [
        ["docker", "inspect", "--format", LIMITS_FORMAT, "r1", "l1"],
        ["docker", "stats", "--no-stream", "--format", "{{json .}}", "r1"],  # running ones only
    ]


def test_usage_of_no_containers_asks_docker_nothing(
    make_settings: MakeSettings, runner: FakeRunner
) -> None:
    project = ComposeProject(make_settings(), "none", Docker(runner=runner))

    assert status.usage(project, {}) == {}
    assert runner.calls == []


# --- the way back -------------------------------------------------------------------------------


def test_an_exited_service_is_shown_with_the_way_back() -> None:
    states = {
        "redis": ServiceState("redis", "r1", "running", "healthy", 0, ""),
        "llm-server": ServiceState("llm-server", "l1", "exited", "", 137, ""),
    }

    assert status.way_back(states) == [
        "llm-server is exited (exit code 137): bring it back with `invoke up`"
    ]


def test_running_services_need_no_way_back() -> None:
    states = {"redis": ServiceState("redis", "r1", "running", "healthy", 0, "")}

    assert status.way_back(states) == []


# --- redis_summary ---------------------------------------------------------------------------


class FakeRedis:
    """redis.Redis stand-in: INFO and LLEN answers, or an error, and a record of the connection."""

    made: ClassVar[list[dict[str, Any]]] = []
    error: ClassVar[redis.RedisError | None] = None
    closed: ClassVar[int] = 0

    def __init__(self, **kwargs: Any) -> None:
        FakeRedis.made.append(kwargs)

    def info(self) -> dict[str, Any]:
        if FakeRedis.error is not None:
            raise FakeRedis.error
        return {
            "redis_version": "7.0.15",
            "used_memory_human": "1.02M",
            "instantaneous_ops_per_sec": 3,
            "db0": {"keys": 12, "expires": 2, "avg_ttl": 0},
            "db3": {"keys": 3, "expires": 0, "avg_ttl": 0},
        }

    lists: ClassVar[dict[str, int]] = {"celery": 5, "model.qwen": 2}

    def llen(self, key: str) -> int:
        return FakeRedis.lists[key]

    def scan_iter(self, match: str, count: int) -> list[str]:
        return [k for k in FakeRedis.lists if fnmatch.fnmatchcase(k, match)]

    def close(self) -> None:
        FakeRedis.closed += 1


@pytest.fixture
def fake_redis(monkeypatch: pytest.MonkeyPatch) -> type[FakeRedis]:
    monkeypatch.setattr(FakeRedis, "made", [])
    monkeypatch.setattr(FakeRedis, "error", None)
    monkeypatch.setattr(FakeRedis, "closed", 0)
    monkeypatch.setattr(redis, "Redis", FakeRedis)  # status looks it up at each call
    return FakeRedis


def test_redis_summary_reports_memory_keys_ops_and_the_celery_queue(
    make_settings: MakeSettings, fake_redis: type[FakeRedis]
) -> None:
    summary = status.redis_summary(make_settings(redis_port="6390", redis_db="3"))

    assert summary == "redis 7.0.15: 1.02M used, 15 keys, 3 ops/s; waiting: celery 5, model.qwen 2"
    assert fake_redis.made == [
        {
            "host": "127.0.0.1",
            "port": 6390,
            "db": 3,
            "password": None,
            "socket_timeout": 2,
            "socket_connect_timeout": 2,
            "retry": ANY,  # none: a Redis that is down is reported at once
        }
    ]
    assert fake_redis.closed == 1


def test_redis_summary_says_where_malformed_messages_were_moved_and_how_to_read_them(
    make_settings: MakeSettings, fake_redis: type[FakeRedis], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(FakeRedis, "lists", {"celery": 0, "kc.dead-letter.celery": 3})

    summary = status.redis_summary(make_settings())

    assert summary.splitlines()[1] == (
        "redis: messages moved aside as not Celery's (kc.dead-letter.celery 3): read them with "
        "`redis-cli LRANGE <list> 0 -1`, then DEL the list"
    )


@pytest.mark.parametrize(
    "error",
    [
        redis.ConnectionError("Error 111 connecting to 127.0.0.1:6379. Connection refused."),
        redis.AuthenticationError("invalid username-password pair"),
    ],
)
def test_redis_summary_when_redis_is_unavailable(
    make_settings: MakeSettings, fake_redis: type[FakeRedis], error: redis.RedisError
) -> None:
    fake_redis.error = error

    summary = status.redis_summary(make_settings(redis_password="pw"))

    assert summary == f"redis: unavailable ({error})"
    assert fake_redis.made[0]["password"] == "pw"
    assert fake_redis.closed == 1


# --- llm_summary -----------------------------------------------------------------------------


class FakeGet:
    """httpx.get stand-in: answers (status, text) or raises `answer` when it is an exception."""

    def __init__(self) -> None:
        self.answer: tuple[int, str] | httpx.HTTPError = (404, "")
        self.asked: list[str] = []
        self.headers: list[dict[str, str]] = []

    def __call__(self, url: str, **kwargs: Any) -> httpx.Response:
        self.asked.append(url)
        self.headers.append(dict(kwargs.get("headers") or {}))
        assert kwargs.get("timeout"), "status must not wait forever on a hung server"
        if isinstance(self.answer, Exception):
            raise self.answer
        code, text = self.answer
        return httpx.Response(code, text=text, request=httpx.Request("GET", url))


@pytest.fixture
def llm(monkeypatch: pytest.MonkeyPatch) -> FakeGet:
    fake = FakeGet()
    monkeypatch.setattr(httpx, "get", fake)  # status looks it up at each call
    return fake


def summary(
    make_settings: MakeSettings, llm: FakeGet, answer: tuple[int, str] | httpx.HTTPError
) -> str:
    llm.answer = answer
    return status.llm_summary(make_settings(llm_server_url="http://127.0.0.1:8001/"))


def test_llm_summary_lists_the_known_metrics(make_settings: MakeSettings, llm: FakeGet) -> None:
    text = summary(make_settings, llm, (200, LLAMA_SERVER_METRICS))

    assert text == (
        "llm-server: tokens_predicted_total=2048, predicted_tokens_seconds=105.02, "
        "requests_processing=2, requests_deferred=1"
    )
    assert llm.asked == ["http://127.0.0.1:8001/metrics"]


def test_llm_summary_for_vllm(make_settings: MakeSettings, llm: FakeGet) -> None:
    text = summary(make_settings, llm, (200, VLLM_METRICS))

    assert text == (
        "llm-server: num_requests_running=3, num_requests_waiting=3, generation_tokens_total=1536"
    )


@pytest.mark.parametrize(
    "error",
    [httpx.ConnectError("[Errno 111] Connection refused"), httpx.ReadTimeout("timed out")],
)
def test_llm_summary_when_the_server_does_not_answer(
    make_settings: MakeSettings, llm: FakeGet, error: httpx.HTTPError
) -> None:
    text = summary(make_settings, llm, error)

    assert text == f"llm-server: unavailable ({type(error).__name__})"


def test_llm_summary_without_a_metrics_route(make_settings: MakeSettings, llm: FakeGet) -> None:
    """llama-cpp-python's server has no /metrics."""
    text = summary(make_settings, llm, (404, '{"detail":"Not Found"}'))

    assert text == "llm-server: no metrics exposed"


def test_llm_summary_with_only_unknown_metrics(make_settings: MakeSettings, llm: FakeGet) -> None:
    text = summary(make_settings, llm, (200, "process_cpu_seconds_total 4.2\n"))

    assert text == "llm-server: no known metrics"


def test_llm_summary_prints_large_counters_in_full(
    make_settings: MakeSettings, llm: FakeGet
) -> None:
    text = summary(make_settings, llm, (200, "llamacpp:tokens_predicted_total 1234567\n"))

    assert text == "llm-server: tokens_predicted_total=1234567"


def test_llm_summary_sends_the_api_key(make_settings: MakeSettings, llm: FakeGet) -> None:
    """llama-server serves /metrics only to clients with the key."""
    llm.answer = (200, LLAMA_SERVER_METRICS)

    status.llm_summary(make_settings(llm_api_key="k3y-0123456789abcdef_XYZ"))

    assert llm.headers == [{"Authorization": "Bearer k3y-0123456789abcdef_XYZ"}]


def test_llm_summary_when_the_server_has_another_key(
    make_settings: MakeSettings, llm: FakeGet
) -> None:
    text = summary(make_settings, llm, (401, '{"error":{"message":"Invalid API Key"}}'))

    assert text == (
        "llm-server: refuses LLM_API_KEY (401): it runs with another key; run `invoke up`"
    )
