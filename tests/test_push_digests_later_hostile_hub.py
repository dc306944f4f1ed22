"""The client's two-round preupload (``digests_later``) against a hostile hub.

A loopback hub (tests/test_client_hostile_hub.py's) answers the first
preupload with ``{"digests": "wanted"}`` where it should not, or answers the
second round with what the client did not ask. The client must refuse with
a PeftHubError, never PUT a byte or commit after a refusal, never ask more
than twice, and send each file at most once.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
import test_client_hostile_hub as hostile

from peft_hub.client import HubClient
from peft_hub.errors import PeftHubError

_servers, hub, other = hostile._servers, hostile.hub, hostile.other  # fixtures
TOKEN = hostile.TOKEN
WANTED = {"digests": "wanted"}


@pytest.fixture
def adapter(tmp_path) -> Path:
    return hostile.lora_dir(tmp_path / "support", width=64)


def client_for(hub, adapter: Path, tmp_path: Path) -> HubClient:
    client = HubClient(hub.url, TOKEN, cache_dir=tmp_path / "cache")
    small = (adapter / "adapter_config.json").stat().st_size
    big = (adapter / "adapter_model.safetensors").stat().st_size
    assert small < big
    client.part_bytes = small  # the weights are "large": the client proposes parts for them, later
    return client


def _single(f: dict[str, Any], url: str) -> dict[str, Any]:
    return {"path": f["path"], "sha256": f["sha256"], "url": f"{url}/api/blobs/{f['sha256']}", "method": "PUT",
            "headers": {}, "auth": True}


def _rounds(hub) -> list[dict]:
    return [json.loads(r.body) for r in hub.seen("/preupload")]


def _sent(hub, other) -> list:
    return [r for r in [*hub.requests, *other.requests] if r.method == "PUT" or r.path.endswith("/commit")]


def test_wanted_twice_is_refused_after_two_rounds_and_nothing_is_sent(hub, other, adapter, tmp_path):
    hub.preupload = lambda body: {"uploads": [{"path": f["path"], "sha256": f["sha256"], "multipart": WANTED}
                                              if "multipart" in f else _single(f, hub.url) for f in body["files"]]}
    with client_for(hub, adapter, tmp_path) as client, pytest.raises(PeftHubError):
        client.push(adapter, name="admin/support")
    rounds = _rounds(hub)
    assert len(rounds) == 2  # asked again once, never a third time
    assert rounds[0]["files"][1]["multipart"]["digests_later"] is True
    assert rounds[1]["files"][0]["multipart"]["parts"]  # the second round carries the digests
    assert _sent(hub, other) == []  # not even the small file that was planned whole


@pytest.mark.parametrize("who", ["small", "unknown"])
def test_wanted_for_a_blob_never_offered_in_parts_is_refused(hub, other, adapter, tmp_path, who):
    def plan(body: dict) -> dict:
        out = [_single(f, hub.url) for f in body["files"]]
        if who == "small":  # the config was proposed whole, with no multipart spec
            config = next(f for f in body["files"] if "multipart" not in f)
            out = [{"path": config["path"], "sha256": config["sha256"], "multipart": WANTED}, *out]
        else:
            out.append({"path": "x", "sha256": "ab" * 32, "multipart": WANTED})
        return {"uploads": out}

    hub.preupload = plan
    with client_for(hub, adapter, tmp_path) as client, pytest.raises(PeftHubError):
        client.push(adapter, name="admin/support")
    assert len(_rounds(hub)) == 1
    assert _sent(hub, other) == []


def test_the_second_round_cannot_ask_again_for_a_blob_it_was_not_asked(hub, other, adapter, tmp_path):
    """Round two asks only for the wanted blob; a hub that answers it with
    the small file again (already planned in round one) gets it sent twice
    today. The client should refuse an answer naming a blob outside its
    request (or at least send each file once)."""

    def plan(body: dict) -> dict:
        if len(_rounds(hub)) == 1:
            return {"uploads": [{"path": f["path"], "sha256": f["sha256"], "multipart": WANTED}
                                if "multipart" in f else _single(f, hub.url) for f in body["files"]]}
        return {"uploads": [_single(f, hub.url) for f in all_files]}  # the weights whole, and the config again

    all_files = [{"path": p.name, "sha256": hashlib.sha256(p.read_bytes()).hexdigest()}
                 for p in sorted(adapter.iterdir())]
    hub.preupload = plan
    with client_for(hub, adapter, tmp_path) as client:
        try:
            client.push(adapter, name="admin/support")
        except PeftHubError:
            return  # refused: fine
    puts = [r.path for r in hub.requests if r.method == "PUT"]
    assert len(puts) == len(set(puts)), f"a file was sent twice: {puts}"


def test_a_first_answer_wanting_nothing_asks_once(hub, other, adapter, tmp_path):
    """A hub that takes the large file whole (under its threshold) costs one
    round and no part hashing: the second preupload never happens."""
    hub.preupload = lambda body: {"uploads": [_single(f, hub.url) for f in body["files"]]}
    with client_for(hub, adapter, tmp_path) as client:
        client.push(adapter, name="admin/support")
    rounds = _rounds(hub)
    assert len(rounds) == 1
    weights = next(f for f in rounds[0]["files"] if "multipart" in f)
    assert weights["multipart"]["parts"] is None and weights["multipart"]["digests_later"] is True
    assert len([r for r in hub.requests if r.method == "PUT"]) == 2
