"""Each task end to end: a real worker process, real Redis, each real llama.cpp server flavor.

The tiny model writes meaningless text, so results are checked for their shape, never their
words. `invoke ask`'s helper is run the way the task runs it, in a process of its own.
"""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import pytest
from celery import Celery

from kcdev.paths import ROOT
from tests.support.containers import LlamaCppContainer, RedisContainer
from tests.support.stack import free_port
from tests.support.worker_process import WorkerProcess, probe_counts, run_task, worker_environment

pytestmark = pytest.mark.integration

RESULT_TIMEOUT = 120
TINY_MODEL = "tiny-llama"  # the name the servers give tests/support/tiny_gguf.py's model
# Redis databases of the shared Redis, one per server flavor: tests elsewhere use database 0.
REDIS_DB = {"llama-server": "11", "llama-cpp-python": "12"}
DOCUMENT = "\n\n".join(
    f"Part {i}. The worker takes one message at a time and acknowledges it only when the task "
    "is done, so that a crash loses nothing."
    for i in range(8)
)


@pytest.fixture(scope="module")
def worker_env(redis_server: RedisContainer, llama_server: LlamaCppContainer) -> dict[str, str]:
    """The environment of a worker using the shared Redis and one llama.cpp server flavor."""
    return worker_environment(
        redis_server, int(REDIS_DB[llama_server.flavor]), llama_server.base_url,
        N_CTX="512",  # what the fixture serves: llama-cpp-python does not report it
        MODEL_PATH=f"/models/{TINY_MODEL}.gguf",  # as the server's .env: its model's queue
    )  # fmt: skip


def run(app: Celery, task: str, **kwargs: Any) -> Any:
    return run_task(app, task, RESULT_TIMEOUT, **kwargs)


def test_generate(app: Celery, worker: WorkerProcess) -> None:
    result = run(app, "generate", prompt="Once upon a time", max_tokens=16, temperature=0,
                 raw=True)  # fmt: skip
    assert isinstance(result["text"], str)
    assert result["model"] == "tiny-llama"
    assert 0 < result["completion_tokens"] <= 16
    assert result["prompt_tokens"] > 0
    assert result["finish_reason"] in ("stop", "length")
    assert result["guard"] == "raw"


def test_chat(app: Celery, worker: WorkerProcess) -> None:
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    result = run(app, "chat", messages=messages, max_tokens=16, temperature=0)
    assert isinstance(result["text"], str)
    assert 0 < result["completion_tokens"] <= 16


def test_summarize_splits_a_document_longer_than_the_context(
    app: Celery, worker: WorkerProcess, llama_server: LlamaCppContainer
) -> None:
    assert len(DOCUMENT) > 512  # the tiny model spends at least a token per character
    result = run(app, "summarize", document=DOCUMENT, max_tokens=48, temperature=0)
    assert result["chunks"] > 1
    assert result["rounds"] in (1, 2)  # 2: some chunk's answer looped and was asked again
    assert isinstance(result["text"], str)
    assert result["completion_tokens"] > 0


def test_a_prompt_longer_than_the_context_fails_without_retrying(
    app: Celery, worker: WorkerProcess, redis_server: RedisContainer, worker_env: dict[str, str]
) -> None:
    sent = app.send_task("worker.tasks.generate", kwargs={"prompt": "word " * 600})
    with pytest.raises(Exception) as caught:
        sent.get(timeout=RESULT_TIMEOUT)
    assert type(caught.value).__name__ == "ContextExceeded"
    assert "context" in str(caught.value)
    counts = probe_counts(redis_server.client(db=int(worker_env["REDIS_DB"])))
    assert counts["started"][sent.id] == 1
    assert sent.id not in counts["retried"]


def test_invalid_input_fails_at_once_with_a_clear_message(
    app: Celery, worker: WorkerProcess
) -> None:
    sent = app.send_task("worker.tasks.generate", kwargs={"prompt": "", "max_tokens": 8})
    with pytest.raises(Exception, match="prompt is empty") as caught:
        sent.get(timeout=RESULT_TIMEOUT)
    assert type(caught.value).__name__ == "InvalidInput"


def test_the_redis_password_never_reaches_the_log(
    worker: WorkerProcess, redis_server: RedisContainer
) -> None:
    log = worker.log_text()
    assert "ready." in log
    assert redis_server.password not in log
    assert "redis://:**@" in log


# --- invoke ask's helper, in a process of its own ---------------------------------------------

ASK = """
import sys
from kcdev.errors import UserError
from worker.cli import ask
model = sys.argv[4] if len(sys.argv) > 4 else None
try:
    answer = ask(sys.argv[1], sys.argv[2], None, float(sys.argv[3]), lambda _: None, model)
except UserError as exc:
    print(f"error: {exc}", file=sys.stderr)
    sys.exit(1)
print(f"{answer.seconds:.2f} {len(answer.text)}")
"""


def ask(
    env: dict[str, str], task: str, prompt: str, timeout: float = 60, model: str | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", ASK, task, prompt, str(timeout), *([model] if model else [])],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=180, check=False,
    )  # fmt: skip


def test_ask_prints_the_answer(worker_env: dict[str, str], worker: WorkerProcess) -> None:
    done = ask(worker_env, "generate", "Hello")
    assert done.returncode == 0, done.stderr
    seconds, _ = done.stdout.split()
    assert 0 < float(seconds) < 60


def test_ask_with_a_model_runs_on_a_worker_serving_it(
    worker_env: dict[str, str], worker: WorkerProcess
) -> None:
    done = ask(worker_env, "generate", "Hello", model=TINY_MODEL)
    assert done.returncode == 0, done.stderr


def test_ask_for_a_model_nobody_serves_fails_at_once(
    worker_env: dict[str, str], worker: WorkerProcess
) -> None:
    done = ask(worker_env, "generate", "Hello", timeout=600, model="gpt-unknown")
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [
        f"error: no worker serves model 'gpt-unknown' (workers serve {TINY_MODEL}): start a "
        "worker beside a server of it, or leave out --model"
    ]


def test_ask_says_when_no_worker_consumes(worker_env: dict[str, str]) -> None:
    env = {**worker_env, "REDIS_DB": "13"}  # a database no worker listens on
    done = ask(env, "generate", "Hello")
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [
        "error: no worker is consuming tasks: start one with `invoke worker`"
    ]


def test_ask_says_when_redis_is_down(worker_env: dict[str, str]) -> None:
    done = ask({**worker_env, "REDIS_PORT": str(free_port())}, "generate", "Hello")
    assert done.returncode == 1
    [line] = done.stderr.strip().splitlines()
    assert line.startswith("error: Redis at 127.0.0.1:") and "is not answering" in line


def test_ask_says_when_the_password_is_wrong(worker_env: dict[str, str]) -> None:
    done = ask({**worker_env, "REDIS_PASSWORD": "not-the-password-42"}, "generate", "Hello")
    assert done.returncode == 1
    assert "refused the password: check REDIS_PASSWORD" in done.stderr
    assert "not-the-password-42" not in done.stderr


def test_ask_gives_up_after_its_timeout(
    worker_env: dict[str, str], worker: WorkerProcess, app: Celery
) -> None:
    # Long enough to take far more than the timeout: dozens of chunks, each a request.
    done = ask(worker_env, "summarize", DOCUMENT * 30, timeout=0.5)
    assert done.returncode == 1
    assert "no answer within 0.5 s" in done.stderr
    assert "cancelled" in done.stderr


def test_results_expire(app: Celery, worker: WorkerProcess, redis_server: RedisContainer,
                        worker_env: dict[str, str]) -> None:  # fmt: skip
    sent = app.send_task("worker.tasks.ping")
    assert sent.get(timeout=RESULT_TIMEOUT) == "pong"
    ttl = redis_server.client(db=int(worker_env["REDIS_DB"])).ttl(f"celery-task-meta-{sent.id}")
    assert 0 < ttl <= app.conf.result_expires
