"""The deployments registry: serving processes report which adapter refs they
serve at which revision; each user sees only their own servers, and only the
entries of adapters they can read. Also: two hub processes on one database
send each webhook delivery exactly once. SQLite and PostgreSQL."""

from __future__ import annotations

import json
import time

import httpx
import pytest
from click.testing import CliRunner
from raw_adapters import tiny_lora_dir
from services import live_hub
from test_webhooks import (
    SECRET,
    hook_settings,
    receiver,
    user_token,
    wait_for,
)

from peft_hub.cli import cli
from peft_hub.client import HubClient
from peft_hub.client import events as client_events
from peft_hub.errors import ConflictError, InvalidInputError, NotFoundError

pytestmark = pytest.mark.integration

REV = "a" * 40


@pytest.fixture(params=["embedded", "s3-postgres"])
def hub(request, tmp_path):
    with live_hub(hook_settings(request.param, tmp_path, request)) as server:
        yield server


def _entry(repo: str, ref_name: str = "prod", revision: str = REV) -> dict:
    return {"ref": f"{repo}@{ref_name}", "repo": repo, "ref_name": ref_name, "revision": revision}


def test_register_list_and_remove(hub, tmp_path):
    admin = HubClient(hub.url, hub.admin_token)
    assert httpx.put(f"{hub.url}/api/orgs/acme/members/alice",
                     headers={"Authorization": f"Bearer {hub.admin_token}"}).status_code == 201
    alice = HubClient(hub.url, user_token(hub, admin, "alice"))
    bob = HubClient(hub.url, user_token(hub, admin, "bob", scope="read"))
    pushed = admin.push(tiny_lora_dir(tmp_path / "s", "secret"), name="acme/secret", private=True)
    admin.push(tiny_lora_dir(tmp_path / "o", "open"), name="acme/open")
    served = [_entry("acme/secret", revision=pushed.revision), _entry("acme/open"), _entry("acme/gone")]
    out = client_events.put_deployment(alice, "vllm-1", url="http://10.0.0.5:8000", base_model="tiny",
                                       adapters=served)
    assert out["server_id"] == "vllm-1" and len(out["adapters"]) == 3
    client_events.put_deployment(bob, "bob.box_2", url="https://bob.example/v1", base_model="tiny",
                                 adapters=[_entry("acme/secret"), _entry("acme/open")])

    [mine] = client_events.list_deployments(alice)
    assert (mine["server_id"], mine["registered_by"], mine["base_model"]) == ("vllm-1", "alice", "tiny")
    assert [a["repo"] for a in mine["adapters"]] == ["acme/secret", "acme/open"]  # a deleted repo is not shown
    [bobs] = client_events.list_deployments(bob)
    assert bobs["server_id"] == "bob.box_2" and [a["repo"] for a in bobs["adapters"]] == ["acme/open"]
    assert {d["server_id"] for d in client_events.list_deployments(admin)} == {"vllm-1", "bob.box_2"}

    with pytest.raises(ConflictError):  # first come, first served: bob cannot take alice's id
        client_events.put_deployment(bob, "vllm-1", url="http://x:1", base_model="evil", adapters=[])
    with pytest.raises(NotFoundError):
        client_events.remove_deployment(bob, "vllm-1")
    assert client_events.list_deployments(alice)[0]["base_model"] == "tiny"

    seen = mine["last_seen"]
    again = client_events.put_deployment(alice, "vllm-1", url="http://10.0.0.5:8000", base_model="tiny",
                                         adapters=served[1:2])
    assert again["last_seen"] >= seen and len(client_events.list_deployments(alice)[0]["adapters"]) == 1
    client_events.remove_deployment(admin, "vllm-1")  # an admin may remove anyone's
    assert client_events.list_deployments(alice) == []
    assert httpx.get(f"{hub.url}/api/deployments").status_code == 401


def test_bad_deployments_refused(hub):
    admin = HubClient(hub.url, hub.admin_token)
    headers = {"Authorization": f"Bearer {hub.admin_token}"}
    good = {"url": "http://127.0.0.1:8000", "base_model": "tiny", "adapters": [_entry("acme/a")]}
    bad_ids = ["a" * 65, "bad id", "..", "semi;colon", "%00"]
    for server_id in bad_ids:
        response = httpx.put(f"{hub.url}/api/deployments/{server_id}", json=good, headers=headers)
        assert response.status_code in (404, 422), (server_id, response.text)
    bodies = [
        {**good, "adapters": [_entry("acme/a")] * 1001},
        {**good, "adapters": [_entry("acme/a", revision="abc")]},
        {**good, "adapters": [_entry("../../etc")]},
        {**good, "adapters": [{**_entry("acme/a"), "extra": 1}]},
        {**good, "url": "file:///etc/passwd"},
        {**good, "url": "http://user:pw@host/"},
        {**good, "base_model": ""},
        {"url": "http://h/", "adapters": []},
    ]
    for body in bodies:
        response = httpx.put(f"{hub.url}/api/deployments/ok", json=body, headers=headers)
        assert response.status_code == 422, response.text
    assert client_events.list_deployments(admin) == []
    with pytest.raises(InvalidInputError):
        client_events.put_deployment(admin, "x" * 65, url="http://h/", base_model="b", adapters=[])
    full = client_events.put_deployment(admin, "big", url="http://h/", base_model="b",
                                        adapters=[_entry(f"acme/a{i}") for i in range(1000)])
    assert len(full["adapters"]) == 1000


def test_cli_deployments(hub, client_env, tmp_path):
    admin = HubClient(hub.url, hub.admin_token)
    pushed = admin.push(tiny_lora_dir(tmp_path / "a", "one"), name="acme/support")
    client_events.put_deployment(admin, "vllm-1", url="http://h:8000", base_model="tiny",
                                 adapters=[_entry("acme/support", revision=pushed.revision)])
    runner = CliRunner()
    base = ["--url", hub.url, "--token", hub.admin_token]
    table = runner.invoke(cli, [*base, "deployments"])
    assert table.exit_code == 0, table.output
    assert "vllm-1" in table.output and "acme/support@prod" in table.output and pushed.revision[:12] in table.output
    as_json = runner.invoke(cli, [*base, "deployments", "--json"])
    assert json.loads(as_json.output)[0]["adapters"][0]["revision"] == pushed.revision


def test_two_replicas_send_each_delivery_once(tmp_path, request):
    """Two hub processes' workers on one database share the outbox: every
    delivery arrives exactly once (PostgreSQL: SKIP LOCKED; SQLite: conditional UPDATE)."""
    for backend in ("embedded", "s3-postgres"):
        (tmp_path / backend).mkdir()
        settings = hook_settings(backend, tmp_path / backend, request)
        with live_hub(settings) as one, live_hub(settings) as two, receiver() as r:
            admin = HubClient(one.url, one.admin_token)
            client_events.add_webhook(admin, r.url, secret=SECRET, namespace="acme", events=["tag"])
            pushed = admin.push(tiny_lora_dir(tmp_path / backend / "a", "one"), name="acme/support")
            other = HubClient(two.url, two.admin_token)
            for number in range(12):
                (admin if number % 2 else other).set_tag(f"acme/support@{pushed.revision}", f"t{number}")
            wait_for(lambda: len(r.accepted()) == 13, what=f"13 deliveries on {backend}")
            time.sleep(1)  # time enough for a second send of any delivery to arrive
            assert len(r.got) == 13 and set(r.seen.values()) == {1}
