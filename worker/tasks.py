"""The worker's tasks: generate, chat and summarize over the LLM server, and ping.

Each task validates its input first: bad input fails at once with a message saying what is wrong
(`InvalidInput`), where a retry could only fail the same way. Only `LLMUnavailable` (the server is
down, loading, busy or slow) is retried, with exponential backoff and jitter, a bounded number
of times; every other error fails the task for good. `chat` with a model that has no chat
template is such an error (`NoChatTemplate`): the answer would be junk.

Answers pass the repetition guard (worker/repetition.py) unless the caller asks for `raw`
output: an answer that loops is asked for once more with stronger damping, and whatever loop
remains is cut off; an answer the token limit cut short ends at its last full sentence.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import asdict
from typing import Any

from celery import Task
from celery.signals import worker_process_init

from kcdev.settings import load_settings
from worker import repetition
from worker import summarize as summarizing
from worker.celery_app import app
from worker.llm import Completion, LLMClient, LLMUnavailable, NoChatTemplate
from worker.sampling import Sampling

# Inputs larger than this are refused: they would bloat Redis messages, and beyond what a
# context holds a prompt is refused by the server anyway (after a trip through the queue).
MAX_PROMPT_CHARS = 100_000
# A summarize task reads its whole document in one task: about 50k tokens, a few minutes on a
# CPU, well within TASK_TIME_LIMIT's default. Longer documents belong in several tasks.
MAX_DOCUMENT_CHARS = 200_000
MAX_MESSAGES = 200
MAX_NEW_TOKENS = 8192
CHAT_ROLES = ("system", "user", "assistant")

# The first retry comes within 2 s, the next within 4, 8, 16 ... 300 s: Celery's "full jitter"
# draws each wait between 0 and that bound, so tasks that failed together do not all come back
# together. LLM_MAX_RETRIES bounds the count. With 5 retries a task's waits add up to 31 s on
# average, and about a third of the tasks caught by a 20 s server restart run out of them; with
# 10 they add up to about 9 minutes and a 20 s restart practically never exhausts them.
RETRY_BACKOFF = 2
RETRY_BACKOFF_MAX = 300

_settings = load_settings()
# httpx logs every request at INFO: a line per LLM call would drown the worker's own log.
logging.getLogger("httpx").setLevel(logging.WARNING)


class InvalidInput(ValueError):
    """The task's arguments are wrong: it fails at once, without retrying."""


def longest_retry_wait(visibility_timeout: int, task_time_limit: int) -> int:
    """Longest wait before a retry that cannot make Redis hand the task out twice.

    A retry waits inside the worker as an unacknowledged message; Redis redelivers it once the
    visibility timeout has passed since delivery, so the wait plus the run must end before that.
    """
    return max(1, min(RETRY_BACKOFF_MAX, (visibility_timeout - task_time_limit) // 2))


class LLMTask(Task):  # type: ignore[type-arg]
    """Base of the tasks that call the LLM server: the retry policy, declared once."""

    autoretry_for = (LLMUnavailable,)
    retry_backoff = RETRY_BACKOFF
    retry_backoff_max = longest_retry_wait(_settings.visibility_timeout, _settings.task_time_limit)
    retry_jitter = True
    max_retries = _settings.llm_max_retries


# One client per worker process: httpx clients are not to be shared across fork, and a
# long-lived one keeps its connections to the server open between tasks.
_clients: dict[int, LLMClient] = {}


def llm_client() -> LLMClient:
    """This process's LLM client, made on first use (tests replace this function)."""
    pid = os.getpid()
    if pid not in _clients:
        _clients.clear()  # a parent's client, inherited through fork: never use it
        _clients[pid] = LLMClient.from_settings(load_settings())
    return _clients[pid]


@worker_process_init.connect
def _fresh_client_after_fork(**_: Any) -> None:
    _clients.clear()


@app.task(base=LLMTask)
def generate(
    prompt: str, max_tokens: int = 256, temperature: float = 0.7, raw: bool = False
) -> dict[str, Any]:
    """Continue `prompt`: {text, model, finish_reason, prompt_tokens, completion_tokens, guard}.

    `raw`: the text exactly as the model wrote it, without the repetition guard.
    """
    _check_text("prompt", prompt, MAX_PROMPT_CHARS)
    _check_sampling(max_tokens, temperature)
    _check_raw(raw)
    llm = llm_client()
    return _answer(
        lambda sampling: llm.complete(
            prompt, max_tokens=max_tokens, temperature=temperature, sampling=sampling
        ),
        llm.sampling,
        raw,
    )


@app.task(base=LLMTask)
def chat(
    messages: list[dict[str, str]],
    max_tokens: int = 256,
    temperature: float = 0.7,
    raw: bool = False,
) -> dict[str, Any]:
    """The assistant's reply to `messages` ([{role, content}, ...]), shaped like `generate`'s.

    Fails at once (no retries) when the served model has no chat template.
    """
    _check_messages(messages)
    _check_sampling(max_tokens, temperature)
    _check_raw(raw)
    llm = llm_client()
    if not llm.has_chat_template():
        raise NoChatTemplate(
            f"the served model {llm.model()} has no chat template, so it cannot chat (its "
            f"answers would be junk): serve an instruct model, e.g. preset {_chat_preset()} "
            "(`invoke fetch-model`), or use generate"
        )
    return _answer(
        lambda sampling: llm.chat(
            messages, max_tokens=max_tokens, temperature=temperature, sampling=sampling
        ),
        llm.sampling,
        raw,
    )


@app.task(base=LLMTask)
def summarize(document: str, max_tokens: int = 256, temperature: float = 0.0) -> dict[str, Any]:
    """A summary of `document`, however long: {text, model, chunks, rounds, completion_tokens}.

    The summary says each sentence once and ends on a full sentence.
    """
    _check_text("document", document, MAX_DOCUMENT_CHARS)
    _check_sampling(max_tokens, temperature)
    summary = summarizing.summarize(
        llm_client(), document, max_tokens=max_tokens, temperature=temperature,
        parallel=_settings.n_parallel,
    )  # fmt: skip
    return asdict(summary)


def _answer(ask: Callable[[Sampling], Completion], sampling: Sampling, raw: bool) -> dict[str, Any]:
    """One answer through the repetition guard; `guard` in the result says what it did.

    guard: "raw" (not applied), "clean", "trimmed" (an unfinished end dropped), "cut" (a loop cut
    off), or "asked again" (the answer looped, and the second, more damped one is returned).
    """
    done = ask(sampling)
    if raw:
        return {**asdict(done), "guard": "raw"}
    first = repetition.guard(done.text, finished=done.finish_reason == "stop")
    if not first.looped:
        return {
            **asdict(done),
            "text": first.text,
            "guard": "trimmed" if first.trimmed else "clean",
        }
    again = ask(sampling.stronger())
    second = repetition.guard(again.text, finished=again.finish_reason == "stop")
    if not second.looped and len(second.text) >= len(first.text):
        return {**asdict(again), "text": second.text, "guard": "asked again"}
    return {**asdict(done), "text": first.text, "guard": "cut"}


def _chat_preset() -> str:
    """The catalogue's default llama.cpp model, which has a chat template (the catalogue checks)."""
    from kcdev.models.catalog import load_catalog

    return load_catalog().default_for("llamacpp").name


@app.task
def ping() -> str:
    """Answer at once without the LLM server: measures the queue's round trip."""
    return "pong"


# --- input checks ----------------------------------------------------------------------------


def _check_text(name: str, value: object, limit: int) -> None:
    if not isinstance(value, str):
        raise InvalidInput(f"{name} must be a string, not {type(value).__name__}")
    if not value.strip():
        raise InvalidInput(f"{name} is empty")
    if len(value) > limit:
        raise InvalidInput(f"{name} is {len(value):,} characters long: the limit is {limit:,}")


def _check_sampling(max_tokens: object, temperature: object) -> None:
    if not isinstance(max_tokens, int) or isinstance(max_tokens, bool):
        raise InvalidInput(f"max_tokens must be a whole number, not {type(max_tokens).__name__}")
    if not 1 <= max_tokens <= MAX_NEW_TOKENS:
        raise InvalidInput(f"max_tokens={max_tokens} is outside 1..{MAX_NEW_TOKENS}")
    if not isinstance(temperature, int | float) or isinstance(temperature, bool):
        raise InvalidInput(f"temperature must be a number, not {type(temperature).__name__}")
    if not 0 <= temperature <= 2:
        raise InvalidInput(f"temperature={temperature} is outside 0..2")


def _check_raw(raw: object) -> None:
    if not isinstance(raw, bool):
        raise InvalidInput(f"raw must be true or false, not {type(raw).__name__}")


def _check_messages(messages: object) -> None:
    if not isinstance(messages, list):
        raise InvalidInput(f"messages must be a list, not {type(messages).__name__}")
    if not 1 <= len(messages) <= MAX_MESSAGES:
        raise InvalidInput(f"messages has {len(messages)} entries: give 1 to {MAX_MESSAGES}")
    total = 0
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or set(message) != {"role", "content"}:
            raise InvalidInput(f"messages[{i}] must be {{'role': ..., 'content': ...}}")
        role, content = message["role"], message["content"]
        if role not in CHAT_ROLES:
            raise InvalidInput(f"messages[{i}] has role {role!r}: use one of {CHAT_ROLES}")
        if not isinstance(content, str):
            raise InvalidInput(f"messages[{i}].content must be a string")
        total += len(content)
    if not any(m["role"] == "user" and m["content"].strip() for m in messages):
        raise InvalidInput("messages has no user message with content")
    if total > MAX_PROMPT_CHARS:
        raise InvalidInput(
            f"messages are {total:,} characters long: the limit is {MAX_PROMPT_CHARS:,}"
        )
