"""What `invoke ps` shows: the services' state, and what Redis, Celery and the LLM server report."""

from __future__ import annotations

import httpx
import redis

from kcdev import chat_template, redis_client
from kcdev.console import table
from kcdev.redis_client import keyspace, total_keys
from kcdev.settings import Settings
from kcdev.stack.lifecycle import ServiceState

# Prometheus series worth a glance, from llama-server (llamacpp:*) and vLLM (vllm:*).
METRICS = (
    "llamacpp:requests_processing",
    "llamacpp:requests_deferred",
    "llamacpp:tokens_predicted_total",
    "llamacpp:predicted_tokens_seconds",
    "vllm:num_requests_running",
    "vllm:num_requests_waiting",
    "vllm:generation_tokens_total",
)
CELERY_QUEUE = "celery"


def services_table(states: dict[str, ServiceState]) -> str:
    rows = [["SERVICE", "STATE", "HEALTH", "PORTS"]]
    for state in states.values():
        shown = state.state if state.state != "exited" else f"exited ({state.exit_code})"
        rows.append([state.service, shown, state.health or "-", state.ports or "-"])
    return table(rows)


def redis_summary(settings: Settings) -> str:
    s = settings
    client = redis_client.client(
        s.redis_host, s.redis_port, s.redis_password, db=s.redis_db, timeout=2, connect_timeout=2
    )
    try:
        info = client.info()
        keys = total_keys(keyspace(info))
        queued = client.llen(CELERY_QUEUE)
    except redis.RedisError as exc:
        return f"redis: unavailable ({exc})"
    finally:
        client.close()
    return (
        f"redis: {info['used_memory_human']} used, {keys} keys, "
        f"{info['instantaneous_ops_per_sec']} ops/s; "
        f"celery queue {CELERY_QUEUE!r}: {queued} waiting"
    )


def parse_metrics(text: str) -> dict[str, float]:
    """Sum the wanted series over their labels from Prometheus' text format."""
    found: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        name_part, _, value = line.rpartition(" ")
        name = name_part.split("{", 1)[0]
        if name in METRICS:
            try:
                found[name] = found.get(name, 0.0) + float(value)
            except ValueError:
                continue
    return found


def llm_summary(settings: Settings) -> str:
    try:
        response = httpx.get(f"{settings.llm_server_url}/metrics", timeout=3)
    except httpx.HTTPError as exc:
        return f"llm-server: unavailable ({type(exc).__name__})"
    if response.status_code != 200:
        return "llm-server: no metrics exposed"
    metrics = parse_metrics(response.text)
    if not metrics:
        return "llm-server: no known metrics"
    shown = (
        f"{name.split(':', 1)[1]}={int(value) if value.is_integer() else round(value, 2)}"
        for name, value in metrics.items()
    )
    return "llm-server: " + ", ".join(shown)


def model_summary(settings: Settings, backend: str) -> str:
    """The model the backend's server is configured with, and whether it has a chat template."""
    return chat_template.describe_configured(settings, backend)
