"""Authentication and authorization hold as a class, not case by case:

- a token's scope never exceeds its user's role, and admin-only routes check
  the user, not just the scope;
- namespace limits bind every scope, admin included;
- tokens can be listed, revoked and expire, through the API and the CLI;
- the web cookie is a random id of a server-side session, never the token;
- failed authentication is rate-limited per address and per token lookup, and
  a burst is written to the audit log.

Every refused request is checked for its status, its error code, and for
leaving the database as it was. Authorization runs on SQLite + local files and
on PostgreSQL + SeaweedFS; the browser-session and rate-limit tests on SQLite.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from datetime import datetime, timedelta, timezone

import httpx
import pytest
from click.testing import CliRunner
from conftest import make_settings
from hub_state import snapshot
from services import live_hub
from sqlmodel import Session, select

from peft_hub.cli import cli
from peft_hub.client import HubClient
from peft_hub.errors import PermissionDeniedError
from peft_hub.hub import crud
from peft_hub.hub.models import AuditEvent, Membership, Namespace, Token, WebSession

pytestmark = pytest.mark.integration


# --- helpers -------------------------------------------------------------------


def _api(hub, token: str | None = None) -> httpx.Client:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.Client(base_url=hub.url, headers=headers, timeout=60)


def _refused(response: httpx.Response, status: int, code: str) -> None:
    assert response.status_code == status, response.text
    assert response.json()["error"] == code, response.text
    assert response.headers["x-error-code"] in (code, "RepoNotFound")  # HF clients read the header


def _tokens(hub) -> list[tuple]:
    """Every token row but ``last_used_at`` (bookkeeping that a use may move)."""
    with Session(hub.app.state.engine) as s:
        return sorted((t.id, t.user_id, t.lookup, t.token_hash, t.scope, repr(t.namespaces), t.name, t.expires_at)
                      for t in s.exec(select(Token)))


def _state(hub) -> dict:
    """Every table and blob, tokens included, audit events counted."""
    return {**snapshot(hub), "tokens": _tokens(hub), "audit": len(_audit(hub))}


def _audit(hub, action: str | None = None) -> list[AuditEvent]:
    with Session(hub.app.state.engine) as s:
        query = select(AuditEvent).order_by(AuditEvent.id)
        return list(s.exec(query.where(AuditEvent.action == action) if action else query))


def _token_row(hub, token: str) -> Token:
    with Session(hub.app.state.engine) as s:
        return s.exec(select(Token).where(Token.lookup == token[5:17])).one()


def _set_expiry(hub, token: str, when: datetime) -> None:
    with Session(hub.app.state.engine) as s:
        row = s.exec(select(Token).where(Token.lookup == token[5:17])).one()
        row.expires_at = when
        s.add(row)
        s.commit()


@pytest.fixture
def people(hub):
    """The admin, and write tokens for the ordinary users alice and bob."""
    with _api(hub, hub.admin_token) as admin:
        alice = admin.post("/api/tokens", json={"scope": "write", "namespace": "alice"}).json()["token"]
        bob = admin.post("/api/tokens", json={"scope": "write", "namespace": "bob"}).json()["token"]
    with _api(hub, hub.admin_token) as a, _api(hub, alice) as al, _api(hub, bob) as b:
        yield {"hub": hub, "admin": a, "alice": al, "bob": b, "alice_token": alice, "bob_token": bob}


# --- scope never exceeds the role ------------------------------------------------


def test_an_admin_scope_token_for_a_non_admin_user_is_refused(people):
    hub, admin, alice = people["hub"], people["admin"], people["alice"]
    before = _state(hub)
    for namespace in ("alice", "newcomer"):  # an existing user, and one the request would create
        r = admin.post("/api/tokens", json={"scope": "admin", "namespace": namespace})
        _refused(r, 422, "invalid_input")
        assert "role" in r.json()["detail"] and "not an admin" in r.json()["detail"]
    _refused(alice.post("/api/tokens", json={"scope": "admin"}), 403, "forbidden")
    with _api(hub, alice.post("/api/tokens", json={"scope": "read"}).json()["token"]) as reader:
        before = _state(hub)
        _refused(reader.post("/api/tokens", json={"scope": "write"}), 403, "forbidden")
    assert _state(hub) == before
    with Session(hub.app.state.engine) as s:
        assert crud.get_namespace(s, name="newcomer") is None
    # An admin user may give another admin an admin token.
    with Session(hub.app.state.engine) as s:
        s.add(Namespace(name="root2", is_admin=True))
        s.commit()
    assert admin.post("/api/tokens", json={"scope": "admin", "namespace": "root2"}).status_code == 201


def test_an_admin_scope_token_of_a_non_admin_user_acts_as_write_at_most(people):
    """A row that says admin (say from before this rule) still gets nothing admin."""
    hub = people["hub"]
    with Session(hub.app.state.engine) as s:
        legacy = crud.create_token(s, user=crud.get_namespace(s, name="alice"), scope="admin")
        s.commit()
    bob_id = _token_row(hub, people["bob_token"]).id
    with _api(hub, legacy) as mallory:
        me = mallory.get("/api/whoami").json()
        assert (me["name"], me["scope"], me["is_admin"]) == ("alice", "write", False)
        before = _state(hub)
        _refused(mallory.post("/api/admin/gc", json={"grace_seconds": 0}), 403, "forbidden")
        _refused(mallory.get("/api/admin/audit"), 403, "forbidden")
        _refused(mallory.put("/api/orgs/acme/members/alice"), 403, "forbidden")
        _refused(mallory.post("/api/tokens", json={"scope": "write", "namespace": "bob"}), 403, "forbidden")
        _refused(mallory.post("/api/tokens", json={"scope": "admin"}), 403, "forbidden")
        _refused(mallory.get("/api/tokens", params={"user": "bob"}), 403, "forbidden")
        _refused(mallory.delete(f"/api/tokens/{bob_id}"), 404, "not_found")
        assert _state(hub) == before
    with Session(hub.app.state.engine) as s:
        assert s.exec(select(Membership)).all() == []


def test_ordinary_users_get_403_on_every_admin_route(people):
    hub, alice = people["hub"], people["alice"]
    before = _state(hub)
    _refused(alice.post("/api/admin/gc", json={}), 403, "forbidden")
    _refused(alice.get("/api/admin/audit"), 403, "forbidden")
    _refused(alice.put("/api/orgs/acme/members/alice"), 403, "forbidden")
    _refused(alice.post("/api/tokens", json={"scope": "read", "namespace": "bob"}), 403, "forbidden")
    _refused(alice.get("/api/tokens", params={"user": "bob"}), 403, "forbidden")
    assert _state(hub) == before
    with httpx.Client(base_url=hub.url) as anonymous:
        _refused(anonymous.get("/api/admin/audit"), 401, "unauthenticated")
        _refused(anonymous.post("/api/tokens", json={}), 401, "unauthenticated")
    assert _state(hub) == before


# --- limits bind admins too ------------------------------------------------------


def test_namespace_limits_bind_an_admin_token(people, llama_adapter, tmp_path):
    hub, admin = people["hub"], people["admin"]
    HubClient(hub.url, people["alice_token"], cache_dir=tmp_path / "c1").push(llama_adapter, name="alice/secret",
                                                                              private=True)
    out = admin.post("/api/tokens", json={"scope": "admin", "limit": ["admin"]}).json()
    assert out["namespaces"] == ["admin"] and out["scope"] == "admin"
    limited = HubClient(hub.url, out["token"], cache_dir=tmp_path / "c2")
    raw = _api(hub, out["token"])

    before = _state(hub)
    _refused(raw.get("/api/adapters/alice/secret"), 404, "adapter_not_found")
    _refused(raw.get("/api/adapters/alice/secret/resolve/main/adapter_config.json"), 404, "adapter_not_found")
    assert raw.get("/api/adapters", params={"owner": "alice"}).json()["total"] == 0
    with pytest.raises(PermissionDeniedError, match="alice"):
        limited.push(llama_adapter, name="alice/planted")
    _refused(raw.delete("/api/adapters/alice/secret"), 404, "adapter_not_found")
    _refused(raw.post("/api/tokens", json={"scope": "write", "namespace": "alice"}), 403, "forbidden")
    _refused(raw.post("/api/tokens", json={"scope": "write", "limit": ["alice"]}), 403, "forbidden")
    _refused(raw.put("/api/orgs/acme/members/alice"), 403, "forbidden")
    _refused(raw.post("/api/admin/gc", json={"grace_seconds": 0}), 403, "forbidden")  # hub-wide: needs no limits
    _refused(raw.get("/api/admin/audit"), 403, "forbidden")
    _refused(raw.get("/api/tokens", params={"user": "alice"}), 403, "forbidden")
    assert _state(hub) == before
    # A token it creates inherits its limits rather than escaping them.
    child = raw.post("/api/tokens", json={"scope": "write"}).json()
    assert child["namespaces"] == ["admin"]
    raw.close()
    # The unlimited admin token still sees everything.
    assert admin.get("/api/adapters/alice/secret").status_code == 200
    assert admin.get("/api/adapters", params={"owner": "alice"}).json()["total"] == 1


# --- list, revoke, expire ---------------------------------------------------------


def test_tokens_are_listed_without_secrets_revoked_and_expire(people):
    hub, admin, alice, bob = people["hub"], people["admin"], people["alice"], people["bob"]
    soon = (datetime.now(timezone.utc) + timedelta(days=1)).replace(microsecond=0)
    created = alice.post("/api/tokens", json={"scope": "read", "name": "laptop", "expires_at": soon.isoformat()})
    assert created.status_code == 201, created.text
    new = created.json()
    listed = alice.get("/api/tokens")
    assert listed.status_code == 200
    rows = {t["id"]: t for t in listed.json()}
    assert set(rows) == {_token_row(hub, people["alice_token"]).id, new["id"]}
    mine = rows[new["id"]]
    assert (mine["name"], mine["scope"], mine["user"], mine["expired"]) == ("laptop", "read", "alice", False)
    assert datetime.fromisoformat(mine["expires_at"]) == soon
    assert rows[_token_row(hub, people["alice_token"]).id]["current"] is True
    for secret in (new["token"], people["alice_token"], _token_row(hub, new["token"]).token_hash,
                   new["token"][5:17]):
        assert secret not in listed.text
    assert not {"token", "token_hash", "lookup"} & set(mine)
    assert [t["user"] for t in admin.get("/api/tokens", params={"user": "alice"}).json()] == ["alice", "alice"]

    # Refusals change nothing: a past expiry, a token outliving its creator, others' tokens.
    with _api(hub, new["token"]) as laptop:
        before = _state(hub)
        _refused(alice.post("/api/tokens", json={"expires_at": "2001-01-01T00:00:00Z"}), 422, "invalid_input")
        _refused(alice.post("/api/tokens", json={"expires_at": "not a date"}), 422, "invalid_input")
        _refused(alice.post("/api/tokens", json={"name": "\x1b]0;pwned\x07"}), 422, "invalid_input")
        _refused(laptop.post("/api/tokens", json={"expires_at": (soon + timedelta(days=5)).isoformat()}), 403,
                 "forbidden")
        _refused(bob.delete(f"/api/tokens/{new['id']}"), 404, "not_found")
        _refused(bob.delete("/api/tokens/999999"), 404, "not_found")
        assert _state(hub) == before
        assert laptop.post("/api/tokens", json={}).json()["expires_at"] == mine["expires_at"]  # inherited

        # Expired: refused exactly like a revoked token.
        assert laptop.get("/api/whoami").status_code == 200
        _set_expiry(hub, new["token"], datetime.now(timezone.utc) - timedelta(seconds=1))
        expired = laptop.get("/api/whoami")
        _refused(expired, 401, "unauthenticated")
        assert alice.get("/api/tokens").json()[1]["expired"] is True
        _set_expiry(hub, new["token"], soon)

        revoked = alice.delete(f"/api/tokens/{new['id']}")
        assert revoked.status_code == 204
        gone = laptop.get("/api/whoami")
        _refused(gone, 401, "unauthenticated")
        assert gone.json()["detail"] == expired.json()["detail"]
    assert new["id"] not in {t["id"] for t in alice.get("/api/tokens").json()}
    # An admin may revoke anyone's token.
    assert admin.delete(f"/api/tokens/{_token_row(hub, people['bob_token']).id}").status_code == 204
    _refused(bob.get("/api/whoami"), 401, "unauthenticated")


def test_last_used_is_recorded_at_most_once_a_minute(people):
    hub, alice = people["hub"], people["alice"]
    assert _token_row(hub, people["alice_token"]).last_used_at is None  # created, not used yet
    first = alice.get("/api/whoami")
    assert first.status_code == 200
    stamp = _token_row(hub, people["alice_token"]).last_used_at
    for _ in range(3):
        alice.get("/api/adapters")
    assert _token_row(hub, people["alice_token"]).last_used_at == stamp


# --- the audit log ----------------------------------------------------------------


def test_the_audit_log_records_admin_actions_and_is_admin_only(people):
    hub, admin, alice = people["hub"], people["admin"], people["alice"]
    assert admin.put("/api/orgs/acme/members/alice").status_code == 201
    token_id = alice.post("/api/tokens", json={"scope": "read", "name": "tmp"}).json()["id"]
    assert alice.delete(f"/api/tokens/{token_id}").status_code == 204
    assert admin.post("/api/admin/gc", json={"dry_run": True}).status_code == 200

    events = admin.get("/api/admin/audit").json()
    assert [e["action"] for e in events][:4] == ["gc", "token.revoke", "token.create", "org.member_add"]
    gc, revoke, create, member = events[:4]
    assert gc["actor"] == "admin" and gc["detail"]["dry_run"] is True and "deleted" in gc["detail"]
    assert (revoke["actor"], revoke["target"]) == ("alice", f"token:{token_id}")
    assert create["detail"]["scope"] == "read" and create["client"] == "127.0.0.1"
    assert (member["target"], member["detail"]) == ("acme", {"user": "alice"})
    assert "phub_" not in json.dumps(events)  # no token is ever written to the log

    assert [e["action"] for e in admin.get("/api/admin/audit", params={"actor": "alice"}).json()] == [
        "token.revoke", "token.create"]
    assert [e["action"] for e in admin.get("/api/admin/audit", params={"action": "gc"}).json()] == ["gc"]
    assert len(admin.get("/api/admin/audit", params={"limit": 1}).json()) == 1
    future = (datetime.now(timezone.utc) + timedelta(hours=1)).isoformat()
    assert admin.get("/api/admin/audit", params={"since": future}).json() == []
    past = (datetime.now(timezone.utc) - timedelta(hours=1)).isoformat()
    assert len(admin.get("/api/admin/audit", params={"since": past}).json()) == len(events)
    _refused(admin.get("/api/admin/audit", params={"limit": 1001}), 422, "invalid_input")
    # A refused action leaves no audit row (it is in the action's transaction).
    count = len(_audit(hub))
    _refused(alice.put("/api/orgs/acme/members/bob"), 403, "forbidden")
    _refused(admin.post("/api/tokens", json={"scope": "admin", "namespace": "bob"}), 422, "invalid_input")
    assert len(_audit(hub)) == count


# --- the CLI ----------------------------------------------------------------------


def test_cli_token_create_ls_revoke_and_audit(embedded_hub, client_env):
    env = {"PEFT_HUB_URL": embedded_hub.url, "PEFT_HUB_TOKEN": embedded_hub.admin_token}

    def run(*args: str, code: int = 0, **extra: str):
        result = CliRunner().invoke(cli, list(args), env={**env, **extra}, catch_exceptions=False)
        assert result.exit_code == code, result.output
        return result.output

    token = run("token", "create", "--namespace", "carol", "--scope", "write", "--name", "ci", "--expires", "1d")
    token = token.strip()
    assert re.fullmatch(r"phub_\S+", token)
    assert run("whoami", PEFT_HUB_TOKEN=token).startswith("carol (scope: write)")
    own = run("token", "create", "--expires", "12h", PEFT_HUB_TOKEN=token).strip()  # carol, for herself: read
    listing = run("token", "ls", PEFT_HUB_TOKEN=token)
    lines = listing.splitlines()
    assert lines[0].split()[:4] == ["ID", "NAME", "SCOPE", "LIMITS"]
    ci = next(line for line in lines if " ci " in line)
    assert "write" in ci and ci.split()[0].endswith("*")  # the token in use
    assert token not in listing and own not in listing and token[5:17] not in listing
    tomorrow = (datetime.now(timezone.utc) + timedelta(days=1)).strftime("%Y-%m-%d")
    assert tomorrow in ci
    data = json.loads(run("token", "ls", "--user", "carol", "--json"))
    assert [t["name"] for t in data] == ["ci", ""] and [t["scope"] for t in data] == ["write", "read"]

    # Nonsense is one line on stderr and exit code 1, and creates nothing.
    before = len(data)
    for bad in ("soon", "0d", "-3d", "2001-01-01", "30x"):
        out = run("token", "create", "--expires", bad, code=1)
        assert out.startswith("Error: ") and out.count("\n") == 1 and "--expires" in out, out
    assert len(json.loads(run("token", "ls", "--user", "carol", "--json"))) == before
    out = run("token", "create", "--scope", "admin", code=1, PEFT_HUB_TOKEN=token)
    assert out.startswith("Error: ") and out.count("\n") == 1

    assert run("token", "revoke", str(data[1]["id"]), PEFT_HUB_TOKEN=token).strip() == f"revoked token {data[1]['id']}"
    out = run("whoami", code=1, PEFT_HUB_TOKEN=own)
    assert out.startswith("Error: ") and "revoked" in out
    out = run("token", "revoke", str(data[0]["id"] + 100), code=1, PEFT_HUB_TOKEN=token)
    assert "not found" in out

    events = json.loads(run("audit", "--json", "--limit", "10"))
    assert [e["action"] for e in events[:3]] == ["token.revoke", "token.create", "token.create"]
    assert [e["actor"] for e in events[:3]] == ["carol", "carol", "admin"]
    table = run("audit", "--action", "token.create", "--since", "1h")
    assert table.splitlines()[0].split() == ["AT", "ACTOR", "ACTION", "TARGET", "CLIENT", "DETAIL"]
    assert len(table.splitlines()) == 3
    out = run("audit", code=1, PEFT_HUB_TOKEN=token)
    assert out.startswith("Error: ") and "admin" in out


# --- the web session --------------------------------------------------------------


def _sign_in(client: httpx.Client, token: str) -> httpx.Response:
    form = client.get("/login")
    csrf = re.search(r'name="csrf" value="([^"]+)"', form.text).group(1)
    return client.post("/login", data={"token": token, "csrf": csrf})


def _web_sessions(hub) -> list[WebSession]:
    with Session(hub.app.state.engine) as s:
        return list(s.exec(select(WebSession)))


def test_the_cookie_is_a_random_session_id_and_sign_out_deletes_the_row(embedded_hub):
    hub = embedded_hub
    with _api(hub, hub.admin_token) as admin:
        token = admin.post("/api/tokens", json={"scope": "write", "namespace": "dora"}).json()["token"]
    with httpx.Client(base_url=hub.url) as browser:
        signed_in = _sign_in(browser, token)
        assert signed_in.status_code == 303
        set_cookie = signed_in.headers["set-cookie"].lower()
        assert "httponly" in set_cookie and "samesite=lax" in set_cookie and "secure" not in set_cookie
        cookie = browser.cookies["peft_hub_session"]
        assert cookie != token and token not in cookie and token[5:17] not in cookie and "phub" not in cookie
        assert len(cookie) >= 43  # secrets.token_urlsafe(32)
        (row,) = _web_sessions(hub)
        assert row.id_hash == hashlib.sha256(cookie.encode()).hexdigest()
        assert row.token_id == _token_row(hub, token).id
        assert browser.get("/api/whoami").json()["name"] == "dora"
        # The cookie never authenticates a change.
        _refused(browser.post("/api/tokens", json={"scope": "read"}), 401, "unauthenticated")
        assert len(_tokens(hub)) == 2

        page = browser.get("/")
        csrf = re.search(r'action="/logout".*?name="csrf" value="([^"]+)"', page.text, re.S).group(1)
        assert csrf == row.csrf
        browser.post("/logout", data={"csrf": "forged"})
        assert len(_web_sessions(hub)) == 1
        browser.post("/logout", data={"csrf": csrf})
        assert _web_sessions(hub) == []
        _refused(browser.get("/api/whoami"), 401, "unauthenticated")
        # A replayed cookie of the deleted session is just as dead.
        replay = httpx.get(f"{hub.url}/api/whoami", cookies={"peft_hub_session": cookie})
        _refused(replay, 401, "unauthenticated")


def test_revoking_or_expiring_the_token_ends_the_web_session(embedded_hub):
    hub = embedded_hub
    with _api(hub, hub.admin_token) as admin:
        first = admin.post("/api/tokens", json={"scope": "read", "namespace": "erin"}).json()
        second = admin.post("/api/tokens", json={"scope": "read", "namespace": "erin"}).json()
        with httpx.Client(base_url=hub.url) as one, httpx.Client(base_url=hub.url) as two:
            assert _sign_in(one, first["token"]).status_code == 303
            assert _sign_in(two, second["token"]).status_code == 303
            assert len(_web_sessions(hub)) == 2
            assert admin.delete(f"/api/tokens/{first['id']}").status_code == 204
            assert [w.token_id for w in _web_sessions(hub)] == [second["id"]]
            _refused(one.get("/api/whoami"), 401, "unauthenticated")
            assert "Sign out" not in one.get("/").text
            assert two.get("/api/whoami").json()["name"] == "erin"
            _set_expiry(hub, second["token"], datetime.now(timezone.utc) - timedelta(seconds=1))
            _refused(two.get("/api/whoami"), 401, "unauthenticated")
            assert "Sign out" not in two.get("/").text


# --- failed authentication is rate-limited ---------------------------------------


def test_bad_tokens_from_one_address_get_429_and_one_audit_row(embedded_hub):
    hub = embedded_hub
    limit = hub.settings.auth_failures_per_address
    with _api(hub, hub.admin_token) as admin:
        before = _state(hub)
        for i in range(limit):
            with _api(hub, f"phub_{i:012d}" + "x" * 40) as bad:
                _refused(bad.get("/api/whoami"), 401, "unauthenticated")
        assert _audit(hub, "auth.failed_burst")[0].target == "address:127.0.0.1"
        for _ in range(3):
            with _api(hub, "phub_" + "f" * 52) as bad:
                r = bad.get("/api/adapters")
                _refused(r, 429, "rate_limited")
                assert 1 <= int(r.headers["retry-after"]) <= hub.settings.auth_failure_window_seconds
        # Every attempt from the address now waits, the right token included.
        _refused(admin.get("/api/whoami"), 429, "rate_limited")
        # Anonymous reads are not authentication attempts.
        assert httpx.get(f"{hub.url}/api/adapters").status_code == 200
        (burst,) = _audit(hub, "auth.failed_burst")
        assert burst.client == "127.0.0.1" and burst.detail["failures"] == limit
        after = _state(hub)
        assert after["audit"] == before["audit"] + 1
        assert {k: v for k, v in after.items() if k != "audit"} == {k: v for k, v in before.items() if k != "audit"}


def test_a_token_lookup_locks_after_failures_even_for_the_right_token(embedded_hub):
    hub = embedded_hub
    limit = hub.settings.auth_failures_per_lookup
    assert limit < hub.settings.auth_failures_per_address
    with _api(hub, hub.admin_token) as admin:
        victim = admin.post("/api/tokens", json={"scope": "write", "namespace": "vic"}).json()["token"]
        lookup = victim[5:17]
        for _ in range(limit):
            with _api(hub, f"phub_{lookup}" + "w" * 43) as guess:
                _refused(guess.get("/api/whoami"), 401, "unauthenticated")
        with _api(hub, victim) as right:
            r = right.get("/api/whoami")
            _refused(r, 429, "rate_limited")
            assert int(r.headers["retry-after"]) >= 1
        # The address is under its own limit: other tokens still work.
        assert admin.get("/api/whoami").status_code == 200
        (burst,) = _audit(hub, "auth.failed_burst")
        assert burst.target == f"lookup:{lookup}" and burst.detail["kind"] == "lookup"
        # The HF-compatible routes count too.
        r = httpx.get(f"{hub.url}/api/whoami-v2", headers={"Authorization": f"Bearer {victim}"})
        assert r.status_code == 429


def test_web_sign_in_failures_count_and_the_window_passes(tmp_path, request):
    settings = make_settings("embedded", tmp_path, request).model_copy(
        update={"auth_failures_per_address": 3, "auth_failure_window_seconds": 2})
    with live_hub(settings) as hub, httpx.Client(base_url=hub.url) as browser:
        form = browser.get("/login")
        csrf = re.search(r'name="csrf" value="([^"]+)"', form.text).group(1)
        for _ in range(3):
            r = browser.post("/login", data={"token": "phub_" + "z" * 50, "csrf": csrf})
            assert r.status_code == 401 and "not valid" in r.text
        r = browser.post("/login", data={"token": hub.admin_token, "csrf": csrf})
        assert r.status_code == 429 and "Too many" in r.text and int(r.headers["retry-after"]) >= 1
        assert "peft_hub_session" not in browser.cookies and _web_sessions(hub) == []
        assert len(_audit(hub, "auth.failed_burst")) == 1
        time.sleep(2.2)
        assert browser.post("/login", data={"token": hub.admin_token, "csrf": csrf}).status_code == 303
        assert browser.get("/api/whoami").json()["name"] == "admin"
