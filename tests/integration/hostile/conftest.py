"""Fixtures of the hostile cases: copies of the repository, one shared stack, and the runner that
checks each case's one line and fingerprint.

The stack (Redis with data, the LLM server on the tiny model) is started once for the package and
taken down with its volume at the end; cases that need no stack never wait for it. Everything
lives in one folder, removed at the end.

KC_HOSTILE_SOURCE=/path/to/checkout runs the cases against another checkout's code (the tests
stay these), to see how an older version answered them.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from kcdev.paths import ROOT
from tests.integration.hostile.harness import (
    Case,
    Context,
    Fingerprint,
    Result,
    SharedStack,
    StackRedis,
    Workspace,
    clean_environment,
    copy_repository,
    docker,
    error_line,
)
from tests.support.redis_data import write_keys
from tests.support.stack import stack_settings

SOURCE = Path(os.environ.get("KC_HOSTILE_SOURCE") or ROOT)


@pytest.fixture(scope="package")
def hostile_root() -> Iterator[Path]:
    folder = Path(tempfile.mkdtemp(prefix="kc-hostile-"))
    try:
        yield folder
    finally:
        # No case leaves a path immutable (tests/support/unwritable.py undoes it); in case one
        # was interrupted, rmtree could not remove it.
        subprocess.run(["chattr", "-R", "-i", str(folder)], capture_output=True, check=False)
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="package")
def repo_template(hostile_root: Path) -> Path:
    return copy_repository(SOURCE, hostile_root / "template")


@pytest.fixture
def workspace(repo_template: Path, hostile_root: Path) -> Iterator[Workspace]:
    """A fresh copy of the repository (no `.env`, empty models/) with a clean environment."""
    root = hostile_root / f"ws-{secrets.token_hex(4)}"
    shutil.copytree(repo_template, root, symlinks=True)
    ws = Workspace(root, clean_environment(LLM_API_KEY=secrets.token_urlsafe(24)))
    own = ws.env["COMPOSE_PROJECT_NAME"]  # a case on the shared stack takes that one's name
    try:
        yield ws
    finally:
        remove_project(own)
        shutil.rmtree(root, ignore_errors=True)


def remove_project(project: str) -> None:
    """Remove whatever a case's own project left (nothing, when the product is right)."""
    label = f"label=com.docker.compose.project={project}"
    ids = docker("ps", "-aq", "--filter", label).split()
    if ids:
        docker("rm", "-fv", *ids, check=False)
    volumes = docker("volume", "ls", "-q", "--filter", label).split()
    if volumes:
        docker("volume", "rm", "-f", *volumes, check=False)
    networks = docker("network", "ls", "-q", "--filter", label).split()
    if networks:
        docker("network", "rm", *networks, check=False)


@pytest.fixture(scope="package")
def shared_stack(
    stack_images: dict[str, str], tiny_model: Path, repo_template: Path, hostile_root: Path
) -> Iterator[SharedStack]:
    """Redis (with keys of every type, some with a TTL, in two databases) and llama-server on
    the tiny model, with limits, in a compose project of its own."""
    settings = {
        **stack_settings(tiny_model.parent, tiny_model.name, "kc-hostile-stack"),
        "LLM_CPUS": "1",
        "LLM_MEMORY": "1g",
        "REDIS_CPUS": "0.5",
        "REDIS_MEMORY": "256m",
    }
    root = hostile_root / "stack"
    shutil.copytree(repo_template, root, symlinks=True)
    env = clean_environment(**settings)
    ws = Workspace(root, env)
    stack = SharedStack(ws, settings, StackRedis(int(env["REDIS_PORT"]), env["REDIS_PASSWORD"]))
    try:
        started = ws.invoke("up", "--backend=llamacpp", "--timeout=300", timeout=900)
        assert started.returncode == 0, str(started)
        client = stack.redis.client()
        write_keys(client, 120, ttl_every=9)
        write_keys(client, 30, prefix="other", db=1)
        client.close()
        yield stack
    finally:
        ws.invoke("down", "--volumes", "--yes", timeout=300)
        remove_project(stack.project)


@pytest.fixture
def run_case(
    workspace: Workspace, request: pytest.FixtureRequest, hostile_root: Path
) -> Callable[..., Result]:
    """Run one case: arrange, fingerprint, `invoke`, fingerprint again; check the one line."""

    def run(case: Case, **values: object) -> Result:
        """`values` are handed to the case's functions in `ctx.values` (other fixtures)."""
        stack: SharedStack | None = None
        if case.stack:
            stack = request.getfixturevalue("shared_stack")
            workspace.env.update(stack.settings)
        scratch = hostile_root / f"scratch-{secrets.token_hex(4)}"
        scratch.mkdir()
        ctx = Context(
            workspace, scratch, stack.settings if stack else None,
            [workspace.gguf_dir, workspace.hf_dir, workspace.backups],
        )  # fmt: skip
        ctx.values.update(values)
        try:
            if case.arrange is not None:
                case.arrange(ctx)
            watched = dict.fromkeys([workspace.gguf_dir, workspace.hf_dir, *ctx.watched])
            redis_at = stack.redis if stack else None
            before = Fingerprint.take(workspace, watched, redis_at)
            args = case.args(ctx) if callable(case.args) else case.args
            result = workspace.invoke(*args, timeout=case.timeout, as_any_user=case.as_any_user)
            after = Fingerprint.take(workspace, watched, redis_at)
            secret_values = [workspace.env.get(k, "") for k in ("REDIS_PASSWORD", "LLM_API_KEY")]
            line = error_line(result, [s for s in secret_values if s])
            print(f"{case.id}: {line}")  # the table of what each case says: pytest -rP
            expected = case.expect(ctx) if callable(case.expect) else case.expect
            for text in expected:
                assert text in line, f"{text!r} not in the error line\n{result}"
            if case.within is not None:
                assert result.seconds < case.within, f"took {result.seconds:.1f} s\n{result}"
            unexpected = [
                change
                for change in before.differences(after)
                if not any(re.search(pattern, change) for pattern in case.allowed)
            ]
            assert not unexpected, f"changed: {unexpected}\n{result}"
            if case.verify is not None:
                case.verify(ctx, result)
            return result
        finally:
            for cleanup in reversed(ctx.cleanups):
                with contextlib.suppress(Exception):
                    cleanup()
            subprocess.run(["chattr", "-R", "-i", str(scratch)], capture_output=True, check=False)
            shutil.rmtree(scratch, ignore_errors=True)

    return run
