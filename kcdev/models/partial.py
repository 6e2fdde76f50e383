"""A download in progress: `<dest>.part` and its sidecar `<dest>.part.json`.

The sidecar records where the bytes came from (the URL, without credentials), the server's
validator (ETag or Last-Modified), the expected checksum and size, so a later run resumes only
what is the same file from the same place, with `Range` and `If-Range`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from kcdev.models.digest import Digest
from kcdev.models.urls import redact


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
        return meta.get("url") == redact(url) and meta.get("digest") == str(digest)

    def save_meta(self, url: str, digest: Digest, size: int | None, validator: str | None) -> None:
        meta = {"url": redact(url), "digest": str(digest), "size": size, "validator": validator}
        tmp = self.meta_path.with_name(self.meta_path.name + ".tmp")
        tmp.write_text(json.dumps(meta, indent=1) + "\n")
        os.replace(tmp, self.meta_path)

    def discard(self) -> None:
        self.path.unlink(missing_ok=True)
        self.meta_path.unlink(missing_ok=True)
