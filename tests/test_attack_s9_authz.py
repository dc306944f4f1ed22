"""Every route that names a repo, taken from the hub's own OpenAPI schema (so
a route added later is attacked too), answers a stranger about a private repo
exactly as it answers about one that does not exist: the same status, the
same error code, the same body once the name is blanked out, and nothing of
the repo (revision id, file digests, card text) in the body or the headers.
The web pages that name a repo are held to the same rule."""

from __future__ import annotations

import re

import httpx
import pytest
from hub_state import snapshot
from raw_adapters import tiny_lora_dir

from peft_hub.client import HubClient

pytestmark = pytest.mark.integration

CARD_TEXT = "MARKER-0c1d-private-card"


@pytest.fixture
def private_world(embedded_hub, tmp_path):
    """alice's private alice/secret (a tag, an eval, warm in the caches);
    mallory's write and read tokens."""
    hub = embedded_hub
    admin = HubClient(hub.url, hub.admin_token, cache_dir=tmp_path / "c0")
    alice_token = admin.create_token(scope="write", namespace="alice")["token"]
    tokens = {"mallory": admin.create_token(scope="write", namespace="mallory")["token"],
              "mallory-read": admin.create_token(scope="read", namespace="mallory")["token"]}
    alice = HubClient(hub.url, alice_token, cache_dir=tmp_path / "c1")
    pushed = alice.push(tiny_lora_dir(tmp_path / "secret", CARD_TEXT), name="alice/secret", private=True)
    alice.set_tag("alice/secret", "prod")
    alice.add_evals("alice/secret", [{"metric": "m", "value": 1.0, "dataset": "d"}])
    info = alice.info("alice/secret")
    owner = httpx.Client(base_url=hub.url, headers={"Authorization": f"Bearer {alice_token}"}, timeout=30)
    for path in ("/api/adapters/alice/secret", "/api/models/alice/secret", "/api/models/alice/secret/refs",
                 "/api/models/alice/secret/tree/main", "/alice/secret/resolve/main/README.md"):
        assert owner.get(path).status_code == 200, path  # the hot paths' caches now hold the repo
    owner.close()
    callers = {name: httpx.Client(base_url=hub.url, headers={"Authorization": f"Bearer {t}"}, timeout=30)
               for name, t in tokens.items()}
    callers["anonymous"] = httpx.Client(base_url=hub.url, timeout=30)
    yield {"hub": hub, "revision": pushed.revision, "files": info["files"], "callers": callers}
    for client in callers.values():
        client.close()
    alice.close()
    admin.close()


def _request(caller: httpx.Client, method: str, template: str, name: str, world) -> httpx.Response:
    """``method template`` for alice/``name``, with a body the route accepts in shape."""
    files, revision = world["files"], world["revision"]
    values = {"owner": "alice", "name": name, "repo": f"{name}.git", "revision": "main", "rev": "main",
              "path": "README.md", "filename": "README.md", "tag": "prod", "eval_id": "1"}
    path = re.sub(r"\{(\w+)(?::\w+)?\}", lambda m: values[m.group(1)], template)
    card = next(f for f in files if f["path"] == "README.md")
    bodies = {
        "/api/adapters/{owner}/{name}/preupload": {"files": [card]},
        "/api/adapters/{owner}/{name}/commit": {"files": files},
        "/api/adapters/{owner}/{name}/evals": {"revision": revision, "evals": [
            {"metric": "m", "value": 2.0, "dataset": "d"}]},
        "/api/adapters/{owner}/{name}/tags/{tag}": {"revision": revision},
        "/api/adapters/{owner}/{name}/uploads/complete": {"sha256": card["sha256"], "size": card["size"],
                                                         "multipart": {"part_size": 5 * 1024 * 1024}},
        "/api/models/{owner}/{name}/tag/{rev}": {"tag": "v2"},
        "/api/models/{owner}/{name}/settings": {"private": False},
        "/api/models/{owner}/{name}/preupload/{rev}": {"files": [{"path": "README.md", "size": card["size"],
                                                                  "sample": ""}]},
        "/{owner}/{repo}/info/lfs/objects/batch": {"operation": "upload",
                                                   "objects": [{"oid": card["sha256"], "size": card["size"]}]},
    }
    if method not in ("POST", "PUT"):
        return caller.request(method, path)
    if "paths-info" in template:
        return caller.request(method, path, data={"paths": ["README.md"], "expand": "true"})
    if template.endswith("/commit/{rev}"):
        return caller.request(method, path, content=b'{"key":"header","value":{"summary":"x"}}\n',
                              headers={"Content-Type": "application/x-ndjson"})
    return caller.request(method, path, json=bodies.get(template, {}))


def _seen(r: httpx.Response, name: str) -> tuple[int, str | None, str]:
    return r.status_code, r.headers.get("x-error-code"), r.text.replace(f"alice/{name}", "alice/NAME")


def test_every_repo_route_answers_a_private_repo_as_it_answers_a_missing_one(private_world):
    world, hub = private_world, private_world["hub"]
    secrets = [world["revision"], *(f["sha256"] for f in world["files"]), CARD_TEXT]
    routes = [(method.upper(), path) for path, ops in hub.app.openapi()["paths"].items() if "{owner}" in path
              for method in ops]
    assert len(routes) >= 30, routes  # the schema still lists the repo routes
    pages = ["/alice/{name}", "/alice/{name}@main", "/alice/{name}?revision=prod",
             "/compose?a=alice/{name}&a=alice/{name}"]
    before = snapshot(hub)
    oracles = []
    for who, caller in world["callers"].items():
        for method, template in routes:
            private, missing = (_request(caller, method, template, name, world) for name in ("secret", "nothere"))
            leaked = [s for s in secrets if s in private.text or s in str(private.headers)]
            if _seen(private, "secret") != _seen(missing, "nothere") or leaked:
                oracles.append((who, method, template, _seen(private, "secret")[:2], _seen(missing, "nothere")[:2],
                                leaked))
            assert private.status_code != 500, (who, method, template, private.text)
        for page in pages:
            private, missing = (caller.get(page.format(name=name)) for name in ("secret", "nothere"))
            if _seen(private, "secret") != _seen(missing, "nothere") or any(s in private.text for s in secrets):
                oracles.append((who, "GET", page, private.status_code, missing.status_code, []))
    assert not oracles, oracles
    assert snapshot(hub) == before
