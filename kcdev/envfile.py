"""`.env`, the user's file: read strictly, and change one KEY=value keeping the rest as written.

Reading goes through python-dotenv's own parser (`dotenv.parser.parse_stream`), which marks every
line it cannot parse; python-dotenv itself would only log a warning and skip such a line, so a
typo like `COMPOSE_PROJECT_NAME kc-adv` silently meant the default project. Here it stops with
the file, the line and the fix. So does a file that is not UTF-8 text or not a regular file (a
folder, a FIFO, which would block the reader, a dangling symlink): a `.env` that cannot be read
never falls back to the defaults. Only a missing `.env` means "the defaults". Messages name keys,
never values: the file holds secrets.

Writing uses `dotenv.set_key` (python-dotenv 1.2.2 and later): it rewrites the file through a
temporary file in the same folder renamed over it (atomic), keeps every other line and comment
byte for byte, keeps the file's mode, and with `follow_symlinks` edits the file a symlinked `.env`
points to. Before 1.2.2 it wrote the temporary file to /tmp, reset the mode to 0600 and replaced
symlinks. It does not fsync: ext4 (the default here) flushes a file renamed over another before
the rename, other filesystems may lose the newest edit in a power cut, never the whole file.
It rewrites the key's own line, so a comment at the end of that line goes (it described the old
value). A file it cannot parse is refused before any edit, as above.
"""

from __future__ import annotations

import errno
import io
import os
import re
import stat
from dataclasses import dataclass, field
from pathlib import Path

from dotenv import dotenv_values, set_key
from dotenv.parser import Binding, parse_stream

from kcdev.errors import UserError
from kcdev.paths import shown

NEW_FILE_HEADER = "# Written by kc-devenv; every setting is documented in .env.sample\n"
KEY = re.compile(r"[A-Z_][A-Z0-9_]*")
# Values written without quotes; anything else is single-quoted, escaped as dotenv reads it back.
PLAIN_VALUE = re.compile(r"[\w./:@+,-]*")


@dataclass(frozen=True)
class EnvFile:
    """What `.env` assigns. `values[key]` is None for a bare `KEY` line (no `=`)."""

    path: Path
    values: dict[str, str | None] = field(default_factory=dict)
    lines: dict[str, int] = field(default_factory=dict)  # key -> line of its last assignment
    exists: bool = False


class EnvFileError(UserError):
    """`.env` cannot be read or written. The message says why and what to do; `problem` says why
    in a few words, for callers that give their own fix (fetch-model: the model is installed,
    only .env is not updated)."""

    def __init__(self, message: str, problem: str) -> None:
        super().__init__(message)
        self.problem = problem


def read(path: Path) -> EnvFile:
    """The file's assignments; empty when it does not exist; UserError when it is unusable."""
    text = _read_text(path)
    if text is None:
        return EnvFile(path)
    lines: dict[str, int] = {}
    for binding in parse_stream(io.StringIO(text)):
        line = _line_of(binding)
        if binding.error:
            problem = f"line {line} is not KEY=value: {_parse_problem(binding)}"
            raise EnvFileError(f"{shown(path)} {problem} (see .env.sample)", problem)
        if binding.key is not None:
            lines[binding.key] = line
    values = dotenv_values(stream=io.StringIO(text))
    return EnvFile(path, dict(values), lines, exists=True)


def _read_text(path: Path) -> str | None:
    """The file's text, or None when there is no file. Opened without blocking: a FIFO would
    wait for a writer forever."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except FileNotFoundError:
        if path.is_symlink():
            raise EnvFileError(
                f"{shown(path)} is a symlink to {os.readlink(path)}, which does not exist: "
                "restore that file, or replace the link with a file",
                "a symlink to a file that does not exist",
            ) from None
        return None
    except OSError as exc:
        raise EnvFileError(
            f"cannot open {shown(path)} ({_reason(exc)}): {_FIX_ACCESS}", _reason(exc)
        ) from None
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise EnvFileError(
                f"{shown(path)} is {_kind(mode)}, not a file: move it away and write the "
                "settings into a file of that name (cp .env.sample .env)",
                f"it is {_kind(mode)}",
            )
        with os.fdopen(fd, "rb", closefd=False) as stream:
            data = stream.read()
    except OSError as exc:
        raise EnvFileError(
            f"cannot read {shown(path)} ({_reason(exc)}): {_FIX_ACCESS}", _reason(exc)
        ) from None
    finally:
        os.close(fd)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise EnvFileError(
            f"{shown(path)} line {line} is not UTF-8 text: save the file as UTF-8",
            f"line {line} is not UTF-8 text",
        ) from None


_FIX_ACCESS = "make it a file you can read (chmod u+r), or remove it to use the defaults"


def _reason(exc: OSError) -> str:
    return exc.strerror or errno.errorcode.get(exc.errno or 0, type(exc).__name__)


def _kind(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "a folder"
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    return "not a regular file"


def _line_of(binding: Binding) -> int:
    """The line the binding's text starts on: the parser counts blank lines before it as its own."""
    text = binding.original.string
    leading = text[: len(text) - len(text.lstrip())]
    return binding.original.line + len(re.findall(r"\r\n|\n|\r", leading))


def _parse_problem(binding: Binding) -> str:
    """What is wrong with a line dotenv could not parse, naming its key but never its value."""
    text = binding.original.string
    found = re.match(r"\s*(?:export\s+)?([^=\s#'\"]+)[^\S\r\n]*(=?)[^\S\r\n]*", text)
    if found is None:
        return "it does not start with a name"
    key, equals = found.groups()
    if not equals:
        return f"no '=' after {key}: write {key}=value"
    value = text[found.end() :]
    quote = value[:1]
    if quote in ("'", '"') and not re.match(rf"{quote}(?:\\.|[^{quote}\\])*{quote}", value):
        return (
            f"the quote that opens {key}'s value is never closed: close it "
            '(inside double quotes, write \\" for a quote)'
        )
    return f"{key}'s value holds spaces, quotes or text after its closing quote: quote the value"


def set_value(env_file: Path, key: str, value: str) -> EnvChange:
    """Set `key` to `value`: every assignment of the key is rewritten, or one line is appended.

    A file that cannot be read or parsed is refused (UserError) before anything is written.
    """
    if not KEY.fullmatch(key):
        raise ValueError(f"not an environment variable name: {key!r}")
    current = read(env_file)
    change = EnvChange(key, current.values.get(key), value)
    if not change.changed:
        return change
    text = env_file.read_text(encoding="utf-8") if current.exists else ""
    exported = re.search(rf"^[^\S\r\n]*export[^\S\r\n]+{key}[^\S\r\n]*=", text, re.MULTILINE)
    try:
        if not current.exists:
            _create_private(env_file)
        set_key(
            env_file, key, value,
            quote_mode="never" if PLAIN_VALUE.fullmatch(value) else "always",
            export=exported is not None, follow_symlinks=True,
        )  # fmt: skip
    except OSError as exc:
        raise EnvFileError(
            f"cannot write {shown(env_file)} ({_reason(exc)}): make it writable, "
            f"or set {key} there yourself",
            _reason(exc),
        ) from None
    return change


def _create_private(path: Path) -> None:
    """A new `.env` is readable by its owner only: it may come to hold secrets."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(NEW_FILE_HEADER)


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
