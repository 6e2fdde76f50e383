"""What every task shares: how it speaks to the user.

User errors become one line and a non-zero exit, never a traceback; sizes and tables read the
same in every task.
"""

from __future__ import annotations

import functools
import math
import sys
from collections.abc import Callable
from typing import Any, TypeVar

from invoke.exceptions import Exit

from kcdev.errors import UserError

F = TypeVar("F", bound=Callable[..., Any])
# How modules report progress: tasks pass `say`, tests a list's append.
Say = Callable[[str], None]


def say(message: str) -> None:
    print(message, flush=True)


def one_line_errors(func: F) -> F:
    """Turn UserError (and Ctrl-C) into `error: ...` on stderr and exit status 1 (130)."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except UserError as exc:
            print(f"error: {exc}", file=sys.stderr, flush=True)
            if exc.details:
                print(exc.details.rstrip("\n"), file=sys.stderr, flush=True)
            raise Exit(code=1) from None
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr, flush=True)
            raise Exit(code=130) from None

    return wrapper  # type: ignore[return-value]


def confirm(question: str) -> None:
    """Ask before destroying data; without a terminal to ask on, refuse (use --yes)."""
    if not sys.stdin.isatty():
        raise UserError(f"{question.split('?')[0]}? refusing without a terminal: pass --yes")
    answer = input(f"{question} [y/N] ").strip().lower()
    if answer not in ("y", "yes"):
        raise UserError("cancelled: nothing was changed")


def number(flag: str, raw: object, *, minimum: float, integer: bool = False) -> float:
    """Parse a numeric task argument: Invoke's own conversion errors end in a traceback.

    nan and inf are refused: `--timeout inf` would wait forever, and nan compares false with
    every deadline."""
    try:
        value = int(str(raw)) if integer else float(str(raw))
    except ValueError:
        kind = "a whole number" if integer else "a number"
        raise UserError(f"--{flag}={raw} is not {kind}") from None
    if not math.isfinite(value):
        raise UserError(f"--{flag}={raw} is not a finite number")
    if value < minimum:
        raise UserError(f"--{flag}={raw} must be at least {minimum:g}")
    return value


def human_size(size: float) -> str:
    """Bytes as people read them: 512 B, 1.5 KiB, 253.1 MiB, 2.0 GiB."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


def table(rows: list[list[str]]) -> str:
    """Rows as left-aligned columns; the first row is the header."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in rows
    )
