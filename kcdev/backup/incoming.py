"""A file to restore, ours or not, and what the restored data must then hold.

Our backups come with a manifest (sha256, size, keys per database) that must still match. Files
people actually restore often have none: a production dump.rdb, `redis-cli --rdb` output, a file
another Redis wrote. Those are accepted too; what a manifest would hold is worked out instead:
sha256 and size from the file, the key count from redis-check-rdb (which reads every key), and
the keys per database from the temporary Redis that loads the file during the restore.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from kcdev.backup import rdb, store
from kcdev.errors import UserError
from kcdev.redis_client import DbKeys, Keyspace

EXPECT_ITEM = re.compile(r"^(\d+|\*):(\d+):(\d+)$")


@dataclass(frozen=True)
class Expectation:
    """The keys a restore must bring back: per database (a manifest), or only in all (a file
    without one). Keys with a TTL may have expired since, so only those without are certain."""

    databases: Keyspace | None
    total: DbKeys

    @classmethod
    def of_databases(cls, databases: Keyspace) -> Expectation:
        keys = sum(db.keys for db in databases.values())
        return cls(dict(databases), DbKeys(keys, sum(db.expires for db in databases.values())))

    def args(self) -> list[str]:
        """As kc-redis-journal's `begin` takes it: DB:KEYS:TTL, or *:KEYS:TTL for the total."""
        if self.databases is None:
            return [f"*:{self.total.keys}:{self.total.expires}"]
        return [f"{n}:{db.keys}:{db.expires}" for n, db in sorted(self.databases.items())]

    @classmethod
    def parse(cls, text: str) -> Expectation:
        """Back from `kc-redis-journal status` (its expect= line): the same items."""
        databases: Keyspace = {}
        total: DbKeys | None = None
        for item in text.split():
            match = EXPECT_ITEM.match(item)
            if match is None:
                raise ValueError(f"unexpected item {item!r}")
            counts = DbKeys(int(match[2]), int(match[3]))
            if match[1] == "*":
                total = counts
            else:
                databases[int(match[1])] = counts
        return cls(None, total) if total is not None else cls.of_databases(databases)

    def problem(self, found: Keyspace) -> str | None:
        """Why the restored counts are not the file's, or None when they are."""
        if self.databases is None:
            got = sum(db.keys for db in found.values())
            want = self.total
            if not want.keys - want.expires <= got <= want.keys:
                return f"{got} keys, the file {want.keys} ({want.expires} of them with a TTL)"
            return None
        for db in sorted(set(found) | set(self.databases)):
            want = self.databases.get(db, DbKeys(0, 0))
            got = found.get(db, DbKeys(0, 0)).keys
            if not want.keys - want.expires <= got <= want.keys:
                return (
                    f"db{db} has {got} keys, the backup {want.keys} ({want.expires} of them with a "
                    "TTL)"
                )
        return None


@dataclass(frozen=True)
class Incoming:
    """The file a restore puts in, checked as far as it can be on its own."""

    path: Path
    sha256: str
    size: int
    rdb_version: int
    manifest: store.Manifest | None  # None: not one of our backups

    @property
    def name(self) -> str:
        return self.path.name

    def described(self) -> str:
        """For the question before replacing data."""
        if self.manifest is None:
            return f"{self.name} (no manifest: an RDB file from elsewhere)"
        return f"{self.name} ({self.manifest.keys} keys, taken {self.manifest.created})"

    def expectation(self, check: rdb.CheckResult) -> Expectation:
        """From the manifest, or from redis-check-rdb's count for a file without one."""
        if self.manifest is not None:
            return Expectation.of_databases(self.manifest.databases)
        gone = check.already_expired  # counted by redis-check-rdb, dropped by a loading server
        return Expectation(None, DbKeys(check.keys - gone, check.expires - gone))


def verify_file(file: Path) -> Incoming:
    """What can be known about the file on its own, before asking Redis; one line if it is bad."""
    if file.is_dir():
        raise UserError(
            f"{file} is a folder: pass a backup file in it (`invoke backups --folder={file}`)"
        )
    if not file.is_file():
        raise UserError(f"no backup file {file}: see `invoke backups`")
    if file.stat().st_size == 0:
        raise UserError(f"{file} is empty: it is not a Redis backup")
    version = rdb.file_version(file)
    if version is None:
        raise UserError(f"{file} is not a Redis RDB file (it does not start with REDIS00NN)")
    manifest = None
    if store.manifest_path(file).exists():
        manifest = store.read_manifest(file)
        mismatch = store.mismatch(file, manifest)
        if mismatch:
            raise UserError(
                f"{file.name} does not match its manifest ({mismatch}): the file changed or is "
                "damaged; pick another backup (`invoke backups`)"
            )
    sha256 = manifest.sha256 if manifest else store.sha256_of(file)
    return Incoming(file, sha256, file.stat().st_size, version, manifest)
