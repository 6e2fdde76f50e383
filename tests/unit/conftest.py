"""Shared fixtures for the unit tests: a fake command runner and settings without `.env`.

Nothing here talks to Docker or the network: `FakeRunner` stands in for
`kcdev.docker_cli.run_subprocess`, records what would have run, and answers from a table.
"""

from __future__ import annotations

import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import pytest

from kcdev.docker_cli import Docker
from kcdev.settings import Settings, load_settings

Result = tuple[int, str, str]  # (returncode, stdout, stderr)


@dataclass
class Call:
    """One command the code under test ran through the runner."""

    argv: list[str]
    env: dict[str, str] | None
    kwargs: dict[str, object]


@dataclass
class FakeRunner:
    """A `Runner` that records calls and answers by the longest matching argv prefix.

    Unknown commands succeed with empty output unless `default` says otherwise.
    """

    rules: dict[tuple[str, ...], Result] = field(default_factory=dict)
    default: Result = (0, "", "")
    calls: list[Call] = field(default_factory=list)

    def on(self, *prefix: str, returncode: int = 0, stdout: str = "", stderr: str = "") -> None:
        """Answer every command starting with `prefix` with this result."""
        self.rules[prefix] = (returncode, stdout, stderr)

    def result_for(self, argv: Sequence[str]) -> Result:
        matches = [p for p in self.rules if tuple(argv[: len(p)]) == p]
        if not matches:
            return self.default
        return self.rules[max(matches, key=len)]

    def __call__(
        self, argv: Sequence[str], *, env: Mapping[str, str] | None = None, **kwargs: object
    ) -> subprocess.CompletedProcess[str]:
        args = list(argv)
        self.calls.append(Call(args, dict(env) if env is not None else None, dict(kwargs)))
        returncode, stdout, stderr = self.result_for(args)
        return subprocess.CompletedProcess(args, returncode, stdout, stderr)

    @property
    def argvs(self) -> list[list[str]]:
        return [call.argv for call in self.calls]

    def calls_starting(self, *prefix: str) -> list[Call]:
        return [call for call in self.calls if tuple(call.argv[: len(prefix)]) == prefix]


class MakeSettings(Protocol):
    def __call__(self, **overrides: str) -> Settings: ...


@pytest.fixture
def runner() -> FakeRunner:
    return FakeRunner()


@pytest.fixture
def docker(runner: FakeRunner) -> Docker:
    """A Docker whose commands go to the fake runner."""
    return Docker(runner=runner)


@pytest.fixture
def missing_env_file(tmp_path: Path) -> Path:
    """A `.env` path that does not exist, so only defaults, environ and overrides count."""
    return tmp_path / "absent" / ".env"


@pytest.fixture
def make_settings(missing_env_file: Path) -> MakeSettings:
    """Settings from the defaults plus keyword overrides; ignores the real `.env` and environ."""

    def make(**overrides: str) -> Settings:
        return load_settings(missing_env_file, environ={}, **overrides)

    return make
