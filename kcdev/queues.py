"""Which queues a worker consumes: the shared default queue, and the queue of its server's model.

A cluster can serve several models at once (a llama.cpp node and a vLLM node, say). Every worker
consumes the queue named after the model its own LLM server serves, so a task sent to
`model.<name>` runs only where that model answers; tasks that name no model go to the shared
default queue, which every worker consumes. The names are plain Redis lists, as kombu keeps them.
"""

from __future__ import annotations

from kcdev.settings import Settings

DEFAULT_QUEUE = "celery"
MODEL_QUEUE_PREFIX = "model."
# Where the worker's fetch moves what is not a kombu message, per queue (worker/reliable_fetch.py).
DEAD_LETTER_PREFIX = "kc.dead-letter."


def dead_letter_key(queue: str) -> str:
    return DEAD_LETTER_PREFIX + queue


def model_queue(model: str) -> str:
    return MODEL_QUEUE_PREFIX + model


def served_model(settings: Settings) -> str | None:
    """The model this machine's LLM server serves, by the settings; None without a server."""
    if settings.llm_backend == "none":
        return None
    return settings.served_model(settings.llm_backend)


def queues_for(settings: Settings) -> list[str]:
    """The queues a worker with these settings consumes: its model's first, then the shared one."""
    model = served_model(settings)
    return [model_queue(model), DEFAULT_QUEUE] if model else [DEFAULT_QUEUE]


def model_of(queue: str) -> str | None:
    """The model a queue is for, or None for the shared queue (or any other)."""
    return queue.removeprefix(MODEL_QUEUE_PREFIX) if queue.startswith(MODEL_QUEUE_PREFIX) else None
