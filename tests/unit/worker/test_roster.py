"""The worker table of `invoke ps` and `ask --model`'s check, from Celery's inspect replies."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest

from kcdev.queues import DEFAULT_QUEUE, model_of, model_queue, queues_for
from tests.unit.conftest import MakeSettings
from worker import roster

STATS = {
    "celery@gpu-box": {"pool": {"max-concurrency": 8}},
    "kc-demo-1a2b3c@laptop": {"pool": {"max-concurrency": 2}},
}
ACTIVE = {"celery@gpu-box": [{"id": "t1"}, {"id": "t2"}], "kc-demo-1a2b3c@laptop": []}
QUEUES = {
    "celery@gpu-box": [{"name": "model.qwen"}, {"name": "celery"}],
    "kc-demo-1a2b3c@laptop": [{"name": "model.smollm2"}, {"name": "celery"}],
}


@dataclass
class FakeInspect:
    calls: list[dict[str, Any]]
    kwargs: dict[str, Any] = field(default_factory=dict)

    def stats(self) -> dict[str, Any]:
        self.calls.append({"stats": self.kwargs})
        return STATS

    def active(self) -> dict[str, Any]:
        return ACTIVE

    def active_queues(self) -> dict[str, Any]:
        return QUEUES


class FakeControl:
    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []

    def inspect(self, **kwargs: Any) -> FakeInspect:
        self.calls.append(kwargs)
        return FakeInspect([], kwargs)


class FakeApp:
    def __init__(self) -> None:
        self.control = FakeControl()


def test_workers_are_listed_with_host_concurrency_active_tasks_and_queues() -> None:
    app = FakeApp()
    found = roster.workers(app, timeout=0.5)

    assert [(w.host, w.concurrency, w.active, w.queues) for w in found] == [
        ("gpu-box", 8, 2, ("model.qwen", "celery")),
        ("laptop", 2, 0, ("model.smollm2", "celery")),
    ]
    assert found[0].models == ("qwen",)
    # The second round names the workers the first found, and stops once all have answered.
    assert app.control.calls[1] == {
        "destination": sorted(STATS),
        "timeout": 0.5,
        "limit": 2,
    }


class SilentInspect(FakeInspect):
    def stats(self) -> dict[str, Any]:
        return {}  # Celery gives None or {} when nobody answers


def test_nobody_answering_means_no_workers(monkeypatch: pytest.MonkeyPatch) -> None:
    app = FakeApp()
    monkeypatch.setattr(app.control, "inspect", lambda **kwargs: SilentInspect([], kwargs))
    assert roster.workers(app) == []


def test_consumers_of_a_queue_and_the_table() -> None:
    found = roster.workers(FakeApp())
    assert [w.host for w in roster.consumers_of(found, "model.smollm2")] == ["laptop"]
    assert roster.consumers_of(found, "model.absent") == []
    assert roster.rows(found)[1] == ["celery", "gpu-box", "8", "2", "model.qwen, celery"]


def test_a_worker_consumes_its_servers_model_queue_and_the_shared_one(
    make_settings: MakeSettings,
) -> None:
    settings = make_settings(model_path="/models/smollm2.gguf")
    assert queues_for(settings) == ["model.smollm2", DEFAULT_QUEUE]
    assert queues_for(make_settings(llm_backend="none")) == [DEFAULT_QUEUE]
    named = make_settings(llm_backend="vllm", model_name="/models/qwen", served_model_name="q")
    assert queues_for(named) == ["model.q", DEFAULT_QUEUE]
    assert model_of(model_queue("a.b")) == "a.b"
    assert model_of(DEFAULT_QUEUE) is None
