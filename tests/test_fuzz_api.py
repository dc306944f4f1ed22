"""Fuzzing the hub over real HTTP: no input may make it answer 5xx (a
deliberate 501 ``not_implemented`` aside) or drop the connection.

Two parts share one live embedded hub (SQLite and local files) holding a
pushed adapter ``admin/support`` and an empty HF repo ``admin/empty``:

- a schema fuzz of every OpenAPI route with schemathesis, as the admin and
  as an anonymous caller;
- a hand-written fuzz of the Hugging Face–compatible routes, with malformed
  bodies from a seeded generator (wrong types, deep nesting, huge numbers,
  NUL and control characters, bad base64, bad oids, truncated NDJSON,
  missing fields).

A failure names the route, the request as a curl command or a minimal
Python reproducer, the status, and the server's traceback. Both are bounded
by example counts, so the module takes about two minutes on two cores.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import random
import re
import secrets
import string
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, settings
from raw_adapters import zero_safetensors
from schemathesis.config import SchemathesisConfig
from services import LiveHub, live_hub

pytestmark = pytest.mark.slow

SEED = 20260101
#: Schemathesis examples per route and caller (and Hypothesis's deadline for each).
MAX_EXAMPLES = 25
DEADLINE = timedelta(seconds=20)
#: Hand-written cases per HF route.
HF_CASES = 150
TIMEOUT = 30.0


# --- the hub under fuzz --------------------------------------------------------------


def _settings(root: Path, token: str):
    from peft_hub.hub import Settings

    # A generous auth-failure limit: a 429 would hide what the route does with the input.
    return Settings(
        db_url=f"sqlite:///{root / 'hub.db'}", storage=str(root / "blobs"), admin_token=token,
        token_file=root / "hub-token", gc_grace_seconds=3600, auth_failures_per_address=10**6,
        auth_failures_per_lookup=10**6,
    )


def _spec() -> dict[str, Any]:
    """The OpenAPI document, built in-process (``/docs`` may be off; the schema is the same)."""
    from peft_hub.hub import create_app

    with tempfile.TemporaryDirectory() as tmp:
        return create_app(_settings(Path(tmp), "phub_spec")).openapi()


class ServerLog(logging.Handler):
    """Keeps the server's error records (uvicorn logs each unhandled exception with its traceback)."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[str] = []
        self.setFormatter(logging.Formatter("%(name)s: %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(self.format(record))

    def since(self, mark: int) -> str:
        """What was logged since ``mark``; uvicorn logs a traceback only after the 500 went out, so wait for it."""
        deadline = time.monotonic() + 2
        while len(self.records) <= mark and time.monotonic() < deadline:
            time.sleep(0.02)
        return "\n".join(self.records[mark:])

    def last_traceback(self, mark: int, lines: int = 30) -> str:
        """The tail of the last error logged since ``mark``: where it was raised, and what."""
        return "\n".join(self.records[-1].splitlines()[-lines:]) if len(self.records) > mark else "(nothing logged)"


def signature(log: str, fallback: str) -> str:
    """What makes two failures the same bug: the exception and the deepest peft_hub frame."""
    frames = re.findall(r'File "[^"]*/(peft_hub/[^"]+)", line (\d+), in (\w+)', log)
    errors = re.findall(r"^(\w+(?:\.\w+)*(?:Error|Exception)\w*)\b", log, re.MULTILINE)
    if frames or errors:
        where = "{}:{} in {}".format(*frames[-1]) if frames else "?"
        return f"{errors[-1] if errors else '?'} at {where}"
    return fallback[:160]


@dataclass
class FuzzHub:
    hub: LiveHub
    log: ServerLog
    token: str
    #: False until the token is known to work (again, after a fuzzed token delete).
    token_checked: bool = False

    @property
    def url(self) -> str:
        return self.hub.url

    def admin_token(self) -> str:
        """The admin token, minted again if a fuzzed ``DELETE /api/tokens/{id}`` revoked it."""
        if self.token_checked:
            return self.token
        self.token_checked = True
        if httpx.get(f"{self.url}/api/whoami", headers=_bearer(self.token)).status_code == 200:
            return self.token
        from sqlmodel import Session

        from peft_hub.hub import crud

        with Session(self.hub.app.state.engine) as session:
            admin = crud.get_namespace(session, name=self.hub.settings.admin_name)
            self.token = crud.create_token(session, user=admin, scope="admin")
            session.commit()
        return self.token

    def ensure_seeded(self, adapter: Path) -> None:
        """``admin/support`` with one revision and the empty repo ``admin/empty`` (a fuzzed delete may remove them)."""
        from peft_hub.client import HubClient

        self.token_checked = False
        token = self.admin_token()
        if httpx.get(f"{self.url}/api/adapters/admin/support", headers=_bearer(token)).status_code != 200:
            with HubClient(self.url, token, cache_dir=adapter.parent / "cache") as client:
                client.push(adapter, name="admin/support", tags=["v1"])
        httpx.post(f"{self.url}/api/repos/create", json={"name": "empty"}, headers=_bearer(token))


def _bearer(token: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"} if token else {}


CONFIG = {"peft_type": "LORA", "r": 2, "lora_alpha": 4, "target_modules": ["q_proj"], "base_model_name_or_path": "tiny"}
WEIGHTS = zero_safetensors({
    "base_model.model.layers.0.q_proj.lora_A.weight": [2, 4], "base_model.model.layers.0.q_proj.lora_B.weight": [4, 2],
})


@pytest.fixture(scope="module")
def seed_adapter(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("fuzz") / "support"
    path.mkdir()
    (path / "adapter_config.json").write_text(json.dumps(CONFIG))
    (path / "adapter_model.safetensors").write_bytes(WEIGHTS)
    return path


@pytest.fixture(scope="module")
def fuzz_hub(tmp_path_factory, seed_adapter) -> Iterator[FuzzHub]:
    token = "phub_" + secrets.token_hex(6) + secrets.token_urlsafe(32)
    log = ServerLog()
    with live_hub(_settings(tmp_path_factory.mktemp("fuzz-hub"), token)) as hub:
        # Attached after uvicorn has configured its loggers, which drops earlier handlers.
        watched = [logging.getLogger(name) for name in ("uvicorn.error", "peft_hub")]
        for logger in watched:
            logger.addHandler(log)
        try:
            server = FuzzHub(hub, log, token)
            server.ensure_seeded(seed_adapter)
            yield server
        finally:
            for logger in watched:
                logger.removeHandler(log)


@pytest.fixture
def hub(fuzz_hub, seed_adapter) -> FuzzHub:
    fuzz_hub.ensure_seeded(seed_adapter)
    return fuzz_hub


def server_failure(response_status: int, body: bytes | str) -> bool:
    """A 5xx that is not the deliberate 501 ``not_implemented``."""
    if response_status < 500:
        return False
    if response_status == 501:
        try:
            return json.loads(body).get("error") != "not_implemented"
        except (ValueError, AttributeError):
            return True
    return True


# --- part 1: the OpenAPI routes with schemathesis ----------------------------------------


def _schema(*, coverage: bool) -> Any:
    """The hub's schema for schemathesis; half the generated owners, names,
    revisions and file names are ones that exist, so routes get past "not found"."""
    config = SchemathesisConfig.from_dict({
        "seed": SEED,
        "phases": {"coverage": {"enabled": coverage}},
        "dictionaries": {
            "owners": {"values": ["admin"]}, "names": {"values": ["support", "empty"]},
            "revisions": {"values": ["main", "v1"]},
            "files": {"values": ["adapter_config.json", "adapter_model.safetensors"]},
        },
        "parameters": {
            "path.owner": {"dictionary": "owners", "probability": 0.5},
            "path.name": {"dictionary": "names", "probability": 0.5},
            "path.revision": {"dictionary": "revisions", "probability": 0.5},
            "path.rev": {"dictionary": "revisions", "probability": 0.5},
            "path.path": {"dictionary": "files", "probability": 0.5},
            "path.filename": {"dictionary": "files", "probability": 0.5},
        },
    })
    return schemathesis.openapi.from_dict(SPEC, config=config)


SPEC = _spec()
#: As the admin, every route gets schemathesis's coverage phase (boundary and
#: wrong-type values for each parameter) on top of random fuzzing; anonymous
#: calls mostly stop at the auth check, so random fuzzing is enough there.
admin_schema, anonymous_schema = _schema(coverage=True), _schema(coverage=False)
FUZZ_SETTINGS = settings(
    max_examples=MAX_EXAMPLES, deadline=DEADLINE, derandomize=True, database=None,
    suppress_health_check=list(HealthCheck),
)


def _call_and_check(case: Any, hub: FuzzHub, who: str) -> None:
    headers = _bearer(hub.admin_token()) if who == "admin" else {}
    mark = len(hub.log.records)
    try:
        response = case.call(base_url=hub.url, headers=headers, timeout=TIMEOUT, allow_redirects=False)
    except requests.ConnectionError as exc:  # a dropped connection is a failure too
        outcome, text = f"dropped the connection ({exc})", type(exc).__name__
    else:
        if not server_failure(response.status_code, response.content):
            if case.method.upper() == "DELETE" and case.operation.path.startswith("/api/tokens"):
                hub.token_checked = False  # it may have revoked the admin token
            return
        outcome, text = f"answered {response.status_code}: {response.text[:300]}", response.text
    log = hub.log.since(mark)
    pytest.fail(
        f"{case.operation.label} as {who} {outcome}\nbug: {signature(log, text)}\n"
        f"reproduce: {case.as_curl_command(headers=headers)}\nserver log:\n{hub.log.last_traceback(mark)}"
    )


@admin_schema.parametrize()
@FUZZ_SETTINGS
def test_openapi_routes_as_admin_never_fail_on_the_server(case, hub):
    _call_and_check(case, hub, "admin")


@anonymous_schema.parametrize()
@FUZZ_SETTINGS
def test_openapi_routes_anonymously_never_fail_on_the_server(case, hub):
    _call_and_check(case, hub, "anonymous")


# --- part 2: the Hugging Face routes, by hand --------------------------------------------


@dataclass
class Request:
    """One hand-made request, and the line of Python that sends it again."""

    method: str
    path: str
    content: bytes | None = None
    data: dict[str, Any] | None = None
    params: dict[str, Any] | None = None
    headers: dict[str, str] = field(default_factory=dict)
    anonymous: bool = False

    def reproducer(self, url: str) -> str:
        parts = [f"{self.method!r}", f"{url + self.path!r}"]
        for name in ("content", "data", "params"):
            value = getattr(self, name)
            if value is not None:
                parts.append(f"{name}={_short(value)}")
        headers = self.headers if self.anonymous else {**self.headers, "Authorization": "Bearer <admin token>"}
        if headers:
            parts.append(f"headers={headers!r}")
        return f"httpx.request({', '.join(parts)})"


def _scalar(value: Any) -> str | int | float:
    """A value that fits in a query string."""
    if isinstance(value, (str, int, float)) and not isinstance(value, bool):
        return value.encode("utf-8", "replace").decode() if isinstance(value, str) else value
    try:
        return json.dumps(value)[:1000]
    except (ValueError, RecursionError):
        return "[" * 1000


def _short(value: Any, limit: int = 400) -> str:
    try:
        text = repr(value)
    except RecursionError:
        text = f"<{type(value).__name__} nested too deep to show>"
    return text if len(text) <= limit else f"{text[:limit]}…  # {len(text)} chars"


SHA_OK = hashlib.sha256(WEIGHTS).hexdigest()
NASTY_STRINGS = [
    "", " ", "\x00", "a\x00b", "\x1b[2J", "\r\n", "\ud800", "\u202e", "../../etc/passwd", "..", "/", "\\",
    "adapter_model.bin", "README.md", "adapter_config.json", "a" * 5000, "%00", "%2e%2e%2f", "null", "💥",
    "C:\\x.json", "CON.json", "x.json\n", "${jndi:ldap://x}", "' OR 1=1 --",
]
NASTY_NUMBERS = [-1, 0, 1, 2**31, 2**63, -(2**63) - 1, 10**30, 10**400, 1.5, -0.0, float("1e308")]


class Gen:
    """Seeded generators of hostile JSON values and bodies."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng

    def string(self) -> str:
        if self.rng.random() < 0.6:
            return self.rng.choice(NASTY_STRINGS)
        alphabet = string.printable + "\x00\x01\x7f\u0085\u2028é"
        return "".join(self.rng.choice(alphabet) for _ in range(self.rng.randint(0, 40)))

    def text(self) -> str:
        """A string that can travel in a URL or a form (no lone surrogates)."""
        return self.string().encode("utf-8", "replace").decode()

    def number(self) -> Any:
        return self.rng.choice(NASTY_NUMBERS)

    def deep(self) -> Any:
        depth = self.rng.choice([50, 500, 5000, 50000])
        value: Any = self.rng.choice([[], {}, "x", 1])
        for _ in range(depth):
            value = [value] if self.rng.random() < 0.5 else {"a": value}
        return value

    def value(self, depth: int = 0) -> Any:
        kind = self.rng.randrange(9 if depth < 3 else 6)
        if kind == 0:
            return None
        if kind == 1:
            return self.rng.choice([True, False])
        if kind == 2:
            return self.number()
        if kind in (3, 4, 5):
            return self.string()
        if kind == 6:
            return [self.value(depth + 1) for _ in range(self.rng.randint(0, 4))]
        if kind == 7:
            return {self.string(): self.value(depth + 1) for _ in range(self.rng.randint(0, 4))}
        return self.deep()

    def oid(self) -> Any:
        return self.rng.choice([
            SHA_OK, SHA_OK.upper(), SHA_OK[:-1], SHA_OK + "0", "g" * 64, "../" * 21 + "a", "", None, 7, ["x"],
            SHA_OK[:-1] + "\x00", {"oid": SHA_OK},
        ])

    def maybe(self, good: Any) -> Any:
        """``good`` most of the time, else something hostile (so a route gets past its first check)."""
        return good if self.rng.random() < 0.55 else self.value(1)

    def mutate(self, obj: dict[str, Any]) -> Any:
        """Drop, retype or corrupt some fields of a well-formed body."""
        out = dict(obj)
        for key in list(out):
            roll = self.rng.random()
            if roll < 0.15:
                del out[key]
            elif roll < 0.45:
                out[key] = self.value(1)
        if self.rng.random() < 0.2:
            out[self.string()] = self.value(1)
        return out if self.rng.random() > 0.05 else self.value()

    def raw_json(self, obj: Any) -> bytes:
        """``obj`` as JSON, sometimes broken on the way out."""
        try:
            text = json.dumps(obj, allow_nan=True).encode()
        except (ValueError, RecursionError):
            text = b'{"deep": ' + b"[" * 20000 + b"]" * 20000 + b"}"
        roll = self.rng.random()
        if roll < 0.1:
            return text[: self.rng.randint(0, max(len(text) - 1, 0))]  # truncated
        if roll < 0.15:
            return text.replace(b'"', b"'")
        if roll < 0.2:
            return b"\xff\xfe" + text
        if roll < 0.25:
            return b"NaN" if self.rng.random() < 0.5 else b"[" * 100000
        return text


def _b64(rng: random.Random, data: bytes) -> str:
    good = base64.b64encode(data).decode()
    return rng.choice([good, good[:-1], good + "=", "!!!notbase64", good.replace("A", "-"), "", "====", " " + good,
                       base64.urlsafe_b64encode(b"\xfb\xff" + data).decode(), "\x00" + good])


def _repo(g: Gen) -> tuple[str, str]:
    r = g.rng.random()
    if r < 0.6:
        return "admin", g.rng.choice(["support", "empty"])
    if r < 0.8:
        return "admin", g.rng.choice(["nope", "UPPER", "a" * 80, "-x", "x..y"])
    return g.rng.choice(["ghost", "api", "%00", "a.b", "x" * 65]), "support"


# Each builder makes one request for its route from the generator.


def _create_repo(g: Gen) -> Request:
    body = g.mutate({"name": g.rng.choice(["fz" + str(g.rng.randrange(10**6)), "support", g.string()]),
                     "organization": g.maybe(None), "private": g.maybe(False), "type": g.maybe("model"),
                     "visibility": g.maybe("public")})
    return Request("POST", "/api/repos/create", content=g.raw_json(body), headers={"content-type": "application/json"})


def _delete_repo(g: Gen) -> Request:
    # Never the seeded repos' valid form, so the other routes keep something to work on.
    body = g.mutate({"name": g.rng.choice(["ghost", g.string(), "x" * 70]), "organization": g.maybe("admin"),
                     "type": g.maybe("model")})
    return Request("DELETE", "/api/repos/delete", content=g.raw_json(body),
                   headers={"content-type": "application/json"})


def _preupload(g: Gen) -> Request:
    owner, name = _repo(g)
    files = [g.mutate({"path": g.maybe(g.rng.choice(["adapter_config.json", "README.md", "notes.txt"])),
                       "size": g.maybe(g.rng.randint(0, 10**6)), "sample": g.maybe(_b64(g.rng, b"abc"))})
             for _ in range(g.rng.randint(0, 5))]
    body = g.mutate({"files": files, "gitAttributes": g.maybe(""), "gitIgnore": g.maybe("")})
    rev = g.rng.choice(["main", "main", "dev", "%00", "a" * 300])
    params = g.rng.choice([None, {"create_pr": g.rng.choice(["1", "0", "true", "\x00"])}])
    return Request("POST", f"/api/models/{owner}/{name}/preupload/{rev}", content=g.raw_json(body), params=params,
                   headers={"content-type": "application/json"})


def _lfs_batch(g: Gen) -> Request:
    owner, name = _repo(g)
    objects = [g.mutate({"oid": g.oid(), "size": g.maybe(g.rng.choice([len(WEIGHTS), 0, 1]))})
               for _ in range(g.rng.randint(0, 4))]
    body = g.mutate({"operation": g.maybe("upload"), "transfers": g.maybe(["basic"]), "objects": objects,
                     "hash_algo": g.maybe("sha256"), "ref": g.maybe({"name": "refs/heads/main"})})
    suffix = g.rng.choice([".git", ".git", "", ".git/"])
    return Request("POST", f"/{owner}/{name}{suffix}/info/lfs/objects/batch", content=g.raw_json(body),
                   headers={"content-type": "application/vnd.git-lfs+json"})


def _lfs_upload(g: Gen) -> Request:
    oid = g.oid()
    params = g.mutate({"size": g.maybe(len(WEIGHTS)), "expires": g.maybe(2**31), "signature": g.maybe("0" * 64)})
    params = {str(_scalar(k)): _scalar(v) for k, v in params.items()} if isinstance(params, dict) \
        else {"size": _scalar(params)}
    body = g.rng.choice([WEIGHTS, b"", b"x" * 1000, WEIGHTS[:10]])
    segment = quote(oid if isinstance(oid, str) else json.dumps(oid), safe="")
    return Request("PUT", f"/api/hf/lfs/{segment}", content=body, params=params)


def _ndjson_line(g: Gen) -> Any:
    kind = g.rng.choice(["header", "file", "lfsFile", "deletedFile", "deletedFolder", "bogus", None, 7])
    value: Any
    if kind == "header":
        value = {"summary": g.maybe("fuzz"), "description": g.maybe(""), "parentCommit": g.maybe(None)}
    elif kind == "file":
        value = {"path": g.maybe(g.rng.choice(["notes.txt", "README.md", "adapter_config.json"])),
                 "content": g.maybe(_b64(g.rng, b"hello")), "encoding": g.maybe("base64")}
    elif kind == "lfsFile":
        value = {"path": g.maybe("adapter_model.safetensors"), "algo": g.maybe("sha256"), "oid": g.oid(),
                 "size": g.maybe(len(WEIGHTS))}
    else:
        value = {"path": g.maybe(g.rng.choice(["notes.txt", "", "/", "adapter_config.json"]))}
    line = g.mutate({"key": kind, "value": g.mutate(value)})
    return line


def _commit(g: Gen) -> Request:
    owner, name = _repo(g)
    lines = [g.raw_json(_ndjson_line(g)) for _ in range(g.rng.randint(0, 5))]
    body = b"\n".join(lines)
    roll = g.rng.random()
    if roll < 0.15:
        body = body[: g.rng.randint(0, len(body))]  # cut mid-line
    elif roll < 0.2:
        body = b"\n" * 1000 + b"{" * 10000
    elif roll < 0.25:
        body = b"\x00" * 100
    rev = g.rng.choice(["main", "main", "main", "v1", "%2e%2e"])
    return Request("POST", f"/api/models/{owner}/{name}/commit/{rev}", content=body,
                   headers={"content-type": "application/x-ndjson"})


def _model_info(g: Gen) -> Request:
    owner, name = _repo(g)
    rev = g.rng.choice(["", "/revision/main", "/revision/v1", "/revision/" + "0" * 40, "/revision/%00",
                        "/revision/" + "a" * 500])
    params = g.rng.choice([None, {"expand": g.text()}, {"blobs": "true"}, {"securityStatus": "1"}])
    return Request("GET", f"/api/models/{owner}/{name}{rev}", params=params, anonymous=g.rng.random() < 0.3)


def _tree(g: Gen) -> Request:
    owner, name = _repo(g)
    rev = g.rng.choice(["main", "v1", "0" * 40, "%00"])
    path = g.rng.choice(["", "/adapter_config.json", "/..", "/%00", "/a/b/c", "/" + "x" * 300])
    cursor = g.rng.choice([None, base64.urlsafe_b64encode(b"offset:1").decode(), base64.urlsafe_b64encode(
        f"offset:{g.number()}".encode()).decode(), g.text(), "!!!", base64.urlsafe_b64encode(b"\xff\xfe").decode()])
    drawn = {"cursor": cursor, "recursive": g.rng.choice([None, "true", "x"]),
             "expand": g.rng.choice([None, "1", "nope"]),
             "limit": g.rng.choice([None, "0", "-1", "1", str(10**30), "abc"])}
    params = {k: v for k, v in drawn.items() if v is not None}
    return Request("GET", f"/api/models/{owner}/{name}/tree/{rev}{path}", params=params, anonymous=g.rng.random() < 0.3)


def _paths_info(g: Gen) -> Request:
    owner, name = _repo(g)
    rev = g.rng.choice(["main", "v1", "%00"])
    roll = g.rng.random()
    if roll < 0.5:
        data = {"paths": [g.rng.choice(["adapter_config.json", g.text()]) for _ in range(g.rng.randint(0, 4))],
                "expand": g.rng.choice(["true", "false", g.text()])}
        return Request("POST", f"/api/models/{owner}/{name}/paths-info/{rev}", data=data)
    if roll < 0.7:
        return Request("POST", f"/api/models/{owner}/{name}/paths-info/{rev}", content=g.raw_json(g.value()),
                       headers={"content-type": "application/json"})
    content = g.rng.choice([b"paths=%ZZ&expand=1", b"--x\r\nContent-Disposition: form-data\r\n\r\n",
                            b"paths=" + b"a" * 100000, b"\x00\x01\x02", b"=&=&=&"])
    ctype = g.rng.choice(["application/x-www-form-urlencoded", "multipart/form-data; boundary=x",
                          "multipart/form-data", "text/plain"])
    return Request("POST", f"/api/models/{owner}/{name}/paths-info/{rev}", content=content,
                   headers={"content-type": ctype})


def _resolve(g: Gen) -> Request:
    owner, name = _repo(g)
    rev = g.rng.choice(["main", "v1", "0" * 40, "%00", "..%2f.."])
    filename = g.rng.choice(["adapter_config.json", "adapter_model.safetensors", "missing.json", "%00", "a/../b",
                             "..%2F..%2Fetc%2Fpasswd", "x" * 300])
    headers = g.rng.choice([{}, {"Range": "bytes=0-7"}, {"Range": "bytes=99999999-"}, {"Range": "bytes=-0"},
                            {"Range": "bytes=5-2"}, {"Range": "bytes=" + "0-1," * 500}, {"Range": "chars=0-1"}])
    return Request(g.rng.choice(["GET", "HEAD"]), f"/{owner}/{name}/resolve/{rev}/{filename}", headers=headers,
                   anonymous=g.rng.random() < 0.3)


def _validate_yaml(g: Gen) -> Request:
    content = g.rng.choice([
        "---\nlicense: mit\n---\n# hi", "---\n- a\n- b\n---\n", "---\n" + "a: " * 1000 + "\n---\n", "---\n: : :\n---",
        "---\n&a [*a]\n---\n", "---\n" + "[" * 5000 + "\n---\n", "---\n!!python/object:os.system ls\n---\n",
        "---\na: !!binary AAAA\n---\n", "---\nkey: \x00\n---\n", "---\n" + "x: &a [" + "*a," * 1000 + "]\n---\n",
        g.string(),
    ])
    body = g.mutate({"content": g.maybe(content), "repoType": g.maybe("model")})
    return Request("POST", "/api/validate-yaml", content=g.raw_json(body), headers={"content-type": "application/json"})


HF_ROUTES: dict[str, Callable[[Gen], Request]] = {
    "POST /api/repos/create": _create_repo,
    "DELETE /api/repos/delete": _delete_repo,
    "POST /api/models/{owner}/{name}/preupload/{rev}": _preupload,
    "POST /{owner}/{repo}.git/info/lfs/objects/batch": _lfs_batch,
    "PUT /api/hf/lfs/{sha256}": _lfs_upload,
    "POST /api/models/{owner}/{name}/commit/{rev}": _commit,
    "GET /api/models/{owner}/{name}[/revision/{rev}]": _model_info,
    "GET /api/models/{owner}/{name}/tree/{rev}[/{path}]": _tree,
    "POST /api/models/{owner}/{name}/paths-info/{rev}": _paths_info,
    "GET|HEAD /{owner}/{name}/resolve/{rev}/{filename}": _resolve,
    "POST /api/validate-yaml": _validate_yaml,
}


def _send(client: httpx.Client, request: Request, token: str) -> httpx.Response:
    headers = {**request.headers, **({} if request.anonymous else _bearer(token))}
    return client.request(request.method, request.path, content=request.content, data=request.data,
                          params=request.params, headers=headers)


@pytest.mark.parametrize("route", list(HF_ROUTES))
def test_hf_routes_survive_malformed_input(route, hub):
    """Every case is sent; every distinct failure (by status and error) is
    reported together, each with its first reproducer and the server's log."""
    rng = random.Random(f"{SEED}:{route}")
    gen, build = Gen(rng), HF_ROUTES[route]
    failures: dict[tuple[int | str, str], str] = {}
    token = hub.admin_token()  # no HF route revokes tokens
    # A connection per case, so a dropped connection is blamed on the request that dropped it.
    fresh = httpx.Limits(max_keepalive_connections=0)
    with httpx.Client(base_url=hub.url, timeout=TIMEOUT, limits=fresh) as client:
        for i in range(HF_CASES):
            request = build(gen)
            request.anonymous = request.anonymous or rng.random() < 0.15
            mark = len(hub.log.records)
            try:
                response = _send(client, request, token)
            except httpx.TransportError as exc:  # a dropped connection is a failure too
                key: tuple[int | str, str] = ("dropped", signature(hub.log.since(mark), type(exc).__name__))
                detail = f"dropped connection, {type(exc).__name__}: {exc}"
            else:
                if not server_failure(response.status_code, response.content):
                    continue
                key = (response.status_code, signature(hub.log.since(mark), response.text))
                detail = f"{response.status_code} {response.text[:200]!r}"
            failures.setdefault(key, (
                f"[case {i}] {detail}\n  bug: {key[1]}\n  reproduce: {request.reproducer(hub.url)}\n"
                f"  server log:\n{hub.log.last_traceback(mark)}"
            ))
    if failures:
        pytest.fail(f"{route}: {len(failures)} distinct server failure(s)\n\n" + "\n\n".join(failures.values()))
