"""A local HTTP file server whose misbehaviours the tests switch on, one request at a time.

Real servers and CDNs resume with Range, ignore it, change a file under its ETag, drop the
connection half-way, stop sending without closing it, serve the wrong bytes, or crawl; the
download code has to cope with each, so this server does each on demand. It binds 127.0.0.1 only
and serves files from memory or, for the benchmark's gigabyte, from disk with `socket.sendfile`
so that it is never the bottleneck.

    with LocalServer() as server:
        server.add("/model.gguf", b"...", etag='"v1"')
        server.cut_next("/model.gguf", after=1000)   # the next GET of it stops after 1000 bytes
        server.stall_next("/model.gguf", after=1000, seconds=10)  # ... then sends nothing for 10 s
        url = server.url("/model.gguf")
"""

from __future__ import annotations

import http.server
import json
import re
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import pytest

# Handlers answer dynamic routes (the Hub and PyPI stand-ins): they get the request and reply.
Route = Callable[["Request"], "Reply"]


@dataclass
class Resource:
    """One file the server serves, and how it misbehaves when asked."""

    content: bytes | Path
    etag: str | None = '"v1"'
    last_modified: str | None = None
    ranges: bool = True  # False: answer every GET with 200 and the whole file
    status: int | None = None  # answer this status (401, 404, ...) instead of the file
    bytes_per_second: float | None = None  # throttle the body
    cuts: list[int] = field(default_factory=list)  # per GET, in order: stop after N body bytes
    # per GET, in order: after N body bytes send nothing for S seconds (connection open), then close
    stalls: list[tuple[int, float]] = field(default_factory=list)
    statuses: list[int] = field(default_factory=list)  # per GET, in order: answer this instead
    headers: dict[str, str] = field(default_factory=dict)

    @property
    def size(self) -> int:
        return self.content.stat().st_size if isinstance(self.content, Path) else len(self.content)


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    headers: dict[str, str]  # lower-case names
    body: bytes


@dataclass
class Reply:
    """What a dynamic route answers: a status and a body, or a file to serve like any other."""

    status: int = 200
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    resource: Resource | None = None

    @classmethod
    def json(cls, data: Any, status: int = 200, headers: dict[str, str] | None = None) -> Reply:
        headers = {"Content-Type": "application/json", **(headers or {})}
        return cls(status, json.dumps(data).encode(), headers)

    @classmethod
    def redirect(cls, location: str) -> Reply:
        return cls(302, b"", {"Location": location})


@dataclass(frozen=True)
class Served:
    """One request as the server saw it: for assertions on what the client asked and got."""

    method: str
    path: str
    headers: dict[str, str]
    status: int
    body_bytes: int


class _QuietServer(http.server.ThreadingHTTPServer):
    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # clients that hang up mid-answer are what these tests are about: no tracebacks


class LocalServer:
    """A threaded HTTP/1.1 server on 127.0.0.1, on a free port; use it as a context manager."""

    def __init__(self) -> None:
        self.resources: dict[str, Resource] = {}
        self.routes: list[tuple[re.Pattern[str], Route]] = []
        self.log: list[Served] = []
        self._lock = threading.Condition()
        self.stopping = threading.Event()  # releases stalled answers when the server stops
        self._in_flight = 0  # requests being answered: the log is complete when this is 0
        self._httpd = _QuietServer(("127.0.0.1", 0), _make_handler(self))
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )

    def __enter__(self) -> LocalServer:
        self._thread.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stopping.set()
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join()

    @property
    def base_url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host!s}:{port}"

    def url(self, path: str) -> str:
        return self.base_url + path

    def add(self, path: str, content: bytes | Path, **options: Any) -> Resource:
        resource = Resource(content, **options)
        self.resources[path] = resource
        return resource

    def route(self, pattern: str, handler: Route) -> None:
        """Answer paths matching `pattern` (a regex matched in full) with `handler`."""
        self.routes.append((re.compile(pattern), handler))

    def cut_next(self, path: str, after: int) -> None:
        """Make the next GET of `path` close the connection after `after` body bytes."""
        self.resources[path].cuts.append(after)

    def stall_next(self, path: str, after: int, seconds: float) -> None:
        """Make the next GET of `path` go silent after `after` body bytes for `seconds`, the
        connection left open, as a server that hangs mid-transfer; then it closes."""
        self.resources[path].stalls.append((after, seconds))

    def requests_for(self, path: str) -> list[Served]:
        """The requests for `path` so far, once those being answered are finished."""
        with self._lock:
            self._lock.wait_for(lambda: self._in_flight == 0, timeout=5)
            return [s for s in self.log if s.path == path]

    def body_bytes_for(self, path: str) -> int:
        """Body bytes the server sent for `path`, over every request so far."""
        return sum(s.body_bytes for s in self.requests_for(path))

    def started(self) -> None:
        with self._lock:
            self._in_flight += 1

    def record(self, served: Served) -> None:
        with self._lock:
            self.log.append(served)

    def finished(self) -> None:
        with self._lock:
            self._in_flight -= 1
            self._lock.notify_all()


def _make_handler(server: LocalServer) -> type[http.server.BaseHTTPRequestHandler]:
    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as real servers; clients reuse connections
        disable_nagle_algorithm = True  # headers and body go out separately: no 40 ms stalls

        def log_message(self, format: str, *args: Any) -> None:
            pass  # quiet: the tests read `server.log` instead

        def do_GET(self) -> None:
            self._dispatch(send_body=True)

        def do_HEAD(self) -> None:
            self._dispatch(send_body=False)

        def do_POST(self) -> None:
            self._dispatch(send_body=True)

        def _dispatch(self, *, send_body: bool) -> None:
            server.started()
            try:
                self._answer(send_body=send_body)
            finally:
                server.finished()

        def _answer(self, *, send_body: bool) -> None:
            path = self.path.split("?", 1)[0]
            headers = {k.lower(): v for k, v in self.headers.items()}
            length = int(headers.get("content-length", "0"))
            body = self.rfile.read(length) if length else b""
            resource = server.resources.get(path)
            if resource is None:
                for pattern, handler in server.routes:
                    if pattern.fullmatch(path):
                        reply = handler(Request(self.command, self.path, headers, body))
                        if reply.resource is None:
                            self._reply(path, headers, reply, send_body)
                            return
                        resource = reply.resource
                        break
            if resource is None:
                self._reply(path, headers, Reply(404, b"not found"), send_body)
                return
            self._serve(path, headers, resource, send_body)

        def _reply(self, path: str, headers: dict[str, str], reply: Reply, send_body: bool) -> None:
            self.send_response(reply.status)
            for name, value in reply.headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(reply.body)))
            self.end_headers()
            if send_body:
                self.wfile.write(reply.body)
            server.record(Served(self.command, path, headers, reply.status, len(reply.body)))

        def _serve(
            self, path: str, headers: dict[str, str], resource: Resource, send_body: bool
        ) -> None:
            status = resource.statuses.pop(0) if resource.statuses else resource.status
            if status is not None:
                self._reply(path, headers, Reply(status, b"refused"), send_body)
                return
            size = resource.size
            start = _range_start(headers, resource)
            if start is not None and start >= size:
                reply = Reply(416, b"", {"Content-Range": f"bytes */{size}"})
                self._reply(path, headers, reply, send_body)
                return
            self.send_response(200 if start is None else 206)
            offset = start or 0
            if start is not None:
                self.send_header("Content-Range", f"bytes {start}-{size - 1}/{size}")
            if resource.ranges:
                self.send_header("Accept-Ranges", "bytes")
            if resource.etag:
                self.send_header("ETag", resource.etag)
            if resource.last_modified:
                self.send_header("Last-Modified", resource.last_modified)
            for name, value in resource.headers.items():
                self.send_header(name, value)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(size - offset))
            self.end_headers()
            count = size - offset
            silence = 0.0
            if send_body and self.command == "GET" and resource.cuts:
                count = min(count, resource.cuts.pop(0))
                self.close_connection = True
            elif send_body and self.command == "GET" and resource.stalls:
                after, silence = resource.stalls.pop(0)
                count = min(count, after)
                self.close_connection = True
            sent = self._send_body(resource, offset, count) if send_body else 0
            if silence:
                self.wfile.flush()
                _sleep_unless_stopped(server, silence)
            server.record(Served(self.command, path, headers, 200 if start is None else 206, sent))

        def _send_body(self, resource: Resource, offset: int, count: int) -> int:
            self.wfile.flush()
            sent = 0
            try:
                if isinstance(resource.content, Path) and resource.bytes_per_second is None:
                    with resource.content.open("rb") as f:
                        sent = int(self.connection.sendfile(f, offset, count))
                    return sent
                data = (
                    resource.content.read_bytes()
                    if isinstance(resource.content, Path)
                    else resource.content
                )
                view = memoryview(data)[offset : offset + count]
                step = 16384 if resource.bytes_per_second else 1 << 20
                for i in range(0, len(view), step):
                    chunk = view[i : i + step]
                    self.wfile.write(chunk)
                    sent += len(chunk)
                    if resource.bytes_per_second:
                        time.sleep(len(chunk) / resource.bytes_per_second)
            except (BrokenPipeError, ConnectionResetError):
                self.close_connection = True  # the client went away: nothing to do
            return sent

    return Handler


def _sleep_unless_stopped(server: LocalServer, seconds: float) -> None:
    """Hold the connection silent for `seconds`, or until the server is shut down."""
    server.stopping.wait(seconds)


def _range_start(headers: dict[str, str], resource: Resource) -> int | None:
    """The first byte asked for, or None for the whole file (as a server that ignores Range)."""
    if not resource.ranges or "range" not in headers:
        return None
    match = re.fullmatch(r"bytes=(\d+)-", headers["range"].strip())
    if not match:
        return None
    validator = headers.get("if-range")
    if validator is not None and validator not in (resource.etag, resource.last_modified):
        return None  # the file changed since the client's copy: send it whole (RFC 9110 13.1.5)
    return int(match.group(1))


LOOPBACK_HOSTS = frozenset({"127.0.0.1", "::1", "localhost"})


def loopback_only(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Refuse every connection and name lookup beyond this machine; returns what was refused.

    Tests must never send traffic elsewhere (huggingface_hub, for one, makes best-effort calls of
    its own); this makes any attempt fail at once, and a test can assert the list stayed empty.
    """
    refused: list[str] = []
    real_connect = socket.socket.connect
    real_getaddrinfo = socket.getaddrinfo

    def connect(sock: socket.socket, address: Any) -> None:
        host = address[0] if isinstance(address, tuple) else address
        if sock.family in (socket.AF_INET, socket.AF_INET6) and host not in LOOPBACK_HOSTS:
            refused.append(str(host))
            raise ConnectionRefusedError(f"test guard: no traffic to {host}")
        real_connect(sock, address)

    def getaddrinfo(host: Any, *args: Any, **kwargs: Any) -> Any:
        name = host.decode() if isinstance(host, bytes) else host
        if name is not None and name not in LOOPBACK_HOSTS:
            refused.append(str(name))
            raise socket.gaierror(socket.EAI_NONAME, f"test guard: no lookup of {name}")
        return real_getaddrinfo(host, *args, **kwargs)

    monkeypatch.setattr(socket.socket, "connect", connect)
    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    return refused
