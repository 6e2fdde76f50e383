"""What `invoke ps` shows: the services' state, limits and use, and what Redis, Celery and the LLM
server report.

CPU and memory use come from one `docker stats --no-stream` call for all the project's running
containers, limits from one `docker inspect`, as the seed's monitoring section reads them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import httpx
import redis

from kcdev import chat_template, redis_client
from kcdev.console import human_size, table
from kcdev.queues import DEAD_LETTER_PREFIX, DEFAULT_QUEUE, MODEL_QUEUE_PREFIX
from kcdev.redis_client import keyspace, total_keys
from kcdev.settings import Settings
from kcdev.stack.compose import ComposeProject
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


@dataclass(frozen=True)
class Usage:
    """One container's limits (None: none) and, while it runs, what it uses now."""

    cpus: float | None
    memory: int | None
    cpu_percent: str = ""  # of one CPU, as docker stats says: 150% is one and a half cores
    memory_used: str = ""

    @property
    def limits(self) -> str:
        cpus = "no CPU limit" if self.cpus is None else f"{self.cpus:g} CPU"
        memory = "no memory limit" if self.memory is None else human_size(self.memory)
        return f"{cpus}, {memory}"


def usage(project: ComposeProject, states: dict[str, ServiceState]) -> dict[str, Usage]:
    """Limits and current use by service: one docker inspect, one docker stats."""
    ids = {state.container_id: service for service, state in states.items()}
    if not ids:
        return {}
    found: dict[str, Usage] = {}
    inspect = project.docker.run(
        "inspect", "--format", "{{.Id}} {{.HostConfig.NanoCpus}} {{.HostConfig.Memory}}", *ids
    )
    for line in inspect.stdout.splitlines():
        full_id, _, limits = line.partition(" ")
        service = next((s for cid, s in ids.items() if full_id.startswith(cid)), None)
        try:
            nano, memory = (int(part) for part in limits.split())
        except ValueError:
            continue
        if service is not None:
            found[service] = Usage(nano / 1e9 if nano else None, memory or None)
    running = [cid for cid, service in ids.items() if states[service].state == "running"]
    if running:
        # The container's name or id as passed comes back in .Container: match on that.
        stats = project.docker.run(
            "stats", "--no-stream", "--format", "{{json .}}", *running, timeout=30
        )
        for line in stats.stdout.splitlines():
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            service = ids.get(entry.get("Container", ""))
            if service in found:
                used = str(entry.get("MemUsage", "")).split(" / ")[0]
                found[service] = Usage(
                    found[service].cpus, found[service].memory, entry.get("CPUPerc", ""), used
                )
    return found


def services_table(states: dict[str, ServiceState], used: dict[str, Usage] | None = None) -> str:
    used = used or {}
    rows = [["SERVICE", "STATE", "HEALTH", "PORTS", "CPU", "MEMORY", "LIMITS"]]
    for key, state in states.items():  # key: the service, or worker-2 for a second replica
        shown = state.state if state.state != "exited" else f"exited ({state.exit_code})"
        now = used.get(key)
        rows.append(
            [
                key, shown, state.health or "-", state.ports or "-",
                (now.cpu_percent if now else "") or "-", (now.memory_used if now else "") or "-",
                now.limits if now else "-",
            ]
        )  # fmt: skip
    return table(rows)


def way_back(states: dict[str, ServiceState]) -> list[str]:
    """A line for each service that is not running, saying how to bring it back."""
    lines = []
    for state in states.values():
        if state.state == "running":
            continue
        what = (
            f"{state.state} (exit code {state.exit_code})"
            if state.state == "exited"
            else state.state
        )
        lines.append(f"{state.service} is {what}: bring it back with `invoke up`")
    return lines


def redis_summary(settings: Settings) -> str:
    s = settings
    client = redis_client.client(
        s.redis_host, s.redis_port, s.redis_password, db=s.redis_db, timeout=2, connect_timeout=2
    )
    try:
        info = client.info()
        keys = total_keys(keyspace(info))
        waiting = _list_lengths(client, [DEFAULT_QUEUE], f"{MODEL_QUEUE_PREFIX}*")
        dead = _list_lengths(client, [], f"{DEAD_LETTER_PREFIX}*")
    except redis.RedisError as exc:
        return f"redis: unavailable ({settings.redact(str(exc))})"
    finally:
        client.close()
    line = (
        f"redis {info['redis_version']}: {info['used_memory_human']} used, {keys} keys, "
        f"{info['instantaneous_ops_per_sec']} ops/s; waiting: "
        + ", ".join(f"{queue} {count}" for queue, count in waiting.items())
    )
    if dead:
        shown = ", ".join(f"{queue} {count}" for queue, count in dead.items())
        line += (
            f"\nredis: messages moved aside as not Celery's ({shown}): read them with "
            f"`redis-cli LRANGE <list> 0 -1`, then DEL the list"
        )
    return line


def _list_lengths(client: redis.Redis, names: list[str], pattern: str) -> dict[str, int]:
    """The lengths of `names` and of the lists matching `pattern` (queues are Redis lists)."""
    found = sorted({*names, *(str(k) for k in client.scan_iter(match=pattern, count=1000))})
    lengths = [client.llen(name) for name in found]
    return dict(zip(found, lengths, strict=True))


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
    """The LLM server's own metrics; llama-server serves /metrics only with the API key."""
    headers = {"Authorization": f"Bearer {settings.llm_api_key}"} if settings.llm_api_key else {}
    try:
        response = httpx.get(f"{settings.llm_server_url}/metrics", timeout=3, headers=headers)
    except httpx.HTTPError as exc:
        return f"llm-server: unavailable ({type(exc).__name__})"
    if response.status_code == 401:
        return "llm-server: refuses LLM_API_KEY (401): it runs with another key; run `invoke up`"
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
