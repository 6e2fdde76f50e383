"""Checks and tests: `nox -l` lists the sessions; the README's test command runs all four.

Every session installs with `constraints.txt`, the exact versions the tests last passed with
(`nox -s lock` refreshes it), so a new release of a dependency cannot change a run unnoticed.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import nox

nox.needs_version = ">=2024.10.9"
nox.options.sessions = ["lint", "typecheck", "unit"]
nox.options.reuse_venv = "yes"
# virtualenv + pip rather than uv: pip honours the machine's pip.conf (mirrors, the CA bundle of a
# TLS-intercepting proxy), which uv ignores.
nox.options.default_venv_backend = "virtualenv"

PYPROJECT = nox.project.load_toml("pyproject.toml")
EXTRAS = PYPROJECT["project"]["optional-dependencies"]
CODE = ["kcdev", "worker", "tasks.py", "noxfile.py", "tests", "benchmarks"]
LOCK = "constraints.txt"
# pip-compile's options for LOCK: every extra; no index, find-links or host lines (they would
# carry this machine's local mirrors into a file other machines install from); constraints
# cannot hold extras; the project itself (reached through its self-referencing extras) is left
# out, as pip-compile would otherwise pin it as a file:// path of this checkout.
LOCK_OPTIONS = [
    "--all-extras",
    "--strip-extras",
    "--no-emit-index-url",
    "--no-emit-find-links",
    "--no-emit-trusted-host",
    "--unsafe-package=kc-devenv",
    f"--output-file={LOCK}",
    "pyproject.toml",
]


def _install(session: nox.Session, *args: str) -> None:
    """pip install with the locked versions."""
    session.install("--constraint", LOCK, *args)


def _pytest(session: nox.Session, *args: str) -> None:
    _install(session, "-e", ".[test]")
    session.run("pytest", *args, *session.posargs)


def shell_scripts() -> list[str]:
    """Every shell script git tracks, by name (*.sh) or by its #! line (the images' kc-* scripts
    and .ci/run have no extension)."""
    listed = subprocess.run(["git", "ls-files", "-z"], capture_output=True, check=True).stdout
    return [
        name
        for name in sorted(filter(None, listed.decode().split("\0")))
        if Path(name).is_file() and (name.endswith(".sh") or _interpreter(Path(name)) in SHELLS)
    ]


SHELLS = {"sh", "bash", "dash"}


def _interpreter(path: Path) -> str:
    """`bash` for `#!/usr/bin/env bash` or `#!/bin/bash -e`; "" without a #! line."""
    with path.open("rb") as f:
        first = f.readline(200).decode(errors="replace")
    words = first[2:].split() if first.startswith("#!") else []
    if words and Path(words[0]).name == "env":
        words = words[1:]
    return Path(words[0]).name if words else ""


@nox.session
def lint(session: nox.Session) -> None:
    """Ruff (lint rules, formatting: `ruff format` fixes) and shellcheck on every shell script."""
    _install(session, *EXTRAS["lint"])
    session.run("ruff", "check", *CODE)
    session.run("ruff", "format", "--check", *CODE)
    session.run("shellcheck", *shell_scripts())


@nox.session
def typecheck(session: nox.Session) -> None:
    """Mypy (strict) over the kcdev package, worker/, tasks.py and the tests."""
    _install(session, "-e", ".[typecheck]")
    session.run("mypy", *[path for path in CODE if path != "noxfile.py"])


@nox.session
def unit(session: nox.Session) -> None:
    """Unit tests: no network, no Docker; seconds."""
    _pytest(session, "tests/unit", "--timeout=60")


@nox.session
def integration(session: nox.Session) -> None:
    """Integration tests against real containers (slow: builds the images the first time).

    The first run builds the images, about 12 min on 2 cores; later runs reuse them. Tests run
    in INTEGRATION_PROCESSES processes (default 4): most of their time is waiting, which
    overlaps; tests/integration/conftest.py keeps the vLLM tests in one of them (its own
    scheduler: see there)."""
    _install(session, "-e", ".[test]")
    session.run("invoke", "build", "--backend=llamacpp")
    processes = os.environ.get("INTEGRATION_PROCESSES", "4")
    session.run(
        "pytest", "tests/integration", "-m", "integration", "--timeout=900",
        "-n", processes, *session.posargs,
    )  # fmt: skip


@nox.session
def bench(session: nox.Session) -> None:
    """Benchmarks printing side-by-side figures (slow; real containers): nox -s bench -- NAME.

    NAME is a benchmarks/NAME_bench.py module (default: stack); ARGS go to it (--help lists them).
    """
    _install(session, "-e", ".[test]")
    name, *args = session.posargs or ["stack"]
    session.run("python", "-m", f"benchmarks.{name}_bench", *args)


@nox.session
def lock(session: nox.Session) -> None:
    """Refresh constraints.txt to the newest versions pyproject.toml allows (reaches PyPI).

    ARGS replace `--upgrade`: `nox -s lock -- --upgrade-package celery` moves one package, and
    `nox -s lock -- --quiet` only adds what pyproject.toml now asks for. Then run every session:
    the lock is what they will install.
    """
    session.install(*EXTRAS["lock"])  # not from the lock being replaced: it may be the problem
    session.run("pip-compile", "--quiet", *(session.posargs or ["--upgrade"]), *LOCK_OPTIONS)
    _install(session, "-e", ".[test]")
    session.run("pytest", "tests/unit/test_lock.py", "-q")
