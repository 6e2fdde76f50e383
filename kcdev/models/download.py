"""One file over HTTP(S): resumable across runs, verified before it is installed, never torn.

The bytes go to `<dest>.part`, beside a small JSON sidecar `<dest>.part.json` that records where
they came from (URL, the server's validator, the expected checksum and size). A later run resumes
with `Range` and `If-Range`, so a file that changed on the server is sent whole instead of being
spliced onto the old half. The checksum (and size) is checked before `os.replace` moves the file
into place; a mismatch removes the partial and installs nothing. A lock keeps two fetches of the
same destination apart.

Why urllib3 and not httpx, the project's usual client: measured on this project's machines, httpx
read a 1 GB body from a local server at a third of urllib3's speed (3.5 s against 1.1 s; its h11
layer hands the body over in 64 KiB pieces), which alone would keep a download far below `curl`.
The bytes are written in the calling thread and hashed in a second one, so hashing (about 1 GB/s
here) overlaps the transfer instead of following it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import queue
import re
import ssl
import sys
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol
from urllib.parse import urlsplit

import tenacity
import urllib3
from filelock import FileLock, Timeout
from tqdm import tqdm
from urllib3.exceptions import MaxRetryError, ProtocolError, ReadTimeoutError, SSLError

from kcdev import files
from kcdev.console import Say, human_size
from kcdev.errors import UserError

FreeBytes = Callable[[Path], int]

CHUNK = 1 << 20  # large reads keep Python's per-chunk cost negligible next to the copy itself
FREE_SPACE_MARGIN = 64 << 20  # left free after the download, so the disk is not filled to the brim
CONNECT_TIMEOUT = 15.0
READ_TIMEOUT = 60.0  # seconds without a single byte before the transfer counts as stalled
RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
_SHA256 = re.compile(r"[0-9a-f]{64}")


def say_on_stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


class Hasher(Protocol):
    """What hashlib's objects offer, as far as verification needs."""

    def update(self, data: bytes, /) -> None: ...
    def hexdigest(self) -> str: ...


class SourceFailed(UserError):
    """This source could not deliver the file; another one (a mirror) may still."""


class HttpStatusError(SourceFailed):
    """The server answered an error status; callers explain 401/403/404 in their own terms."""

    def __init__(self, status: int, url: str) -> None:
        super().__init__(f"{_host(url)} answered HTTP {status}")
        self.status = status
        self.url = url


class ChecksumMismatch(SourceFailed):
    """The bytes arrived but are not the expected file: nothing was installed."""


class _Transient(Exception):
    """A failure worth another attempt, which resumes from the partial file."""


def check_sha256(value: str, what: str = "--sha256") -> str:
    """The lower-case hex digest, or a one-line error naming the bad value."""
    digest = value.strip().lower()
    if not _SHA256.fullmatch(digest):
        raise UserError(f"{what}={value!r} is not a sha256: expected 64 hexadecimal digits")
    return digest


def check_url(url: str, what: str = "--url") -> str:
    """An http(s) URL with a host, or a one-line error: checked before any network traffic."""
    parts = urlsplit(url)
    try:
        parts.port  # noqa: B018 - raises on a malformed port
    except ValueError:
        raise UserError(f"{what}={url!r} has a malformed port") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise UserError(f"{what}={url!r} is not an http(s) URL")
    return url


@dataclass(frozen=True)
class Digest:
    """The checksum a file must have: a sha256, or the git blob id the Hub gives small files."""

    algorithm: Literal["sha256", "git-sha1"]
    hexdigest: str

    @classmethod
    def sha256(cls, hexdigest: str) -> Digest:
        return cls("sha256", check_sha256(hexdigest, "sha256"))

    def hasher(self, size: int | None) -> Hasher:
        if self.algorithm == "sha256":
            return hashlib.sha256()
        if size is None:
            raise ValueError("a git blob id can only be checked when the size is known")
        hasher = hashlib.sha1(usedforsecurity=False)  # git's object id, not a security measure
        hasher.update(b"blob %d\0" % size)
        return hasher

    def __str__(self) -> str:
        return f"{self.algorithm} {self.hexdigest}"


def hash_file(path: Path, digest: Digest) -> str:
    """The file's hex digest under `digest`'s algorithm."""
    hasher = digest.hasher(path.stat().st_size)
    with path.open("rb") as f:
        while block := f.read(CHUNK):
            hasher.update(block)
    return hasher.hexdigest()


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


def lock_path(dest: Path) -> Path:
    """The lock beside `dest`; hidden, because it outlives the fetch (removing it would race)."""
    return dest.with_name(f".{dest.name}.lock")


@contextlib.contextmanager
def hold_lock(dest: Path, timeout: float, say: Say) -> Iterator[None]:
    """Hold the lock on `dest`: a second fetch of the same model waits, then gives up in one line.

    The lock is released by the kernel when its holder dies, so a crash never leaves it stuck.
    """
    dest.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(lock_path(dest))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        say(f"another fetch of {dest.name} is running: waiting up to {timeout:g} s for it")
        try:
            lock.acquire(timeout=timeout)
        except Timeout:
            raise UserError(
                f"another fetch of {dest.name} still holds {lock_path(dest)} after {timeout:g} "
                "s: let it finish, then run this again"
            ) from None
    try:
        yield
    finally:
        lock.release()


def make_pool(
    ca_bundle: Path | None = None, read_timeout: float = READ_TIMEOUT
) -> urllib3.PoolManager:
    """One connection pool for every request: explicit timeouts, redirects followed.

    `ca_bundle` (kcdev.tls.ca_bundle) holds the CA of a TLS-intercepting proxy where there is one;
    an empty or missing bundle means the system's default trust store. Retries happen above this
    layer (Downloader), where an interrupted body can resume instead of starting over.
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


class Partial:
    """`<dest>.part` and its sidecar: the bytes so far, and what they must turn into."""

    def __init__(self, dest: Path) -> None:
        self.path = dest.with_name(dest.name + ".part")
        self.meta_path = dest.with_name(dest.name + ".part.json")

    def size(self) -> int:
        return self.path.stat().st_size if self.path.exists() else 0

    def read_meta(self) -> dict[str, Any]:
        try:
            meta = json.loads(self.meta_path.read_text())
        except (OSError, ValueError):
            return {}
        return meta if isinstance(meta, dict) else {}

    def matches(self, url: str, digest: Digest) -> bool:
        meta = self.read_meta()
        return meta.get("url") == url and meta.get("digest") == str(digest)

    def save_meta(self, url: str, digest: Digest, size: int | None, validator: str | None) -> None:
        meta = {"url": url, "digest": str(digest), "size": size, "validator": validator}
        tmp = self.meta_path.with_name(self.meta_path.name + ".tmp")
        tmp.write_text(json.dumps(meta, indent=1) + "\n")
        os.replace(tmp, self.meta_path)

    def discard(self) -> None:
        self.path.unlink(missing_ok=True)
        self.meta_path.unlink(missing_ok=True)


class _HashingSink:
    """Append to the partial in this thread; hash in another, so hashing overlaps the network.

    The hashing thread first reads back the bytes already on disk (a resumed download), then
    everything written after them, in order: the digest covers exactly the file's bytes.
    """

    def __init__(self, path: Path, existing: int, digest: Digest, total: int | None) -> None:
        self.path = path
        self.hasher = digest.hasher(total)
        self.file = path.open("ab" if existing else "wb", buffering=0)
        self.queue: queue.Queue[bytes | None] = queue.Queue(maxsize=8)  # at most 8 chunks waiting
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._hash, args=(existing,), daemon=True)
        self.thread.start()

    def _hash(self, existing: int) -> None:
        try:
            with self.path.open("rb") as f:
                left = existing
                while left and (block := f.read(min(CHUNK, left))):
                    self.hasher.update(block)
                    left -= len(block)
            while (data := self.queue.get()) is not None:
                self.hasher.update(data)
        except BaseException as exc:  # reported by hexdigest(); the thread must never die silently
            self.error = exc
            while self.queue.get() is not None:
                pass

    def write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            view = view[self.file.write(view) :]
        self.queue.put(data)

    def close(self) -> None:
        if not self.file.closed:
            self.file.close()
            self.queue.put(None)
            self.thread.join()

    def hexdigest(self) -> str:
        self.close()
        if self.error is not None:
            raise self.error
        return self.hasher.hexdigest()


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
    ) -> None:
        self.pool = pool if pool is not None else make_pool()
        self.say = say
        self.progress = sys.stderr.isatty() if progress is None else progress
        self.attempts = attempts
        self.backoff = backoff
        self.lock_timeout = lock_timeout
        self.free = free

    def get_json(self, url: str, headers: Mapping[str, str] | None = None) -> Any:
        """A small JSON document (an index page), as a SourceFailed on any failure."""
        try:
            response = self.pool.request("GET", url, headers=dict(headers or {}))
        except urllib3.exceptions.HTTPError as exc:
            raise SourceFailed(f"cannot reach {_host(url)}: {_reason(exc)}") from None
        if response.status >= 400:
            raise HttpStatusError(response.status, url)
        try:
            return json.loads(response.data)
        except ValueError:
            raise SourceFailed(f"{url} did not answer JSON") from None

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
        already has the expected content is left as it is, without any request.
        """
        dest.parent.mkdir(parents=True, exist_ok=True)
        with hold_lock(dest, self.lock_timeout, self.say) if lock else contextlib.nullcontext():
            if _holds(dest, digest, size):
                return
            _Transfer(self, url, dest, digest, size, dict(headers or {}), label or dest.name).run()


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
        label: str,
    ) -> None:
        self.downloader = downloader
        self.url, self.dest, self.digest, self.size = url, dest, digest, size
        self.headers, self.label = headers, label
        self.partial = Partial(dest)
        self.hexdigest: str | None = None

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

    def _attempt(self) -> None:
        existing = self.partial.size()
        if self.size is not None and existing == self.size:
            self.hexdigest = None  # complete already (interrupted before the move): verify it
            return
        if self.size is not None and existing > self.size:
            self.partial.discard()
            existing = 0
        validator = self.partial.read_meta().get("validator") if existing else None
        headers = {"Accept-Encoding": "identity", **self.headers}  # bytes as stored: no gzip
        if existing:
            headers["Range"] = f"bytes={existing}-"
            if validator:
                headers["If-Range"] = validator
        response = self._request(headers)
        try:
            existing = self._accept(response, existing, validator)
            self._receive(response, existing)
        except BaseException:
            response.close()  # the connection is mid-body: it cannot serve another request
            raise
        response.release_conn()  # body read in full: the next file reuses the connection

    def _request(self, headers: dict[str, str]) -> urllib3.BaseHTTPResponse:
        try:
            response = self.downloader.pool.request(
                "GET", self.url, headers=headers, preload_content=False, redirect=True
            )
        except MaxRetryError as exc:
            if isinstance(exc.reason, ReadTimeoutError | ProtocolError):
                raise _Transient(_reason(exc)) from None
            raise SourceFailed(f"cannot reach {_host(self.url)}: {_reason(exc)}") from None
        except (ProtocolError, ReadTimeoutError) as exc:
            raise _Transient(_reason(exc)) from None
        except urllib3.exceptions.HTTPError as exc:
            raise SourceFailed(f"cannot reach {_host(self.url)}: {_reason(exc)}") from None
        if response.status in RETRY_STATUSES:
            response.close()
            raise _Transient(f"{_host(self.url)} answered HTTP {response.status}")
        if response.status >= 400 and response.status != 416:
            response.close()
            raise HttpStatusError(response.status, self.url)
        return response

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

    def _receive(self, response: urllib3.BaseHTTPResponse, existing: int) -> None:
        total = self.size or _total_size(response, existing)
        sink = _HashingSink(self.partial.path, existing, self.digest, total)
        bar = tqdm(
            total=total, initial=existing, desc=self.label, unit="B", unit_scale=True,
            unit_divisor=1024, disable=not self.downloader.progress, file=sys.stderr, leave=False,
        )  # fmt: skip
        try:
            while data := self._read(response):
                try:
                    sink.write(data)
                except OSError as exc:  # disk full, most likely: resuming later is safe
                    raise UserError(
                        f"cannot write {self.partial.path}: {exc.strerror or exc}: free some "
                        "space, then run again to resume"
                    ) from None
                bar.update(len(data))
        finally:
            bar.close()
            sink.close()
        self.hexdigest = sink.hexdigest()

    @staticmethod
    def _read(response: urllib3.BaseHTTPResponse) -> bytes:
        try:
            # read1: whatever has arrived (up to CHUNK), so a stall loses nothing already received
            return response.read1(CHUNK, decode_content=False)
        except (ProtocolError, ReadTimeoutError, SSLError, OSError) as exc:
            raise _Transient(f"connection lost: {_reason(exc)}") from None

    def _install(self) -> None:
        got_size = self.partial.size()
        if self.size is not None and got_size != self.size:
            self.partial.discard()
            raise ChecksumMismatch(
                f"{self.label} from {_host(self.url)} is {got_size} bytes, expected {self.size}: "
                "nothing was installed"
            )
        got = self.hexdigest or hash_file(self.partial.path, self.digest)
        if got != self.digest.hexdigest:
            self.partial.discard()
            raise ChecksumMismatch(
                f"{self.label} from {_host(self.url)} failed verification: expected "
                f"{self.digest.algorithm} {self.digest.hexdigest}, got {got}: nothing was installed"
            )
        os.replace(self.partial.path, self.dest)
        self.partial.meta_path.unlink(missing_ok=True)


def _holds(dest: Path, digest: Digest, size: int | None) -> bool:
    if not dest.is_file() or (size is not None and dest.stat().st_size != size):
        return False
    return hash_file(dest, digest) == digest.hexdigest


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


def _host(url: str) -> str:
    return urlsplit(url).netloc or url


def _reason(exc: BaseException) -> str:
    """urllib3's error, without the connection objects and pool details it wraps around it."""
    reason = exc.reason if isinstance(exc, MaxRetryError) and exc.reason is not None else exc
    text = str(reason).strip().splitlines()[0] if str(reason).strip() else type(reason).__name__
    text = re.sub(r"<urllib3\.[^>]*>:?\s*", "", text)
    return re.sub(r"^HTTPS?Connection(?:Pool)?\(host='[^']*', port=\d+\):\s*", "", text)
