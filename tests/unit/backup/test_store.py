"""The backups folder: names, manifests (written atomically, verified), listing and pruning."""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from kcdev.backup import store
from kcdev.console import human_size
from kcdev.errors import UserError
from kcdev.redis_client import DbKeys

T0 = datetime(2025, 1, 31, 23, 59, 59, 123456, tzinfo=UTC)


def make_backup(
    folder: Path,
    when: datetime,
    kind: str = "backup",
    data: bytes = b"REDIS0010data",
    keys: int = 10,
) -> Path:
    """A backup as `redis_backup.backup` leaves it: the file, then its manifest."""
    folder.mkdir(parents=True, exist_ok=True)
    name = store.backup_name(when, kind)
    rdb = folder / f"{name}.rdb"
    rdb.write_bytes(data)
    store.write_manifest(rdb, manifest_for(rdb, when, kind, keys))
    return rdb


def manifest_for(
    rdb: Path, when: datetime = T0, kind: str = "backup", keys: int = 10
) -> store.Manifest:
    data = rdb.read_bytes()
    return store.Manifest(
        kind=kind,
        file=rdb.name,
        created=store.iso_time(when),
        size=len(data),
        sha256=hashlib.sha256(data).hexdigest(),
        rdb_version=10,
        redis_version="7.0.15",
        databases={0: DbKeys(keys, 2), 3: DbKeys(1, 0)} if keys else {},
        source="project kc-devenv, container 0123456789ab",
    )


# --- names -----------------------------------------------------------------------------------


def test_backup_name_is_utc_to_the_millisecond() -> None:
    assert store.backup_name(T0, "backup") == "redis-20250131T235959.123Z"
    assert store.backup_name(T0, "pre-restore") == "redis-20250131T235959.123Z-pre-restore"
    assert store.iso_time(T0) == "2025-01-31T23:59:59.123Z"


def test_backup_names_sort_by_time() -> None:
    times = [T0 + timedelta(milliseconds=n * 7919) for n in range(20)]
    names = [store.backup_name(t, "backup") for t in times]
    assert sorted(names) == names


# --- manifests -------------------------------------------------------------------------------


def test_manifest_round_trip(tmp_path: Path) -> None:
    rdb = tmp_path / "redis-x.rdb"
    rdb.write_bytes(b"REDIS0010")
    manifest = manifest_for(rdb)
    text = manifest.to_json()
    assert json.loads(text)["databases"] == {
        "0": {"keys": 10, "expires": 2},
        "3": {"keys": 1, "expires": 0},
    }
    assert store.Manifest.from_json(text) == manifest
    assert manifest.keys == 11


@pytest.mark.parametrize(
    "change",
    [
        {"format": 2},
        {"kind": "something"},
        {"sha256": "not-a-hash"},
        {"databases": {"0": {"keys": "x", "expires": 0}}},
    ],
)
def test_manifest_rejects_what_it_does_not_know(tmp_path: Path, change: dict[str, object]) -> None:
    rdb = tmp_path / "redis-x.rdb"
    rdb.write_bytes(b"REDIS0010")
    data = json.loads(manifest_for(rdb).to_json()) | change
    with pytest.raises((ValueError, KeyError, TypeError)):
        store.Manifest.from_json(json.dumps(data))


def test_write_manifest_leaves_no_partial_and_never_overwrites(tmp_path: Path) -> None:
    rdb = make_backup(tmp_path, T0)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "redis-20250131T235959.123Z.json",
        "redis-20250131T235959.123Z.rdb",
    ]
    with pytest.raises(UserError, match="already exists"):
        store.write_manifest(rdb, manifest_for(rdb))
    assert not list(tmp_path.glob("*.partial"))


def test_read_manifest_missing_is_one_line(tmp_path: Path) -> None:
    rdb = tmp_path / "redis-x.rdb"
    rdb.write_bytes(b"REDIS0010")
    with pytest.raises(UserError, match=r"has no manifest \(redis-x.json is missing\)") as caught:
        store.read_manifest(rdb)
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize(
    "text",
    [
        "{not json", "null", "[]", '"text"', "7",
        # Before, these were AttributeError tracebacks (`invoke backups`, `restore-redis`):
        '{"format": 1, "databases": null}', '{"format": 1, "databases": [1]}',
        '{"format": 1, "databases": {"0": {"keys": true, "expires": 0}}}',
    ],
)  # fmt: skip
def test_read_manifest_unreadable_is_one_line(tmp_path: Path, text: str) -> None:
    rdb = tmp_path / "redis-x.rdb"
    rdb.write_bytes(b"REDIS0010")
    store.manifest_path(rdb).write_text(text)
    with pytest.raises(UserError, match="is unreadable") as caught:
        store.read_manifest(rdb)
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize(
    ("field", "value"),
    [("size", "59"), ("size", -1), ("size", True), ("rdb_version", 1.5), ("created", 5),
     ("file", None), ("source", []), ("redis_version", {}), ("kind", None)],
)  # fmt: skip
def test_a_field_of_the_wrong_type_is_refused(tmp_path: Path, field: str, value: object) -> None:
    rdb = tmp_path / "redis-x.rdb"
    rdb.write_bytes(b"REDIS0010")
    data = json.loads(manifest_for(rdb).to_json()) | {field: value}
    with pytest.raises(ValueError):
        store.Manifest.from_json(json.dumps(data))


def test_mismatch_finds_size_content_and_missing_file(tmp_path: Path) -> None:
    rdb = make_backup(tmp_path, T0)
    manifest = store.read_manifest(rdb)
    assert store.mismatch(rdb, manifest) is None

    rdb.write_bytes(b"REDIS0010dat")  # truncated
    assert "size" in (store.mismatch(rdb, manifest) or "")
    rdb.write_bytes(b"REDIS0010datA")  # same size, other bytes
    assert "sha256" in (store.mismatch(rdb, manifest) or "")
    rdb.unlink()
    assert store.mismatch(rdb, manifest) == "file missing"


# --- listing ---------------------------------------------------------------------------------


def test_list_backups_oldest_first_with_their_state(tmp_path: Path) -> None:
    good = make_backup(tmp_path, T0)
    damaged = make_backup(tmp_path, T0 + timedelta(seconds=1))
    damaged.write_bytes(b"REDIS0010dXta")
    orphan = tmp_path / "redis-20250301T000000.000Z.rdb"
    orphan.write_bytes(b"REDIS0010")
    (tmp_path / "notes.txt").write_text("not a backup")
    (tmp_path / "redis-foo.rdb").write_text("not our name")

    listed = store.list_backups(tmp_path)

    assert [(b.rdb, b.problem) for b in listed] == [
        (good, None),
        (damaged, "sha256 differs from the manifest's"),
        (orphan, "no manifest"),
    ]
    rows = store.listing_rows(listed)
    assert rows[0] == ["TIME (UTC)", "KIND", "SIZE", "KEYS", "VERIFIED", "FILE"]
    assert rows[1] == ["2025-01-31T23:59:59.123Z", "backup", "13 B", "11", "yes", good.name]
    assert rows[2][4] == "NO (sha256 differs from the manifest's)"
    assert rows[3][3:5] == ["-", "NO (no manifest)"]


def test_list_backups_of_a_missing_folder_is_empty(tmp_path: Path) -> None:
    assert store.list_backups(tmp_path / "nothing") == []


def test_latest_skips_safety_copies_and_incomplete_backups(tmp_path: Path) -> None:
    regular = make_backup(tmp_path, T0)
    make_backup(tmp_path, T0 + timedelta(seconds=1), kind="pre-restore")
    (tmp_path / "redis-20300101T000000.000Z.rdb").write_bytes(b"REDIS0010")  # no manifest
    assert store.latest(tmp_path) == regular


def test_latest_without_backups_says_how_to_make_one(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="invoke backup-redis"):
        store.latest(tmp_path)


# --- pruning ---------------------------------------------------------------------------------


def test_prune_keeps_the_newest_n(tmp_path: Path) -> None:
    made = [make_backup(tmp_path, T0 + timedelta(minutes=n)) for n in range(5)]

    removed = store.prune(tmp_path, 2, made[-1]).removed

    assert removed == made[:3]
    assert [b.rdb for b in store.list_backups(tmp_path)] == made[3:]
    assert not any(store.manifest_path(p).exists() for p in removed)


def test_prune_never_removes_the_protected_backup(tmp_path: Path) -> None:
    made = [make_backup(tmp_path, T0 + timedelta(minutes=n)) for n in range(3)]
    # The new backup is the oldest by name (a clock set back): it still stays.
    store.prune(tmp_path, 1, made[0])
    assert [b.rdb for b in store.list_backups(tmp_path)] == [made[0], made[2]]


def test_prune_leaves_safety_copies_and_unknown_files(tmp_path: Path) -> None:
    safety = make_backup(tmp_path, T0, kind="pre-restore")
    orphan = tmp_path / "redis-20250101T000000.000Z.rdb"
    orphan.write_bytes(b"REDIS0010")
    made = [make_backup(tmp_path, T0 + timedelta(minutes=n + 1)) for n in range(3)]

    store.prune(tmp_path, 1, made[-1])

    assert sorted(p.name for p in tmp_path.glob("*.rdb")) == sorted(
        [safety.name, orphan.name, made[-1].name]
    )


def test_prune_never_removes_a_restores_safety_copy(tmp_path: Path) -> None:
    """The issue: a restore's safety copy is the way back; --keep 1 must leave it alone."""
    safety = make_backup(tmp_path, T0, kind="pre-restore")
    made = [make_backup(tmp_path, T0 + timedelta(minutes=n + 1)) for n in range(2)]

    assert store.prune(tmp_path, 1, made[-1]).removed == [made[0]]
    assert safety.exists() and store.manifest_path(safety).exists()


def test_prune_keeps_the_last_backup_with_keys_when_the_newer_ones_are_empty(
    tmp_path: Path,
) -> None:
    """The issue: after a restore gone wrong, `--keep 1` kept the new empty backup and pruned
    the last one that had keys."""
    good = [make_backup(tmp_path, T0 + timedelta(minutes=n)) for n in range(2)]
    empty = [make_backup(tmp_path, T0 + timedelta(minutes=n + 2), keys=0) for n in range(2)]

    pruned = store.prune(tmp_path, 1, empty[-1])

    assert pruned.spared == good[-1]
    assert pruned.removed == [good[0], empty[0]]
    assert [b.rdb for b in store.list_backups(tmp_path)] == [good[-1], empty[-1]]


def test_prune_spares_nothing_when_a_kept_backup_has_keys(tmp_path: Path) -> None:
    made = [make_backup(tmp_path, T0 + timedelta(minutes=n), keys=n % 2) for n in range(4)]
    pruned = store.prune(tmp_path, 2, made[-1])
    assert pruned.spared is None and pruned.removed == made[:2]


def test_prune_does_not_count_a_damaged_backup_as_kept(tmp_path: Path) -> None:
    older = make_backup(tmp_path, T0)
    newer = make_backup(tmp_path, T0 + timedelta(minutes=1))
    newer.write_bytes(b"REDIS0010da")  # cut short since: not the file its manifest describes
    new = make_backup(tmp_path, T0 + timedelta(minutes=2))

    assert store.prune(tmp_path, 2, new).removed == []  # older stays: newer does not count
    assert older.exists() and newer.exists()


def test_stale_partials_of_dead_processes_are_removed(tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)  # fmt: skip
    dead = tmp_path / f".kc-backup-{gone.stdout.strip()}-abc123.partial"
    live = tmp_path / f".kc-backup-{os.getpid()}-def456.partial"
    other = tmp_path / ".kc-backup-something.partial"
    for path in (dead, live, other):
        path.write_bytes(b"REDIS")

    assert store.remove_stale_partials(tmp_path) == [dead]
    assert live.exists() and other.exists()


def test_prune_refuses_keep_below_one(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="--keep=0 must be 1 or more"):
        store.prune(tmp_path, 0, tmp_path / "x.rdb")


@pytest.mark.parametrize(
    ("size", "shown"),
    [
        (0, "0 B"),
        (1023, "1023 B"),
        (1536, "1.5 KiB"),
        (3 * 1024**3, "3.0 GiB"),
        (5 * 1024**4, "5120.0 GiB"),
    ],
)
def test_human_size(size: int, shown: str) -> None:
    assert human_size(size) == shown
