"""kill -9 of the hub in the middle of a stream of writes leaves nothing half-written.

A ``peft-hub serve`` process takes pushes (native and HF), tag moves,
visibility flips and deletes from two writer threads, and is killed with
SIGKILL at a random moment once the first of them has landed. After each kill a hub on the
same database and store must find: every revision's files stored and every
stored blob hashing to its name (``test_faults._consistent``); every tag on
a revision of its own adapter; the search summaries and PostgreSQL's text
body exact; and the write that was cut able to run again.
"""

from __future__ import annotations

import base64
import json
import random
import secrets
import signal
import threading
import time
from pathlib import Path

import httpx
import pytest
from conftest import _fresh_pg_database
from services import live_hub
from sqlalchemy import text
from test_faults import _adapter, _consistent, _push, _serve, _settings
from test_search_body import assert_body_exact
from test_search_summary import assert_exact

pytestmark = pytest.mark.integration


@pytest.fixture(params=["embedded", "s3-postgres"])
def settings(request, tmp_path):
    if request.param == "embedded":
        return _settings(tmp_path, f"sqlite:///{tmp_path / 'hub.db'}", str(tmp_path / "blobs"))
    request.getfixturevalue("s3_server")
    return _settings(tmp_path, _fresh_pg_database(request.getfixturevalue("pg_url")),
                     f"s3://peft-hub-test/{secrets.token_hex(4)}")


def _hf_commit(http: httpx.Client, repo: str, card: str) -> None:
    lines = [{"key": "header", "value": {"summary": card}},
             {"key": "file", "value": {"path": "README.md", "content": base64.b64encode(card.encode()).decode(),
                                       "encoding": "base64"}}]
    http.post(f"/api/models/{repo}/commit/main", content=b"".join(json.dumps(x).encode() + b"\n" for x in lines),
              headers={"Content-Type": "application/x-ndjson"})


def _writes(url: str, token: str, root: Path, seed: int, stop: threading.Event) -> None:
    """Writes until ``stop`` or until the hub dies under them."""
    rng = random.Random(seed)
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=10) as http:
        step = 0
        while not stop.is_set():
            step += 1
            repo = f"admin/r{seed}-{rng.randrange(4)}"
            try:
                what = rng.choice(["push", "push", "hf", "tag", "flip", "delete"])
                if what == "push":
                    _push(http, repo, _adapter(root, f"{seed}-{step}"))
                elif what == "hf":
                    _hf_commit(http, repo, f"# hf {seed}-{step}\n")
                elif what == "tag":
                    http.put(f"/api/adapters/{repo}/tags/t{rng.randrange(3)}", json={"revision": "main"})
                elif what == "flip":
                    http.put(f"/api/models/{repo}/settings", json={"private": rng.random() < 0.5})
                else:
                    http.delete(f"/api/adapters/{repo}")
            except (httpx.HTTPError, AssertionError):
                if stop.is_set():
                    return


def _tags_are_whole(engine) -> None:
    with engine.connect() as conn:
        stray = conn.execute(text(
            "SELECT t.adapter_id, t.name FROM tag t LEFT JOIN revision r ON r.id = t.revision_id "
            "WHERE r.id IS NULL OR r.adapter_id != t.adapter_id")).all()
        headless = conn.execute(text(
            "SELECT a.id FROM adapter a WHERE EXISTS (SELECT 1 FROM revision r WHERE r.adapter_id = a.id) "
            "AND NOT EXISTS (SELECT 1 FROM tag t WHERE t.adapter_id = a.id AND t.name = 'main')")).all()
        empty = conn.execute(text(
            "SELECT r.id FROM revision r WHERE NOT EXISTS (SELECT 1 FROM revisionfile f WHERE f.revision_id = r.id)"
        )).all()
    assert (stray, headless, empty) == ([], [], [])


def _landed(url: str) -> bool:
    """Whether the serving hub has published anything yet (its search lists every public adapter)."""
    try:
        return httpx.get(f"{url}/api/adapters", timeout=2).json()["total"] > 0
    except (httpx.HTTPError, ValueError, KeyError):
        return False


def test_kill_9_mid_write_leaves_every_table_and_blob_whole(settings, tmp_path):
    rng = random.Random(5)
    proc, url = _serve(tmp_path, settings)
    stop = threading.Event()
    writers = [threading.Thread(target=_writes, args=(url, settings.admin_token, tmp_path / "src", i, stop),
                                daemon=True) for i in range(2)]
    try:
        for w in writers:
            w.start()
        deadline = time.monotonic() + 20
        while not _landed(url):  # the writes are under way: kill the hub among them
            assert time.monotonic() < deadline, "no write landed"
            time.sleep(0.05)
        stop.wait(rng.uniform(0.3, 1.2))
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    finally:
        stop.set()
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    for w in writers:
        w.join(15)
    with live_hub(settings) as hub:
        engine = hub.app.state.engine
        revisions = _consistent(hub)
        _tags_are_whole(engine)
        with engine.connect() as conn:
            assert_exact(conn)
        assert_body_exact(engine)
        with httpx.Client(base_url=hub.url, headers={"Authorization": f"Bearer {hub.admin_token}"},
                          timeout=30) as http:
            for i in range(2):  # each writer's repos take a push again
                _push(http, f"admin/r{i}-0", _adapter(tmp_path / "after", f"after-{i}"))
        assert _consistent(hub) == revisions + 2
