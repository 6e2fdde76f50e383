"""What a file must hash to, and hashing it: whole, or while its bytes arrive.

A download's bytes are written in the calling thread and hashed in a second one (`HashingSink`),
so hashing (about 1 GB/s here) overlaps the transfer instead of following it.
"""

from __future__ import annotations

import hashlib
import queue
import re
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol

from kcdev.errors import UserError

CHUNK = 1 << 20  # large reads keep Python's per-chunk cost negligible next to the copy itself
_SHA256 = re.compile(r"[0-9a-f]{64}")


class Hasher(Protocol):
    """What hashlib's objects offer, as far as verification needs."""

    def update(self, data: bytes, /) -> None: ...
    def hexdigest(self) -> str: ...


def check_sha256(value: str, what: str = "--sha256") -> str:
    """The lower-case hex digest, or a one-line error naming the bad value."""
    digest = value.strip().lower()
    if not _SHA256.fullmatch(digest):
        raise UserError(f"{what}={value!r} is not a sha256: expected 64 hexadecimal digits")
    return digest


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


def holds(path: Path, digest: Digest, size: int | None = None) -> bool:
    """True when `path` is a file of `size` bytes (if given) whose content matches `digest`."""
    if not path.is_file() or (size is not None and path.stat().st_size != size):
        return False
    return hash_file(path, digest) == digest.hexdigest


class HashingSink:
    """Append to a file in this thread; hash in another, so hashing overlaps the network.

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
