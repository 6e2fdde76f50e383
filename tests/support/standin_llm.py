"""A stand-in OpenAI-compatible LLM server that answers every completion after a fixed delay.

    python3 standin_llm.py [--port 8000] [--latency 0.5] [--model standin]

Scaling workers is about how many requests are in flight at once, not about how fast a model
computes: with a fixed latency per request and no CPU spent on it, tasks per second measure the
workers alone, whatever this 2-core machine's load. Standard library only, so it runs in any of
the stack's images (mounted as a file); one thread per request, so it never queues them.
It answers what the worker asks a llama-server: /health, /v1/models, /props, /tokenize, and
/v1/completions and /v1/chat/completions.
"""

from __future__ import annotations

import argparse
import json
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

N_CTX = 4096
REPLY = "A short answer, the same every time."


def make_handler(model: str, latency: float) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive: the worker's client reuses its connection

        def log_message(self, format: str, *args: Any) -> None:
            return  # a line per request would cost more than the request

        def _send(self, status: int, body: dict[str, Any]) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _body(self) -> dict[str, Any]:
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b"{}"
            parsed = json.loads(raw or b"{}")
            return parsed if isinstance(parsed, dict) else {}

        def do_GET(self) -> None:
            if self.path == "/health":
                self._send(200, {"status": "ok"})
            elif self.path == "/v1/models":
                self._send(200, {"object": "list", "data": [{"id": model, "object": "model"}]})
            elif self.path == "/props":
                self._send(
                    200, {"default_generation_settings": {"n_ctx": N_CTX}, "chat_template": ""}
                )
            else:
                self._send(404, {"error": {"message": "not found"}})

        def do_POST(self) -> None:
            body = self._body()
            if self.path == "/tokenize":
                text = str(body.get("content", ""))
                self._send(200, {"tokens": list(range(max(1, len(text) // 4)))})
                return
            if self.path not in ("/v1/completions", "/v1/chat/completions"):
                self._send(404, {"error": {"message": "not found"}})
                return
            time.sleep(latency)
            choice: dict[str, Any] = {"index": 0, "finish_reason": "stop"}
            if self.path == "/v1/completions":
                choice["text"] = REPLY
            else:
                choice["message"] = {"role": "assistant", "content": REPLY}
            usage = {"prompt_tokens": 8, "completion_tokens": 8}
            self._send(200, {"model": model, "choices": [choice], "usage": usage})

    return Handler


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--latency", type=float, default=0.5, help="seconds per completion")
    parser.add_argument("--model", default="standin")
    args = parser.parse_args()
    server = ThreadingHTTPServer(("0.0.0.0", args.port), make_handler(args.model, args.latency))
    server.daemon_threads = True
    server.serve_forever()


if __name__ == "__main__":
    main()
