"""The LLM client: one long-lived httpx client speaking the OpenAI-compatible API.

The same calls work against llama.cpp's `llama-server`, the llama-cpp-python server and vLLM; where
they differ (context size, token counting) the client asks the route each server has and falls back
to a configured or estimated value.

It also finds out whether the served model has a chat template (instruct models do, base models
do not), since chatting with a model that has none returns junk rather than an error:
llama-server reports its template in `/props` (`chat_template`), and for a model without one
reports the ChatML template it falls back to; vLLM refuses a chat request for such a model with a
400 naming the chat template, so one tiny chat request tells; llama-cpp-python reports nothing, so
the GGUF file the settings point at is read when it is on this machine and is the one served,
and otherwise the model is taken to have one (the default model does).

Every generation request carries the sampling settings that damp repetition (worker/sampling.py),
in the names of the server at hand.

Failures become one of a few errors that say what the caller can do: `LLMUnavailable` may succeed
later (Celery retries it), every other `LLMError` will fail again with the same input.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeGuard

import httpx

from kcdev import chat_template
from kcdev.settings import Settings
from worker.sampling import Sampling

# A connection to a local server is made in milliseconds; waiting long only delays the retry.
CONNECT_TIMEOUT = 5.0
# Used only where the server cannot count tokens itself. English averages about 4 characters per
# token; 3 overestimates the count, so chunks stay under the context (code and non-Latin scripts
# run denser, which is why summarizing also splits a chunk the server still rejects).
ESTIMATED_CHARS_PER_TOKEN = 3.0
# Status codes worth another attempt, as OpenAI's own client library decides: the request timed
# out (408), conflicted (409), was throttled (429) or the server failed or is not ready (5xx;
# llama-server answers 503 while it loads the model and when every slot is busy).
RETRYABLE_STATUS = frozenset({408, 409, 429})
# How servers word "the prompt does not fit": llama-server ("exceeds the available context size",
# type exceed_context_size_error), llama-cpp-python ("exceed context window",
# code context_length_exceeded), vLLM ("maximum context length is N tokens").
CONTEXT_EXCEEDED = re.compile(r"context|too (long|large)|max(imum)?[ _]model[ _]len", re.IGNORECASE)
ERROR_TEXT_LIMIT = 300
# The template llama-server uses when the model has none (CHATML_TEMPLATE_SRC in llama.cpp's
# common/chat.cpp, the sources the llama-cpp-python 0.3.36 sdist vendors): /props reports it as
# if it were the model's, and it is the only sign that the model brought no template of its own.
LLAMA_SERVER_FALLBACK_TEMPLATE = (
    "{%- for message in messages -%}\n"
    "  {{- '<|im_start|>' + message.role + '\n' + message.content + '<|im_end|>\n' -}}\n"
    "{%- endfor -%}\n"
    "{%- if add_generation_prompt -%}\n"
    "  {{- '<|im_start|>assistant\n' -}}\n"
    "{%- endif -%}"
)
# How vLLM words a chat request to a model without a template ("... you must provide a chat
# template if the tokenizer does not define one").
NO_TEMPLATE_ERROR = re.compile(r"chat[ _]template", re.IGNORECASE)


class LLMError(Exception):
    """The LLM server could not give an answer. Carries one message, so it survives JSON results."""


class LLMUnavailable(LLMError):
    """Unreachable, timed out, loading, busy or throttled: the same request may succeed later."""


class LLMRejected(LLMError):
    """The server refused this request (4xx): sending it again gives the same answer."""


class ContextExceeded(LLMRejected):
    """The prompt and the tokens asked for do not fit the model's context."""


class NoChatTemplate(LLMRejected):
    """The served model has no chat template: chatting with it gives junk, so it is refused."""


class LLMProtocolError(LLMError):
    """The server answered something that is not the OpenAI-compatible API."""


@dataclass(frozen=True)
class ServerInfo:
    kind: str  # llama-server, vllm or other (llama-cpp-python, or a server we do not know)
    context: int  # tokens one request may span, prompt and completion together
    chat_template: bool | None = None  # None: not known from the discovery requests


# For servers that do not say (llama-cpp-python): given the model id the server lists, whether
# the model file behind it has a chat template, or None when that file cannot be looked at.
LocalTemplate = Callable[[str], bool | None]


@dataclass(frozen=True)
class Completion:
    text: str
    model: str
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int


def _error_text(response: httpx.Response) -> str:
    """The server's own error message: `{"error": {"message"}}`, `{"message"}` or the raw body."""
    try:
        body = response.json()
    except ValueError:
        return response.text.strip()[:ERROR_TEXT_LIMIT] or response.reason_phrase
    message: Any = body
    if isinstance(body, dict):
        error = body.get("error", body)
        message = error.get("message", error) if isinstance(error, dict) else error
        if isinstance(body.get("detail"), str):  # FastAPI's shape (llama-cpp-python)
            message = body["detail"]
    return str(message)[:ERROR_TEXT_LIMIT]


class LLMClient:
    """An OpenAI-compatible LLM server, reached through one injected `httpx.Client`.

    `model` pins the model name sent with each request; without it the first model the server
    lists is used (llama.cpp servers serve exactly one). `fallback_context` is the context size
    assumed where the server does not report one (llama-cpp-python).
    """

    def __init__(
        self,
        http: httpx.Client,
        *,
        model: str | None = None,
        fallback_context: int = 4096,
        sampling: Sampling | None = None,
        local_template: LocalTemplate | None = None,
    ) -> None:
        self.http = http
        self._pinned_model = model
        self._model = model
        self.fallback_context = fallback_context
        self.sampling = sampling or Sampling()
        self._local_template = local_template
        self._server: ServerInfo | None = None
        self._chat_template: bool | None = None
        # llama-cpp-python counts tokens at /extras/tokenize/count; dropped once it is missing.
        self._extras_tokenize = True

    @classmethod
    def from_settings(
        cls, settings: Settings, transport: httpx.BaseTransport | None = None
    ) -> LLMClient:
        # LLM_SERVER_URL is the server's root; tolerate a copied ".../v1" base URL too.
        base_url = settings.llm_server_url.removesuffix("/v1")
        # The stack's servers answer only requests that carry LLM_API_KEY (401 otherwise).
        key = settings.llm_api_key
        http = httpx.Client(
            base_url=base_url,
            timeout=httpx.Timeout(
                settings.llm_timeout, connect=min(CONNECT_TIMEOUT, settings.llm_timeout)
            ),
            headers={"Authorization": f"Bearer {key}"} if key else None,
            transport=transport,
        )
        return cls(
            http, model=settings.served_model_name or None, fallback_context=settings.n_ctx,
            sampling=Sampling.from_settings(settings), local_template=_gguf_on_disk(settings),
        )  # fmt: skip

    def close(self) -> None:
        self.http.close()

    # --- transport --------------------------------------------------------------------------

    def _request(
        self,
        method: str,
        path: str,
        payload: Mapping[str, Any] | None = None,
        *,
        optional: bool = False,
    ) -> Any:
        """Send one request and return its JSON body, or raise the LLMError saying what to do.

        With `optional`, a route this server does not have (404, 405, 501) gives None.
        """
        try:
            response = self.http.request(method, path, json=payload)
        except httpx.TimeoutException as exc:
            self._forget_server()
            raise LLMUnavailable(f"LLM server timed out on {path} ({type(exc).__name__})") from exc
        except httpx.TransportError as exc:
            self._forget_server()
            reason = str(exc) or type(exc).__name__
            raise LLMUnavailable(f"LLM server unreachable on {path}: {reason}") from exc
        status = response.status_code
        if optional and status in (404, 405, 501):
            return None
        if status >= 400:
            message = f"LLM server answered {status} on {path}: {_error_text(response)}"
            if status in RETRYABLE_STATUS or status >= 500:
                raise LLMUnavailable(message)
            if status in (400, 413) and CONTEXT_EXCEEDED.search(message):
                raise ContextExceeded(message)
            raise LLMRejected(message)
        try:
            return response.json()
        except ValueError as exc:
            raise LLMProtocolError(f"LLM server sent no JSON on {path}") from exc

    def _forget_server(self) -> None:
        """A server that went away may come back with another model or context: ask again."""
        self._model = self._pinned_model
        self._server = None
        self._chat_template = None

    # --- discovery --------------------------------------------------------------------------

    def models(self) -> list[dict[str, Any]]:
        body = self._request("GET", "/v1/models")
        data = _dig(body, "data")
        if not isinstance(data, list) or not all(isinstance(m, dict) and "id" in m for m in data):
            raise LLMProtocolError("LLM server's /v1/models has no list of models with ids")
        return data

    def model(self) -> str:
        """The model name requests carry: the configured one, else the first the server lists."""
        if self._model is None:
            listed = self.models()
            if not listed:
                raise LLMUnavailable("LLM server lists no model yet")
            self._model = str(listed[0]["id"])
        return self._model

    def server(self) -> ServerInfo:
        """Which server this is and its context size, asked once (again after it went away).

        llama-server reports its per-slot context in /props, vLLM its max_model_len in the model
        list; elsewhere (llama-cpp-python) the configured fallback is assumed.
        """
        if self._server is None:
            props = self._request("GET", "/props", optional=True)
            n_ctx = _dig(props, "default_generation_settings", "n_ctx")
            if _positive_int(n_ctx):
                template = _dig(props, "chat_template")
                has = (
                    isinstance(template, str)
                    and template.strip() != ""
                    and (template != LLAMA_SERVER_FALLBACK_TEMPLATE)
                )
                self._server = ServerInfo("llama-server", n_ctx, has)
            else:
                listed = self.models()
                if self._model is None and listed:
                    self._model = str(listed[0]["id"])
                entry = next((m for m in listed if m["id"] == self._model), {})
                max_len = entry.get("max_model_len")
                if _positive_int(max_len):
                    self._server = ServerInfo("vllm", max_len)
                else:
                    self._server = ServerInfo("other", self.fallback_context)
        return self._server

    def context_size(self) -> int:
        """Tokens one request may span: prompt plus completion."""
        return self.server().context

    def has_chat_template(self) -> bool:
        """Whether the served model has a chat template of its own, asked once per server.

        llama-server: from /props. vLLM: a one-token chat request, which it refuses (400, naming
        the chat template) for a model without one. Others (llama-cpp-python): the GGUF file on
        this machine when it is the one served, else assumed (the default model has one).
        """
        if self._chat_template is None:
            server = self.server()
            if server.chat_template is not None:
                self._chat_template = server.chat_template
            elif server.kind == "vllm":
                self._chat_template = self._vllm_chat_works()
            else:
                local = self._local_template(self.model()) if self._local_template else None
                self._chat_template = True if local is None else local
        return self._chat_template

    def _vllm_chat_works(self) -> bool:
        probe = {"role": "user", "content": "Hi"}
        try:
            self.chat([probe], max_tokens=1, temperature=0, sampling=Sampling())
        except NoChatTemplate:
            return False
        return True

    def count_tokens(self, text: str) -> int:
        """Tokens `text` takes, by the server's own tokenizer where it exposes one.

        llama-server and vLLM have /tokenize (with different bodies), llama-cpp-python
        /extras/tokenize/count; any other server gets a conservative estimate.
        """
        kind = self.server().kind
        count: Any = None
        if kind == "llama-server":
            tokens = _dig(self._request("POST", "/tokenize", {"content": text}), "tokens")
            count = len(tokens) if isinstance(tokens, list) else None
        elif kind == "vllm":
            body = {"model": self.model(), "prompt": text, "add_special_tokens": False}
            count = _dig(self._request("POST", "/tokenize", body), "count")
        elif self._extras_tokenize:
            body = {"input": text}
            count = _dig(
                self._request("POST", "/extras/tokenize/count", body, optional=True), "count"
            )
            self._extras_tokenize = isinstance(count, int)  # else: not llama-cpp-python
        if isinstance(count, int) and not isinstance(count, bool):
            return count
        if kind != "other":
            raise LLMProtocolError(f"LLM server's /tokenize ({kind}) sent no token count")
        return math.ceil(len(text) / ESTIMATED_CHARS_PER_TOKEN)

    # --- generation -------------------------------------------------------------------------

    def complete(
        self,
        prompt: str,
        *,
        max_tokens: int,
        temperature: float,
        stop: Sequence[str] = (),
        sampling: Sampling | None = None,
    ) -> Completion:
        """Continue `prompt`: works with base models, which have no chat template.

        `sampling` replaces the client's own for this request (e.g. stronger damping).
        """
        payload: dict[str, Any] = {
            "model": self.model(),
            "prompt": prompt,
            "max_tokens": max_tokens,
            "temperature": temperature,
            **self._sampling_fields(sampling),
        }
        if stop:
            payload["stop"] = list(stop)
        body = self._request("POST", "/v1/completions", payload)
        return self._completion(body, lambda choice: choice.get("text"))

    def chat(
        self,
        messages: Sequence[Mapping[str, str]],
        *,
        max_tokens: int,
        temperature: float,
        sampling: Sampling | None = None,
    ) -> Completion:
        """The assistant's next turn after `messages`, formatted by the model's chat template."""
        payload = {
            "model": self.model(),
            "messages": [dict(m) for m in messages],
            "max_tokens": max_tokens,
            "temperature": temperature,
            **self._sampling_fields(sampling),
        }
        try:
            body = self._request("POST", "/v1/chat/completions", payload)
        except LLMRejected as exc:
            if NO_TEMPLATE_ERROR.search(str(exc)):
                raise NoChatTemplate(str(exc)) from None
            raise
        return self._completion(body, lambda choice: _dig(choice, "message", "content"))

    def _sampling_fields(self, sampling: Sampling | None) -> dict[str, Any]:
        chosen = sampling or self.sampling
        if chosen.neutral:
            return {}  # neutral: nothing to send, and no need to ask which server this is
        return chosen.payload(self.server().kind)

    def _completion(self, body: Any, text_of: Any) -> Completion:
        choices = _dig(body, "choices")
        if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
            raise LLMProtocolError("LLM server's answer has no choices")
        text = text_of(choices[0])
        if text is None:
            text = ""  # a chat turn that is all tool calls or reasoning has no content
        if not isinstance(text, str):
            raise LLMProtocolError("LLM server's answer has no text")
        usage = body.get("usage") or {}
        return Completion(
            text=text,
            model=str(body.get("model") or self.model()),
            finish_reason=str(choices[0].get("finish_reason") or ""),
            prompt_tokens=int(usage.get("prompt_tokens") or 0),
            completion_tokens=int(usage.get("completion_tokens") or 0),
        )


def _gguf_on_disk(settings: Settings) -> LocalTemplate:
    """Whether the GGUF file MODEL_PATH names has a template, if that is the model served.

    The file is only trusted when the server lists it under the name the stack gives it (the
    file's name without .gguf, or SERVED_MODEL_NAME): a worker pointed at another server must
    not judge that server's model by a file it happens to have.
    """
    path = Path(settings.gguf_dir) / settings.model_path.removeprefix("/models/")

    def look(served: str) -> bool | None:
        if served != settings.served_model("llamacpp") or not path.is_file():
            return None
        return chat_template.gguf_has_template(path)

    return look


def _positive_int(value: Any) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def _dig(value: Any, *keys: str) -> Any:
    """value[k1][k2]... or None where any level is missing or not a mapping."""
    for key in keys:
        if not isinstance(value, dict):
            return None
        value = value.get(key)
    return value
