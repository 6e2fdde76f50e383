"""One file over HTTP(S): resumable across runs, verified before it is installed, never torn.

The bytes go to a partial file (kcdev.models.partial) whose sidecar says where they came from, so
a later run resumes with `Range` and `If-Range`, and a file that changed on the server is sent
whole instead of being spliced onto the old half. The checksum (and size) is checked before
`os.replace` moves the file into place; a mismatch removes the partial and installs nothing. A
lock (kcdev.models.lock) keeps two fetches of the same destination apart.

A server that stops sending is noticed: after NOTICE_EVERY seconds without a byte the transfer
says so (and again every NOTICE_EVERY seconds), and after STALL_TIMEOUT it counts as stalled and
the next attempt resumes from the partial; when every attempt stalls, the error says so and the
partial is kept for the next run.

Why urllib3 and not httpx, the project's usual client: measured on this project's machines, httpx
read a 1 GB body from a local server at a third of urllib3's speed (3.5 s against 1.1 s; its h11
layer hands the body over in 64 KiB pieces), which alone would keep a download far below `curl`.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import ssl
import sys
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import tenacity
import urllib3
from tqdm import tqdm
from urllib3.exceptions import MaxRetryError, ProtocolError, ReadTimeoutError, SSLError

from kcdev import files
from kcdev.console import Say, human_size
from kcdev.errors import UserError
from kcdev.models.digest import CHUNK, Digest, HashingSink, hash_file, holds
from kcdev.models.lock import NOTICE_EVERY, hold_lock
from kcdev.models.partial import Partial
from kcdev.models.urls import host, redact

FreeBytes = Callable[[Path], int]

FREE_SPACE_MARGIN = 64 << 20  # left free after the download, so the disk is not filled to the brim
CONNECT_TIMEOUT = 15.0
STALL_TIMEOUT = 30.0  # seconds without a single byte before the transfer counts as stalled
RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})


def say_on_stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


class SourceFailed(UserError):
    """This source could not deliver the file; another one (a mirror) may still."""


class HttpStatusError(SourceFailed):
    """The server answered an error status; callers explain 401/403/404 in their own terms."""

    def __init__(self, status: int, url: str) -> None:
        super().__init__(f"{host(url)} answered HTTP {status}")
        self.status = status
        self.url = redact(url)


class ChecksumMismatch(SourceFailed):
    """The bytes arrived but are not the expected file: nothing was installed."""


class _Transient(Exception):
    """A failure worth another attempt, which resumes from the partial file."""


def ensure_free_space(
    directory: Path, needed: int, what: str, free: FreeBytes = files.free_bytes
) -> None:
    """Stop before writing anything when `needed` bytes (plus a margin) do not fit."""
    available = free(directory)
    if needed + FREE_SPACE_MARGIN > available:
        raise UserError(
            f"not enough disk space in {directory} for {what}: needs {human_size(needed)} more "
            f"(plus {human_size(FREE_SPACE_MARGIN)} spare), {human_size(available)} free: "
            "free some space or point GGUF_DIR/HF_DIR at a larger disk"
        )


def make_pool(
    ca_bundle: Path | None = None, read_timeout: float = STALL_TIMEOUT
) -> urllib3.PoolManager:
    """One connection pool for every request: explicit timeouts, redirects followed.

    `ca_bundle` (kcdev.tls.ca_bundle) holds the CA of a TLS-intercepting proxy where there is one;
    an empty or missing bundle means the system's default trust store. `read_timeout` is how long
    a silent server is waited for (STALL_TIMEOUT). Retries happen above this layer (Downloader),
    where an interrupted body can resume instead of starting over.
    """
    if ca_bundle is not None and ca_bundle.is_file() and ca_bundle.stat().st_size > 0:
        context = ssl.create_default_context(cafile=str(ca_bundle))
    else:
        context = ssl.create_default_context()
    return urllib3.PoolManager(
        ssl_context=context,
        timeout=urllib3.Timeout(connect=CONNECT_TIMEOUT, read=read_timeout),
        retries=urllib3.Retry(total=None, connect=0, read=0, status=0, other=0, redirect=10),
        headers={"User-Agent": "kc-devenv-fetch-model"},
    )


class Downloader:
    """Fetches files with resume, verification, a lock, a disk-space check and a progress bar."""

    def __init__(
        self,
        pool: urllib3.PoolManager | None = None,
        *,
        say: Say = say_on_stderr,
        progress: bool | None = None,
        attempts: int = 5,
        backoff: float = 1.0,
        lock_timeout: float = 900.0,
        free: FreeBytes = files.free_bytes,
        stall_timeout: float = STALL_TIMEOUT,
        notice_every: float = NOTICE_EVERY,
    ) -> None:
        self.pool = pool if pool is not None else make_pool()
        self.say = say
        self.progress = sys.stderr.isatty() if progress is None else progress
        self.attempts = attempts
        self.backoff = backoff
        self.lock_timeout = lock_timeout
        self.free = free
        self.stall_timeout = stall_timeout
        self.notice_every = notice_every

    def lock(self, dest: Path) -> contextlib.AbstractContextManager[None]:
        """The lock on `dest`, waited for as this downloader waits (timeout, progress lines)."""
        return hold_lock(dest, self.lock_timeout, self.say, self.notice_every)

    def get_json(self, url: str, headers: Mapping[str, str] | None = None) -> Any:
        """A small JSON document (an index page), as a SourceFailed on any failure."""
        timeout = urllib3.Timeout(connect=CONNECT_TIMEOUT, read=self.stall_timeout)

        def silence(seconds: float) -> str:
            return (
                f"nothing from {host(url)} for {round(seconds, 1):g} s; giving up after "
                f"{self.stall_timeout:g} s"
            )

        try:
            with _SilenceWatch(self.say, self.notice_every, self.stall_timeout, silence):
                response = self.pool.request(
                    "GET", url, headers=dict(headers or {}), timeout=timeout
                )
        except urllib3.exceptions.HTTPError as exc:
            raise SourceFailed(f"cannot reach {host(url)}: {_reason(exc)}") from None
        if response.status >= 400:
            raise HttpStatusError(response.status, url)
        try:
            return json.loads(response.data)
        except ValueError:
            raise SourceFailed(f"{redact(url)} did not answer JSON") from None

    def fetch(
        self,
        url: str,
        dest: Path,
        digest: Digest,
        *,
        size: int | None = None,
        headers: Mapping[str, str] | None = None,
        lock: bool = True,
        label: str | None = None,
    ) -> None:
        """Put the verified file at `dest` (replacing what is there), resuming any partial.

        `lock=False` is for callers that already hold a lock covering `dest`. A `dest` that
        already has the expected content is left as it is, without any request. A file that
        cannot be written (permissions, a read-only disk) ends in one line, the partial kept.
        """
        try:
            dest.parent.mkdir(parents=True, exist_ok=True)
            with self.lock(dest) if lock else contextlib.nullcontext():
                if holds(dest, digest, size):
                    return
                transfer = _Transfer(self, url, dest, digest, size, dict(headers or {}), label)
                transfer.run()
        except OSError as exc:
            where = Path(exc.filename) if exc.filename else dest.parent
            raise UserError(
                f"cannot write {where}: {exc.strerror or exc}: make {dest.parent} writable "
                "(and free space there), then run again"
            ) from None


class _SilenceWatch:
    """Says so when no byte has arrived for `every` seconds, and again every `every` seconds on,
    until `limit`: the notice due at the limit itself would only race the give-up line after it.

    A thread of its own, because the transfer's own thread is blocked in the read it waits on.
    """

    def __init__(
        self, say: Say, every: float, limit: float, describe: Callable[[float], str]
    ) -> None:
        self.say, self.every, self.limit, self.describe = say, every, limit, describe
        self.last = self.next_notice = 0.0
        self.lock = threading.Lock()  # `last` and `next_notice` change together
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._watch, daemon=True)

    def __enter__(self) -> _SilenceWatch:
        self.heard()
        self.thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stopped.set()
        self.thread.join()

    def heard(self) -> None:
        """Bytes arrived: the silence starts over."""
        with self.lock:
            self.last = time.monotonic()
            self.next_notice = self.last + self.every

    def _watch(self) -> None:
        while not self.stopped.wait(min(self.every / 4, 1.0)):
            with self.lock:
                silence = self.next_notice - self.last
                if time.monotonic() < self.next_notice:
                    continue
                self.next_notice += self.every
            if silence < self.limit:  # said as the whole period: "for 10 s", not 10.3
                self.say(self.describe(silence))


class _Transfer:
    """One file's download: attempts that each resume from the partial, then the verification."""

    def __init__(
        self,
        downloader: Downloader,
        url: str,
        dest: Path,
        digest: Digest,
        size: int | None,
        headers: dict[str, str],
        label: str | None,
    ) -> None:
        self.downloader = downloader
        self.url, self.dest, self.digest, self.size = url, dest, digest, size
        self.headers, self.label = headers, label or dest.name
        self.partial = Partial(dest)
        self.hexdigest: str | None = None
        self.received = 0  # bytes of the file on disk so far, for the progress lines

    def run(self) -> None:
        if self.partial.size() and not self.partial.matches(self.url, self.digest):
            self.downloader.say(
                f"{self.label}: the partial download was for another source: starting over"
            )
            self.partial.discard()
        if self.size is not None:
            self._check_space(self.size)
        retrying = tenacity.Retrying(
            retry=tenacity.retry_if_exception_type(_Transient),
            stop=tenacity.stop_after_attempt(self.downloader.attempts),
            wait=tenacity.wait_exponential(multiplier=self.downloader.backoff, max=30),
            before_sleep=self._before_retry,
            reraise=True,
        )
        try:
            retrying(self._attempt)
        except _Transient as exc:
            kept = self.partial.size()
            raise SourceFailed(
                f"{self.label}: {exc} ({self.downloader.attempts} attempts); "
                f"{human_size(kept)} kept: run again to resume"
            ) from None
        self._install()

    def _check_space(self, total: int) -> None:
        what = f"{self.label} ({human_size(total)})"
        ensure_free_space(self.dest.parent, total - self.partial.size(), what, self.downloader.free)

    def _before_retry(self, state: tenacity.RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        self.downloader.say(
            f"{self.label}: {exc}; resuming from {human_size(self.partial.size())} "
            f"(attempt {state.attempt_number + 1} of {self.downloader.attempts})"
        )

    def _silence(self, seconds: float) -> str:
        total = f" of {human_size(self.size)}" if self.size else ""
        return (
            f"{self.label}: nothing from {host(self.url)} for {round(seconds, 1):g} s "
            f"({human_size(self.received)}{total} so far); resuming after "
            f"{self.downloader.stall_timeout:g} s of silence"
        )

    def _attempt(self) -> None:
        existing = self.received = self.partial.size()
        if self.size is not None and existing == self.size:
            self.hexdigest = None  # complete already (interrupted before the move): verify it
            return
        if self.size is not None and existing > self.size:
            self.partial.discard()
            existing = 0
        validator = self.partial.read_meta().get("validator") if existing else None
        if not isinstance(validator, str):  # an edited sidecar: resume without If-Range
            validator = None
        headers = {"Accept-Encoding": "identity", **self.headers}  # bytes as stored: no gzip
        if existing:
            headers["Range"] = f"bytes={existing}-"
            if validator:
                headers["If-Range"] = validator
        every, limit = self.downloader.notice_every, self.downloader.stall_timeout
        with _SilenceWatch(self.downloader.say, every, limit, self._silence) as watch:
            response = self._request(headers)
            watch.heard()
            try:
                existing = self._accept(response, existing, validator)
                self._receive(response, existing, watch)
            except BaseException:
                response.close()  # the connection is mid-body: it cannot serve another request
                raise
        response.release_conn()  # body read in full: the next file reuses the connection

    def _request(self, headers: dict[str, str]) -> urllib3.BaseHTTPResponse:
        timeout = urllib3.Timeout(connect=CONNECT_TIMEOUT, read=self.downloader.stall_timeout)
        try:
            response = self.downloader.pool.request(
                "GET", self.url, headers=headers, preload_content=False, redirect=True,
                timeout=timeout,
            )  # fmt: skip
        except MaxRetryError as exc:
            if isinstance(exc.reason, ReadTimeoutError | ProtocolError):
                raise _Transient(self._lost(exc.reason)) from None
            raise SourceFailed(f"cannot reach {host(self.url)}: {_reason(exc)}") from None
        except (ProtocolError, ReadTimeoutError) as exc:
            raise _Transient(self._lost(exc)) from None
        except urllib3.exceptions.HTTPError as exc:
            raise SourceFailed(f"cannot reach {host(self.url)}: {_reason(exc)}") from None
        if response.status in RETRY_STATUSES:
            response.close()
            raise _Transient(f"{host(self.url)} answered HTTP {response.status}")
        if response.status >= 400 and response.status != 416:
            response.close()
            raise HttpStatusError(response.status, self.url)
        return response

    def _lost(self, exc: BaseException) -> str:
        """Why an attempt ended early: a stall (said as such), or the connection's own error."""
        if isinstance(exc, ReadTimeoutError | TimeoutError):
            return f"stalled: nothing from {host(self.url)} for {self.downloader.stall_timeout:g} s"
        return f"connection lost: {_reason(exc)}"

    def _accept(self, response: urllib3.BaseHTTPResponse, existing: int, old: str | None) -> int:
        """Decide from the status where the body starts; returns the bytes kept from before."""
        if response.status == 416:  # the partial does not fit the file (any more)
            self.downloader.say(f"{self.label}: the server refused to resume: starting over")
            self.partial.discard()
            raise _Transient("range not satisfiable")
        if response.status == 206:
            start = _content_range_start(response.headers.get("Content-Range", ""))
            if start != existing:
                self.partial.discard()
                raise _Transient(f"server resumed at byte {start}, not {existing}")
        elif existing:
            now = _validator(response)
            why = (
                "the file changed on the server"
                if old and now and now != old
                else "the server does not support resuming (it sent the whole file)"
            )
            self.downloader.say(f"{self.label}: {why}: starting over")
            self.partial.discard()
            existing = 0
        total = _total_size(response, existing)
        if self.size is not None and total is not None and total != self.size:
            raise SourceFailed(
                f"{self.label}: the server's copy is {total} bytes, expected {self.size}: "
                "not the expected file"
            )
        if self.size is None and total is not None:
            self._check_space(total)
        self.partial.save_meta(self.url, self.digest, self.size or total, _validator(response))
        return existing

    def _receive(
        self, response: urllib3.BaseHTTPResponse, existing: int, watch: _SilenceWatch
    ) -> None:
        total = self.size or _total_size(response, existing)
        self.received = existing
        sink = HashingSink(self.partial.path, existing, self.digest, total)
        bar = tqdm(
            total=total, initial=existing, desc=self.label, unit="B", unit_scale=True,
            unit_divisor=1024, disable=not self.downloader.progress, file=sys.stderr, leave=False,
        )  # fmt: skip
        try:
            while data := self._read(response):
                watch.heard()
                try:
                    sink.write(data)
                except OSError as exc:  # disk full, most likely: resuming later is safe
                    raise UserError(
                        f"cannot write {self.partial.path}: {exc.strerror or exc}: free some "
                        "space, then run again to resume"
                    ) from None
                self.received += len(data)
                bar.update(len(data))
        finally:
            bar.close()
            sink.close()
        self.hexdigest = sink.hexdigest()

    def _read(self, response: urllib3.BaseHTTPResponse) -> bytes:
        try:
            # read1: whatever has arrived (up to CHUNK), so a stall loses nothing already received
            return response.read1(CHUNK, decode_content=False)
        except (ProtocolError, ReadTimeoutError, SSLError, OSError) as exc:
            raise _Transient(self._lost(exc)) from None

    def _install(self) -> None:
        got_size = self.partial.size()
        if self.size is not None and got_size != self.size:
            self.partial.discard()
            raise ChecksumMismatch(
                f"{self.label} from {host(self.url)} is {got_size} bytes, expected {self.size}: "
                "nothing was installed"
            )
        got = self.hexdigest or hash_file(self.partial.path, self.digest)
        if got != self.digest.hexdigest:
            self.partial.discard()
            raise ChecksumMismatch(
                f"{self.label} from {host(self.url)} failed verification: expected "
                f"{self.digest.algorithm} {self.digest.hexdigest}, got {got}: nothing was installed"
            )
        os.replace(self.partial.path, self.dest)
        self.partial.meta_path.unlink(missing_ok=True)


def _content_range_start(value: str) -> int | None:
    match = re.fullmatch(r"bytes (\d+)-\d+/(\d+|\*)", value.strip())
    return int(match.group(1)) if match else None


def _total_size(response: urllib3.BaseHTTPResponse, existing: int) -> int | None:
    """The whole file's size as the response states it, when it does."""
    match = re.fullmatch(r"bytes \d+-\d+/(\d+)", response.headers.get("Content-Range", "").strip())
    if match:
        return int(match.group(1))
    length = response.headers.get("Content-Length")
    return existing + int(length) if length and length.isdigit() else None


def _validator(response: urllib3.BaseHTTPResponse) -> str | None:
    """What `If-Range` may carry: a strong ETag, else Last-Modified (weak ETags may not)."""
    etag = response.headers.get("ETag")
    if etag and not etag.startswith("W/"):
        return str(etag)
    modified = response.headers.get("Last-Modified")
    return str(modified) if modified else None


def _reason(exc: BaseException) -> str:
    """urllib3's error, without the connection objects and pool details it wraps around it."""
    reason = exc.reason if isinstance(exc, MaxRetryError) and exc.reason is not None else exc
    text = str(reason).strip().splitlines()[0] if str(reason).strip() else type(reason).__name__
    text = re.sub(r"<urllib3\.[^>]*>:?\s*", "", text)
    return re.sub(r"^HTTPS?Connection(?:Pool)?\(host='[^']*', port=\d+\):\s*", "", text)
