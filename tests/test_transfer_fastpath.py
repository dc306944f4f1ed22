"""The faster transfer paths keep their guarantees: part digests computed in
parallel equal the slices' sha256, a download hashed on its own thread
verifies every byte (and leaves no thread or file behind), and a ``pull -o``
copy made in the kernel without hashing is handed over only when its blob is
provably unchanged since this process hashed it."""

from __future__ import annotations

import hashlib
import os
import sys
import threading
import time

import httpx
import pytest

from peft_hub.client.assemble import assemble
from peft_hub.client.cache import BlobCache
from peft_hub.client.download import download
from peft_hub.client.multipart import part_digests
from peft_hub.client.names import BlobChangedError
from peft_hub.errors import ChecksumMismatchError, PeftHubError, StorageError
from peft_hub.outdir import plan_output
from peft_hub.progress import tqdm

PART = 5 * 1024 * 1024


@pytest.mark.parametrize("size", [0, 1, PART - 1, PART, 3 * PART + 12345])
def test_part_digests_are_the_slices_sha256(tmp_path, size):
    data = os.urandom(size)
    path = tmp_path / "blob"
    path.write_bytes(data)
    assert part_digests(path, PART) == [hashlib.sha256(data[i:i + PART]).hexdigest() for i in range(0, size, PART)]


def _session(body: bytes) -> httpx.Client:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, stream=httpx.ByteStream(body), headers={"Content-Length": str(len(body))})

    return httpx.Client(base_url="http://hub.test", transport=httpx.MockTransport(handler))


def _hashers() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "sha256"]


def test_a_download_hashed_on_its_thread_verifies_every_byte(tmp_path):
    data = os.urandom(3 * 1024 * 1024 + 7)
    good = hashlib.sha256(data).hexdigest()
    cache = BlobCache(tmp_path / "cache")
    with _session(data) as session, tqdm(disable=True) as bar:
        path = download(session, "/f", good, len(data), cache, bar)
        assert path.read_bytes() == data and cache.fresh(good)

        flipped = bytearray(data)
        flipped[len(data) // 2] ^= 1
        wrong = hashlib.sha256(bytes(flipped)).hexdigest()  # what the file should be; the hub sends ``data``
        with pytest.raises(ChecksumMismatchError, match=f"hashing to {good}, not {wrong}"):
            download(session, "/f", wrong, len(data), cache, bar)
    assert not cache.blob_path(wrong).exists() and not cache.fresh(wrong)
    assert sorted(p.name for p in (tmp_path / "cache" / "blobs").iterdir()) == [good]  # no partial file left
    assert _hashers() == []


def _fresh_blob(tmp_path, data: bytes) -> tuple[BlobCache, str]:
    cache = BlobCache(tmp_path / "cache")
    sha = hashlib.sha256(data).hexdigest()
    with _session(data) as session, tqdm(disable=True) as bar:
        download(session, "/f", sha, len(data), cache, bar)
    return cache, sha


def test_a_fresh_copy_is_checked_against_the_blob_fingerprint(tmp_path, monkeypatch):
    monkeypatch.setenv("PEFT_HUB_CACHE", str(tmp_path / "cache"))
    data = os.urandom(1024 * 1024)
    cache, sha = _fresh_blob(tmp_path, data)
    blob = cache.blob_path(sha)
    files = {"w.bin": (sha, len(data))}

    out = plan_output(tmp_path / "out", kind="pull", identity="admin/x")
    out.check = lambda staged: cache.check_fresh_copies(staged, files)
    assert assemble({"w.bin": blob}, out) == tmp_path / "out"
    assert (tmp_path / "out" / "w.bin").read_bytes() == data
    assert not os.path.samefile(blob, tmp_path / "out" / "w.bin")  # a copy, never a link into the cache

    # An edit in place that restores the mtime still moves the ctime: the blob is no longer fresh.
    st = blob.stat()
    os.chmod(blob, 0o644)
    with open(blob, "r+b") as fh:
        fh.write(b"\xff" * 16)
    os.chmod(blob, 0o444)
    os.utime(blob, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert not cache.fresh(sha)
    out = plan_output(tmp_path / "out2", kind="pull", identity="admin/x")
    out.check = lambda staged: cache.check_fresh_copies(staged, files)
    with pytest.raises(BlobChangedError, match="w.bin changed") as caught:
        assemble({"w.bin": blob}, out)
    assert caught.value.sha256 == sha
    assert not (tmp_path / "out2").exists()  # nothing handed over
    assert not any(p.name.startswith(".out2") for p in tmp_path.iterdir())  # nor a staging directory left


def test_a_fresh_copy_of_the_wrong_size_is_refused(tmp_path):
    data = os.urandom(4096)
    cache, sha = _fresh_blob(tmp_path, data)
    staged = tmp_path / "staged"
    staged.mkdir()
    (staged / "w.bin").write_bytes(data[:-1])
    with pytest.raises(BlobChangedError):
        cache.check_fresh_copies(staged, {"w.bin": (sha, len(data))})
    (staged / "w.bin").write_bytes(data)
    cache.check_fresh_copies(staged, {"w.bin": (sha, len(data))})
    assert not BlobCache(tmp_path / "cache").fresh(sha)  # another process did not hash it: it must hash the copy


# --- parallel ranged pulls ------------------------------------------------------


def _ranged_small(monkeypatch) -> None:
    """Ranges for any blob above 64 KiB, in 40,000-byte spans (an uneven last one)."""
    from peft_hub.client import ranged

    monkeypatch.setattr(ranged, "MIN_SIZE", 64 * 1024)
    monkeypatch.setattr(ranged, "PART", 40_000)


def _answer(status: int, body: bytes, content_range: str | None = None) -> httpx.Response:
    headers = {"Content-Length": str(len(body)), **({"Content-Range": content_range} if content_range else {})}
    return httpx.Response(status, stream=httpx.ByteStream(body), headers=headers)


def _range_server(data: bytes, answer=None, log: list | None = None) -> httpx.Client:
    """A hub that redirects to a store honouring ``Range``; ``answer(start, end)``
    may replace the store's answer to a range."""

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.host == "hub.test":
            return httpx.Response(302, headers={"Location": "http://store.test/blob?sig=1"})
        if log is not None:
            log.append((request.headers.get("range"), request.headers.get("authorization")))
        spec = request.headers.get("range", "").removeprefix("bytes=")
        if not spec:
            return _answer(200, data)
        start, _, end = spec.partition("-")
        start, end = int(start), int(end or len(data) - 1)
        if answer is not None and (custom := answer(start, end)) is not None:
            return custom
        return _answer(206, data[start:end + 1], f"bytes {start}-{end}/{len(data)}")

    return httpx.Client(base_url="http://hub.test", headers={"Authorization": "Bearer t"},
                        transport=httpx.MockTransport(handler))


def _pull(session, data: bytes, cache: BlobCache, sha: str | None = None):
    with tqdm(disable=True) as bar:
        return download(session, "/f", sha or hashlib.sha256(data).hexdigest(), len(data), cache, bar)


def test_a_ranged_download_is_the_bytes_and_sends_no_token_to_the_store(tmp_path, monkeypatch):
    _ranged_small(monkeypatch)
    data = os.urandom(1_000_003)
    log: list = []
    cache = BlobCache(tmp_path / "cache")
    with _range_server(data, log=log) as session:
        assert _pull(session, data, cache).read_bytes() == data
    assert len(log) == 26 and {auth for _, auth in log} == {None}  # one GET per span, none with the token
    assert sorted(r for r, _ in log) == sorted(f"bytes={a}-{min(a + 40_000, len(data)) - 1}"
                                               for a in range(0, len(data), 40_000))
    assert cache.fresh(hashlib.sha256(data).hexdigest())
    assert [t for t in threading.enumerate() if t.name.startswith("range")] == []


def test_a_server_ignoring_range_gets_one_stream(tmp_path, monkeypatch):
    _ranged_small(monkeypatch)
    data = os.urandom(300_000)
    log: list = []

    def whole(start, end):
        return _answer(200, data)

    cache = BlobCache(tmp_path / "cache")
    with _range_server(data, whole, log) as session:
        assert _pull(session, data, cache).read_bytes() == data
    assert len(log) == 2  # the range, answered whole and dropped; then one stream


def _count_reads_and_writebacks(monkeypatch) -> tuple[list, list]:
    from peft_hub.client import ranged

    reads: list = []
    flushed: list = []
    real_pread = os.pread
    monkeypatch.setattr(ranged.os, "pread", lambda fd, n, pos: reads.append((pos, n)) or real_pread(fd, n, pos))
    real_writeback = ranged.disk.writeback
    monkeypatch.setattr(ranged.disk, "writeback", lambda fd, a, n: flushed.append((a, n)) or real_writeback(fd, a, n))
    real_fetch = ranged.fetch  # what the ranges hashed to (a wrong one would be fetched whole, and hide it)
    monkeypatch.setattr(ranged, "fetch", lambda *a, **k: reads.append(("digest", real_fetch(*a, **k))) or reads[-1][1])
    return reads, flushed


def test_ranges_in_order_are_hashed_from_memory_never_read_back(tmp_path, monkeypatch):
    from peft_hub.client import ranged

    _ranged_small(monkeypatch)
    monkeypatch.setattr(ranged, "STREAMS", 1)  # one stream: every block arrives where the hash stands
    reads, flushed = _count_reads_and_writebacks(monkeypatch)
    data = os.urandom(500_001)
    cache = BlobCache(tmp_path / "cache")
    with _range_server(data) as session:
        assert _pull(session, data, cache).read_bytes() == data
    assert reads == [("digest", hashlib.sha256(data).hexdigest())]
    assert sorted(flushed) == [(a, min(40_000, len(data) - a)) for a in range(0, len(data), 40_000)]
    assert ranged.disk.SYNC_FILE_RANGE is not None or not sys.platform.startswith("linux")  # the hint really is sent


def test_ranges_out_of_order_are_read_back_in_order_and_hashed_once(tmp_path, monkeypatch):
    import time

    _ranged_small(monkeypatch)
    reads, _ = _count_reads_and_writebacks(monkeypatch)
    data = os.urandom(1_000_003)
    sha = hashlib.sha256(data).hexdigest()

    def late(start, end):  # the second span comes last: everything after it waits to be read back
        if start == 40_000:
            time.sleep(0.3)
        return None

    cache = BlobCache(tmp_path / "cache")
    with _range_server(data, late) as session:
        assert _pull(session, data, cache).read_bytes() == data
    assert reads.pop() == ("digest", sha)
    assert reads and all(pos >= 80_000 for pos, _ in reads)  # what came in order was never read back
    assert sum(n for _, n in reads) <= len(data) - 80_000
    assert [pos for pos, _ in reads] == sorted(pos for pos, _ in reads)
    assert cache.fresh(sha)

    cache.discard(sha)  # the same order of arrival, with a flipped byte late in the file: refused
    flipped = bytearray(data)
    flipped[-5] ^= 1
    with _range_server(bytes(flipped), late) as session, pytest.raises(ChecksumMismatchError):
        _pull(session, bytes(flipped), cache, sha=sha)
    assert [p.name for p in (tmp_path / "cache" / "blobs").iterdir()] == []
    assert [t for t in threading.enumerate() if t.name.startswith("range")] == []


@pytest.mark.parametrize("bad", ["short", "wrong-range", "wrong-bytes", "long", "whole-later"])
def test_a_bad_range_answer_is_refused_and_nothing_is_kept(tmp_path, monkeypatch, bad):
    _ranged_small(monkeypatch)
    data = os.urandom(300_000)

    def hostile(start, end):
        if start < 80_000:
            return None  # the first spans are honest
        body = data[start:end + 1]
        if bad == "short":  # a Content-Length that agrees with a body that stops early
            return _answer(206, body[:-10], f"bytes {start}-{end}/300000")
        if bad == "wrong-range":
            return _answer(206, body, f"bytes {start + 1}-{end}/300000")
        if bad == "wrong-bytes":
            return _answer(206, bytes(len(body)), f"bytes {start}-{end}/300000")
        if bad == "long":
            return _answer(206, body + b"x", f"bytes {start}-{end}/300000")
        return _answer(200, data)

    def corrupt_whole(start, end):  # wrong bytes, also when fetched whole
        return hostile(start, end)

    cache = BlobCache(tmp_path / "cache")
    sha = hashlib.sha256(data).hexdigest()
    with _range_server(data, corrupt_whole) as session:
        if bad == "wrong-bytes":  # refused in ranges, then fetched whole once: the right bytes pass
            assert _pull(session, data, cache).read_bytes() == data
            cache.discard(sha)
            flipped = bytes(len(data))
            with pytest.raises(ChecksumMismatchError):
                _pull(session, data, cache, sha=hashlib.sha256(flipped).hexdigest())
        else:
            with pytest.raises((ChecksumMismatchError, PeftHubError)):
                _pull(session, data, cache)
            assert not cache.blob_path(sha).exists()
    assert [p.name for p in (tmp_path / "cache" / "blobs").iterdir()] == []  # no partial file left
    assert [t for t in threading.enumerate() if t.name.startswith("range")] == []


def _rank8_adapter(adapter, *, width: int, seed: int):
    """A rank-8 LoRA on one ``width``-wide q_proj, float32 noise from ``seed``: 64 bytes per column."""
    import json

    import numpy as np
    from safetensors.numpy import save_file

    adapter.mkdir()
    rng = np.random.default_rng(seed)
    save_file({"base_model.model.layers.0.q_proj.lora_A.weight": rng.standard_normal((8, width), dtype=np.float32),
               "base_model.model.layers.0.q_proj.lora_B.weight": rng.standard_normal((width, 8), dtype=np.float32)},
              adapter / "adapter_model.safetensors")
    (adapter / "adapter_config.json").write_text(json.dumps(
        {"peft_type": "LORA", "r": 8, "lora_alpha": 16, "target_modules": ["q_proj"], "base_model_name_or_path": "t"}))
    return adapter


@pytest.mark.integration
@pytest.mark.parametrize("backend", ["embedded", "s3-postgres"])
def test_a_ranged_pull_through_the_hub_is_byte_identical(tmp_path, monkeypatch, request, backend):
    """On SeaweedFS the ranges (and the push's PUTs) go to the presigned URL; on local files the hub
    answers them itself."""

    from conftest import make_settings
    from services import live_hub

    from peft_hub.client import HubClient, ranged, rawhttp

    monkeypatch.setattr(ranged, "MIN_SIZE", 1024 * 1024)
    monkeypatch.setattr(ranged, "PART", 256 * 1024 + 3)
    results: list = []
    real = ranged.fetch
    monkeypatch.setattr(ranged, "fetch", lambda *a, **k: results.append(real(*a, **k)) or results[-1])
    direct: list[int] = []  # bytes read into a stream's own buffer (rawhttp), not through httpx
    read_into = rawhttp.Response.readinto
    monkeypatch.setattr(rawhttp.Response, "readinto", lambda self, view: direct.append(n := read_into(self, view)) or n)
    put: list[int] = []  # bytes of a PUT handed to the kernel (rawhttp), not through httpx
    put_file = rawhttp.Direct.put_file
    monkeypatch.setattr(rawhttp.Direct, "put_file", lambda self, h, fh, size, note, **kw: put.append(size) or put_file(
        self, h, fh, size, note, **kw))

    adapter = _rank8_adapter(tmp_path / "a", width=65536, seed=0)
    with live_hub(make_settings(backend, tmp_path, request)) as hub:
        HubClient(hub.url, hub.admin_token, cache_dir=tmp_path / "c0").push(adapter, name="admin/big")
        client = HubClient(hub.url, hub.admin_token, cache_dir=tmp_path / "c1")
        pulled = client.pull("admin/big", tmp_path / "out")
    weights = (adapter / "adapter_model.safetensors").read_bytes()
    assert (pulled.path / "adapter_model.safetensors").read_bytes() == weights
    assert results == [hashlib.sha256(weights).hexdigest()]  # fetched in ranges, not one stream
    # SeaweedFS's presigned ranges carry no token and take the direct path; the local hub's carry it and don't.
    assert (sum(direct) > len(weights) // 2) if backend == "s3-postgres" else direct == []
    # So do the presigned PUTs of the push; the local hub's own upload URL carries the token, through httpx.
    assert (len(weights) in put) if backend == "s3-postgres" else put == []


# --- pull -o written as it arrives ----------------------------------------------


@pytest.mark.parametrize("ranges", [True, False])
def test_a_mirror_gets_the_verified_bytes_as_a_separate_file(tmp_path, monkeypatch, ranges):
    if ranges:
        _ranged_small(monkeypatch)
    data = os.urandom(300_007)
    cache = BlobCache(tmp_path / "cache")
    mirror = tmp_path / "staged.bin"
    with _range_server(data) as session, tqdm(disable=True) as bar:
        blob = download(session, "/f", hashlib.sha256(data).hexdigest(), len(data), cache, bar, mirror=mirror)
    assert blob.read_bytes() == data and mirror.read_bytes() == data
    assert not os.path.samefile(blob, mirror)  # a file of its own: editing it never touches the cache


@pytest.mark.parametrize("bad", ["wrong-bytes", "short", "long"])
@pytest.mark.parametrize("ranges", [True, False])
def test_a_failed_download_leaves_no_mirror(tmp_path, monkeypatch, bad, ranges):
    if ranges:
        _ranged_small(monkeypatch)
    data = os.urandom(300_000)
    def spoil(body: bytes) -> bytes:
        return {"wrong-bytes": bytes(len(body)), "short": body[:-10], "long": body + b"x"}[bad]

    def hostile(start, end):  # every answer, ranged or whole, is wrong
        if start == 0 and end == len(data) - 1:
            return _answer(200, spoil(data))
        return _answer(206, spoil(data[start:end + 1]), f"bytes {start}-{end}/{len(data)}")

    def handler(request: httpx.Request) -> httpx.Response:
        spec = request.headers.get("range", "").removeprefix("bytes=")
        start, _, end = spec.partition("-") if spec else ("0", "", "")
        return hostile(int(start), int(end or len(data) - 1))

    session = httpx.Client(base_url="http://hub.test", transport=httpx.MockTransport(handler))
    cache = BlobCache(tmp_path / "cache")
    mirror = tmp_path / "staged.bin"
    with session, tqdm(disable=True) as bar, pytest.raises(PeftHubError):
        download(session, "/f", hashlib.sha256(data).hexdigest(), len(data), cache, bar, mirror=mirror)
    assert not mirror.exists()
    assert [p.name for p in (tmp_path / "cache" / "blobs").iterdir()] == []


def test_a_mirror_never_overwrites_or_follows_what_is_there(tmp_path):
    data = os.urandom(1000)
    cache = BlobCache(tmp_path / "cache")
    victim = tmp_path / "victim"
    victim.write_bytes(b"keep")
    (tmp_path / "link").symlink_to(victim)
    with _session(data) as session, tqdm(disable=True) as bar:
        for taken in ("victim", "link"):
            with pytest.raises(FileExistsError):
                download(session, "/f", hashlib.sha256(data).hexdigest(), len(data), cache, bar,
                         mirror=tmp_path / taken)
    assert victim.read_bytes() == b"keep"
    assert [p.name for p in (tmp_path / "cache" / "blobs").iterdir()] == []


def test_a_staged_file_changed_after_its_download_is_refused(tmp_path):
    from peft_hub.client.cache import check_staged, fingerprint
    from peft_hub.errors import StorageError

    staged = tmp_path / "staged"
    staged.mkdir()
    (staged / "w.bin").write_bytes(b"verified")
    marks = {"w.bin": fingerprint(staged / "w.bin")}
    check_staged(staged, marks)
    with open(staged / "w.bin", "r+b") as fh:
        fh.write(b"V")
    with pytest.raises(StorageError, match="w.bin changed"):
        check_staged(staged, marks)


@pytest.mark.integration
def test_pull_o_writes_downloads_once_and_hashes_cached_copies(tmp_path, monkeypatch):
    """A first pull -o writes each file as it arrives (no copy afterwards); a pull of the
    cached adapter into another directory copies, hashing every byte; both are the pushed bytes."""

    from conftest import make_settings
    from services import live_hub

    from peft_hub.client import HubClient
    from peft_hub.client import assemble as assemble_module

    copies: list = []
    real_copy, real_checked = assemble_module.shutil.copyfile, assemble_module._copy_checked
    monkeypatch.setattr(assemble_module.shutil, "copyfile", lambda s, d: copies.append(("plain", d)) or real_copy(s, d))
    monkeypatch.setattr(assemble_module, "_copy_checked",
                        lambda s, d, sha: copies.append(("hashed", d)) or real_checked(s, d, sha))
    monkeypatch.setenv("PEFT_HUB_CACHE", str(tmp_path / "c1"))
    adapter = _rank8_adapter(tmp_path / "a", width=4096, seed=1)
    with live_hub(make_settings("embedded", tmp_path, None)) as hub:
        HubClient(hub.url, hub.admin_token, cache_dir=tmp_path / "c0").push(adapter, name="admin/o")
        client = HubClient(hub.url, hub.admin_token, cache_dir=tmp_path / "c1")
        first = client.pull("admin/o", tmp_path / "out1")
        assert copies == []
        second = HubClient(hub.url, hub.admin_token, cache_dir=tmp_path / "c1").pull("admin/o", tmp_path / "out2")
        assert second.bytes_downloaded == 0 and sorted(kind for kind, _ in copies) == ["hashed", "hashed"]
    for out in (first.path, second.path):
        for name in ("adapter_config.json", "adapter_model.safetensors"):
            assert (out / name).read_bytes() == (adapter / name).read_bytes()
    assert not any(p.name.startswith(".out") for p in tmp_path.iterdir())  # no staging directory left


# --- small files beside the weights ---------------------------------------------


def _sizes(monkeypatch) -> None:
    from peft_hub.client import ranged

    monkeypatch.setattr(ranged, "MIN_SIZE", 100)


def test_small_files_are_fetched_while_a_large_one_is(monkeypatch):
    from peft_hub.client.download import fetch_all

    _sizes(monkeypatch)
    started, log = threading.Event(), []

    def fetch(f):
        name, size = f
        log.append((name, threading.current_thread().name))
        if size < 100:
            started.set()
        else:  # fetched one after the other, the small file would start only after this one
            assert started.wait(10), "the small file did not start while the large one was in flight"

    fetch_all(fetch, [("a.json", 10), ("w.safetensors", 1000), ("z.md", 20)], lambda f: f[1])
    assert sorted(n for n, _ in log) == ["a.json", "w.safetensors", "z.md"]
    main = threading.current_thread().name
    assert {n: t == main for n, t in log} == {"a.json": False, "w.safetensors": True, "z.md": False}
    assert [n for n, _ in log if n != "w.safetensors"] == ["a.json", "z.md"]  # in order, on one thread


def test_a_large_files_failure_stops_the_small_ones_and_waits_for_them(monkeypatch):
    from peft_hub.client.download import fetch_all

    _sizes(monkeypatch)
    in_flight, finished, fetched = threading.Event(), threading.Event(), []

    def fetch(f):
        name, size = f
        if size >= 100:
            assert in_flight.wait(10)
            raise StorageError("the weights broke")
        if name == "a.json":
            in_flight.set()
            time.sleep(0.2)  # still being written when the large one fails
            finished.set()
        fetched.append(name)

    with pytest.raises(StorageError, match="the weights broke"):
        fetch_all(fetch, [("a.json", 10), ("b.json", 10), ("w.safetensors", 1000)], lambda f: f[1])
    assert finished.is_set()  # raised only once the small file in flight had ended
    assert fetched == ["a.json"]  # the next small one was never started


def test_a_small_files_failure_is_raised_after_the_large_ones(monkeypatch):
    from peft_hub.client.download import fetch_all

    _sizes(monkeypatch)
    done = []

    def fetch(f):
        name, size = f
        if size < 100:
            raise ChecksumMismatchError(f"{name} is wrong")
        time.sleep(0.05)
        done.append(name)

    with pytest.raises(ChecksumMismatchError, match="a.json is wrong"):
        fetch_all(fetch, [("a.json", 10), ("w.safetensors", 1000), ("x.safetensors", 1000)], lambda f: f[1])
    assert done == ["w.safetensors", "x.safetensors"]


@pytest.mark.parametrize("sizes", [(10, 20), (1000, 2000)])
def test_files_all_small_or_all_large_are_fetched_here_in_order(monkeypatch, sizes):
    from peft_hub.client.download import fetch_all

    _sizes(monkeypatch)
    log = []
    fetch_all(lambda f: log.append((f, threading.current_thread().name)), list(sizes), lambda f: f)
    assert log == [(s, threading.current_thread().name) for s in sizes]


@pytest.mark.integration
def test_a_pull_fetches_the_config_while_the_weights_arrive(tmp_path, monkeypatch):
    """Through a live hub: the weights' download waits for the config's to begin, which it
    could not if the files came one after the other; both land, verified, in the output."""
    from conftest import make_settings
    from services import live_hub

    from peft_hub.client import HubClient, api, ranged

    monkeypatch.setattr(ranged, "MIN_SIZE", 1024 * 1024)
    adapter = _rank8_adapter(tmp_path / "a", width=65536, seed=1)
    config_started, threads = threading.Event(), {}
    real = api.download

    def download(session, url, sha256, size, *args, **kwargs):
        threads[url.rsplit("/", 1)[1]] = threading.current_thread().name
        if size < ranged.MIN_SIZE:
            config_started.set()
        else:
            assert config_started.wait(10), "the config was not fetched beside the weights"
        return real(session, url, sha256, size, *args, **kwargs)

    monkeypatch.setattr(api, "download", download)
    with live_hub(make_settings("embedded", tmp_path, None)) as hub:
        HubClient(hub.url, hub.admin_token, cache_dir=tmp_path / "c0").push(adapter, name="admin/beside")
        pulled = HubClient(hub.url, hub.admin_token, cache_dir=tmp_path / "c1").pull("admin/beside", tmp_path / "out")
    for name in ("adapter_config.json", "adapter_model.safetensors"):
        assert (pulled.path / name).read_bytes() == (adapter / name).read_bytes()
    assert threads["adapter_model.safetensors"] == threading.current_thread().name
    assert threads["adapter_config.json"].startswith("pull-small")
