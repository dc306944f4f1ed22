"""Webhooks against a real receiver: a small HTTP server on loopback that
checks every delivery's signature with ``peft_hub.signing``.

Covered: the signed body and headers of push, tag and delete events;
retries after a 500; a pending delivery that survives a killed hub process;
a push that a hanging receiver does not slow; deliveries only for adapters
the hook's creator can read; other users' hooks neither visible nor
removable; the SSRF refusals; a secret that no answer or audit event shows.
On SQLite + local files and on PostgreSQL + SeaweedFS.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest
from conftest import make_settings
from raw_adapters import tiny_lora_dir
from services import free_port, live_hub, wait_until
from sqlmodel import Session, select

from peft_hub.client import HubClient
from peft_hub.client import events as client_events
from peft_hub.errors import InvalidInputError, NotFoundError, PermissionDeniedError
from peft_hub.hub.models import Membership, Namespace
from peft_hub.hub.webhook_urls import is_public
from peft_hub.signing import verify

pytestmark = pytest.mark.integration

SECRET = "s3cret-" + secrets.token_hex(12)
SHA_HEX = set("0123456789abcdef")


# --- a real receiver -------------------------------------------------------------


class Receiver:
    """Records deliveries whose signature verifies; ``answer(delivery_id, seen)``
    picks the status (``seen``: how often that delivery came before)."""

    def __init__(self, port: int | None = None, answer: Callable[[str, int], int] | None = None,
                 hang: threading.Event | None = None) -> None:
        self.port = port or free_port()
        self.answer = answer or (lambda _id, _seen: 200)
        self.hang = hang
        self.got: list[dict] = []
        self.bad_signatures = 0
        self.seen: dict[str, int] = {}
        self.lock = threading.Lock()
        self.server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    def start(self) -> Receiver:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                if receiver.hang is not None:
                    receiver.hang.wait(60)
                with receiver.lock:
                    if not verify(SECRET, raw, self.headers.get("X-PeftHub-Signature-256")):
                        receiver.bad_signatures += 1
                        status = 401
                    else:
                        delivery = self.headers["X-PeftHub-Delivery"]
                        seen = receiver.seen.get(delivery, 0)
                        receiver.seen[delivery] = seen + 1
                        status = receiver.answer(delivery, seen)
                        receiver.got.append({"raw": raw, "body": json.loads(raw), "status": status,
                                             "event": self.headers["X-PeftHub-Event"], "delivery": delivery,
                                             "type": self.headers["Content-Type"]})
                self.send_response(status)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()

    def accepted(self) -> list[dict]:
        """Bodies the receiver answered 2xx, in arrival order."""
        with self.lock:
            return [g for g in self.got if 200 <= g["status"] < 300]


@contextmanager
def receiver(**kwargs) -> Receiver:
    r = Receiver(**kwargs).start()
    try:
        yield r
    finally:
        r.stop()


# --- helpers -----------------------------------------------------------------------


def hook_settings(backend: str, tmp_path: Path, request, **overrides):
    settings = make_settings(backend, tmp_path, request)
    return settings.model_copy(update={"webhook_allow_private": True, "webhook_retry_base_seconds": 0.05,
                                       "webhook_poll_seconds": 0.2, **overrides})


def user_token(hub, admin: HubClient, name: str, scope: str = "write") -> str:
    out = httpx.post(f"{hub.url}/api/tokens", json={"namespace": name, "scope": scope},
                     headers={"Authorization": f"Bearer {admin.token}"}).json()
    return out["token"]


def wait_for(check: Callable[[], object], timeout: float = 20, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.05)
    raise AssertionError(f"{what} not reached within {timeout} s")


@pytest.fixture(params=["embedded", "s3-postgres"])
def hook_hub(request, tmp_path):
    with live_hub(hook_settings(request.param, tmp_path, request)) as server:
        yield server


# --- deliveries ---------------------------------------------------------------------


def test_signed_events_retried_after_500(hook_hub, tmp_path):
    """Every event arrives signed, as compact sorted JSON with the contract's
    fields, after its first attempt got a 500; the records say so."""
    admin = HubClient(hook_hub.url, hook_hub.admin_token)
    with receiver(answer=lambda _id, seen: 500 if seen == 0 else 200) as r:
        hook = client_events.add_webhook(admin, r.url, secret=SECRET, namespace="acme")
        assert "secret" not in hook and hook["namespace"] == "acme" and hook["events"] == ["tag", "push", "delete"]
        first = admin.push(tiny_lora_dir(tmp_path / "a", "one"), name="acme/support")
        wait_for(lambda: len(r.accepted()) == 2, what="push and main deliveries")
        second = admin.push(tiny_lora_dir(tmp_path / "b", "two"), name="acme/support")
        admin.set_tag(f"acme/support@{first.revision}", "prod")
        wait_for(lambda: len(r.accepted()) == 5, what="the second push and the tag move")
        admin.delete("acme/support")
        wait_for(lambda: len(r.accepted()) == 6, what="the delete")
        assert r.bad_signatures == 0
        got = r.accepted()
        for g in got:
            assert g["raw"] == json.dumps(g["body"], separators=(",", ":"), sort_keys=True).encode()
            assert set(g["body"]) == {"id", "event", "repo", "tag", "revision", "previous", "timestamp"}
            assert g["event"] == g["body"]["event"] and g["type"] == "application/json"
            assert g["body"]["timestamp"].endswith("Z") and g["body"]["repo"] == "acme/support"
        events = [(g["body"]["event"], g["body"]["tag"], g["body"]["revision"], g["body"]["previous"]) for g in got]
        assert sorted(events[:2], key=str) == sorted([("tag", "main", first.revision, None),
                                                      ("push", None, first.revision, None)], key=str)
        assert sorted(events[2:5], key=str) == sorted([
            ("tag", "main", second.revision, first.revision), ("push", None, second.revision, first.revision),
            ("tag", "prod", first.revision, None)], key=str)
        assert events[5] == ("delete", None, None, second.revision)
        assert all(count == 2 for count in r.seen.values())  # one 500, then one 200 each
        records = client_events.list_deliveries(admin, hook["id"])
        assert len(records) == 6
        assert {(d["status"], d["attempts"], d["response_code"], d["last_error"]) for d in records} == {
            ("delivered", 2, 200, "")}


def test_failed_after_max_attempts_and_events_filter(tmp_path, request):
    """A receiver that always fails gets ``webhook_max_attempts`` tries, then the
    delivery is marked failed with the last status; a hook for ``tag`` only
    gets no push event."""
    settings = hook_settings("embedded", tmp_path, request, webhook_max_attempts=3)
    with live_hub(settings) as hub, receiver(answer=lambda _id, _seen: 503) as r:
        admin = HubClient(hub.url, hub.admin_token)
        hook = client_events.add_webhook(admin, r.url, secret=SECRET, adapter="acme/one", events=["tag"])
        admin.push(tiny_lora_dir(tmp_path / "a", "one"), name="acme/one")
        admin.push(tiny_lora_dir(tmp_path / "b", "other"), name="acme/other")  # another adapter: no event
        wait_for(lambda: client_events.list_deliveries(admin, hook["id"])[0]["status"] == "failed", what="failure")
        [record] = client_events.list_deliveries(admin, hook["id"])
        assert (record["event"], record["tag"], record["attempts"], record["response_code"]) == ("tag", "main", 3, 503)
        assert record["last_error"].startswith("HTTP 503") and record["next_attempt_at"] is None
        assert len(r.got) == 3 and {g["event"] for g in r.got} == {"tag"}


def _serve(env: dict[str, str], port: int, log: Path) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "peft_hub", "serve", "--port", str(port), "--workers", "1", "--log-level", "warning"]
    return subprocess.Popen(cmd, env=env, stdout=log.open("ab"), stderr=subprocess.STDOUT)


def test_pending_delivery_survives_killed_hub(tmp_path):
    """Receiver down, the hub killed (SIGKILL) with the delivery pending;
    a new hub process on the same database sends it once the receiver is up."""
    token = "phub_" + secrets.token_hex(6) + secrets.token_urlsafe(32)
    env = {**os.environ, "PEFT_HUB_DB_URL": f"sqlite:///{tmp_path / 'hub.db'}",
           "PEFT_HUB_STORAGE": str(tmp_path / "blobs"),
           "PEFT_HUB_ADMIN_TOKEN": token, "PEFT_HUB_TOKEN_FILE": str(tmp_path / "token"),
           "PEFT_HUB_WEBHOOK_ALLOW_PRIVATE": "1", "PEFT_HUB_WEBHOOK_RETRY_BASE_SECONDS": "0.2",
           "PEFT_HUB_WEBHOOK_MAX_ATTEMPTS": "30", "PEFT_HUB_WEBHOOK_POLL_SECONDS": "0.2"}
    port, log = free_port(), tmp_path / "hub.log"
    url = f"http://127.0.0.1:{port}"
    down = Receiver()  # its port stays closed until the hub has been killed
    proc = _serve(env, port, log)
    try:
        wait_until(lambda: httpx.get(f"{url}/api/health").status_code == 200, 60, "hub")
        admin = HubClient(url, token)
        hook = client_events.add_webhook(admin, down.url, secret=SECRET, adapter="acme/support", events=["push"])
        pushed = admin.push(tiny_lora_dir(tmp_path / "a", "one"), name="acme/support")
        # An attempt is claimed (``attempts`` counted) before it is sent, and its error written after it failed.
        wait_for(lambda: client_events.list_deliveries(admin, hook["id"])[0]["last_error"], what="a failed attempt")
        [record] = client_events.list_deliveries(admin, hook["id"])
        assert record["status"] == "pending" and record["last_error"] and record["attempts"] >= 1
        admin.close()
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    with receiver(port=down.port) as r:
        proc = _serve(env, port, log)
        try:
            wait_for(lambda: len(r.accepted()) == 1, timeout=60, what="delivery after the restart")
            assert r.accepted()[0]["body"]["revision"] == pushed.revision
            with HubClient(url, token) as admin:
                wait_for(lambda: client_events.list_deliveries(admin, hook["id"])[0]["status"] == "delivered")
        finally:
            proc.terminate()
            proc.wait(20)
    assert "Traceback" not in log.read_text(errors="replace")


def test_hanging_receiver_does_not_slow_writes(tmp_path, request):
    """A receiver that never answers: pushes and tag moves take as long as
    without a hook, and the delivery records the timeout."""
    settings = hook_settings("embedded", tmp_path, request, webhook_timeout=0.5)
    hang = threading.Event()
    with live_hub(settings) as hub, receiver(hang=hang) as r:
        admin = HubClient(hub.url, hub.admin_token)
        admin.push(tiny_lora_dir(tmp_path / "warm", "warm"), name="acme/warm")  # imports and caches warmed
        hook = client_events.add_webhook(admin, r.url, secret=SECRET, namespace="acme")
        started = time.monotonic()
        first = admin.push(tiny_lora_dir(tmp_path / "a", "one"), name="acme/support")
        for _ in range(5):
            admin.set_tag(f"acme/support@{first.revision}", "prod")
            admin.delete_tag("acme/support", "prod")
        elapsed = time.monotonic() - started
        assert elapsed < 3.0, f"writes took {elapsed:.1f} s with a hanging receiver"
        wait_for(lambda: any("did not answer" in d["last_error"] or "Timeout" in d["last_error"]
                             for d in client_events.list_deliveries(admin, hook["id"])), what="a recorded timeout")
        hang.set()


# --- who may see and receive what ------------------------------------------------------


def test_private_adapters_only_for_creators_who_can_read(tmp_path, request):
    """Alice's hook on org acme fires for acme's private adapter while she is a
    member; once she is not, its deliveries are skipped (public ones still go)."""
    with live_hub(hook_settings("embedded", tmp_path, request)) as hub, receiver() as r:
        admin = HubClient(hub.url, hub.admin_token)
        assert httpx.put(f"{hub.url}/api/orgs/acme/members/alice",
                         headers={"Authorization": f"Bearer {hub.admin_token}"}).status_code == 201
        alice = HubClient(hub.url, user_token(hub, admin, "alice"))
        bob = HubClient(hub.url, user_token(hub, admin, "bob"))
        with pytest.raises(PermissionDeniedError):
            client_events.add_webhook(bob, r.url, secret=SECRET, namespace="acme")
        hook = client_events.add_webhook(alice, r.url, secret=SECRET, namespace="acme", events=["push"])
        admin.push(tiny_lora_dir(tmp_path / "s1", "secret"), name="acme/secret", private=True)
        wait_for(lambda: len(r.accepted()) == 1, what="the member's private delivery")
        with Session(hub.app.state.engine) as s:
            alice_id = s.exec(select(Namespace.id).where(Namespace.name == "alice")).one()
            s.delete(s.exec(select(Membership).where(Membership.user_id == alice_id)).one())
            s.commit()
        admin.push(tiny_lora_dir(tmp_path / "s2", "secret two"), name="acme/secret", private=True)
        admin.push(tiny_lora_dir(tmp_path / "o", "open"), name="acme/open")
        wait_for(lambda: len(r.accepted()) == 2, what="the public delivery")
        time.sleep(0.5)  # time enough for a wrong private delivery to arrive
        assert [g["body"]["repo"] for g in r.accepted()] == ["acme/secret", "acme/open"]
        records = {(d["repo"], d["status"]) for d in client_events.list_deliveries(alice, hook["id"])}
        assert records == {("acme/secret", "delivered"), ("acme/secret", "skipped"), ("acme/open", "delivered")}


def test_hooks_are_private_to_their_creator_and_secrets_never_shown(hook_hub):
    admin = HubClient(hook_hub.url, hook_hub.admin_token)
    alice = HubClient(hook_hub.url, user_token(hook_hub, admin, "alice"))
    bob = HubClient(hook_hub.url, user_token(hook_hub, admin, "bob"))
    hook = client_events.add_webhook(alice, "http://127.0.0.1:9/x?key=q", secret=SECRET, adapter="alice/a")
    assert hook["adapter"] == "alice/a" and hook["namespace"] is None and hook["created_by"] == "alice"
    assert [h["id"] for h in client_events.list_webhooks(alice)] == [hook["id"]]
    assert client_events.list_webhooks(bob) == []
    assert [h["id"] for h in client_events.list_webhooks(admin)] == [hook["id"]]
    for call in (lambda: client_events.remove_webhook(bob, hook["id"]),
                 lambda: client_events.list_deliveries(bob, hook["id"])):
        with pytest.raises(NotFoundError):
            call()
    with pytest.raises(PermissionDeniedError):  # bob cannot write to alice's namespace
        client_events.add_webhook(bob, "http://127.0.0.1:9/", secret=SECRET, namespace="alice")
    audit = httpx.get(f"{hook_hub.url}/api/admin/audit", params={"action": "webhook.add"},
                      headers={"Authorization": f"Bearer {admin.token}"}).json()
    assert [e["detail"]["url"] for e in audit] == ["http://127.0.0.1:9/x"]  # the query may hold a key
    client_events.remove_webhook(alice, hook["id"])
    assert client_events.list_webhooks(alice) == []
    audit_page = httpx.get(f"{hook_hub.url}/api/admin/audit", headers={"Authorization": f"Bearer {admin.token}"}).text
    shown = json.dumps([hook, audit, client_events.list_webhooks(admin), audit_page])
    assert SECRET not in shown
    with pytest.raises(NotFoundError):
        client_events.remove_webhook(alice, hook["id"])


def test_bad_hook_requests_refused_without_echoing_the_secret(hook_hub):
    admin = HubClient(hook_hub.url, hook_hub.admin_token)
    headers = {"Authorization": f"Bearer {admin.token}"}
    short = "short-secret-15"
    cases = [
        {"url": "http://127.0.0.1:9/", "secret": short, "namespace": "acme"},
        {"url": "http://127.0.0.1:9/", "secret": SECRET, "namespace": "acme", "adapter": "acme/x"},
        {"url": "http://127.0.0.1:9/", "secret": SECRET},
        {"url": "http://127.0.0.1:9/", "secret": SECRET, "namespace": "acme", "events": ["pull"]},
        {"url": "http://127.0.0.1:9/", "secret": SECRET, "namespace": "acme", "events": []},
        {"url": "http://127.0.0.1:9/", "secret": SECRET, "adapter": "../etc"},
        {"url": "http://127.0.0.1:9/", "secret": "x" * 257, "namespace": "acme"},
    ]
    for body in cases:
        response = httpx.post(f"{hook_hub.url}/api/webhooks", json=body, headers=headers)
        assert response.status_code == 422, (body, response.text)
        assert body["secret"] not in response.text
    valid = {"url": "http://127.0.0.1:9/", "secret": SECRET, "namespace": "acme"}
    assert httpx.post(f"{hook_hub.url}/api/webhooks", json=valid).status_code == 401
    assert client_events.list_webhooks(admin) == []


def test_ssrf_targets_refused(tmp_path, request):
    """With the default settings, hooks cannot point into the hub's network."""
    with live_hub(make_settings("embedded", tmp_path, request)) as hub:
        admin = HubClient(hub.url, hub.admin_token)
        for url in ("http://127.0.0.1:8000/api/admin/gc", "http://localhost/", "http://10.1.2.3/", "http://192.168.0.1/",
                    "http://169.254.169.254/latest/meta-data/", "http://[::1]:80/", "http://[::ffff:127.0.0.1]/",
                    "http://0.0.0.0/", "http://100.64.0.1/", "ftp://example.com/", "file:///etc/passwd",
                    "http://user:pw@127.0.0.1/", "http:///nohost", "gopher://127.0.0.1:6379/_FLUSHALL"):
            with pytest.raises(InvalidInputError):
                client_events.add_webhook(admin, url, secret=SECRET, namespace="acme")
        assert client_events.list_webhooks(admin) == []


def test_address_classes():
    assert all(not is_public(a) for a in ("127.0.0.1", "10.0.0.1", "172.16.5.4", "192.168.1.1", "169.254.169.254",
                                          "::1", "fe80::1", "fc00::1", "::ffff:10.0.0.1", "0.0.0.0", "224.0.0.1",
                                          "100.64.0.1"))
    assert all(is_public(a) for a in ("93.184.216.34", "2606:4700::1111", "1.1.1.1"))


def test_cli_webhook_commands(hook_hub, client_env):
    from click.testing import CliRunner

    from peft_hub.cli import cli

    runner = CliRunner()
    base = ["--url", hook_hub.url, "--token", hook_hub.admin_token]
    out = runner.invoke(cli, [*base, "webhook", "add", "http://127.0.0.1:9/h", "--secret", SECRET,
                              "--adapter", "acme/support", "--events", "tag,push"])
    assert out.exit_code == 0, out.output
    assert "tag,push of acme/support -> http://127.0.0.1:9/h" in out.output
    hook_id = out.output.split()[1].rstrip(":")
    listed = runner.invoke(cli, [*base, "webhook", "ls"])
    assert listed.exit_code == 0 and "acme/support" in listed.output and SECRET not in listed.output
    assert runner.invoke(cli, [*base, "webhook", "deliveries", hook_id]).output.strip() == "No deliveries yet."
    bad = runner.invoke(cli, [*base, "webhook", "add", "http://127.0.0.1:9/h", "--secret", SECRET, "--events", "tag"])
    assert bad.exit_code != 0 and "exactly one of --adapter and --namespace" in bad.output
    bad = runner.invoke(cli, [*base, "webhook", "add", "http://127.0.0.1:9/h", "--secret", SECRET, "--namespace", "a",
                              "--events", "tag,pull"])
    assert bad.exit_code == 1 and "pull" in bad.output
    assert runner.invoke(cli, [*base, "webhook", "rm", hook_id]).exit_code == 0
    gone = runner.invoke(cli, [*base, "webhook", "rm", hook_id])
    assert gone.exit_code == 1 and f"webhook {hook_id} not found" in gone.output
