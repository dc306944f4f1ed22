"""The catalog's owner filter as a type-ahead over ``/api/facets/owner``, in
headless Chromium against a live hub: with JavaScript it suggests the
visible owners that start with what was typed, most used first; without it
the field is a plain text filter. (The filter becomes a type-ahead past
``catalog.SELECT_MAX`` owners, lowered here so that a few rows show it.)"""

from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone

import httpx
import pytest
from conftest import make_settings
from services import live_hub
from sqlalchemy import insert
from test_web import Tab, browser, result_names  # noqa: F401 - browser is the module's Chromium fixture

from peft_hub.hub.models import Adapter, Namespace
from peft_hub.hub.web import catalog

pytestmark = pytest.mark.integration

#: owner -> (public adapters, private adapters)
OWNERS = {"acme": (3, 0), "Acorn": (1, 0), "bob": (2, 0), "acsecret": (0, 2), "zeta": (1, 0)}


@pytest.fixture(scope="module")
def hub(request, tmp_path_factory):
    with live_hub(make_settings("embedded", tmp_path_factory.mktemp("typeahead"), request)) as hub:
        t0 = datetime(2026, 1, 1, tzinfo=timezone.utc)
        rows = []
        for owner, (public, private) in OWNERS.items():
            for i in range(public + private):
                rows.append({"owner": owner, "name": f"lora-{i}", "name_key": f"{owner}/lora-{i}".lower(),
                             "private": i >= public, "kind": "adapter", "downloads": 0, "created_at": t0,
                             "updated_at": t0 + timedelta(minutes=len(rows)), "base_model": "org/base",
                             "method": "LORA", "rank": 8, "max_rank": 8, "total_size": 1, "target_modules": [],
                             "description": ""})
        with hub.app.state.engine.begin() as conn:
            conn.execute(insert(Namespace), [{"name": o, "name_key": o.lower(), "kind": "user", "is_admin": False,
                                              "created_at": t0} for o in OWNERS])
            conn.execute(insert(Adapter), rows)
        yield hub


@pytest.fixture
def many_owners(monkeypatch):
    monkeypatch.setattr(catalog, "SELECT_MAX", 2)


def test_the_facets_api_suggests_visible_values_by_prefix_and_is_bounded(hub):
    get = lambda path: httpx.get(hub.url + path)  # noqa: E731
    body = get("/api/facets/owner?prefix=AC").json()
    assert body["values"] == [{"value": "acme", "count": 3}, {"value": "Acorn", "count": 1}]  # never acsecret
    admin = httpx.get(hub.url + "/api/facets/owner?prefix=ac", headers={"Authorization": f"Bearer {hub.admin_token}"})
    assert [v["value"] for v in admin.json()["values"]] == ["acme", "acsecret", "Acorn"]
    assert [v["value"] for v in get("/api/facets/owner?limit=1").json()["values"]] == ["acme"]
    assert get("/api/facets/owner?prefix=%25").json()["values"] == []  # a wildcard is a character here
    assert get("/api/facets/base_model?prefix=org/").json()["values"] == [{"value": "org/base", "count": 7}]
    for bad in ("/api/facets/private", "/api/facets/owner?limit=0", "/api/facets/owner?limit=51",
                "/api/facets/owner?prefix=" + "a" * 101):
        assert get(bad).status_code == 422, bad


def test_the_owner_filter_suggests_as_one_types(browser, hub, many_owners):  # noqa: F811 - the fixture
    tab = Tab(browser, hub.url)
    page = tab.page
    tab.goto("/")
    field = page.get_by_label("Owner")
    assert field.evaluate("e => e.tagName") == "INPUT"
    assert page.locator("ul[data-facet=owner] li").count() == 4  # top values, no 2,000-item list
    field.press_sequentially("ac")
    page.wait_for_function("() => [...document.querySelectorAll('#owner-options option')].map(o => o.value)"
                           ".join() === 'acme,Acorn'")
    assert page.locator("#owner-options option").first.inner_text() == "acme (3)"
    field.fill("acme")
    page.get_by_role("button", name="Apply filters").click()
    page.wait_for_url(re.compile(r"owner=acme"))
    assert sorted(result_names(page)) == ["acme/lora-0", "acme/lora-1", "acme/lora-2"]
    assert page.locator("#owner").input_value() == "acme"
    tab.close()


def test_without_javascript_the_owner_filter_is_a_text_field(browser, hub, many_owners):  # noqa: F811
    tab = Tab(browser, hub.url, java_script_enabled=False)
    page = tab.page
    tab.goto("/")
    page.get_by_label("Owner").fill("BOB")
    page.get_by_role("button", name="Apply filters").click()
    page.wait_for_url(re.compile(r"owner=BOB"))
    assert sorted(result_names(page)) == ["bob/lora-0", "bob/lora-1"]
    tab.close()
