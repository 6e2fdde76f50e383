"""The worker's tasks end to end against vLLM (its CPU build): a real worker process, real Redis.

vLLM differs from llama.cpp where the worker has to adapt: it reports its context as the model's
max_model_len, counts tokens through its own /tokenize body, and words its errors its own way.
Results are checked for their shape, as the tiny model writes meaningless text.
"""

from __future__ import annotations

from typing import Any

import pytest
from celery import Celery

from tests.support.containers import RedisContainer
from tests.support.vllm_server import VllmCpuContainer
from tests.support.worker_process import WorkerProcess, probe_counts, run_task, worker_environment

pytestmark = pytest.mark.integration

RESULT_TIMEOUT = 180
REDIS_DB = "14"  # of the shared Redis: other modules use 0, 11, 12 and 13
MAX_MODEL_LEN = 512  # what the vllm_server fixture serves
DOCUMENT = "\n\n".join(
    f"Part {i}. vLLM serves the model; the worker splits what does not fit in its context and "
    "summarizes the parts, then the summaries."
    for i in range(8)
)


@pytest.fixture(scope="module")
def worker_env(redis_server: RedisContainer, vllm_server: VllmCpuContainer) -> dict[str, str]:
    """A worker's environment for the shared Redis and vLLM, N_CTX wrong: vLLM reports its own."""
    # N_CTX is wrong on purpose: the worker must use vLLM's max_model_len instead.
    return worker_environment(redis_server, int(REDIS_DB), vllm_server.base_url, N_CTX="8192")


def run(app: Celery, task: str, **kwargs: Any) -> Any:
    return run_task(app, task, RESULT_TIMEOUT, **kwargs)


def test_generate(app: Celery, worker: WorkerProcess, vllm_server: VllmCpuContainer) -> None:
    result = run(app, "generate", prompt="Once upon a time", max_tokens=16, temperature=0)
    assert isinstance(result["text"], str)
    assert result["model"] == vllm_server.model
    assert 0 < result["completion_tokens"] <= 16
    assert result["prompt_tokens"] > 0
    assert result["finish_reason"] in ("stop", "length")


def test_chat(app: Celery, worker: WorkerProcess) -> None:
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    result = run(app, "chat", messages=messages, max_tokens=16, temperature=0)
    assert isinstance(result["text"], str)
    assert 0 < result["completion_tokens"] <= 16


def test_summarize_splits_by_the_context_vllm_reports(app: Celery, worker: WorkerProcess) -> None:
    # One token per byte: the document cannot fit in 512 tokens, though it would in N_CTX's 8192.
    assert len(DOCUMENT.encode()) > MAX_MODEL_LEN
    result = run(app, "summarize", document=DOCUMENT, max_tokens=48, temperature=0)
    assert result["chunks"] > 1
    assert result["rounds"] in (1, 2)  # 2: some chunk's answer looped and was asked again
    assert isinstance(result["text"], str)
    assert result["completion_tokens"] > 0


def test_a_prompt_longer_than_the_context_fails_without_retrying(
    app: Celery, worker: WorkerProcess, redis_server: RedisContainer
) -> None:
    sent = app.send_task("worker.tasks.generate", kwargs={"prompt": "word " * 200})
    with pytest.raises(Exception) as caught:
        sent.get(timeout=RESULT_TIMEOUT)
    assert type(caught.value).__name__ == "ContextExceeded"
    counts = probe_counts(redis_server.client(db=int(REDIS_DB)))
    assert counts["started"][sent.id] == 1
    assert sent.id not in counts["retried"]
