"""Mirror fetches under storage slots: many concurrent first reads of one
repo, through routes that hold a slot and routes that take one for the
fetch, with one or two slots, never deadlock, fetch once, and give every
slot back."""

from __future__ import annotations

import hashlib
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
import test_upstream
from conftest import make_settings
from services import live_hub

pytestmark = pytest.mark.integration

upstream = test_upstream.upstream  # a fixture


@pytest.mark.parametrize("slots", [1, 2])
def test_concurrent_first_reads_of_one_repo_with_few_slots_fetch_once(upstream, request, tmp_path, slots):
    (tmp_path / "b").mkdir()
    settings = make_settings("embedded", tmp_path / "b", request).model_copy(update={
        "upstream": upstream.url, "storage_concurrency": slots, "storage_queue_timeout": 30})
    routes = ["/api/adapters/acme/support", "/api/models/acme/support"]  # takes a slot for the fetch / holds one
    with live_hub(settings) as hub, ThreadPoolExecutor(8) as pool:
        codes = list(pool.map(lambda i: httpx.get(hub.url + routes[i % 2], timeout=60).status_code, range(8)))
        assert codes == [200] * 8
        assert upstream.info_hits("acme/support") == 1
        blob = b"every slot was given back"
        auth = {"Authorization": f"Bearer {hub.admin_token}"}
        with ThreadPoolExecutor(slots) as puts:  # all the slots at once, none waiting
            sha = hashlib.sha256(blob).hexdigest()
            got = list(puts.map(lambda _: httpx.put(f"{hub.url}/api/blobs/{sha}", params={"size": len(blob)},
                                                    content=blob, headers=auth, timeout=5).status_code,
                                range(slots)))
        assert all(code in (200, 201) for code in got), got


def test_a_client_that_hangs_up_while_its_fetch_waits_for_a_slot_gives_it_back(upstream, request, tmp_path):
    (tmp_path / "b").mkdir()
    settings = make_settings("embedded", tmp_path / "b", request).model_copy(update={
        "upstream": upstream.url, "storage_concurrency": 1, "storage_queue_timeout": 20})
    with live_hub(settings) as hub, ThreadPoolExecutor(2) as pool:
        upstream.release.clear()
        first = pool.submit(httpx.get, f"{hub.url}/api/adapters/acme/support", timeout=60)
        assert upstream.resolving.wait(30), "the fetch never asked for a file"
        with pytest.raises(httpx.TimeoutException):  # waits for the one slot, then hangs up
            httpx.get(f"{hub.url}/api/adapters/acme/support", timeout=1)
        upstream.release.set()
        assert first.result(60).status_code == 200
        again = httpx.get(f"{hub.url}/api/adapters/acme/support", timeout=30)
        assert again.status_code == 200 and upstream.info_hits("acme/support") == 1
        blob = b"the slot is free again"
        sha = hashlib.sha256(blob).hexdigest()
        r = httpx.put(f"{hub.url}/api/blobs/{sha}", params={"size": len(blob)}, content=blob,
                      headers={"Authorization": f"Bearer {hub.admin_token}"}, timeout=10)
        assert r.status_code in (200, 201), r.text
