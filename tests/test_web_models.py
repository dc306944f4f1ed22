"""Base models in the catalog: the model page lists every visible adapter made
for it with evals side by side, adapters link their base, the catalog and the
API filter by kind. A live hub with a tiny Llama pushed as a model; the view
functions are checked against its database, the pages in headless Chromium."""

from __future__ import annotations

import re

import httpx
import pytest
from conftest import make_settings
from services import live_hub
from test_web import _tab, browser  # noqa: F401 - the module's Chromium fixture

pytestmark = pytest.mark.integration

MODEL = "admin/llama-tiny"


def seed(hub, root):
    from tiny_models import make_lora, tiny_llama

    from peft_hub.client import HubClient

    base = tiny_llama()
    base.save_pretrained(root / "model")
    admin = HubClient(hub.url, hub.admin_token, cache_dir=root / "cache")
    admin.push(root / "model", name=MODEL, kind="model", message="tiny llama")
    loras = {  # the base named in any case matches; another base does not
        "acme/legal": ("Admin/Llama-Tiny", 8), "acme/chat": (MODEL, 4), "admin/elsewhere": ("other/model", 4),
    }
    for ref, (base_name, r) in loras.items():
        admin.push(make_lora(base, root / ref.replace("/", "-"), r=r, base_name=base_name), name=ref)
    admin.add_evals("acme/legal", [
        {"metric": "accuracy", "value": 0.7, "dataset": "mmlu", "extra": {"base_value": 0.5}},
        {"metric": "rouge_l", "value": 0.4, "dataset": "billsum"},
    ])
    admin.add_evals("acme/chat", [{"metric": "accuracy", "value": 0.6, "dataset": "mmlu"},
                                  {"metric": "accuracy", "value": 0.55, "dataset": "mmlu",
                                   "extra": {"variant": "base"}}])
    bob_token = admin.create_token(scope="write", namespace="bob")["token"]
    bob = HubClient(hub.url, bob_token, cache_dir=root / "cache-bob")
    bob.push(make_lora(base, root / "bob-secret", r=4, base_name=MODEL), name="bob/secret", private=True)
    return bob_token


@pytest.fixture(scope="module")
def models_hub(request, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("web-models")
    with live_hub(make_settings("embedded", tmp, request)) as hub:
        hub.bob_token = seed(hub, tmp)
        yield hub


@pytest.fixture
def tab(browser, models_hub):  # noqa: F811 - the imported fixture
    yield from _tab(browser, models_hub, viewport={"width": 1280, "height": 900})


def _principal(name: str):
    from peft_hub.hub.auth import Principal
    from peft_hub.hub.models import Namespace

    return Principal(user=Namespace(name=name, kind="user"), scope="read")


def _model(session):
    from peft_hub.hub import crud

    return crud.get_adapter(session, owner="admin", name="llama-tiny", principal=None)


# --- view functions ------------------------------------------------------------


def test_base_page_lists_exactly_the_visible_adapters(models_hub):
    from sqlmodel import Session

    from peft_hub.hub.web.model_page import adapters_for

    with Session(models_hub.app.state.engine) as session:
        anonymous = {f"{a.owner}/{a.name}" for a in adapters_for(session, None, MODEL)}
        owner = {f"{a.owner}/{a.name}" for a in adapters_for(session, _principal("bob"), "ADMIN/llama-tiny")}
        stranger = {f"{a.owner}/{a.name}" for a in adapters_for(session, _principal("carol"), MODEL)}
    assert anonymous == stranger == {"acme/legal", "acme/chat"}
    assert owner == {"acme/legal", "acme/chat", "bob/secret"}


def test_evals_table_values_and_base_scores(models_hub):
    from sqlmodel import Session

    from peft_hub.hub import crud
    from peft_hub.hub.models import pk
    from peft_hub.hub.web.model_page import adapters_for, evals_table

    with Session(models_hub.app.state.engine) as session:
        adapters = adapters_for(session, None, MODEL)
        table = evals_table(adapters, crud.main_revision_evals(session, adapter_ids=[pk(a) for a in adapters]))
    assert [c["label"] for c in table["columns"]] == ["accuracy · mmlu", "rouge_l · billsum"]
    cells = {f"{r['adapter'].owner}/{r['adapter'].name}": r["cells"] for r in table["rows"]}
    acc, rouge = (c["key"] for c in table["columns"])
    assert cells["acme/legal"][acc] == {"value": 0.7, "base": 0.5}
    assert cells["acme/legal"][rouge] == {"value": 0.4, "base": None}
    assert cells["acme/chat"] == {acc: {"value": 0.6, "base": 0.55}}  # the base's own eval, not a column


def test_adapter_links_its_base_only_when_the_hub_holds_it(models_hub):
    from sqlmodel import Session

    from peft_hub.hub.web.detail import find_base

    with Session(models_hub.app.state.engine) as session:
        found = find_base(session, None, "Admin/Llama-Tiny")
        assert found is not None and (found.owner, found.name, found.kind) == ("admin", "llama-tiny", "model")
        for missing in ("other/model", None, "", "llama-tiny", "admin/llama-tiny/x", "acme/legal", "%/%"):
            assert find_base(session, None, missing) is None, missing


def test_api_kind_field_and_filter(models_hub):
    with httpx.Client(base_url=models_hub.url) as client:
        everything = client.get("/api/adapters", params={"per_page": 100}).json()
        assert {i["id"]: i["kind"] for i in everything["items"]} == {
            MODEL: "model", "acme/legal": "adapter", "acme/chat": "adapter", "admin/elsewhere": "adapter"}
        models = client.get("/api/adapters", params={"kind": "model"}).json()
        assert [i["id"] for i in models["items"]] == [MODEL] and models["total"] == 1
        assert client.get("/api/adapters", params={"kind": "adapter"}).json()["total"] == 3
        assert client.get(f"/api/adapters/{MODEL}").json()["kind"] == "model"
        assert client.get("/api/adapters/acme/legal").json()["kind"] == "adapter"
        bad = client.get("/api/adapters", params={"kind": "model' OR 1=1"})
        assert bad.status_code == 422


# --- pages ---------------------------------------------------------------------


def test_model_page_shows_model_adapters_and_side_by_side_evals(tab):
    page = tab.page
    assert tab.goto(f"/{MODEL}").status == 200
    details = page.locator("dl.meta").inner_text()
    assert "llama" in details and "LlamaForCausalLM" in details
    names = [t.replace("\u200b", "") for t in page.locator("table.base-adapters a.adapter-link").all_inner_texts()]
    assert sorted(names) == ["acme/chat", "acme/legal"]
    row = page.locator('table.compare-table tr[data-adapter="acme/legal"]')
    assert "0.7" in row.inner_text() and "base 0.5" in row.inner_text()
    snippets = page.locator("#use").inner_text()
    assert f"peft-hub materialize {MODEL} acme/" in snippets and "-o merged" in snippets
    assert f'AutoModelForCausalLM.from_pretrained("{MODEL}")' in snippets and "HF_ENDPOINT" in snippets
    page.locator("table.base-adapters a", has_text="legal").click()
    page.wait_for_url(re.compile(r"/acme/legal$"))
    page.locator("a.base-link").click()  # and back to the base through its link
    page.wait_for_url(re.compile(rf"/{MODEL}$"))


def test_private_adapter_appears_on_the_model_page_after_sign_in(tab, models_hub):
    page = tab.page
    tab.goto(f"/{MODEL}")
    assert "bob/secret" not in page.locator("#adapters").inner_text()
    tab.goto(f"/login?next=/{MODEL}")
    page.get_by_label("API token").fill(models_hub.bob_token)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url(re.compile(rf"/{MODEL}$"))
    assert "bob/secret" in page.locator("#adapters").inner_text()


def test_catalog_kind_facet_filters_models_and_adapters(tab):
    page = tab.page
    tab.goto("/")
    facet = page.locator('ul[data-facet="kind"]')
    assert "Models" in facet.inner_text() and "Adapters" in facet.inner_text()
    facet.get_by_role("link", name=re.compile("Models")).click()
    page.wait_for_url(re.compile(r"kind=model"))
    names = [t.strip().replace("\u200b", "") for t in page.locator("table.results a.adapter-link").all_inner_texts()]
    assert names == [MODEL]
    tab.goto("/?kind=adapter")
    names = [t.strip().replace("\u200b", "") for t in page.locator("table.results a.adapter-link").all_inner_texts()]
    assert sorted(names) == ["acme/chat", "acme/legal", "admin/elsewhere"]
    tab.goto("/?kind=<script>")
    assert "unknown kind" in page.locator(".notice.warning").inner_text()
