"""`invoke demo` on the offline fallback model prints a summary worth reading (issue 12).

The demo runs as users run it, on a stack of its own (own project name and ports), serving the
default preset, SmolLM2 135M Instruct (fetched once, tests/support/real_models.py). Its summary
of the sample document must be non-empty, say no sentence twice, and end on a full sentence:
before issue 12 it printed one sentence seven times and stopped mid-sentence.
"""

from __future__ import annotations

import re

import pytest

from kcdev.models.catalog import load_catalog
from tests.support.real_models import FALLBACK_PRESET, fallback_model
from tests.support.stack import isolated_stack

pytestmark = pytest.mark.integration

SENTENCE_END = re.compile(r"""(?<=[.!?])["')\]]*\s+""")


def test_the_demo_prints_a_clean_summary(stack_images: dict[str, str]) -> None:
    assert load_catalog().default_for("llamacpp").name == FALLBACK_PRESET
    model = fallback_model()
    with isolated_stack(model.parent, model.name, N_CTX="2048") as stack:
        done = stack.invoke("demo", "--timeout", "600", timeout=900)
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    lines = done.stdout.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("demo: summarizing"))
    end = next(i for i, line in enumerate(lines) if line.startswith("demo: summary in"))
    summary = " ".join(line for line in lines[start + 1 : end] if not line.startswith("sent "))
    summary = summary.strip()
    assert summary, done.stdout
    assert summary[-1] in ".!?", summary
    sentences = [" ".join(s.lower().split()) for s in SENTENCE_END.split(summary)]
    assert len(sentences) == len(set(sentences)), summary
    assert "model: SmolLM2-135M-Instruct.Q4_1.gguf (chat template)" in done.stdout
