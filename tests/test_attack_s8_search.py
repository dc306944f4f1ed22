"""Search's text query against what people type, and against private rows.

``q=`` is documented as a case-insensitive substring test on name, owner,
base model and description. ``crud.search_filters`` lower-cases ``q`` with
Python's ``str.lower()`` (full Unicode special casing: a final sigma, the
dotted capital I becomes two code points) and compares it with the
database's idea of lower case: PostgreSQL's per-character ``lower()``, and on
SQLite a ``LIKE`` that folds ASCII letters only (``search_sql.LowerLike``
drops ``lower()`` there). Where the two disagree, text typed exactly as it is
stored finds nothing.

The rest holds: private rows stay out of totals, facets, the type-ahead and
the catalog page for another user and for anonymous callers, through LIKE
wildcards and through PostgreSQL's text body (short queries, migration 0011).
"""

from __future__ import annotations

import httpx
import pytest
from raw_adapters import tiny_lora_dir

from peft_hub.client import HubClient

pytestmark = pytest.mark.integration


def _push_described(hub, tmp_path, described: dict[str, str], *, private: bool = False) -> dict[str, str]:
    """alice's adapters, one per name, each card's first paragraph the given text; returns tokens."""
    admin = HubClient(hub.url, hub.admin_token, cache_dir=tmp_path / "c0")
    tokens = {who: admin.create_token(scope="write", namespace=who)["token"] for who in ("alice", "mallory")}
    alice = HubClient(hub.url, tokens["alice"], cache_dir=tmp_path / "c1")
    for name, text in described.items():
        src = tiny_lora_dir(tmp_path / name, name)
        (src / "README.md").write_text(f"# {name}\n\n{text}\n")
        alice.push(src, name=f"alice/{name}", private=private)
    return tokens


def _names(http: httpx.Client, q: str) -> list[str]:
    r = http.get("/api/adapters", params={"q": q})
    assert r.status_code == 200, r.text
    return sorted(item["name"] for item in r.json()["items"])


#: Descriptions, and a query typed exactly as a part of one is stored.
SPECIAL_CASED = {
    "sisyphus": ("ΣΊΣΥΦΟΣ, a Greek adapter", "ΣΊΣΥΦΟΣ"),  # str.lower() ends it with a final sigma 'ς'
    "istanbul": ("İstanbul street signs", "İstanbul"),  # str.lower(): 'i' + U+0307, two code points
}


def test_text_typed_exactly_as_stored_is_found_whatever_its_letters(hub, tmp_path):
    _push_described(hub, tmp_path, {name: text for name, (text, _) in SPECIAL_CASED.items()})
    with httpx.Client(base_url=hub.url, timeout=30) as http:
        found = {name: _names(http, q) for name, (_, q) in SPECIAL_CASED.items()}
    assert found == {name: [name] for name in SPECIAL_CASED}, found


def test_on_sqlite_a_capital_umlaut_typed_as_stored_is_found(embedded_hub, tmp_path):
    _push_described(embedded_hub, tmp_path, {"uber": "Über alles"})
    with httpx.Client(base_url=embedded_hub.url, timeout=30) as http:
        assert _names(http, "Über") == ["uber"]


def test_ascii_and_sharp_s_queries_find_their_rows_on_both_backends(hub, tmp_path):
    """What does hold on both: ASCII case, and a lower-case sharp s (its own lower case)."""
    _push_described(hub, tmp_path, {"strasse": "Straße und STRASSE", "mixed": "MIXEDCase Word"})
    with httpx.Client(base_url=hub.url, timeout=30) as http:
        for q in ("Straße", "straße", "ß", "STRASSE", "strasse"):
            assert _names(http, q) == ["strasse"], q
        for q in ("MIXEDCase", "mixedcase", "XEDc", "e W"):
            assert _names(http, q) == ["mixed"], q


#: Queries that reach private rows if visibility were lost: LIKE wildcards, a backslash, a two-letter run
#: of the private card only (PostgreSQL's text body), its exact words, the separator's neighbours.
PROBES = ["%", "_", "__", "%%", "\\", "zq", "qz", "zqx", "vault", "zqxj vault", "e ", " "]


def test_private_rows_stay_out_of_every_count_facet_and_page(hub, tmp_path):
    tokens = _push_described(hub, tmp_path, {"s3cret": "zqxj vault of alice"}, private=True)
    with httpx.Client(base_url=hub.url, timeout=30) as anonymous, \
            httpx.Client(base_url=hub.url, timeout=30,
                         headers={"Authorization": f"Bearer {tokens['mallory']}"}) as mallory, \
            httpx.Client(base_url=hub.url, timeout=30,
                         headers={"Authorization": f"Bearer {tokens['alice']}"}) as alice:
        for caller in (anonymous, mallory):
            for q in PROBES:
                r = caller.get("/api/adapters", params={"q": q})
                assert r.status_code == 200 and r.json()["total"] == 0 and r.json()["items"] == [], (q, r.text)
                page = caller.get("/", params={"q": q})
                assert page.status_code == 200 and "s3cret" not in page.text, q  # (the page echoes q itself)
            for facet in ("owner", "base_model"):
                for prefix in ("", "a", "t", "%", "_"):
                    r = caller.get(f"/api/facets/{facet}", params={"prefix": prefix})
                    assert r.status_code == 200 and r.json()["values"] == [], (facet, prefix, r.text)
            assert caller.get("/api/adapters", params={"owner": "alice"}).json()["total"] == 0
            assert "s3cret" not in caller.get("/alice").text
            catalog = caller.get("/", params={"owner": "alice"})
            assert catalog.status_code == 200 and "s3cret" not in catalog.text
            assert "alice" not in caller.get("/").text  # no owner facet, no count, for alice's private rows
        for q in ("zq", "zqxj", "vault", "%"):  # the owner reads them, by the same plans
            assert _names(alice, q) == ["s3cret"], q
        assert alice.get("/api/facets/owner", params={"prefix": "al"}).json()["values"] == [
            {"value": "alice", "count": 1}]
