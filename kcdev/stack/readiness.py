"""Waiting until the stack really serves, not just until its processes run.

Redis counts as ready when it answers with the configured password and is not loading a dataset;
an LLM server when it lists the configured model and answers a one-token completion (vLLM's
/health says 200 before an engine that will fail on its first request has failed), both asked
with its API key. A wait that lasts reports what it waits for every PROGRESS_EVERY seconds.
"""

from __future__ import annotations

import functools
import ssl
import time
from collections.abc import Callable

import httpx
import redis

from kcdev import redis_client

POLL = 0.1
# Seconds between two "still waiting" lines.
PROGRESS_EVERY = 10.0


@functools.cache
def _tls_context() -> ssl.SSLContext:
    """httpx's default TLS context, built once: each new client would load the CA store again,
    40 ms per probe here, for servers that are mostly plain http on 127.0.0.1."""
    return httpx.create_ssl_context()


class NotReady(Exception):
    """The last reason a service was not ready when the deadline passed."""


def redis_ready(host: str, port: int, password: str, db: int = 0) -> str | None:
    """None when ready, else why not."""
    return client_ready(
        redis_client.client(host, port, password, db=db, timeout=2, connect_timeout=2)
    )


def client_ready(client: redis.Redis) -> str | None:
    """None when Redis answers `client` and has loaded its data, else why not; closes `client`."""
    try:
        loading = client.info("persistence").get("loading")
        return None if loading == 0 else "Redis is loading its dataset"
    except redis.AuthenticationError:
        return "Redis refused the password: check REDIS_PASSWORD"
    except redis.RedisError as exc:
        return f"Redis does not answer ({exc})"
    finally:
        client.close()


def auth_headers(api_key: str) -> dict[str, str]:
    """What every request to the LLM server carries: its API key, when there is one."""
    return {"Authorization": f"Bearer {api_key}"} if api_key else {}


def llm_ready(base_url: str, model: str, api_key: str = "", timeout: float = 10) -> str | None:
    """None when `model` is listed and a one-token completion answers, else why not."""
    try:
        with httpx.Client(
            base_url=base_url, timeout=timeout, verify=_tls_context(), headers=auth_headers(api_key)
        ) as client:
            listed = client.get("/v1/models")
            if listed.status_code == 401:
                return "the server refuses LLM_API_KEY (401): it runs with another key"
            if listed.status_code != 200:
                return f"model list answered {listed.status_code}"
            ids = [entry.get("id") for entry in listed.json()["data"]]
            if model not in ids:
                return f"server lists {ids}, not {model!r}"
            done = client.post(
                "/v1/completions",
                json={"model": model, "prompt": "Hi", "max_tokens": 1, "temperature": 0},
            )
            if done.status_code != 200:
                return f"one-token completion answered {done.status_code}: {done.text[:200]}"
    except httpx.HTTPError as exc:
        return f"LLM server does not answer ({type(exc).__name__})"
    except (ValueError, KeyError, TypeError, AttributeError):
        return "LLM server's answer is not an OpenAI-compatible model list"
    return None


def llm_refuses_anonymous(base_url: str, model: str, timeout: float = 10) -> str | None:
    """None when a completion asked without the key and from a foreign web page's origin is
    refused (401), else what the server did: a server that answers it serves any web page the
    developer opens, whatever address it is bound to."""
    try:
        with httpx.Client(base_url=base_url, timeout=timeout, verify=_tls_context()) as client:
            answer = client.post(
                "/v1/completions",
                headers={"Origin": "http://example.invalid"},
                json={"model": model, "prompt": "Hi", "max_tokens": 1, "temperature": 0},
            )
    except httpx.HTTPError as exc:
        return f"LLM server does not answer ({type(exc).__name__})"
    if answer.status_code == 401:
        return None
    return f"it answered {answer.status_code} to a request without LLM_API_KEY"


def wait_until(
    check: Callable[[], str | None],
    deadline: float,
    progress: Callable[[str, float], None] | None = None,
) -> None:
    """Poll `check` until it reports ready; raise NotReady with its last reason at the deadline.

    Every PROGRESS_EVERY seconds of waiting, `progress` hears the latest reason and the seconds
    waited so far, so a long wait is never silent.
    """
    started = time.monotonic()
    reported = started
    while True:
        reason = check()
        if reason is None:
            return
        now = time.monotonic()
        if now >= deadline:
            raise NotReady(reason)
        if progress is not None and now - reported >= PROGRESS_EVERY:
            reported = now
            progress(reason, now - started)
        time.sleep(POLL)
