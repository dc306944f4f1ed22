"""The routes' error paths, in process: ``create_app`` on a temporary SQLite
database and local blob store, driven through FastAPI's ``TestClient`` (no
socket). Every error has the hub's shape, ``{"error": code, "detail": text}``,
its status, and the ``X-Error-Code`` header the client and HF tools read.
"""

from __future__ import annotations

import secrets

import pytest

from peft_hub.errors import ERRORS_BY_CODE


@pytest.fixture(scope="module")
def api(tmp_path_factory):
    """A TestClient on a fresh hub, plus the admin's and a writer's headers."""
    from fastapi.testclient import TestClient

    from peft_hub.hub import Settings, create_app

    root = tmp_path_factory.mktemp("hub")
    token = "phub_" + secrets.token_hex(6) + secrets.token_urlsafe(32)
    settings = Settings(db_url=f"sqlite:///{root / 'hub.db'}", storage=str(root / "blobs"), admin_token=token,
                        token_file=root / "hub-token")
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        client.admin = {"Authorization": f"Bearer {token}"}
        made = client.post("/api/tokens", json={"namespace": "alice", "scope": "write"}, headers=client.admin)
        assert made.status_code == 201, made.text
        client.alice = {"Authorization": f"Bearer {made.json()['token']}"}
        yield client


def _error(response, status: int, code: str, header: str | None = None) -> str:
    """Check the error's shape and return its detail."""
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) >= {"error", "detail"} and body["error"] == code, body
    assert isinstance(body["detail"], str) and body["detail"] and "\n" not in body["detail"]
    assert response.headers["x-error-code"] == (header or code)
    assert code in ERRORS_BY_CODE
    return body["detail"]


# --- 401 ---------------------------------------------------------------------------


@pytest.mark.parametrize("authorization", [
    "Bearer phub_" + "x" * 40, "Bearer not-a-token", "Basic YWxpY2U6cGFzcw==", "Bearer ", "bearer\x00phub_x",
])
def test_a_bad_token_is_401(api, authorization):
    detail = _error(api.get("/api/whoami", headers={"Authorization": authorization}), 401, "unauthenticated")
    assert "phub_" + "x" * 40 not in detail


def test_no_token_is_401_naming_the_scope_and_login(api):
    detail = _error(api.get("/api/whoami"), 401, "unauthenticated")
    assert "'read'" in detail and "peft-hub login" in detail
    detail = _error(api.post("/api/adapters/alice/x/preupload", json={"files": []}), 401, "unauthenticated")
    assert "'write'" in detail


# --- 403 ---------------------------------------------------------------------------


def test_writing_to_another_namespace_is_403(api):
    response = api.post("/api/adapters/admin/x/preupload", json={"files": []}, headers=api.alice)
    assert "'admin'" in _error(response, 403, "forbidden")


def test_admin_routes_are_403_for_a_writer(api):
    _error(api.get("/api/admin/audit", headers=api.alice), 403, "forbidden")
    _error(api.put("/api/orgs/acme/members/alice", headers=api.alice), 403, "forbidden")


def test_a_token_cannot_grant_more_than_it_has(api):
    response = api.post("/api/tokens", json={"namespace": "bob", "scope": "write"}, headers=api.alice)
    assert "only an admin" in _error(response, 403, "forbidden")
    response = api.post("/api/tokens", json={"scope": "admin"}, headers=api.alice)
    _error(response, 403, "forbidden")


# --- 404 ---------------------------------------------------------------------------


@pytest.mark.parametrize("path", [
    "/api/adapters/admin/nothing", "/api/adapters/ghost/x", "/api/adapters/admin/x/revisions",
    "/api/adapters/admin/x/resolve/main/adapter_config.json", "/api/adapters/admin/x/card",
])
def test_a_missing_adapter_is_adapter_not_found_with_the_hf_header(api, path):
    detail = _error(api.get(path, headers=api.admin), 404, "adapter_not_found", header="RepoNotFound")
    assert "not found" in detail


def test_other_missing_things_have_their_own_codes(api):
    _error(api.get("/api/tokens", params={"user": "ghost"}, headers=api.admin), 404, "namespace_not_found")
    _error(api.delete("/api/tokens/999", headers=api.admin), 404, "not_found")


def test_someone_elses_token_id_is_404_not_403(api):
    admin_tokens = api.get("/api/tokens", headers=api.admin).json()
    assert admin_tokens
    _error(api.delete(f"/api/tokens/{admin_tokens[0]['id']}", headers=api.alice), 404, "not_found")


def test_an_unknown_api_path_is_404_in_the_error_shape(api):
    assert _error(api.get("/api/no/such/route", headers=api.admin), 404, "not_found") == "Not Found"


# --- 422 ---------------------------------------------------------------------------


@pytest.mark.parametrize(("method", "path", "kwargs", "where"), [
    ("DELETE", "/api/tokens/0", {}, "path.token_id"),
    ("DELETE", "/api/tokens/99999999999999999999", {}, "path.token_id"),
    ("POST", "/api/tokens", {"json": {"scope": 5}}, "body.scope"),
    ("POST", "/api/tokens", {"content": b"{not json", "headers": {"Content-Type": "application/json"}}, "body"),
    ("POST", "/api/adapters/admin/x/commit", {"json": [1, 2]}, "body"),
    ("GET", "/api/admin/audit", {"params": {"limit": "0"}}, "query.limit"),
])
def test_a_malformed_request_is_422_invalid_input_in_one_line(api, method, path, kwargs, where):
    headers = {**api.admin, **kwargs.pop("headers", {})}
    detail = _error(api.request(method, path, headers=headers, **kwargs), 422, "invalid_input")
    assert detail.startswith(where), detail


@pytest.mark.parametrize("owner", ["bad..name", "-dash", "a" * 65, "sp ace"])
def test_an_invalid_name_is_422_invalid_name(api, owner):
    detail = _error(api.get(f"/api/adapters/{owner}/x", headers=api.admin), 422, "invalid_name")
    assert "invalid owner" in detail


def test_hostile_text_in_a_path_is_not_echoed_raw(api):
    response = api.get("/api/adapters/%1b%5b2J/x", headers=api.admin)
    assert response.status_code == 422
    assert "\x1b" not in response.text
