"""A download server of the case's own on 127.0.0.1, and URLs with credentials in them."""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Callable
from pathlib import Path
from urllib.parse import quote

from tests.integration.hostile.harness import Context, Result
from tests.support.http_server import LocalServer, Reply, Request, Resource

USER = "alice"
PASSWORD = "pa55-Word-9f3e71"
# Every form the password could leak in: as typed, URL-encoded, and inside the Basic header.
BASIC = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
LEAKS = (PASSWORD, quote(PASSWORD, safe=""), BASIC)
MODEL = b"GGUF" + hashlib.sha256(b"hostile").digest() * 4096  # 128 KiB
MODEL_SHA256 = hashlib.sha256(MODEL).hexdigest()
WRONG_SHA256 = "0" * 64


def server(ctx: Context) -> LocalServer:
    """The case's own file server on 127.0.0.1 (started on first use, stopped after the case)."""
    if "server" not in ctx.values:
        ctx.values["server"] = ctx.enter(LocalServer())
    found: LocalServer = ctx.values["server"]
    return found


def with_credentials(ctx: Context, path: str, scheme: str = "http") -> str:
    base = server(ctx).base_url.removeprefix("http://")
    return f"{scheme}://{USER}:{PASSWORD}@{base}{path}"


def fetch(
    path: str, sha256: str = MODEL_SHA256, scheme: str = "http"
) -> Callable[[Context], list[str]]:
    return lambda ctx: [
        "fetch-model", f"--url={with_credentials(ctx, path, scheme)}", f"--sha256={sha256}",
    ]  # fmt: skip


def files_under(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.is_file()]


def stored_nowhere(ctx: Context, result: Result) -> None:
    """Neither printed nor in any file the fetch wrote (models folder, sidecars, .env)."""
    for leak in LEAKS:
        assert leak not in result.output, str(result)
        for path in [*files_under(ctx.ws.gguf_dir), *files_under(ctx.ws.root / ".cache")]:
            assert leak.encode() not in path.read_bytes(), path
    env_file = ctx.ws.env_file
    if env_file.is_file():
        assert PASSWORD not in env_file.read_text()


def sent_as_basic_auth(ctx: Context) -> None:
    """The credentials did reach the server, as the Authorization header: they were used."""
    header = "Basic " + BASIC
    assert any(s.headers.get("authorization") == header for s in server(ctx).log), server(ctx).log


def serve(path: str, **options: object) -> Callable[[Context], None]:
    def arrange(ctx: Context) -> None:
        server(ctx).add(path, MODEL, **options)

    return arrange


def used_and_stored_nowhere(ctx: Context, result: Result) -> None:
    stored_nowhere(ctx, result)
    sent_as_basic_auth(ctx)


def cut_then_gone(ctx: Context) -> None:
    """The first GET stops half-way (a partial and its sidecar stay); the next finds no file."""
    calls: list[Request] = []

    def answer(request: Request) -> Reply:
        calls.append(request)
        if len(calls) == 1:
            return Reply(resource=Resource(MODEL, cuts=[len(MODEL) // 2]))
        return Reply(404, b"gone")

    server(ctx).route(r"/flaky\.gguf", answer)
