"""Replicas' caches (hub/cache.py, hot.py) and what another replica changes.

Two hubs on one database are two replicas: each has its own caches, and a
write in one bumps only its own generations. A token revoked, a membership
removed by an operator (no route removes one: straight in the database) and
an adapter deleted in replica A must be refused by replica B within the TTL
(``PEFT_HUB_CACHE_TTL``), on its warm paths too (a resolve answered on the
event loop); and a 304 must never answer for what the caller can no longer read.
"""

from __future__ import annotations

import time

import httpx
import pytest
from conftest import make_settings
from raw_adapters import tiny_lora_dir
from services import live_hub
from sqlalchemy import text

from peft_hub.client import HubClient

pytestmark = pytest.mark.integration

TTL = 1.0


def _within_ttl(check, what: str) -> None:
    """``check()`` becomes true within the TTL (and a little scheduling slack)."""
    start = time.monotonic()
    while not check():
        assert time.monotonic() - start < TTL + 0.75, f"replica b still {what} past the TTL"
        time.sleep(0.05)


def test_revocation_membership_removal_and_delete_reach_the_other_replica_within_the_ttl(tmp_path, request):
    settings = make_settings("embedded", tmp_path, request).model_copy(update={"cache_ttl": TTL})
    with live_hub(settings) as a, live_hub(settings) as b:
        admin = HubClient(a.url, a.admin_token, cache_dir=tmp_path / "c0")
        with httpx.Client(base_url=a.url, headers={"Authorization": f"Bearer {a.admin_token}"}) as on_a:
            assert on_a.put("/api/orgs/lab/members/carol").status_code == 201
        carol = admin.create_token(scope="read", namespace="carol")["token"]
        dave = admin.create_token(scope="read", namespace="dave")
        pushed = admin.push(tiny_lora_dir(tmp_path / "secret", "lab secret"), name="lab/secret", private=True)
        resolve = f"/api/adapters/lab/secret/resolve/{pushed.revision}/README.md"
        with httpx.Client(base_url=b.url, headers={"Authorization": f"Bearer {carol}"}) as carol_b, \
                httpx.Client(base_url=b.url, headers={"Authorization": f"Bearer {dave['token']}"}) as dave_b, \
                httpx.Client(base_url=b.url, headers={"Authorization": f"Bearer {b.admin_token}"}) as admin_b, \
                httpx.Client(base_url=a.url, headers={"Authorization": f"Bearer {a.admin_token}"}) as admin_a:
            for _ in range(3):  # warm: b's caches hold carol, dave and the repo
                assert carol_b.get("/api/adapters/lab/secret").status_code == 200
                assert carol_b.get(resolve).status_code == 200
                assert dave_b.get("/api/whoami").status_code == 200
            etag = carol_b.get("/api/adapters/lab/secret").headers["etag"]

            # A token revoked in a.
            assert admin_a.delete(f"/api/tokens/{dave['id']}").status_code == 204
            _within_ttl(lambda: dave_b.get("/api/whoami").status_code == 401, "accepts a revoked token")

            # carol's membership of lab removed by an operator, in the database.
            with a.app.state.engine.begin() as conn:
                conn.execute(text("DELETE FROM membership WHERE user_id = (SELECT id FROM namespace "
                                  "WHERE name = 'carol')"))
            _within_ttl(lambda: carol_b.get("/api/adapters/lab/secret").status_code == 404,
                        "shows lab's private repo to a former member")
            _within_ttl(lambda: carol_b.get(resolve).status_code == 404, "resolves for a former member")
            r = carol_b.get("/api/adapters/lab/secret", headers={"If-None-Match": etag})
            assert r.status_code == 404, "a 304 told a former member the repo is still there"

            # The adapter deleted in a, while b's admin reads it warm.
            for _ in range(2):
                assert admin_b.get(resolve).status_code == 200
            assert admin_a.delete("/api/adapters/lab/secret").status_code == 204
            _within_ttl(lambda: admin_b.get(resolve).status_code == 404, "resolves a deleted adapter")
            _within_ttl(lambda: admin_b.get("/api/adapters/lab/secret").status_code == 404, "shows a deleted adapter")
