"""Restoring a backup into Redis so that it stays restored, with AOF on.

Copying dump.rdb into the data folder and restarting, as most guides say, silently keeps the old
data when `appendonly yes`: Redis loads the AOF and ignores the RDB. So the restore rebuilds the
AOF from the backup instead, with nothing but ordinary commands:

1. verify the file (manifest sha256 and size, RDB version, redis-check-rdb), ask, and take a
   safety backup of the current data;
2. stop the Redis container; in a throwaway container of the same image sharing its volume, move
   the AOF folder and dump aside (kept until the end), and put the backup in as the dump;
3. start a temporary redis-server there with `--appendonly no`, so it loads the dump, then
   `CONFIG SET appendonly yes`: Redis writes a fresh AOF base from memory; wait until that rewrite
   finished well and the AOF manifest exists, then shut it down cleanly;
4. start the real container, wait until it answers and is not loading, and compare the keys per
   database with the manifest; only then delete what was moved aside.

Any failure after the stop puts the moved-aside files back and starts Redis again: the data is as
it was, and the error says what failed.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import redis

from kcdev.backup import rdb, store
from kcdev.backup.redis_target import RedisTarget, config_value, connect, ready_reason
from kcdev.backup.save import backup
from kcdev.console import Say, confirm
from kcdev.errors import UserError
from kcdev.redis_client import DbKeys, Keyspace, keyspace, parse_keyspace_lines, total_keys
from kcdev.stack import readiness
from kcdev.stack.docker_cli import Docker, last_line

HOLD = "kc-pre-restore"  # the folder in the data volume that keeps the old files until success
STOP_TIMEOUT = 60  # seconds Redis gets to write its AOF buffer before docker kills it

# As root: the backup on this machine is readable by root only (backups are 0600).
STAGE = r"""
set -o errexit -o nounset
umask 077
cd "$1"; dump=$2; aof=$3; hold=$4; need_kb=$5
fail() { echo "kc-restore: $*" >&2; exit 3; }
for old in kc-pre-restore-*; do
    [ ! -e "$old" ] || fail "$1/$old is left from an interrupted restore: move it away first"
done
avail=$(df -Pk . | awk 'NR == 2 {print $4}')
[ "$avail" -ge "$need_kb" ] || fail "$avail KiB free in the data volume, the restore needs $need_kb"
mkdir "$hold"
chown redis:redis "$hold"
# Record what there was: rollback puts back what was moved and deletes what did not exist.
for name in "$aof" "$dump"; do
    if [ -e "$name" ]; then mv "$name" "$hold/"; else touch "$hold/.absent-$name"; fi
done
cp /kc-restore/backup.rdb "$dump.kc-restoring"
chown redis:redis "$dump.kc-restoring"
mv "$dump.kc-restoring" "$dump"
"""

# As redis, like the real server, so every file it writes has the owner the server expects.
REBUILD = r"""
set -o errexit -o nounset
umask 077
dir=$1; dump=$2; aof=$3; aoffile=$4; databases=$5
log=/tmp/kc-restore-redis.log
fail() { echo "kc-restore: $*" >&2; tail -n 3 "$log" >&2 2>/dev/null || true; exit 3; }
redis-server --port 6379 --bind 127.0.0.1 --dir "$dir" --dbfilename "$dump" \
    --appendonly no --save "" --appenddirname "$aof" --appendfilename "$aoffile" \
    --databases "$databases" --logfile "$log" &
pid=$!
field() { printf '%s\n' "$info" | sed -n "s/^$1://p"; }
until info=$(redis-cli -p 6379 INFO persistence 2>/dev/null | tr -d '\r') \
        && [ "$(field loading)" = 0 ]; do
    kill -0 "$pid" 2>/dev/null || fail "the temporary Redis stopped while loading the backup"
    sleep 0.1
done
redis-cli -p 6379 INFO keyspace | tr -d '\r' | grep '^db' || true
[ "$(redis-cli -p 6379 CONFIG SET appendonly yes | tr -d '\r')" = OK ] \
    || fail "the temporary Redis refused CONFIG SET appendonly yes"
while :; do
    kill -0 "$pid" 2>/dev/null || fail "the temporary Redis stopped while writing the new AOF"
    info=$(redis-cli -p 6379 INFO persistence | tr -d '\r')
    [ "$(field aof_rewrites)" -ge 1 ] && [ "$(field aof_rewrite_in_progress)" = 0 ] \
        && [ "$(field aof_rewrite_scheduled)" = 0 ] && break
    sleep 0.1
done
[ "$(field aof_last_bgrewrite_status)" = ok ] || fail "writing the new AOF failed"
[ -f "$dir/$aof/$aoffile.manifest" ] || fail "the new AOF has no manifest"
redis-cli -p 6379 SHUTDOWN >/dev/null 2>&1 || true
wait "$pid" || fail "the temporary Redis did not shut down cleanly"
"""

# As root, undoing STAGE and REBUILD by what STAGE recorded; a no-op when STAGE never began.
PUT_BACK = r"""
set -o errexit -o nounset
cd "$1"; dump=$2; aof=$3; hold=$4
[ -d "$hold" ] || exit 0
rm -f "$dump.kc-restoring"
for name in "$aof" "$dump"; do
    if [ -e "$hold/$name" ]; then rm -rf "$name"; mv "$hold/$name" .
    elif [ -e "$hold/.absent-$name" ]; then rm -rf "$name"
    fi
done
rm -rf "$hold"
"""


class RestoreFailed(Exception):
    """A step after the stop failed: the caller puts the old data back."""


@dataclass(frozen=True)
class DataLayout:
    """Where the server keeps its files, from CONFIG GET: the temporary server must match."""

    dir: str
    dump: str
    aof_dir: str
    aof_file: str
    databases: str  # a backup of db 20 loads only into a server with more than 20 databases


def data_layout(client: redis.Redis) -> DataLayout:
    return DataLayout(
        config_value(client, "dir"),
        config_value(client, "dbfilename"),
        config_value(client, "appenddirname"),  # Redis 7's multi-part AOF
        config_value(client, "appendfilename"),
        config_value(client, "databases"),
    )


def verify_file(file: Path) -> store.Manifest:
    """What can be known about the file on its own, before asking Redis; one line if it is bad."""
    if not file.is_file():
        raise UserError(f"no backup file {file}: see `invoke backups`")
    if file.stat().st_size == 0:
        raise UserError(f"{file} is empty: it is not a Redis backup")
    if rdb.file_version(file) is None:
        raise UserError(f"{file} is not a Redis RDB file (it does not start with REDIS00NN)")
    manifest = store.read_manifest(file)
    mismatch = store.mismatch(file, manifest)
    if mismatch:
        raise UserError(
            f"{file.name} does not match its manifest ({mismatch}): the file changed or is "
            "damaged; pick another backup (`invoke backups`)"
        )
    return manifest


def verify_for_server(file: Path, docker: Docker, target: RedisTarget, redis_version: str) -> None:
    """Whether this server can load the file: its RDB version, and its own redis-check-rdb."""
    version = rdb.file_version(file) or 0
    readable = rdb.max_readable_version(redis_version)
    if readable is not None and version > readable:
        raise UserError(
            f"{file.name} is RDB version {version}, which Redis {redis_version} cannot read "
            f"(it reads up to {readable}): restore it into a newer Redis"
        )
    check = rdb.check_rdb(docker, target.image, file)
    if not check.ok:
        raise UserError(
            f"{file.name} fails redis-check-rdb ({check.problem}): the backup is damaged; "
            "pick another (`invoke backups`)"
        )


def keyspace_problem(found: Keyspace, manifest: store.Manifest) -> str | None:
    """Whether the restored counts are the backup's: every key without a TTL, at most all keys.

    Keys whose TTL ran out since the backup are dropped on load, so only the keys without a TTL
    are certain to come back.
    """
    for db in sorted(set(found) | set(manifest.databases)):
        want = manifest.databases.get(db, DbKeys(0, 0))
        got = found.get(db, DbKeys(0, 0)).keys
        if not want.keys - want.expires <= got <= want.keys:
            return (
                f"db{db} has {got} keys, the backup {want.keys} ({want.expires} of them with a TTL)"
            )
    return None


@dataclass
class Restorer:
    """One restore's docker work: throwaway containers on the Redis container's volume."""

    docker: Docker
    target: RedisTarget
    layout: DataLayout
    backup_file: Path
    timeout: float
    hold: str = field(default_factory=lambda: f"{HOLD}-{secrets.token_hex(4)}")

    def run_script(
        self, step: str, script: str, user: str, *args: str, with_backup: bool = False
    ) -> str:
        """Run one script in a throwaway container sharing the Redis container's volumes."""
        name = f"kc-redis-restore-{self.hold.rsplit('-', 1)[1]}-{step}"
        mount = ["--mount", rdb.bind_mount(self.backup_file, "/kc-restore/backup.rdb")]
        argv = [
            "run", "--rm", "--name", name, "--network", "none", "--user", user,
            "--volumes-from", self.target.container_id, *(mount if with_backup else []),
            "--entrypoint", "sh", self.target.image, "-c", script, "sh", *args,
        ]  # fmt: skip
        try:
            result = self.docker.run(*argv, timeout=self.timeout)
        except BaseException:
            self.docker.run("rm", "--force", name, timeout=60)  # timed out or interrupted
            raise
        if result.returncode != 0:
            lines = [ln for ln in result.stderr.splitlines() if ln.startswith("kc-restore: ")]
            reason = lines[-1].removeprefix("kc-restore: ") if lines else last_line(result.stderr)
            raise RestoreFailed(f"{step}: {reason or f'exit code {result.returncode}'}")
        return result.stdout

    def container(self, action: str) -> None:
        extra = ["--time", str(STOP_TIMEOUT)] if action == "stop" else []
        result = self.docker.run(action, *extra, self.target.container_id, timeout=self.timeout)
        if result.returncode != 0:
            raise RestoreFailed(f"docker {action}: {last_line(result.stderr)}")

    def wait_ready(self) -> None:
        t = self.target

        def check() -> str | None:
            running = self.docker.run(
                "inspect", "--format", "{{.State.Running}}", t.container_id, timeout=30
            )
            if running.stdout.strip() != "true":
                raise RestoreFailed("the Redis container stopped while loading the data")
            return ready_reason(t)

        try:
            readiness.wait_until(check, time.monotonic() + self.timeout)
        except readiness.NotReady as exc:
            raise RestoreFailed(f"Redis did not come back ({exc})") from None

    def replace(self, manifest: store.Manifest, say: Say) -> Keyspace:
        """Steps 2-4 of the module's procedure; the caller puts the data back on RestoreFailed."""
        lay = self.layout
        need_kb = 2 * manifest.size // 1024 + 1024  # the dump, plus an AOF base of about its size
        say("stopping Redis")
        self.container("stop")
        say("rebuilding the AOF from the backup in a temporary Redis")
        self.run_script(
            "stage", STAGE, "root", lay.dir, lay.dump, lay.aof_dir, self.hold, str(need_kb),
            with_backup=True,
        )  # fmt: skip
        config = (lay.dir, lay.dump, lay.aof_dir, lay.aof_file, lay.databases)
        loaded = parse_keyspace_lines(self.run_script("rebuild", REBUILD, "redis", *config))
        problem = keyspace_problem(loaded, manifest)
        if problem:
            raise RestoreFailed(f"the temporary Redis loaded other counts: {problem}")
        say("starting Redis")
        self.container("start")
        self.wait_ready()
        found = self.live_keyspace()
        problem = keyspace_problem(found, manifest)
        if problem:
            raise RestoreFailed(f"Redis came back with other counts: {problem}")
        return found

    def live_keyspace(self) -> Keyspace:
        client = self.target.client()
        try:
            return keyspace(client.info("keyspace"))
        except redis.RedisError as exc:
            raise RestoreFailed(f"Redis does not answer after the restore ({exc})") from None
        finally:
            client.close()

    def put_back(self) -> None:
        """Undo everything after the stop, and start Redis on its old data."""
        self.docker.run(
            "stop", "--time", str(STOP_TIMEOUT), self.target.container_id, timeout=self.timeout
        )
        lay = self.layout
        self.run_script("put-back", PUT_BACK, "root", lay.dir, lay.dump, lay.aof_dir, self.hold)
        self.container("start")
        self.wait_ready()

    def discard_old(self) -> str | None:
        """After success the moved-aside files are not needed (the safety backup remains).

        Returns the folder when it could not be deleted: harmless, but the next restore refuses
        to start until it is gone."""
        path = f"{self.layout.dir.rstrip('/')}/{self.hold}"
        result = self.docker.run(
            "exec", self.target.container_id, "rm", "-rf", path, timeout=self.timeout
        )
        return path if result.returncode != 0 else None


def leftover_holds(docker: Docker, target: RedisTarget, layout: DataLayout) -> list[str]:
    """Folders an interrupted restore left in the data volume: they hold data, never delete them."""
    result = docker.run(
        "exec", target.container_id, "find", layout.dir, "-maxdepth", "1", "-name", f"{HOLD}-*",
        timeout=60,
    )  # fmt: skip
    return result.stdout.split()


def restore(
    target: RedisTarget,
    file: Path,
    yes: bool = False,
    *,
    backups_dir: Path = store.DEFAULT_DIR,
    docker: Docker | None = None,
    timeout: float = 1800,
    say: Say = print,
    ask: Callable[[str], None] = confirm,
) -> Keyspace:
    """Replace Redis' data with a verified backup; returns the keys per database after it."""
    docker = docker or Docker()
    file = file.expanduser().absolute()
    manifest = verify_file(file)
    client = connect(target)
    try:
        redis_version = str(client.info("server")["redis_version"])
        layout = data_layout(client)
        current = total_keys(keyspace(client.info("keyspace")))
    except redis.RedisError as exc:
        raise UserError(f"lost the connection to Redis at {target.address} ({exc})") from None
    finally:
        client.close()
    verify_for_server(file, docker, target, redis_version)
    leftovers = leftover_holds(docker, target, layout)
    if leftovers:
        raise UserError(
            f"{leftovers[0]} in the Redis data volume is left from an interrupted restore and "
            "holds the data from before it: move it away first (docker exec), then restore again"
        )
    if not yes:
        ask(
            f"Replace all data in Redis ({target.source}, {current} keys) with {file.name} "
            f"({manifest.keys} keys, taken {manifest.created})? A safety backup is taken first."
        )
    safety = backup(
        target, backups_dir, kind="pre-restore", docker=docker, timeout=timeout, say=say
    )
    say(f"safety backup of the current data: {safety}")
    restorer = Restorer(docker, target, layout, file, timeout)
    try:
        found = restorer.replace(manifest, say)
    except (RestoreFailed, UserError, KeyboardInterrupt) as exc:
        reason = str(exc) or type(exc).__name__
        try:
            restorer.put_back()
        except (RestoreFailed, UserError) as undo:
            raise UserError(
                f"restore failed ({reason}) and putting the old data back failed too ({undo}): "
                f"the old files are in {layout.dir}/{restorer.hold} in the Redis volume, and in "
                f"the safety backup {safety}"
            ) from None
        if isinstance(exc, KeyboardInterrupt):
            raise
        raise UserError(
            f"restore failed ({reason}): Redis is back on its data from before; {file.name} is "
            "unchanged"
        ) from None
    left = restorer.discard_old()
    if left:
        say(f"warning: could not delete {left} (the data from before) in the Redis volume")
    return found
