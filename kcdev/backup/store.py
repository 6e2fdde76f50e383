"""The backups folder: names, manifests, what is there (verified or not), and pruning.

A backup is two files: `redis-<UTC time>.rdb` and its manifest `redis-<UTC time>.json` (sha256,
size, keys per database, Redis version, source). The manifest is written last, so a backup counts
as complete only once it has one; files without a manifest are shown but never pruned, since they
may not be ours. Safety backups a restore takes first end in `-pre-restore` and are never pruned
either: they are the way back from a restore. Nor is the newest backup that holds keys while
every newer one kept is empty: an empty Redis backed up after a mishap must not push out the last
backup with data.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from kcdev import paths
from kcdev.console import human_size
from kcdev.errors import UserError
from kcdev.files import fsync_file, write_durably
from kcdev.redis_client import DbKeys, Keyspace

DEFAULT_DIR = paths.ROOT / "backups"
KINDS = ("backup", "pre-restore")
MANIFEST_FORMAT = 1
NAME = re.compile(r"^redis-(\d{8}T\d{6}\.\d{3}Z)(-pre-restore)?\.rdb$")
PARTIAL_PREFIX = ".kc-backup-"  # + "<pid>-<random>.partial": a backup being copied out
STALE = re.compile(rf"^{re.escape(PARTIAL_PREFIX)}(\d+)-[0-9a-f]+\.partial$")


@dataclass(frozen=True)
class Manifest:
    kind: str  # "backup", or "pre-restore" for the safety copy a restore takes first
    file: str
    created: str  # UTC, ISO 8601, when Redis forked the snapshot
    size: int
    sha256: str
    rdb_version: int
    redis_version: str
    databases: Keyspace
    source: str

    @property
    def keys(self) -> int:
        return sum(db.keys for db in self.databases.values())

    def to_json(self) -> str:
        data: dict[str, Any] = {"format": MANIFEST_FORMAT, **asdict(self)}
        data["databases"] = {str(n): asdict(db) for n, db in sorted(self.databases.items())}
        return json.dumps(data, indent=2) + "\n"

    @classmethod
    def from_json(cls, text: str) -> Manifest:
        """The manifest in `text`; ValueError for anything but a manifest this tool wrote, down
        to each field's type (an edited or foreign file must not become a traceback later)."""
        data = json.loads(text)
        if not isinstance(data, dict) or data.pop("format", None) != MANIFEST_FORMAT:
            raise ValueError("unknown manifest format")
        databases = data.get("databases")
        if not isinstance(databases, dict) or not all(
            isinstance(db, dict) and _whole(db.get("keys")) and _whole(db.get("expires"))
            for db in databases.values()
        ):
            raise ValueError("malformed databases")
        data["databases"] = {
            int(n): DbKeys(db["keys"], db["expires"]) for n, db in databases.items()
        }
        manifest = cls(**data)
        texts = (manifest.kind, manifest.file, manifest.created, manifest.sha256,
                 manifest.redis_version, manifest.source)  # fmt: skip
        if not all(isinstance(t, str) for t in texts) or not (
            _whole(manifest.size) and _whole(manifest.rdb_version)
        ):
            raise ValueError("a field of the wrong type")
        if manifest.kind not in KINDS or not re.fullmatch(r"[0-9a-f]{64}", manifest.sha256):
            raise ValueError("unexpected kind or sha256")
        return manifest


def _whole(value: object) -> bool:
    """A count as JSON holds one: an integer, not a bool, not negative."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def backup_name(when: datetime, kind: str) -> str:
    """`redis-20250131T235959.123Z`: sorts by time, and is unique to the millisecond."""
    stamp = when.astimezone(UTC).strftime("%Y%m%dT%H%M%S.%f")[:-3] + "Z"
    return f"redis-{stamp}" + ("-pre-restore" if kind == "pre-restore" else "")


def iso_time(when: datetime) -> str:
    return when.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def manifest_path(rdb: Path) -> Path:
    return rdb.with_suffix(".json")


def sha256_of(path: Path) -> str:
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def read_manifest(rdb: Path) -> Manifest:
    path = manifest_path(rdb)
    if not path.is_file():
        raise UserError(
            f"{rdb.name} has no manifest ({path.name} is missing): "
            "restore only backups made by `invoke backup-redis` (see `invoke backups`)"
        )
    try:
        return Manifest.from_json(path.read_text())
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise UserError(f"manifest {path} is unreadable ({exc}): pick another backup") from None


def mismatch(rdb: Path, manifest: Manifest) -> str | None:
    """Why the file is not the one its manifest describes, or None when it is."""
    if not rdb.is_file():
        return "file missing"
    if rdb.stat().st_size != manifest.size:
        return f"size {rdb.stat().st_size} bytes, manifest says {manifest.size}"
    if sha256_of(rdb) != manifest.sha256:
        return "sha256 differs from the manifest's"
    return None


def publish(partial: Path, final: Path) -> None:
    """Give a finished file its final name atomically, never replacing an existing backup."""
    try:
        os.link(partial, final)
    except FileExistsError:
        raise UserError(f"{final} already exists: run the backup again") from None
    partial.unlink()
    fsync_file(final.parent)


def write_manifest(rdb: Path, manifest: Manifest) -> Path:
    final = manifest_path(rdb)
    partial = final.with_name(final.name + ".partial")
    try:
        write_durably(partial, manifest.to_json().encode())
        publish(partial, final)
    finally:
        partial.unlink(missing_ok=True)
    return final


@dataclass(frozen=True)
class Listed:
    """One backup in the folder: its file, its manifest if readable, and whether they agree."""

    rdb: Path
    manifest: Manifest | None
    problem: str | None  # None = verified: the file's sha256 is the manifest's

    @property
    def kind(self) -> str:
        match = NAME.match(self.rdb.name)
        return "pre-restore" if match and match[2] else "backup"

    @property
    def complete(self) -> bool:
        return self.manifest is not None and self.rdb.is_file()


def list_backups(folder: Path, *, verify: bool = True) -> list[Listed]:
    """Backups in `folder`, oldest first; `verify` hashes each file (slow for large ones)."""
    if not folder.is_dir():
        return []
    names = {p.name for p in folder.glob("redis-*.rdb")}
    names |= {p.with_suffix(".rdb").name for p in folder.glob("redis-*.json")}
    listed = []
    for name in sorted(n for n in names if NAME.match(n)):
        rdb = folder / name
        manifest: Manifest | None = None
        try:
            manifest = read_manifest(rdb)
        except UserError:
            problem: str | None = (
                "no manifest" if not manifest_path(rdb).exists() else "bad manifest"
            )
        else:
            problem = mismatch(rdb, manifest) if verify else None
            if not verify and not rdb.is_file():
                problem = "file missing"
        listed.append(Listed(rdb, manifest, problem))
    return listed


def latest(folder: Path) -> Path:
    """The newest complete regular backup; safety copies (-pre-restore) only by name (--file)."""
    found = [b for b in list_backups(folder, verify=False) if b.complete and b.kind == "backup"]
    if not found:
        raise UserError(f"no backups in {folder}: make one with `invoke backup-redis`")
    return found[-1].rdb


@dataclass(frozen=True)
class Pruned:
    removed: list[Path]
    spared: Path | None  # kept beyond --keep: the newest backup with keys, the newer ones empty


def prune(folder: Path, keep: int, protect: Path) -> Pruned:
    """Delete complete regular backups beyond the newest `keep`; never `protect` (the new one).

    Only backups whose file still has the manifest's size count, so a damaged newer file never
    pushes out a sound older one; and when every backup kept holds no keys, the newest older one
    with keys is kept too (`spared`), and said so.
    """
    if keep < 1:
        raise UserError(f"--keep={keep} must be 1 or more")
    backups = [
        b
        for b in list_backups(folder, verify=False)
        if b.complete
        and b.kind == "backup"
        and b.manifest
        and b.rdb.stat().st_size == b.manifest.size
    ]
    newest = [b for b in backups if b.rdb.resolve() == protect.resolve()] + backups[-keep:]
    kept = {b.rdb.resolve() for b in newest} | {protect.resolve()}
    spared = None
    if newest and all(b.manifest and b.manifest.keys == 0 for b in newest):
        with_keys = [
            b for b in backups if b.rdb.resolve() not in kept and b.manifest and b.manifest.keys
        ]
        if with_keys:
            spared = with_keys[-1].rdb
            kept.add(spared.resolve())
    removed = []
    for b in backups:
        if b.rdb.resolve() in kept:
            continue
        manifest_path(b.rdb).unlink(missing_ok=True)  # first: what is left is never "complete"
        b.rdb.unlink(missing_ok=True)
        removed.append(b.rdb)
    return Pruned(removed, spared)


def remove_stale_partials(folder: Path) -> list[Path]:
    """Delete backups being copied out by processes that are gone (killed before cleaning up);
    the pid in the name tells. Partials of live processes are theirs to finish."""
    removed = []
    for path in folder.glob(f"{PARTIAL_PREFIX}*.partial") if folder.is_dir() else []:
        match = STALE.match(path.name)
        if match is None or _alive(int(match[1])):
            continue
        path.unlink(missing_ok=True)
        removed.append(path)
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


def listing_rows(listed: list[Listed]) -> list[list[str]]:
    rows = [["TIME (UTC)", "KIND", "SIZE", "KEYS", "VERIFIED", "FILE"]]
    for b in listed:
        m = b.manifest
        when = (
            m.created if m else b.rdb.name.removeprefix("redis-").split("-")[0].removesuffix(".rdb")
        )
        size = human_size(b.rdb.stat().st_size) if b.rdb.is_file() else "-"
        keys = str(m.keys) if m else "-"
        verified = "yes" if b.problem is None else f"NO ({b.problem})"
        rows.append([when, b.kind, size, keys, verified, b.rdb.name])
    return rows
