"""An OpenAI-compatible LLM server in memory, behind `httpx.MockTransport`: no network at all.

It answers the routes each real server has, in that server's shapes (`kind`): llama-server
(/props, /tokenize with `content`), vLLM (max_model_len, /tokenize with `prompt` and `count`),
llama-cpp-python (/extras/tokenize/count) or a server with none of them. Like vLLM, it refuses a
request whose prompt plus max_tokens exceeds the context, with the error body of its kind, so
a test of chunking fails if a request would not fit a real server.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx

from worker.llm import LLAMA_SERVER_FALLBACK_TEMPLATE, LLMClient

# vLLM's refusal of a chat request for a model without a chat template (vLLM 0.6 and later).
VLLM_NO_TEMPLATE = (
    "As of transformers v4.44, default chat template is no longer allowed, so you must provide a "
    "chat template if the tokenizer does not define one."
)


def context_error(kind: str, wanted: int, n_ctx: int) -> dict[str, Any]:
    """The body each server kind answers (with 400) to a request longer than its context."""
    if kind == "llama-server":
        message = (
            f"request ({wanted} tokens) exceeds the available context size ({n_ctx} tokens), "
            "try increasing it"
        )
        return {"error": {"code": 400, "message": message, "type": "exceed_context_size_error"}}
    if kind == "llama-cpp-python":
        message = f"Requested tokens ({wanted}) exceed context window of {n_ctx}"
        return {"error": {"message": message, "type": "invalid_request_error",
                          "code": "context_length_exceeded"}}  # fmt: skip
    message = (
        f"This model's maximum context length is {n_ctx} tokens. However, you requested "
        f"{wanted} tokens. Please reduce the length of the messages or completion."
    )
    return {"object": "error", "message": message, "type": "BadRequestError", "code": 400}


Reply = Callable[[str, int], str]


def short_reply(prompt: str, max_tokens: int) -> str:
    """A few words, never more than max_tokens allows: what a well-behaved model writes."""
    return " ".join(["gist"] * max(1, min(max_tokens // 2, 6)))


@dataclass
class FakeLLMServer:
    kind: str = "llama-server"
    model: str = "fake-model"
    n_ctx: int = 512
    # The server's tokenizer: one token per this many characters, rounded up.
    chars_per_token: int = 4
    reply: Reply = short_reply
    # The model's chat template; None: a base model without one (llama-server then reports its
    # ChatML fallback in /props, vLLM refuses chat requests).
    chat_template: str | None = "{% for m in messages %}{{ m.content }}{% endfor %}"
    # Served, in order, instead of the next generation requests: a Response or an exception.
    failures: list[httpx.Response | Exception] = field(default_factory=list)
    finish_reason: str = "stop"  # what every answer reports: "length" = cut by max_tokens
    requests: list[httpx.Request] = field(default_factory=list)

    def tokens(self, text: str) -> int:
        return math.ceil(len(text) / self.chars_per_token)

    def client(self, **kwargs: Any) -> LLMClient:
        http = httpx.Client(base_url="http://llm.test", transport=httpx.MockTransport(self.handle))
        return LLMClient(http, **kwargs)

    def generation_requests(self) -> list[dict[str, Any]]:
        return [
            json.loads(r.content)
            for r in self.requests
            if r.url.path in ("/v1/completions", "/v1/chat/completions")
        ]

    def handle(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        path = request.url.path
        body = json.loads(request.content) if request.content else {}
        if path in ("/v1/completions", "/v1/chat/completions") and self.failures:
            failure = self.failures.pop(0)
            if isinstance(failure, Exception):
                raise failure
            return failure
        if path == "/v1/models" and request.method == "GET":
            entry: dict[str, Any] = {"id": self.model, "object": "model"}
            if self.kind == "vllm":
                entry["max_model_len"] = self.n_ctx
            return httpx.Response(200, json={"object": "list", "data": [entry]})
        if path == "/props" and self.kind == "llama-server":
            return httpx.Response(200, json={
                "default_generation_settings": {"n_ctx": self.n_ctx},
                "chat_template": self.chat_template or LLAMA_SERVER_FALLBACK_TEMPLATE,
            })  # fmt: skip
        if path == "/tokenize" and self.kind == "llama-server":
            return httpx.Response(200, json={"tokens": list(range(self.tokens(body["content"])))})
        if path == "/tokenize" and self.kind == "vllm":
            count = self.tokens(body["prompt"])
            return httpx.Response(200, json={"count": count, "max_model_len": self.n_ctx})
        if path == "/extras/tokenize/count" and self.kind == "llama-cpp-python":
            return httpx.Response(200, json={"count": self.tokens(body["input"])})
        if path == "/v1/completions":
            return self._generate(body["prompt"], body, chat=False)
        if path == "/v1/chat/completions":
            if self.kind == "vllm" and self.chat_template is None:
                error = {"object": "error", "message": VLLM_NO_TEMPLATE, "type": "BadRequestError"}
                return httpx.Response(400, json=error)
            prompt = "\n".join(m["content"] for m in body["messages"])
            return self._generate(prompt, body, chat=True)
        return httpx.Response(404, json={"detail": "Not Found"})

    def _generate(self, prompt: str, body: dict[str, Any], *, chat: bool) -> httpx.Response:
        wanted = self.tokens(prompt) + body["max_tokens"]
        if wanted > self.n_ctx:
            return httpx.Response(400, json=context_error(self.kind, wanted, self.n_ctx))
        text = self.reply(prompt, body["max_tokens"])
        choice: dict[str, Any] = {"index": 0, "finish_reason": self.finish_reason}
        if chat:
            choice["message"] = {"role": "assistant", "content": text}
        else:
            choice["text"] = text
        usage = {"prompt_tokens": self.tokens(prompt), "completion_tokens": self.tokens(text)}
        return httpx.Response(200, json={"model": self.model, "choices": [choice], "usage": usage})
