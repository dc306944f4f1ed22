"""A ranged pull's first range is short (httpx carries it, through the hub, and
the hash waits for it), and its writeback hints go to the cache's file alone,
in page-aligned pieces as each span grows: the ``pull -o`` mirror, never
fsynced, gets none. Bytes, verification and the ranges asked for stay exact."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import httpx
import pytest

from peft_hub.client import ranged
from peft_hub.client.cache import BlobCache
from peft_hub.client.download import download
from peft_hub.errors import PeftHubError
from peft_hub.progress import tqdm


def _server(data: bytes, log: list) -> httpx.Client:
    """A hub that redirects to a store honouring ``Range``, logging each range and its token."""

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.host == "hub.test":
            return httpx.Response(302, headers={"Location": "http://store.test/blob?sig=1"})
        spec = request.headers["range"].removeprefix("bytes=")
        log.append((spec, request.headers.get("authorization")))
        start, _, end = spec.partition("-")
        chunk = data[int(start):int(end) + 1]
        return httpx.Response(206, stream=httpx.ByteStream(chunk), headers={
            "Content-Length": str(len(chunk)), "Content-Range": f"bytes {start}-{end}/{len(data)}"})

    return httpx.Client(base_url="http://hub.test", headers={"Authorization": "Bearer t"},
                        transport=httpx.MockTransport(handler))


@pytest.fixture
def small(monkeypatch):
    monkeypatch.setattr(ranged, "MIN_SIZE", 64 * 1024)
    monkeypatch.setattr(ranged, "PART", 100_000)
    monkeypatch.setattr(ranged, "FIRST", 12_345)
    monkeypatch.setattr(ranged, "_FLUSH", 3 * 4096)


def _hints(monkeypatch) -> list[tuple[int, int, int]]:
    """Each writeback hint as (inode of the file, offset, length)."""
    hints: list[tuple[int, int, int]] = []
    real = ranged.disk.writeback
    monkeypatch.setattr(ranged.disk, "writeback",
                        lambda fd, a, n: hints.append((os.fstat(fd).st_ino, a, n)) or real(fd, a, n))
    return hints


def _mirrored_download(tmp_path: Path) -> tuple[bytes, Path, Path]:
    """A ranged download of 1,000,003 random bytes with a ``-o`` mirror: (the bytes, the cached blob, the mirror),
    both checked to hold the bytes."""
    data = os.urandom(1_000_003)
    mirror = tmp_path / "staged.bin"
    with _server(data, []) as session, tqdm(disable=True) as bar:
        blob = download(session, "/f", hashlib.sha256(data).hexdigest(), len(data), BlobCache(tmp_path / "c"), bar,
                        mirror=mirror)
    assert blob.read_bytes() == data and mirror.read_bytes() == data
    return data, blob, mirror


def test_the_first_range_is_short_and_the_others_are_aligned_parts(tmp_path, small):
    data = os.urandom(1_000_003)
    log: list = []
    with _server(data, log) as session, tqdm(disable=True) as bar:
        blob = download(session, "/f", hashlib.sha256(data).hexdigest(), len(data), BlobCache(tmp_path / "c"), bar)
    assert blob.read_bytes() == data
    assert log[0] == ("0-12344", None)  # through the hub's redirect, the token dropped at the store
    # The second range fills up to the first part's end: every later one starts on a multiple of
    # PART, where a store's chunks begin, so none straddles two of them.
    expected = ["0-12344", "12345-99999"] + [f"{a}-{min(a + 100_000, len(data)) - 1}"
                                             for a in range(100_000, len(data), 100_000)]
    assert sorted(spec for spec, _ in log) == sorted(expected) and {auth for _, auth in log} == {None}


def test_a_first_range_never_exceeds_a_part(tmp_path, small, monkeypatch):
    monkeypatch.setattr(ranged, "FIRST", 10**9)
    data = os.urandom(300_001)
    log: list = []
    with _server(data, log) as session, tqdm(disable=True) as bar:
        blob = download(session, "/f", hashlib.sha256(data).hexdigest(), len(data), BlobCache(tmp_path / "c"), bar)
    assert blob.read_bytes() == data
    assert sorted(spec for spec, _ in log) == ["0-99999", "100000-199999", "200000-299999", "300000-300000"]


def test_writeback_hints_cover_the_cache_file_alone_in_pieces(tmp_path, small, monkeypatch):
    hints = _hints(monkeypatch)
    data, blob, mirror = _mirrored_download(tmp_path)
    assert {ino for ino, _, _ in hints} == {os.stat(blob).st_ino}  # never the mirror's
    pieces = sorted((a, n) for _, a, n in hints)
    covered = 0
    for a, n in pieces:  # every byte once, no overlap, no gap
        assert a == covered and n >= 0
        covered += n
    assert covered == len(data)
    ends = {12_345, *range(100_000, len(data), 100_000), len(data)}  # where each span ends
    assert len([n for _, n in pieces if n]) > len(ends)  # handed over as the spans grew, not only at their ends
    assert all((a + n) % 4096 == 0 for a, n in pieces if a + n not in ends)  # a piece inside a span ends on a page


def test_a_wrong_byte_is_still_refused_and_nothing_is_left(tmp_path, small, monkeypatch):
    """Ranges that hash wrong are fetched whole once (from the same spoiled store): refused, nothing kept."""
    data = os.urandom(400_000)
    mirror = tmp_path / "staged.bin"
    cache = BlobCache(tmp_path / "c")

    def whole_too(request: httpx.Request) -> httpx.Response:
        body = bytearray(data)
        body[250_000] ^= 1
        if request.url.host == "hub.test":
            return httpx.Response(302, headers={"Location": "http://store.test/blob?sig=1"})
        spec = request.headers.get("range", "").removeprefix("bytes=")
        if not spec:
            return httpx.Response(200, stream=httpx.ByteStream(bytes(body)), headers={"Content-Length": str(len(body))})
        start, _, end = spec.partition("-")
        chunk = bytes(body[int(start):int(end) + 1])
        return httpx.Response(206, stream=httpx.ByteStream(chunk), headers={
            "Content-Length": str(len(chunk)), "Content-Range": f"bytes {start}-{end}/{len(data)}"})

    session = httpx.Client(base_url="http://hub.test", transport=httpx.MockTransport(whole_too))
    with session, tqdm(disable=True) as bar, pytest.raises(PeftHubError):
        download(session, "/f", hashlib.sha256(data).hexdigest(), len(data), cache, bar, mirror=mirror)
    assert not mirror.exists()
    assert list((tmp_path / "c" / "blobs").iterdir()) == []


def test_both_files_blocks_are_reserved_whole_before_the_first_range_is_written(tmp_path, small, monkeypatch):
    """The cache's file and the ``-o`` mirror get their blocks reserved up front (fallocate), since the
    spans arrive out of order; the reservation is real where the file system makes it."""
    from peft_hub import disk

    reserved: list[tuple[int, int, int, int]] = []  # (inode, size asked, bytes allocated after, bytes written before)
    real = disk.reserve

    def recording(fd: int, size: int) -> bool:
        written = os.fstat(fd).st_size
        ok = real(fd, size)
        reserved.append((os.fstat(fd).st_ino, size, os.fstat(fd).st_blocks * 512, written))
        return ok

    monkeypatch.setattr(disk, "reserve", recording)
    data, blob, mirror = _mirrored_download(tmp_path)
    assert sorted(ino for ino, *_ in reserved) == sorted({os.stat(blob).st_ino, os.stat(mirror).st_ino})
    assert all(size == len(data) and written == 0 for _, size, _, written in reserved)
    probe = tmp_path / "probe"
    with open(probe, "wb") as fh:
        supported = disk.FALLOCATE is not None and disk.FALLOCATE(fh.fileno(), disk.FALLOC_FL_KEEP_SIZE, 0, 4096) == 0
    if supported:
        assert all(allocated >= len(data) for _, _, allocated, _ in reserved)


def test_a_disk_without_room_for_the_file_is_refused_before_any_range_and_nothing_is_left(tmp_path, small,
                                                                                          monkeypatch):
    from peft_hub import disk

    monkeypatch.setattr(disk, "reserve", lambda fd, size: False)  # what ENOSPC from fallocate(2) returns
    data = os.urandom(1_000_003)
    log: list = []
    mirror = tmp_path / "staged.bin"
    with _server(data, log) as session, tqdm(disable=True) as bar, \
            pytest.raises(PeftHubError, match="not enough disk space for a download of 1000003 bytes"):
        download(session, "/f", hashlib.sha256(data).hexdigest(), len(data), BlobCache(tmp_path / "c"), bar,
                 mirror=mirror)
    assert log == [] and not mirror.exists()
    assert list((tmp_path / "c" / "blobs").iterdir()) == []


def test_reserve_reports_only_a_full_disk(tmp_path, monkeypatch):
    """``disk.reserve`` is a hint: a refusal for any reason but room (a pipe, an unsupported file system) is True."""
    import errno

    from peft_hub import disk

    if disk.FALLOCATE is None:
        pytest.skip("no fallocate(2) on this platform")
    read_end, write_end = os.pipe()
    try:
        assert disk.reserve(write_end, 1 << 20) is True  # ESPIPE: not a file, the hint is not taken
    finally:
        os.close(read_end)
        os.close(write_end)
    for code, answer in ((errno.ENOSPC, False), (errno.EDQUOT, False), (errno.EOPNOTSUPP, True)):
        monkeypatch.setattr(disk, "FALLOCATE", lambda *a, code=code: -1)
        monkeypatch.setattr(disk.ctypes, "get_errno", lambda code=code: code)
        assert disk.reserve(0, 1) is answer
