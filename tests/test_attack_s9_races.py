"""Writes that race each other on one hub, on SQLite + local files and on
PostgreSQL + SeaweedFS: a Hugging Face commit built while another lands, a
tag moved while it is being resolved, a repo deleted while a push is on its
way. None may lose an update that was answered as a success, and each loser
fails with a clean error (409/404), never a 500 or a half-written revision.

The windows are made wide where the race is narrow, by running a rival
request from inside the hub at the exact step (the hub itself is real)."""

from __future__ import annotations

import base64
import hashlib
import json
import threading
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from raw_adapters import tiny_lora_dir

from peft_hub.client import HubClient

pytestmark = pytest.mark.integration


def _ndjson_commit(path: str, text: str, parent: str | None = None) -> bytes:
    header: dict[str, str] = {"summary": f"add {path}"}
    if parent is not None:
        header["parentCommit"] = parent
    lines = [{"key": "header", "value": header},
             {"key": "file", "value": {"path": path, "content": base64.b64encode(text.encode()).decode(),
                                       "encoding": "base64"}}]
    return b"".join(json.dumps(line).encode() + b"\n" for line in lines)


def _hf_commit(hub, repo: str, path: str, text: str, parent: str | None = None) -> httpx.Response:
    return httpx.post(f"{hub.url}/api/models/{repo}/commit/main", content=_ndjson_commit(path, text, parent),
                      headers={"Authorization": f"Bearer {hub.admin_token}",
                               "Content-Type": "application/x-ndjson"}, timeout=60)


def _main_files(hub, repo: str) -> set[str]:
    r = httpx.get(f"{hub.url}/api/adapters/{repo}", headers={"Authorization": f"Bearer {hub.admin_token}"})
    assert r.status_code == 200, r.text
    return {f["path"] for f in r.json()["files"]}


@pytest.fixture
def base_repo(hub, tmp_path):
    admin = HubClient(hub.url, hub.admin_token, cache_dir=tmp_path / "c0")
    pushed = admin.push(tiny_lora_dir(tmp_path / "base", "race base"), name="admin/race")
    yield pushed.revision
    admin.close()


def test_an_hf_commit_built_while_another_lands_never_drops_it(hub, base_repo, monkeypatch):
    """huggingface_hub's ``create_commit`` (no parent given) is applied on top
    of main. A rival commit lands while ours is being built: ours must then be
    refused (409, "main moved") or include the rival's file; answering 200
    with a revision that lacks it loses an acknowledged commit."""
    hf = pytest.importorskip("huggingface_hub")
    from huggingface_hub import CommitOperationAdd, HfApi, constants

    from peft_hub.hub.hf import write

    monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", True)
    real, rival, calls = write.parent_files, [], []

    def rival_lands_meanwhile(session, adapter):
        files = real(session, adapter)  # our commit has read main's files...
        calls.append(adapter.name)
        if len(calls) == 1:  # ...and before it reads main's sha, another client's commit lands
            rival.append(_hf_commit(hub, "admin/race", "rival.txt", "rival\n"))
        return files

    monkeypatch.setattr(write, "parent_files", rival_lands_meanwhile)
    api = HfApi(endpoint=hub.url, token=hub.admin_token)
    try:
        api.create_commit("admin/race", operations=[CommitOperationAdd("mine.txt", b"mine\n")],
                          commit_message="mine")
        ours = "ok"
    except hf.errors.HfHubHTTPError as exc:
        ours = exc.response.status_code
    assert rival and rival[0].status_code == 200, rival and rival[0].text
    files = _main_files(hub, "admin/race")
    assert "rival.txt" in files, f"the rival's acknowledged commit was lost (ours: {ours}); main has {sorted(files)}"
    assert ours == 409 or "mine.txt" in files


def test_commits_racing_on_one_parent_land_one_and_refuse_the_rest(hub, base_repo):
    """Eight HF commits at once, each naming main as its ``parentCommit``:
    exactly one lands, the others are 409s, and main holds the winner's file."""
    barrier = threading.Barrier(8)

    def commit(i: int) -> httpx.Response:
        barrier.wait()
        return _hf_commit(hub, "admin/race", f"n{i}.txt", f"{i}\n", parent=base_repo)

    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(commit, range(8)))
    codes = sorted(r.status_code for r in answers)
    assert codes == [200] + [409] * 7, [(r.status_code, r.text[:120]) for r in answers]
    winner = next(i for i, r in enumerate(answers) if r.status_code == 200)
    assert _main_files(hub, "admin/race") == {"README.md", "adapter_config.json", "adapter_model.safetensors",
                                                f"n{winner}.txt"}


def _adapter_commit(tmp_path, note: str) -> bytes:
    """An NDJSON commit adding a whole valid adapter inline (so it needs nothing from the parent)."""
    src = tiny_lora_dir(tmp_path / note, note)
    lines = [{"key": "header", "value": {"summary": note}}]
    lines += [{"key": "file", "value": {"path": p.name, "content": base64.b64encode(p.read_bytes()).decode(),
                                        "encoding": "base64"}} for p in sorted(src.iterdir())]
    return b"".join(json.dumps(line).encode() + b"\n" for line in lines)


def test_a_private_repo_deleted_while_an_hf_commit_streams_stays_gone(hub, tmp_path, monkeypatch):
    """The HF commit route needs an existing repo (a missing one is a 404
    before the body is read). When the repo is deleted while the body is
    still arriving, the commit must fail the same way, not bring the repo
    back; above all not as a public repo holding what was pushed to a private one."""
    from peft_hub.hub.hf import write

    admin = HubClient(hub.url, hub.admin_token, cache_dir=tmp_path / "c0")
    admin.push(tiny_lora_dir(tmp_path / "first", "hidden v1"), name="admin/hidden", private=True)
    auth = {"Authorization": f"Bearer {hub.admin_token}"}
    real, deleted = write.read_commit, []

    async def deleted_meanwhile(*args, **kwargs):
        parsed = await real(*args, **kwargs)
        async with httpx.AsyncClient(base_url=hub.url, headers=auth, timeout=30) as other:
            deleted.append(await other.request("DELETE", "/api/repos/delete",
                                               json={"name": "hidden", "type": "model"}))
        return parsed

    monkeypatch.setattr(write, "read_commit", deleted_meanwhile)
    r = httpx.post(f"{hub.url}/api/models/admin/hidden/commit/main", content=_adapter_commit(tmp_path, "hidden v2"),
                   headers={**auth, "Content-Type": "application/x-ndjson"}, timeout=60)
    assert deleted and deleted[0].status_code == 200, deleted and deleted[0].text
    anonymous = httpx.get(f"{hub.url}/api/adapters/admin/hidden")
    assert anonymous.status_code == 404, f"commit {r.status_code}; the deleted private repo is public: {anonymous.text}"
    assert r.status_code in (404, 409), r.text
    admin.close()


# --- a write to a repo that another request deletes meanwhile ----------------------------------------------------


def _deleted_while_it_writes(hub, monkeypatch, module, fn: str, rival):
    """Run ``rival`` (a request writing to admin/doomed); once it has loaded
    the repo and entered ``module.fn``, delete the repo through the API and
    let the rival go on. Returns (the delete's answer, the rival's answer)."""
    real, reached, deleted, paused = getattr(module, fn), threading.Event(), threading.Event(), []

    def paused_call(*args, **kwargs):
        if not paused:  # the rival's own call only; the delete's passes through
            paused.append(True)
            reached.set()
            deleted.wait(15)
        return real(*args, **kwargs)

    monkeypatch.setattr(module, fn, paused_call)
    auth = {"Authorization": f"Bearer {hub.admin_token}"}
    with ThreadPoolExecutor(1) as pool, httpx.Client(base_url=hub.url, headers=auth, timeout=60) as other:
        answer = pool.submit(rival, other)
        assert reached.wait(15), "the rival never reached the step"
        try:
            gone = httpx.delete(f"{hub.url}/api/adapters/admin/doomed", headers=auth, timeout=30)
        finally:
            deleted.set()
        return gone, answer.result()


@pytest.fixture
def doomed(hub, tmp_path):
    """admin/doomed, with a tag ``old`` and one eval: the repo the tests delete."""
    admin = HubClient(hub.url, hub.admin_token, cache_dir=tmp_path / "c0")
    revision = admin.push(tiny_lora_dir(tmp_path / "doomed", "doomed"), name="admin/doomed").revision
    admin.set_tag("admin/doomed", "old")
    admin.add_evals("admin/doomed", [{"metric": "m", "value": 1.0, "dataset": "d"}])
    yield revision
    admin.close()


def test_a_visibility_change_on_a_repo_deleted_meanwhile_is_a_clean_404(hub, doomed, monkeypatch):
    from peft_hub.hub import crud

    gone, answer = _deleted_while_it_writes(
        hub, monkeypatch, crud, "set_visibility",
        lambda c: c.put("/api/models/admin/doomed/settings", json={"private": True}))
    assert gone.status_code == 204, gone.text
    assert answer.status_code in (404, 409), answer.text
    assert httpx.get(f"{hub.url}/api/adapters/admin/doomed",
                     headers={"Authorization": f"Bearer {hub.admin_token}"}).status_code == 404


@pytest.mark.parametrize("route", ["native", "hf"])
def test_two_deletes_of_one_repo_at_once_never_answer_500(hub, doomed, monkeypatch, route):
    from peft_hub.hub.crud import adapters

    def rival(c: httpx.Client) -> httpx.Response:
        if route == "native":
            return c.delete("/api/adapters/admin/doomed")
        return c.request("DELETE", "/api/repos/delete", json={"name": "doomed", "type": "model"})

    # The rival has loaded the repo and is about to lock it: the other delete lands first.
    gone, answer = _deleted_while_it_writes(hub, monkeypatch, adapters, "lock_adapter", rival)
    assert gone.status_code == 204, gone.text
    assert answer.status_code in (200, 204, 404, 409), answer.text


RIVALS = {
    "tag move": ("set_tag", lambda c, rev: c.put("/api/adapters/admin/doomed/tags/prod", json={"revision": rev})),
    "hf tag": ("set_tag", lambda c, rev: c.post("/api/models/admin/doomed/tag/main", json={"tag": "v1"})),
    "evals": ("add_evals", lambda c, rev: c.post("/api/adapters/admin/doomed/evals", json={
        "revision": rev, "evals": [{"metric": "m", "value": 1.0, "dataset": "d"}]})),
    "untag": ("delete_tag", lambda c, rev: c.delete("/api/adapters/admin/doomed/tags/old")),
    "eval delete": ("delete_eval", lambda c, rev: c.delete("/api/adapters/admin/doomed/evals/1")),
}


@pytest.mark.parametrize("kind", sorted(RIVALS))
def test_tag_and_eval_writes_to_a_repo_deleted_meanwhile_are_refused_cleanly(hub, doomed, monkeypatch, kind):
    """The write loses (404 or 409), the delete stands, and nothing of the
    repo comes back (no tag or eval row pointing at a deleted revision)."""
    from peft_hub.hub import crud

    fn, call = RIVALS[kind]
    gone, answer = _deleted_while_it_writes(hub, monkeypatch, crud, fn, lambda c: call(c, doomed))
    assert gone.status_code == 204, gone.text
    assert answer.status_code in (404, 409), answer.text
    auth = {"Authorization": f"Bearer {hub.admin_token}"}
    assert httpx.get(f"{hub.url}/api/adapters/admin/doomed", headers=auth).status_code == 404
    with hub.app.state.engine.connect() as conn:
        from sqlalchemy import text

        assert conn.execute(text("SELECT count(*) FROM tag")).scalar() == 0
        assert conn.execute(text("SELECT count(*) FROM eval")).scalar() == 0


def test_a_tag_added_while_its_repo_is_deleted_waits_instead_of_deadlocking(hub, doomed):
    """0009's tag trigger takes the adapter's ``adapter_count`` row first "so a
    publish and a delete of the same key wait for each other instead of
    deadlocking". Here the delete has removed the tags (holding that row) and
    a tag PUT arrives: it must wait, then lose with a 404/409; the delete must
    finish. Neither may be a deadlock answered as "database unavailable"."""
    if hub.backend != "s3-postgres":
        pytest.skip("SQLite takes one write lock for the whole database: no deadlock is possible")
    from sqlalchemy import event, text

    engine, held, release, armed = hub.app.state.engine, threading.Event(), threading.Event(), [True]

    def pause_after_the_tags(conn, cursor, statement, parameters, context, executemany):
        # crud.delete_adapter's next statement once the tags are deleted and flushed
        if armed[0] and statement.lstrip().startswith("SELECT") and "FROM revisionfile" in statement:
            armed[0] = False
            held.set()
            release.wait(15)

    event.listen(engine, "before_cursor_execute", pause_after_the_tags)
    auth = {"Authorization": f"Bearer {hub.admin_token}"}
    try:
        with ThreadPoolExecutor(2) as pool:
            deleting = pool.submit(httpx.delete, f"{hub.url}/api/adapters/admin/doomed", headers=auth, timeout=60)
            assert held.wait(15), "the delete never reached its revisions"
            tagging = pool.submit(httpx.put, f"{hub.url}/api/adapters/admin/doomed/tags/prod",
                                  json={"revision": doomed}, headers=auth, timeout=60)
            with engine.connect() as conn:  # the tag PUT waits for a lock the delete holds
                for _ in range(100):
                    waiting = conn.execute(text("SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                                                "AND datname = current_database()")).scalar()
                    if waiting or tagging.done():
                        break
                    threading.Event().wait(0.05)
            release.set()
            gone, tag = deleting.result(), tagging.result()
    finally:
        release.set()
        event.remove(engine, "before_cursor_execute", pause_after_the_tags)
    answers = [(gone.status_code, gone.text[:200]), (tag.status_code, tag.text[:200])]
    assert gone.status_code in (204, 409) and tag.status_code in (200, 404, 409), answers
    assert 503 not in (gone.status_code, tag.status_code), answers


def test_a_tag_moved_while_it_is_resolved_never_mixes_two_revisions(hub, tmp_path):
    """One thread moves ``prod`` between two revisions as fast as it can;
    readers resolve files and the detail at ``prod`` on both APIs. Every answer
    is one revision's: its X-Repo-Commit and its file's ETag (and, served
    here, its bytes) belong together, and the repo's detail lists that revision's files."""
    admin = HubClient(hub.url, hub.admin_token, cache_dir=tmp_path / "c0")
    revisions = [admin.push(tiny_lora_dir(tmp_path / f"v{i}", f"tagged v{i}"), name="admin/moving").revision
                 for i in range(2)]
    auth = {"Authorization": f"Bearer {hub.admin_token}"}

    def card_of(detail: dict) -> str:
        return next(f["sha256"] for f in detail["files"] if f["path"] == "README.md")

    cards = {rev: card_of(httpx.get(f"{hub.url}/api/adapters/admin/moving", params={"revision": rev},
                                    headers=auth).json()) for rev in revisions}
    admin.set_tag(f"admin/moving@{revisions[0]}", "prod")
    stop, wrong, reads = threading.Event(), [], []

    def mover() -> None:
        with httpx.Client(base_url=hub.url, headers=auth, timeout=30) as c:
            for i in range(30):
                if stop.is_set():
                    break
                assert c.put("/api/adapters/admin/moving/tags/prod", json={"revision": revisions[i % 2]}).is_success

    def reader() -> None:
        with httpx.Client(base_url=hub.url, headers=auth, timeout=30) as c:
            while not stop.is_set():
                for url in ("/admin/moving/resolve/prod/README.md",
                            "/api/adapters/admin/moving/resolve/prod/README.md"):
                    r = c.get(url)
                    rev, etag = r.headers.get("x-repo-commit"), r.headers.get("etag", "").strip('"')
                    body_ok = r.status_code == 302 or hashlib.sha256(r.content).hexdigest() == etag
                    if r.status_code not in (200, 302) or cards.get(rev) != etag or not body_ok:
                        wrong.append((url, r.status_code, rev, etag))
                    reads.append(1)
                detail = c.get("/api/adapters/admin/moving", params={"revision": "prod"}).json()
                if cards.get(detail["revision"]) != card_of(detail):
                    wrong.append(("detail", detail["revision"]))

    with ThreadPoolExecutor(4) as pool:
        moving = pool.submit(mover)
        readers = [pool.submit(reader) for _ in range(3)]
        moving.result(timeout=60)
        stop.set()
        for r in readers:
            r.result(timeout=60)
    admin.close()
    assert len(reads) > 20 and not wrong, wrong[:5]
