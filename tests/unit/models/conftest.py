"""Fixtures of the models tests."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.support.unwritable import unwritable as make_unwritable


@pytest.fixture
def unwritable() -> Iterator[Callable[[Path], None]]:
    """Make paths unwritable for the rest of the test (even as root); undone afterwards."""
    with contextlib.ExitStack() as stack:
        yield lambda path: stack.enter_context(make_unwritable(path))
