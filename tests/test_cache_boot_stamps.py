"""The cache trusts a download's stamp for the boot it was written in, not
beyond: a download is not fsynced, and only a crash of the whole system
(a new boot) can lose bytes the page cache held. See peft_hub/client/cache.py."""

from __future__ import annotations

import hashlib
import os
import uuid

import pytest

from peft_hub.client import cache as cache_mod
from peft_hub.client.cache import DURABLE, BlobCache

DATA = b"adapter bytes " * 1000
SHA = hashlib.sha256(DATA).hexdigest()


def _download(cache: BlobCache, data: bytes = DATA) -> None:
    with cache.partial(SHA) as part:
        part.fh.write(data)
        cache.commit(part, SHA)


@pytest.fixture
def booted(monkeypatch):
    """Set the current boot; returns a function that starts a new one."""
    def boot() -> str:
        boot_id = str(uuid.uuid4())
        monkeypatch.setattr(cache_mod, "BOOT_ID", boot_id)
        monkeypatch.setattr(cache_mod, "NOW", boot_id)
        return boot_id
    boot()
    return boot


@pytest.fixture
def hashes(monkeypatch):
    """Counts the blobs hashed again."""
    seen: list[str] = []
    real = cache_mod.sha256_file
    monkeypatch.setattr(cache_mod, "sha256_file", lambda path: seen.append(path.name) or real(path))
    return seen


def test_a_download_is_not_fsynced_and_is_trusted_for_its_boot(tmp_path, booted, hashes, monkeypatch):
    monkeypatch.setattr(os, "fsync", lambda fd: pytest.fail("a download was fsynced"))
    cache = BlobCache(tmp_path)
    _download(cache)
    assert cache.stamp_path(SHA).read_text().split()[-1] == cache_mod.BOOT_ID
    assert BlobCache(tmp_path).checked(SHA, len(DATA)) is not None and hashes == []  # another process, same boot


def test_after_a_crash_that_lost_the_bytes_the_blob_is_fetched_again(tmp_path, booted, hashes):
    """What a crash can leave: the name and the metadata the stamp recorded, in
    front of bytes that never reached the disk (made here by writing other
    bytes and stamping their fingerprint with the old boot, as the crash's
    page cache would have)."""
    cache = BlobCache(tmp_path)
    _download(cache)
    old_boot = cache_mod.BOOT_ID
    blob = cache.blob_path(SHA)
    os.chmod(blob, 0o644)
    blob.write_bytes(b"\0" * len(DATA))
    os.chmod(blob, 0o444)
    cache._write_stamp(SHA, os.lstat(blob), old_boot)
    assert cache.checked(SHA, len(DATA)) is not None  # within that boot the stamp is trusted, as always
    booted()  # the machine went down and came back
    assert cache.checked(SHA, len(DATA)) is None and hashes == [SHA]  # hashed again, found wrong, removed
    assert not blob.exists() and not cache.stamp_path(SHA).exists()


def test_a_blob_that_survived_a_reboot_is_hashed_once_then_durable(tmp_path, booted, hashes):
    cache = BlobCache(tmp_path)
    _download(cache)
    booted()
    assert cache.checked(SHA, len(DATA)) is not None and hashes == [SHA]
    assert cache.stamp_path(SHA).read_text().split()[-1] == DURABLE
    booted()
    assert cache.checked(SHA, len(DATA)) is not None and hashes == [SHA]  # no second hash, in any later boot


def test_a_blob_hashed_again_in_its_own_boot_is_not_yet_durable(tmp_path, booted, hashes):
    cache = BlobCache(tmp_path)
    _download(cache)
    cache.stamp_path(SHA).unlink()  # e.g. a pull killed between the rename and the stamp
    assert cache.checked(SHA, len(DATA)) is not None and hashes == [SHA]
    assert cache.stamp_path(SHA).read_text().split()[-1] == cache_mod.BOOT_ID


def test_stamps_written_before_they_named_a_boot_were_fsynced_and_stay_trusted(tmp_path, booted, hashes):
    cache = BlobCache(tmp_path)
    _download(cache)
    st = os.lstat(cache.blob_path(SHA))
    cache.stamp_path(SHA).write_text(f"{st.st_size} {st.st_mtime_ns} {st.st_ctime_ns} {st.st_ino}\n")
    booted()
    assert cache.checked(SHA, len(DATA)) is not None and hashes == []


def test_without_a_boot_id_a_download_is_fsynced_as_before(tmp_path, monkeypatch, hashes):
    monkeypatch.setattr(cache_mod, "BOOT_ID", None)
    monkeypatch.setattr(cache_mod, "NOW", DURABLE)
    synced: list[int] = []
    monkeypatch.setattr(os, "fsync", synced.append)
    cache = BlobCache(tmp_path)
    _download(cache)
    assert synced and cache.stamp_path(SHA).read_text().split()[-1] == DURABLE
    assert cache.checked(SHA, len(DATA)) is not None and hashes == []


@pytest.mark.parametrize("stamp", ["", "1 2 3", "a b c d e", "1 2 3 4 5 6"])
def test_a_damaged_stamp_means_hash_again(tmp_path, booted, hashes, stamp):
    cache = BlobCache(tmp_path)
    _download(cache)
    cache.stamp_path(SHA).write_text(stamp)
    assert cache.checked(SHA, len(DATA)) is not None and hashes == [SHA]


def test_this_machine_has_a_boot_id():
    if not os.path.exists("/proc/sys/kernel/random/boot_id"):
        pytest.skip("not Linux")
    assert cache_mod.BOOT_ID is not None and cache_mod.NOW == cache_mod.BOOT_ID
