"""Change one KEY=value in `.env`, keeping every other line and comment as the user wrote it.

`.env` is the user's file: it is edited in place, never regenerated, and written atomically (a
temporary file renamed over it) so an interrupted write cannot leave half a file.
"""

from __future__ import annotations

import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

from dotenv import dotenv_values

NEW_FILE_HEADER = "# Written by kc-devenv; every setting is documented in .env.sample\n"


@dataclass(frozen=True)
class EnvChange:
    key: str
    old: str | None  # None: the key was not set in the file
    new: str

    @property
    def changed(self) -> bool:
        return self.old != self.new

    @property
    def replaced(self) -> bool:
        """A different value was there before: worth telling the user."""
        return self.old is not None and self.old != self.new

    def describe(self, env_file: Path) -> str:
        if not self.changed:
            return f"{env_file.name}: {self.key}={self.new} (unchanged)"
        if self.replaced:
            return f"{env_file.name}: {self.key}={self.new} (was {self.old})"
        return f"{env_file.name}: {self.key}={self.new} (added)"


def set_value(env_file: Path, key: str, value: str) -> EnvChange:
    """Set `key` to `value`: every assignment of the key is rewritten, or one line is appended."""
    if not re.fullmatch(r"[A-Z_][A-Z0-9_]*", key):
        raise ValueError(f"not an environment variable name: {key!r}")
    text = env_file.read_text() if env_file.exists() else NEW_FILE_HEADER
    old = dotenv_values(env_file).get(key) if env_file.exists() else None
    change = EnvChange(key, old, value)
    if not change.changed:
        return change
    assignment = re.compile(rf"^(?P<lead>\s*(?:export\s+)?){key}\s*=.*$", re.MULTILINE)
    line = f"{key}={_quoted(value)}"
    if assignment.search(text):
        text = assignment.sub(lambda m: m.group("lead") + line, text)
    else:
        text += ("" if text.endswith("\n") or not text else "\n") + line + "\n"
    _write_atomically(env_file.resolve(), text)  # through a symlink, not over it
    return change


def _quoted(value: str) -> str:
    """Plain when safe, else double-quoted so dotenv reads back exactly `value`."""
    if re.fullmatch(r"[\w./:@+,-]*", value):
        return value
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _write_atomically(path: Path, text: str) -> None:
    mode = path.stat().st_mode & 0o7777 if path.exists() else 0o600  # .env may hold secrets
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
