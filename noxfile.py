"""Checks and tests: `nox -l` lists the sessions; the README's test command runs all four."""

from __future__ import annotations

import nox

nox.needs_version = ">=2024.10.9"
nox.options.sessions = ["lint", "typecheck", "unit"]
nox.options.reuse_venv = "yes"
# virtualenv + pip rather than uv: pip honours the machine's pip.conf (mirrors, the CA bundle of a
# TLS-intercepting proxy), which uv ignores.
nox.options.default_venv_backend = "virtualenv"

PYPROJECT = nox.project.load_toml("pyproject.toml")
CODE = ["kcdev", "worker", "tasks.py", "noxfile.py", "tests", "benchmarks"]


def _pytest(session: nox.Session, *args: str) -> None:
    session.install("-e", ".[test]")
    session.run("pytest", *args, *session.posargs)


@nox.session
def lint(session: nox.Session) -> None:
    """Ruff: lint rules and formatting (check only; `ruff format` fixes)."""
    session.install(*PYPROJECT["project"]["optional-dependencies"]["lint"])
    session.run("ruff", "check", *CODE)
    session.run("ruff", "format", "--check", *CODE)


@nox.session
def typecheck(session: nox.Session) -> None:
    """Mypy (strict) over the kcdev package, worker/, tasks.py and the tests."""
    session.install("-e", ".[typecheck]")
    session.run("mypy", *[path for path in CODE if path != "noxfile.py"])


@nox.session
def unit(session: nox.Session) -> None:
    """Unit tests: no network, no Docker; seconds."""
    _pytest(session, "tests/unit", "--timeout=60")


@nox.session
def integration(session: nox.Session) -> None:
    """Integration tests against real Redis and llama.cpp containers (slow: builds images once).

    The first run builds the images, about 7 min on 2 cores; later runs reuse them."""
    session.install("-e", ".[test]")
    session.run("invoke", "build", "--backend=llamacpp")
    session.run(
        "pytest", "tests/integration", "-m", "integration", "--timeout=900", *session.posargs
    )


@nox.session
def bench(session: nox.Session) -> None:
    """Benchmarks printing side-by-side figures (slow; real containers): nox -s bench -- NAME.

    NAME is a benchmarks/NAME_bench.py module (default: stack); ARGS go to it (--help lists them).
    """
    session.install("-e", ".[test]")
    name, *args = session.posargs or ["stack"]
    session.run("python", "-m", f"benchmarks.{name}_bench", *args)
