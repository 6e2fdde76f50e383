"""kcdev.models.download against a local server that resumes, refuses, changes, breaks and crawls.

Everything talks to 127.0.0.1 only (a guard refuses anything else); files are a few hundred KB.
"""

from __future__ import annotations

import hashlib
import random
import re
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from filelock import FileLock

from kcdev.errors import UserError
from kcdev.models import download
from kcdev.models.digest import Digest, check_sha256
from kcdev.models.download import (
    STALL_TIMEOUT,
    ChecksumMismatch,
    Downloader,
    HttpStatusError,
    SourceFailed,
    make_pool,
)
from kcdev.models.lock import NOTICE_EVERY, hold_lock, lock_path
from kcdev.models.partial import Partial
from kcdev.models.urls import check_url
from tests.support.http_server import LocalServer, Reply, Request, loopback_only

CONTENT = random.Random(4).randbytes(300_000)
DIGEST = Digest.sha256(hashlib.sha256(CONTENT).hexdigest())


@pytest.fixture
def server(monkeypatch: pytest.MonkeyPatch) -> Iterator[LocalServer]:
    refused = loopback_only(monkeypatch)
    with LocalServer() as local:
        local.add("/model.gguf", CONTENT)
        yield local
    assert refused == []


@pytest.fixture
def said() -> list[str]:
    return []


def make_downloader(said: list[str], **options: object) -> Downloader:
    defaults: dict[str, object] = {"attempts": 3, "backoff": 0, "lock_timeout": 0.5}
    return Downloader(make_pool(), say=said.append, progress=False, **{**defaults, **options})  # type: ignore[arg-type]


@pytest.fixture
def downloader(said: list[str]) -> Downloader:
    return make_downloader(said)


def leftovers(directory: Path) -> list[str]:
    """Files besides the installed ones: partials, sidecars (lock files are meant to stay)."""
    return sorted(p.name for p in directory.iterdir() if not p.name.endswith(".lock"))


def test_fetch_installs_the_verified_file_and_leaves_no_partial(
    server: LocalServer, downloader: Downloader, tmp_path: Path
) -> None:
    dest = tmp_path / "model.gguf"
    downloader.fetch(server.url("/model.gguf"), dest, DIGEST, size=len(CONTENT))
    assert dest.read_bytes() == CONTENT
    assert leftovers(tmp_path) == ["model.gguf"]
    assert server.requests_for("/model.gguf")[0].headers["accept-encoding"] == "identity"


def test_an_interrupted_download_resumes_on_the_next_run(
    server: LocalServer, said: list[str], tmp_path: Path
) -> None:
    dest, url = tmp_path / "model.gguf", server.url("/model.gguf")
    server.cut_next("/model.gguf", after=100_000)
    with pytest.raises(SourceFailed, match="run again to resume"):
        make_downloader(said, attempts=1).fetch(url, dest, DIGEST, size=len(CONTENT))
    assert not dest.exists()
    assert Partial(dest).size() == 100_000

    make_downloader(said).fetch(url, dest, DIGEST, size=len(CONTENT))
    assert dest.read_bytes() == CONTENT
    resumed = server.requests_for("/model.gguf")[-1]
    assert resumed.headers["range"] == "bytes=100000-"
    assert resumed.headers["if-range"] == '"v1"'
    assert resumed.status == 206
    assert server.body_bytes_for("/model.gguf") == len(CONTENT)  # nothing fetched twice


def test_a_connection_lost_mid_body_resumes_within_the_same_run(
    server: LocalServer, downloader: Downloader, said: list[str], tmp_path: Path
) -> None:
    dest = tmp_path / "model.gguf"
    server.cut_next("/model.gguf", after=50_000)
    server.cut_next("/model.gguf", after=70_000)
    downloader.fetch(server.url("/model.gguf"), dest, DIGEST, size=len(CONTENT))
    assert dest.read_bytes() == CONTENT
    assert [r.status for r in server.requests_for("/model.gguf")] == [200, 206, 206]
    assert server.body_bytes_for("/model.gguf") == len(CONTENT)
    assert any("resuming from" in line for line in said)


def test_a_server_without_range_support_starts_over_and_says_so(
    server: LocalServer, said: list[str], tmp_path: Path
) -> None:
    dest, url = tmp_path / "model.gguf", server.url("/model.gguf")
    server.cut_next("/model.gguf", after=100_000)
    with pytest.raises(SourceFailed):
        make_downloader(said, attempts=1).fetch(url, dest, DIGEST, size=len(CONTENT))
    server.resources["/model.gguf"].ranges = False

    make_downloader(said).fetch(url, dest, DIGEST, size=len(CONTENT))
    assert dest.read_bytes() == CONTENT
    assert server.requests_for("/model.gguf")[-1].status == 200
    assert any("does not support resuming" in line and "starting over" in line for line in said)


def test_a_file_changed_on_the_server_is_fetched_whole_not_spliced(
    server: LocalServer, said: list[str], tmp_path: Path
) -> None:
    dest, url = tmp_path / "model.gguf", server.url("/model.gguf")
    server.cut_next("/model.gguf", after=100_000)
    with pytest.raises(SourceFailed):
        make_downloader(said, attempts=1).fetch(url, dest, DIGEST, size=len(CONTENT))
    new = CONTENT[::-1]
    server.add("/model.gguf", new, etag='"v2"')
    new_digest = Digest.sha256(hashlib.sha256(new).hexdigest())

    with pytest.raises(ChecksumMismatch, match="nothing was installed"):
        make_downloader(said).fetch(url, dest, DIGEST, size=len(CONTENT))
    assert any("changed on the server" in line for line in said)
    assert not dest.exists()
    assert leftovers(tmp_path) == []

    make_downloader(said).fetch(url, dest, new_digest, size=len(new))
    assert dest.read_bytes() == new


def test_wrong_content_installs_nothing_and_names_both_checksums(
    server: LocalServer, downloader: Downloader, tmp_path: Path
) -> None:
    dest = tmp_path / "model.gguf"
    wrong = Digest.sha256("0" * 64)
    with pytest.raises(ChecksumMismatch) as caught:
        downloader.fetch(server.url("/model.gguf"), dest, wrong, size=len(CONTENT))
    message = str(caught.value)
    assert "expected sha256 " + "0" * 64 in message
    assert DIGEST.hexdigest in message
    assert "\n" not in message
    assert leftovers(tmp_path) == []


def test_a_size_other_than_expected_stops_before_the_body(
    server: LocalServer, downloader: Downloader, tmp_path: Path
) -> None:
    dest = tmp_path / "model.gguf"
    with pytest.raises(SourceFailed, match="expected 12345"):
        downloader.fetch(server.url("/model.gguf"), dest, DIGEST, size=12345)
    assert not dest.exists()


def test_a_slow_server_is_waited_for(server: LocalServer, said: list[str], tmp_path: Path) -> None:
    dest = tmp_path / "model.gguf"
    server.resources["/model.gguf"].bytes_per_second = 1_000_000  # 0.3 s for the file
    slow = Downloader(make_pool(), say=said.append, progress=False, attempts=1, stall_timeout=2)
    slow.fetch(server.url("/model.gguf"), dest, DIGEST, size=len(CONTENT))
    assert dest.read_bytes() == CONTENT


def test_a_stalling_server_keeps_what_arrived_for_the_next_run(
    server: LocalServer, said: list[str], tmp_path: Path
) -> None:
    dest = tmp_path / "model.gguf"
    server.resources["/model.gguf"].bytes_per_second = 16384 / 1.0  # 16 KiB, then 1 s silence
    stalling = make_downloader(said, attempts=2, stall_timeout=0.4)
    with pytest.raises(SourceFailed, match="run again to resume"):
        stalling.fetch(server.url("/model.gguf"), dest, DIGEST, size=len(CONTENT))
    assert 0 < Partial(dest).size() < len(CONTENT)
    assert not dest.exists()


# --- a server that stops sending ----------------------------------------------------------------


def test_the_limits_are_those_promised() -> None:
    """A stall is given up on within 30 s, and no wait stays silent for more than 10 s."""
    assert download.STALL_TIMEOUT <= 30
    assert NOTICE_EVERY <= 10
    downloader = Downloader(make_pool())
    assert (downloader.stall_timeout, downloader.notice_every) == (STALL_TIMEOUT, NOTICE_EVERY)


def test_a_server_that_stops_sending_is_noticed_said_and_resumed(
    server: LocalServer, said: list[str], tmp_path: Path
) -> None:
    """The server goes silent (connection open) for 30 s after 100 KB: the stall is noticed
    within the stall limit, said while waited for, and the next attempt resumes from the partial."""
    dest = tmp_path / "model.gguf"
    server.stall_next("/model.gguf", after=100_000, seconds=30)
    downloader = make_downloader(said, stall_timeout=0.6, notice_every=0.2)

    started = time.monotonic()
    downloader.fetch(server.url("/model.gguf"), dest, DIGEST, size=len(CONTENT))

    assert time.monotonic() - started < 5  # not the 30 s the server would have kept silent
    assert dest.read_bytes() == CONTENT
    # The stalled answer is still hanging on the server's side: only the resumed one is logged.
    (resumed,) = [served for served in server.log if served.path == "/model.gguf"]
    assert (resumed.headers["range"], resumed.status) == ("bytes=100000-", 206)
    assert resumed.body_bytes == len(CONTENT) - 100_000
    host = server.base_url.removeprefix("http://")
    notices = [line for line in said if line.startswith(f"model.gguf: nothing from {host} for ")]
    assert len(notices) >= 2  # every notice_every seconds while it is silent
    # None at the limit itself: that one is the stall line's to say.
    silences = [re.search(r" for ([\d.]+) s ", line)[1] for line in notices]  # type: ignore[index]
    assert silences[:2] == ["0.2", "0.4"] and "0.6" not in silences, notices
    assert "(97.7 KiB of 293.0 KiB so far); resuming after 0.6 s of silence" in notices[0]
    assert any(
        line.startswith(f"model.gguf: stalled: nothing from {host} for 0.6 s; resuming from 97.7")
        for line in said
    )


def test_a_server_that_keeps_stalling_is_reported_in_one_line_keeping_the_partial(
    server: LocalServer, said: list[str], tmp_path: Path
) -> None:
    dest = tmp_path / "model.gguf"
    server.stall_next("/model.gguf", after=50_000, seconds=30)
    server.stall_next("/model.gguf", after=50_000, seconds=30)
    downloader = make_downloader(said, attempts=2, stall_timeout=0.3, notice_every=0.1)

    with pytest.raises(SourceFailed) as caught:
        downloader.fetch(server.url("/model.gguf"), dest, DIGEST, size=len(CONTENT))

    host = server.base_url.removeprefix("http://")
    assert str(caught.value) == (
        f"model.gguf: stalled: nothing from {host} for 0.3 s (2 attempts); "
        "97.7 KiB kept: run again to resume"
    )
    assert Partial(dest).size() == 100_000
    assert not dest.exists()


def test_a_server_that_never_answers_is_said_and_given_up_on(
    server: LocalServer, said: list[str], tmp_path: Path
) -> None:
    """Silence before the first byte (no status line) counts too."""

    def silent(request: Request) -> Reply:
        server.stopping.wait(30)
        return Reply(500)

    server.route("/silent.gguf", silent)
    downloader = make_downloader(said, attempts=1, stall_timeout=0.5, notice_every=0.2)

    started = time.monotonic()
    with pytest.raises(SourceFailed, match=r"stalled: nothing from .* for 0\.5 s \(1 attempts\)"):
        downloader.fetch(server.url("/silent.gguf"), tmp_path / "m.gguf", DIGEST)

    assert time.monotonic() - started < 5
    assert any(line.startswith("m.gguf: nothing from ") for line in said)


def test_a_silent_index_page_is_said_and_given_up_on(server: LocalServer, said: list[str]) -> None:
    def silent(request: Request) -> Reply:
        server.stopping.wait(30)
        return Reply.json({})

    server.route("/simple/pkg/", silent)
    downloader = make_downloader(said, stall_timeout=0.5, notice_every=0.2)

    started = time.monotonic()
    with pytest.raises(SourceFailed, match=r"^cannot reach 127\.0\.0\.1:\d+: "):
        downloader.get_json(server.url("/simple/pkg/"))

    assert time.monotonic() - started < 5
    assert any(line.startswith("nothing from 127.0.0.1:") for line in said)


def test_no_notice_while_bytes_keep_arriving(
    server: LocalServer, said: list[str], tmp_path: Path
) -> None:
    server.resources["/model.gguf"].bytes_per_second = 1_000_000  # 0.3 s, 16 KiB every 16 ms
    downloader = make_downloader(said, stall_timeout=2, notice_every=0.1)
    downloader.fetch(server.url("/model.gguf"), tmp_path / "model.gguf", DIGEST)
    assert not any("nothing from" in line for line in said)


def test_an_unwritable_destination_is_one_line(
    server: LocalServer, said: list[str], tmp_path: Path, unwritable: Callable[[Path], None]
) -> None:
    folder = tmp_path / "models"
    folder.mkdir()
    unwritable(folder)
    with pytest.raises(UserError, match=r"^cannot write .*: make .* writable") as caught:
        make_downloader(said).fetch(server.url("/model.gguf"), folder / "m.gguf", DIGEST)
    assert "\n" not in str(caught.value)


def test_transient_server_errors_are_retried(
    server: LocalServer, downloader: Downloader, tmp_path: Path
) -> None:
    dest = tmp_path / "model.gguf"
    server.resources["/model.gguf"].statuses = [503, 502]
    downloader.fetch(server.url("/model.gguf"), dest, DIGEST, size=len(CONTENT))
    assert dest.read_bytes() == CONTENT


@pytest.mark.parametrize("status", [401, 403, 404])
def test_error_statuses_fail_at_once_with_the_status(
    server: LocalServer, downloader: Downloader, tmp_path: Path, status: int
) -> None:
    server.resources["/model.gguf"].status = status
    with pytest.raises(HttpStatusError) as caught:
        downloader.fetch(server.url("/model.gguf"), tmp_path / "m.gguf", DIGEST)
    assert caught.value.status == status
    assert str(caught.value) == f"{server.base_url.removeprefix('http://')} answered HTTP {status}"
    assert len(server.requests_for("/model.gguf")) == 1
    assert leftovers(tmp_path) == []


def test_an_unreachable_server_fails_in_one_line(downloader: Downloader, tmp_path: Path) -> None:
    with LocalServer() as gone:
        url = gone.url("/model.gguf")
    with pytest.raises(SourceFailed, match=r"cannot reach 127\.0\.0\.1") as caught:
        downloader.fetch(url, tmp_path / "m.gguf", DIGEST)
    assert "\n" not in str(caught.value)


def test_a_full_disk_stops_before_any_request(
    server: LocalServer, said: list[str], tmp_path: Path
) -> None:
    full = make_downloader(said, free=lambda path: 1000)
    with pytest.raises(UserError, match="not enough disk space"):
        full.fetch(server.url("/model.gguf"), tmp_path / "m.gguf", DIGEST, size=len(CONTENT))
    assert server.requests_for("/model.gguf") == []
    assert leftovers(tmp_path) == []


def test_a_full_disk_is_checked_from_the_response_when_the_size_is_unknown(
    server: LocalServer, said: list[str], tmp_path: Path
) -> None:
    full = make_downloader(said, free=lambda path: 1000)
    with pytest.raises(UserError, match="not enough disk space"):
        full.fetch(server.url("/model.gguf"), tmp_path / "m.gguf", DIGEST)
    assert not (tmp_path / "m.gguf").exists()
    assert Partial(tmp_path / "m.gguf").size() == 0


def test_a_partial_for_another_source_is_discarded(
    server: LocalServer, said: list[str], tmp_path: Path
) -> None:
    dest = tmp_path / "model.gguf"
    server.add("/other.gguf", CONTENT)
    server.cut_next("/other.gguf", after=100_000)
    with pytest.raises(SourceFailed):
        make_downloader(said, attempts=1).fetch(server.url("/other.gguf"), dest, DIGEST)
    make_downloader(said).fetch(server.url("/model.gguf"), dest, DIGEST)
    assert dest.read_bytes() == CONTENT
    assert any("another source: starting over" in line for line in said)
    assert "range" not in server.requests_for("/model.gguf")[0].headers


def test_a_complete_partial_is_verified_without_a_request(
    server: LocalServer, downloader: Downloader, tmp_path: Path
) -> None:
    dest, url = tmp_path / "model.gguf", server.url("/model.gguf")
    partial = Partial(dest)
    partial.path.write_bytes(CONTENT)
    partial.save_meta(url, DIGEST, len(CONTENT), '"v1"')
    downloader.fetch(url, dest, DIGEST, size=len(CONTENT))
    assert dest.read_bytes() == CONTENT
    assert server.requests_for("/model.gguf") == []


def test_a_partial_the_server_cannot_resume_starts_over(
    server: LocalServer, downloader: Downloader, said: list[str], tmp_path: Path
) -> None:
    dest, url = tmp_path / "model.gguf", server.url("/model.gguf")
    partial = Partial(dest)
    partial.path.write_bytes(CONTENT + b"extra")  # longer than the file: the server answers 416
    partial.save_meta(url, DIGEST, None, '"v1"')
    downloader.fetch(url, dest, DIGEST)
    assert dest.read_bytes() == CONTENT
    assert any("refused to resume" in line for line in said)


def test_an_existing_verified_destination_is_not_fetched_again(
    server: LocalServer, downloader: Downloader, tmp_path: Path
) -> None:
    dest = tmp_path / "model.gguf"
    dest.write_bytes(CONTENT)
    downloader.fetch(server.url("/model.gguf"), dest, DIGEST, size=len(CONTENT))
    assert server.requests_for("/model.gguf") == []


def test_git_blob_ids_verify_small_hub_files(
    server: LocalServer, downloader: Downloader, tmp_path: Path
) -> None:
    blob = hashlib.sha1(b"blob %d\0" % len(CONTENT) + CONTENT).hexdigest()
    dest = tmp_path / "config.json"
    downloader.fetch(server.url("/model.gguf"), dest, Digest("git-sha1", blob), size=len(CONTENT))
    assert dest.read_bytes() == CONTENT


def test_a_second_fetch_waits_for_the_lock_then_proceeds(
    server: LocalServer, said: list[str], tmp_path: Path
) -> None:
    downloader = make_downloader(said, lock_timeout=10)
    dest = tmp_path / "model.gguf"
    held = threading.Event()

    def other_fetch() -> None:
        with FileLock(lock_path(dest)):
            held.set()
            time.sleep(0.2)

    other = threading.Thread(target=other_fetch)
    other.start()
    held.wait()
    downloader.fetch(server.url("/model.gguf"), dest, DIGEST, size=len(CONTENT))
    other.join()
    assert dest.read_bytes() == CONTENT
    assert any("another fetch of model.gguf is running: waiting" in line for line in said)


def test_a_long_wait_for_the_lock_is_said_as_it_goes(
    server: LocalServer, said: list[str], tmp_path: Path
) -> None:
    downloader = make_downloader(said, lock_timeout=10, notice_every=0.1)
    dest = tmp_path / "model.gguf"
    held = threading.Event()

    def other_fetch() -> None:
        with FileLock(lock_path(dest)):
            held.set()
            time.sleep(0.5)

    other = threading.Thread(target=other_fetch)
    other.start()
    held.wait()
    downloader.fetch(server.url("/model.gguf"), dest, DIGEST, size=len(CONTENT))
    other.join()
    waiting = [line for line in said if line.startswith("still waiting for the other fetch")]
    assert len(waiting) >= 2
    assert dest.read_bytes() == CONTENT


def test_a_second_fetch_gives_up_after_the_lock_timeout(
    server: LocalServer, downloader: Downloader, tmp_path: Path
) -> None:
    dest = tmp_path / "model.gguf"
    with FileLock(lock_path(dest)):
        started = time.monotonic()
        with pytest.raises(UserError, match=r"still holds .* after 0\.5 s: let it finish"):
            downloader.fetch(server.url("/model.gguf"), dest, DIGEST)
        assert time.monotonic() - started < 5
    assert server.requests_for("/model.gguf") == []


def test_hold_lock_is_released_on_errors(tmp_path: Path) -> None:
    dest = tmp_path / "model.gguf"
    with pytest.raises(RuntimeError), hold_lock(dest, 0.1, print):
        raise RuntimeError("boom")
    with hold_lock(dest, 0.1, print):
        pass


@pytest.mark.parametrize("bad", ["abc", "g" * 64, "a" * 63, ""])
def test_malformed_sha256_is_refused_in_one_line(bad: str) -> None:
    with pytest.raises(UserError, match="not a sha256: expected 64 hexadecimal digits"):
        check_sha256(bad)


def test_sha256_is_normalised_to_lower_case() -> None:
    assert check_sha256("A" * 64) == "a" * 64


@pytest.mark.parametrize(
    "bad",
    ["ftp://host/x", "not a url", "http://", "http://host:99999/x", "http://[::1/x.gguf"],
)
def test_malformed_urls_are_refused_in_one_line(bad: str) -> None:
    with pytest.raises(UserError, match="--url=") as caught:
        check_url(bad)
    assert "\n" not in str(caught.value)
