"""Hub-side attacks found in session 9's notes and fixed in session 10."""

from __future__ import annotations

import httpx
import pytest
from raw_adapters import tiny_lora_dir

from peft_hub.client import HubClient

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("path", ["/api/adapters/admin/two", "/api/models/admin/two", "/api/whoami-v2",
                                  "/api/models/admin/two/tree/main"])
def test_two_authorization_headers_are_refused_whichever_comes_first(embedded_hub, tmp_path, path):
    """A proxy in front of the hub may check one Authorization header and the
    hub read the other: with two, neither is taken."""
    with HubClient(embedded_hub.url, embedded_hub.admin_token, cache_dir=tmp_path / "c") as client:
        client.push(tiny_lora_dir(tmp_path / "src", "two"), name="admin/two", private=True)
    good, bad = f"Bearer {embedded_hub.admin_token}", "Bearer phub_" + "0" * 48
    with httpx.Client(base_url=embedded_hub.url) as http:
        assert http.get(path, headers={"Authorization": good}).status_code == 200
        for pair in ((good, bad), (bad, good), (good, good)):
            r = http.get(path, headers=[("Authorization", pair[0]), ("Authorization", pair[1])])
            assert r.status_code == 401, (pair == (good, good), r.status_code, r.text[:200])
            assert "one Authorization header" in r.text


def test_catalog_pages_of_names_with_capitals_are_found_in_any_case(embedded_hub, tmp_path):
    """Names may hold capitals (``names.NAME_RE``) and the hub finds a repo
    whatever the case: the catalog linked ``/admin/LegalBot`` and then
    answered that link with a JSON 404, as it did ``/Admin``."""
    import re

    with HubClient(embedded_hub.url, embedded_hub.admin_token, cache_dir=tmp_path / "c") as client:
        client.push(tiny_lora_dir(tmp_path / "src", "capitals"), name="admin/LegalBot")
    with httpx.Client(base_url=embedded_hub.url) as http:
        links = re.findall(r'href="(/admin/[^"?#]*)"', http.get("/", params={"q": "legalbot"}).text)
        assert "/admin/LegalBot" in links, links
        for path in ("/admin/LegalBot", "/admin/legalbot", "/ADMIN/LEGALBOT", "/admin/LegalBot@main", "/Admin"):
            r = http.get(path)
            assert r.status_code == 200 and r.headers["content-type"].startswith("text/html"), (path, r.status_code)
        assert "LegalBot" in http.get("/ADMIN/legalbot").text
        for reserved in ("/API/adapters", "/Static/x", "/LOGIN"):  # never taken for an owner
            assert "There is no user or organisation" not in http.get(reserved).text, reserved


def test_two_creations_of_one_hf_tag_at_once_give_one_tag_and_one_409(hub, tmp_path, monkeypatch):
    """``create_tag`` makes a tag that does not exist (HF answers 409 for one
    that does). The check ran before the repo's lock: a creation paused after
    it, while another created the tag, then moved that tag and answered 200."""
    import threading
    from concurrent.futures import ThreadPoolExecutor

    from peft_hub.hub import crud

    with HubClient(hub.url, hub.admin_token, cache_dir=tmp_path / "c") as client:
        first = client.push(tiny_lora_dir(tmp_path / "v1", "tags v1"), name="admin/tags").revision
        second = client.push(tiny_lora_dir(tmp_path / "v2", "tags v2"), name="admin/tags").revision
    real, reached, go = crud.set_tag, threading.Event(), threading.Event()

    def paused(*args, **kwargs):
        if not reached.is_set():  # the first creation only
            reached.set()
            go.wait(15)
        return real(*args, **kwargs)

    monkeypatch.setattr(crud, "set_tag", paused)
    auth = {"Authorization": f"Bearer {hub.admin_token}"}

    def create(revision: str) -> httpx.Response:
        return httpx.post(f"{hub.url}/api/models/admin/tags/tag/{revision}", json={"tag": "v1"}, headers=auth,
                          timeout=60)

    with ThreadPoolExecutor(1) as pool:
        paused_one = pool.submit(create, first)
        assert reached.wait(15)
        try:
            other = create(second)
        finally:
            go.set()
        answers = sorted([paused_one.result().status_code, other.status_code])
    assert answers == [200, 409], answers
    tags = httpx.get(f"{hub.url}/api/adapters/admin/tags", headers=auth).json()["tags"]
    assert tags["v1"] == second  # the creation that landed first keeps its tag


@pytest.mark.parametrize("was_private, asked, expect_private", [
    (True, None, True),    # the race: the delete made the commit re-create the repo, public by default
    (False, None, False),  # a public repo comes back public
    (True, False, False),  # an explicit choice wins
])
def test_a_push_racing_a_delete_never_makes_public_what_it_saw_private(embedded_hub, tmp_path, monkeypatch,
                                                                      was_private, asked, expect_private):
    """The repo is deleted after the push's preupload and before its commit: the commit re-creates it.
    The hub's preupload says whether the repo is private, and the client's commit keeps it so."""
    with HubClient(embedded_hub.url, embedded_hub.admin_token, cache_dir=tmp_path / "c") as client:
        client.push(tiny_lora_dir(tmp_path / "v1", "race v1"), name="admin/race", private=was_private)
        real = HubClient._upload_missing
        deleted: list[bool] = []

        def upload_then_delete(self, *args, **kwargs):
            answer = real(self, *args, **kwargs)
            if not deleted:
                client.delete("admin/race")
                deleted.append(True)
            return answer

        monkeypatch.setattr(HubClient, "_upload_missing", upload_then_delete)
        pushed = client.push(tiny_lora_dir(tmp_path / "v2", "race v2"), name="admin/race", private=asked)
        monkeypatch.undo()
        assert deleted and pushed.created
        assert client.info("admin/race")["private"] is expect_private
    with httpx.Client(base_url=embedded_hub.url) as anonymous:
        assert anonymous.get("/api/adapters/admin/race").status_code == (404 if expect_private else 200)


def test_preupload_says_whether_the_repo_is_private(embedded_hub, tmp_path):
    token = {"Authorization": f"Bearer {embedded_hub.admin_token}"}
    body = {"files": [{"path": "adapter_config.json", "sha256": "a" * 64, "size": 2}]}
    with HubClient(embedded_hub.url, embedded_hub.admin_token, cache_dir=tmp_path / "c") as client, \
            httpx.Client(base_url=embedded_hub.url, headers=token) as http:
        assert http.post("/api/adapters/admin/seen/preupload", json=body).json()["private"] is None
        client.push(tiny_lora_dir(tmp_path / "src", "seen"), name="admin/seen", private=True)
        assert http.post("/api/adapters/admin/seen/preupload", json=body).json()["private"] is True
        client.push(tiny_lora_dir(tmp_path / "src2", "seen 2"), name="admin/seen", private=False)
        assert http.post("/api/adapters/admin/Seen/preupload", json=body).json()["private"] is False
