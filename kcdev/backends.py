"""The stack's backends and services: the one list that settings, compose, models and tasks use."""

from __future__ import annotations

# Backends that serve a model, and so have model files and presets.
LLM_BACKENDS = ("llamacpp", "vllm")
# What `invoke up --backend` accepts: `none` is Redis alone.
BACKENDS = (*LLM_BACKENDS, "none")

REDIS = "redis"
LLM_SERVER = "llm-server"
# Optional services: workers as containers (`invoke up --workers N`) and Flower (`--monitor`).
WORKER = "worker"
FLOWER = "flower"
SERVICES = (REDIS, LLM_SERVER, WORKER, FLOWER)


def services_for(backend: str) -> list[str]:
    """The compose services a backend's stack runs (without workers or Flower)."""
    return [REDIS] if backend == "none" else [REDIS, LLM_SERVER]
