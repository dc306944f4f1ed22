"""The web catalog in a real browser: headless Debian Chromium driven by
Playwright, against a live hub loaded with adapters that have evals,
revisions, lineage and a private adapter.

Chromium is never downloaded (no ``playwright install``): the tests use
``/usr/bin/chromium`` and skip when it is missing, or fail under
``PEFT_HUB_REQUIRE_SERVICES=1``.

``PEFT_HUB_WRITE_SCREENSHOTS=1 pytest tests/test_web.py -k screenshots``
refreshes the PNGs under docs/screenshots/.
"""

from __future__ import annotations

import copy
import json
import os
import re
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
from conftest import make_settings
from services import live_hub, missing

pytestmark = pytest.mark.integration

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]
SCREENSHOTS = Path(__file__).resolve().parent.parent / "docs" / "screenshots"

LLAMA = "meta-llama/Llama-3.1-8B-Instruct"
MISTRAL = "mistralai/Mistral-7B-v0.3"
QWEN = "Qwen/Qwen2.5-7B-Instruct"

LEGAL_CARD = """---
license: apache-2.0
base_model: meta-llama/Llama-3.1-8B-Instruct
tags: [legal, summarization, lora]
---
# Legal summarizer

A LoRA adapter that turns US bills and contracts into short, faithful summaries.

## Training

| | |
|---|---|
| Data | BillSum train (18k bills) + 2k hand-written contract summaries |
| Epochs | 3 |
| Learning rate | 2e-4, cosine |

## Usage

```python
from peft import PeftModel
model = PeftModel.from_pretrained(base, "acme/legal-summarizer")
```

> Summaries are not legal advice. See the [BillSum paper](https://arxiv.org/abs/1910.00523).
"""


# --- fixtures ------------------------------------------------------------------


@pytest.fixture(scope="module")
def browser():
    """One headless Chromium for the module (Debian's, never a downloaded one)."""
    if not CHROMIUM.exists():
        missing(f"Chromium not found at {CHROMIUM} (apt-get install chromium)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        missing("the playwright Python package is not installed")
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield browser
        browser.close()


class Tab:
    """A page in a fresh browser context that records dialogs, script errors
    and every request (the catalog must load nothing from elsewhere)."""

    def __init__(self, browser, base_url: str, **context_args) -> None:
        self.base_url = base_url
        self.context = browser.new_context(base_url=base_url, **context_args)
        self.context.set_default_timeout(10_000)
        self.page = self.context.new_page()
        self.dialogs: list[str] = []
        self.errors: list[str] = []
        self.requests: list[str] = []
        self.page.on("dialog", lambda d: (self.dialogs.append(d.message), d.dismiss()))
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))
        self.page.on("request", lambda r: self.requests.append(r.url))

    def goto(self, path: str):
        return self.page.goto(path)

    def close(self) -> None:
        self.context.close()
        outside = [u for u in self.requests if not u.startswith(self.base_url) and not u.startswith("data:")]
        assert not outside, f"pages loaded resources from outside the hub: {outside}"
        assert not self.errors, f"script errors: {self.errors}"


def _tab(browser, hub, **kwargs):
    tab = Tab(browser, hub.url, **kwargs)
    yield tab
    tab.close()


def _adapters(root: Path) -> dict[str, Path]:
    """Tiny adapters on three "base models" (tiny Llamas named after real ones)."""
    from peft import IA3Config, get_peft_model
    from tiny_models import make_lora, tiny_llama

    base = tiny_llama()
    dirs = {
        "legal-v1": make_lora(base, root / "legal-v1", r=8, seed=1, base_name=LLAMA),
        "legal-v2": make_lora(base, root / "legal-v2", r=8, seed=2, base_name=LLAMA),
        "contract-qa": make_lora(base, root / "contract-qa", r=16, seed=3, base_name=LLAMA),
        "medical-qa": make_lora(base, root / "medical-qa", r=32, seed=4, base_name=LLAMA),
        "mix": make_lora(base, root / "mix", r=40, seed=5, base_name=LLAMA),
        "code-review": make_lora(base, root / "code-review", r=8, seed=6, base_name=MISTRAL),
        "math-tutor": make_lora(base, root / "math-tutor", r=64, seed=7, base_name=QWEN),
        "support-bot": make_lora(base, root / "support-bot", r=4, seed=8, base_name=LLAMA),
    }
    ia3 = get_peft_model(copy.deepcopy(base), IA3Config(
        target_modules=["k_proj", "v_proj", "down_proj"], feedforward_modules=["down_proj"], task_type="CAUSAL_LM"))
    ia3.peft_config["default"].base_model_name_or_path = QWEN
    ia3.save_pretrained(root / "sentiment-ia3")
    dirs["sentiment-ia3"] = root / "sentiment-ia3"
    for name in ("legal-v1", "legal-v2"):
        (dirs[name] / "README.md").write_text(LEGAL_CARD)
    return dirs


def add_lineage(path: Path, parents: list[dict], method: str = "stack") -> None:
    """Write a compose lineage record into an adapter's safetensors metadata."""
    from safetensors.torch import load_file, save_file

    weights = path / "adapter_model.safetensors"
    record = {"method": method, "params": {"weights": [p["weight"] for p in parents], "max_rank": 64},
              "parents": parents, "peft_hub_version": "0.1.0"}
    save_file(load_file(weights), weights, metadata={"format": "pt", "peft_hub.lineage": json.dumps(record)})


def parent_record(push, ref: str, weight: float) -> dict:
    sha256 = next(f["sha256"] for f in push.detail["files"] if f["path"] == "adapter_model.safetensors")
    return {"ref": ref, "revision": push.revision, "sha256": sha256, "weight": weight}


def seed_catalog(hub, root: Path) -> dict:
    """Push a small, realistic catalog; return the push results and bob's token."""
    from sqlmodel import Session, select

    from peft_hub.client import HubClient
    from peft_hub.hub.models import Adapter, Eval, Revision

    dirs = _adapters(root)
    admin = HubClient(hub.url, hub.admin_token, cache_dir=root / "cache")
    pushes = {}
    pushes["legal-v1"] = admin.push(dirs["legal-v1"], name="acme/legal-summarizer", tags=["v1"],
                                    message="First release")
    admin.add_evals("acme/legal-summarizer", [
        {"metric": "rouge_l", "value": 0.382, "dataset": "billsum", "split": "test"},
        {"metric": "accuracy", "value": 0.612, "dataset": "legalbench", "split": "test"},
        {"metric": "rouge_l", "value": 0.301, "dataset": "billsum", "split": "test", "extra": {"variant": "base"}},
        {"metric": "accuracy", "value": 0.548, "dataset": "legalbench", "split": "test", "extra": {"variant": "base"}},
    ])
    pushes["legal-v2"] = admin.push(dirs["legal-v2"], name="acme/legal-summarizer", tags=["stable"],
                                    message="Retrained with contract summaries")
    admin.add_evals("acme/legal-summarizer", [
        {"metric": "rouge_l", "value": 0.417, "dataset": "billsum", "split": "test"},
        {"metric": "accuracy", "value": 0.655, "dataset": "legalbench", "split": "test"},
    ])
    pushes["contract-qa"] = admin.push(dirs["contract-qa"], name="acme/contract-qa")
    admin.add_evals("acme/contract-qa", [
        {"metric": "f1", "value": 0.71, "dataset": "cuad"},
        {"metric": "f1", "value": 0.52, "dataset": "cuad", "extra": {"variant": "base"}},
    ])
    pushes["medical-qa"] = admin.push(dirs["medical-qa"], name="admin/medical-qa")
    admin.add_evals("admin/medical-qa", [{"metric": "accuracy", "value": 0.583, "dataset": "medqa"}])
    add_lineage(dirs["mix"], [parent_record(pushes["legal-v2"], "acme/legal-summarizer", 0.7),
                              parent_record(pushes["medical-qa"], "admin/medical-qa", 0.3)])
    pushes["mix"] = admin.push(dirs["mix"], name="admin/legal-medical-mix", message="compose stack 0.7/0.3")
    admin.add_evals("admin/legal-medical-mix", [
        {"metric": "accuracy", "value": 0.634, "dataset": "legalbench", "split": "test"},
        {"metric": "accuracy", "value": 0.561, "dataset": "medqa"},
    ])
    pushes["code-review"] = admin.push(dirs["code-review"], name="admin/code-review")
    admin.add_evals("admin/code-review", [{"metric": "pass@1", "value": 0.412, "dataset": "humaneval"}])
    pushes["math-tutor"] = admin.push(dirs["math-tutor"], name="admin/math-tutor")
    admin.add_evals("admin/math-tutor", [{"metric": "accuracy", "value": 0.48, "dataset": "gsm8k"}])
    pushes["sentiment-ia3"] = admin.push(dirs["sentiment-ia3"], name="admin/sentiment-ia3")
    bob_token = admin.create_token(scope="write", namespace="bob")["token"]
    bob = HubClient(hub.url, bob_token, cache_dir=root / "cache-bob")
    pushes["support-bot"] = bob.push(dirs["support-bot"], name="bob/support-bot", private=True)
    # A lived-in hub: spread the update times and download counts.
    ages = {"legal-summarizer": 2, "contract-qa": 9, "medical-qa": 30, "legal-medical-mix": 1, "code-review": 45,
            "math-tutor": 4, "sentiment-ia3": 70, "support-bot": 3}
    downloads = {"legal-summarizer": 1840, "contract-qa": 312, "medical-qa": 977, "legal-medical-mix": 41,
                 "code-review": 2290, "math-tutor": 615, "sentiment-ia3": 88, "support-bot": 7}
    with Session(hub.app.state.engine) as session:
        for adapter in session.exec(select(Adapter)):
            adapter.updated_at -= timedelta(days=ages[adapter.name], hours=3)
            adapter.downloads = downloads[adapter.name]
            session.add(adapter)
        created = {}
        for i, revision in enumerate(session.exec(select(Revision).order_by(Revision.id)).all()):
            revision.created_at -= timedelta(days=40 - i * 4)
            created[revision.id] = revision.created_at
            session.add(revision)
        for e in session.exec(select(Eval)):
            e.created_at = created[e.revision_id] + timedelta(hours=6)
            session.add(e)
        session.commit()
    return {"pushes": pushes, "bob_token": bob_token, "dirs": dirs}


@pytest.fixture(scope="module")
def catalog_hub(request, tmp_path_factory):
    """One live hub (SQLite + local files) with the seeded catalog, shared by
    the read-only tests of this module."""
    tmp = tmp_path_factory.mktemp("web-hub")
    with live_hub(make_settings("embedded", tmp, request)) as hub:
        hub.seed = seed_catalog(hub, tmp / "adapters")
        yield hub


@pytest.fixture
def tab(browser, catalog_hub):
    yield from _tab(browser, catalog_hub, viewport={"width": 1280, "height": 900})


def result_names(page) -> list[str]:
    return [t.strip().replace("\u200b", "") for t in page.locator("table.results a.adapter-link").all_inner_texts()]


# --- catalog -------------------------------------------------------------------


def test_catalog_lists_public_adapters_with_facet_counts(tab):
    tab.goto("/")
    names = result_names(tab.page)
    assert len(names) == 7 and "bob/support-bot" not in names
    assert names[0] == "admin/legal-medical-mix"  # newest update first
    assert tab.page.locator("#results-title").inner_text().startswith("7 adapters")
    base_facet = {
        li.locator(".facet-value").inner_text(): int(li.locator(".count").inner_text())
        for li in tab.page.locator("ul[data-facet=base_model] li").all()
    }
    assert base_facet == {LLAMA: 4, QWEN: 2, MISTRAL: 1}
    methods = tab.page.locator("ul[data-facet=method]").inner_text()
    assert re.search(r"LORA\s+6", methods) and re.search(r"IA3\s+1", methods)
    # The headline eval is the newest adapter eval of the main revision, not the base model's.
    row = tab.page.locator("table.results tr", has=tab.page.locator("a[href='/acme/legal-summarizer']"))
    assert "accuracy 0.655" in row.inner_text()


def test_search_and_filters_narrow_results_and_are_shareable(tab):
    page = tab.page
    tab.goto("/")
    page.get_by_label("Search adapters").fill("legal")
    page.get_by_label("Search adapters").press("Enter")
    page.wait_for_url(re.compile(r"/\?q=legal$"))  # empty fields are left out of the link
    assert sorted(result_names(page)) == ["acme/legal-summarizer", "admin/legal-medical-mix"]

    page.get_by_label("Owner").select_option("acme")
    page.get_by_role("button", name="Apply filters").click()
    page.wait_for_url(re.compile(r"owner=acme"))
    assert result_names(page) == ["acme/legal-summarizer"]

    # Facet links, rank range and tags map onto the same search.
    tab.goto("/?method=IA3")
    assert result_names(page) == ["admin/sentiment-ia3"]
    tab.goto("/?min_rank=30")
    assert sorted(result_names(page)) == ["admin/legal-medical-mix", "admin/math-tutor", "admin/medical-qa"]
    tab.goto("/?min_rank=30&max_rank=40&base_model=" + LLAMA)
    assert sorted(result_names(page)) == ["admin/legal-medical-mix", "admin/medical-qa"]
    tab.goto("/?tag=v1")
    assert result_names(page) == ["acme/legal-summarizer"]
    page.get_by_role("link", name=re.compile("Remove filter tag")).click()
    page.wait_for_url(re.compile(r"/$"))
    assert len(result_names(page)) == 7

    page.locator("ul[data-facet=base_model] a", has_text=MISTRAL).click()
    page.wait_for_url(re.compile(r"base_model=mistralai"))
    assert result_names(page) == ["admin/code-review"]


def test_sorting_by_column(tab):
    page = tab.page
    tab.goto("/?base_model=" + LLAMA)
    page.locator("th a.sort", has_text="Rank").click()
    page.wait_for_url(re.compile(r"sort=rank&order=asc"))
    assert result_names(page) == [
        "acme/legal-summarizer", "acme/contract-qa", "admin/medical-qa", "admin/legal-medical-mix"]
    assert page.locator("th[aria-sort=ascending]").inner_text().startswith("Rank")
    page.locator("th a.sort", has_text="Rank").click()  # again: descending
    page.wait_for_url(re.compile(r"sort=rank&order=desc"))
    assert result_names(page)[0] == "admin/legal-medical-mix"
    page.locator("th a.sort", has_text="Downloads").click()
    assert result_names(page)[0] == "acme/legal-summarizer"


def test_result_leads_to_adapter_page(tab):
    page = tab.page
    tab.goto("/?q=contract")
    page.get_by_role("link", name="acme/contract-qa").click()
    page.wait_for_url(re.compile(r"/acme/contract-qa$"))
    assert page.locator("h1").inner_text().replace("\n", "") == "acme/contract-qa"  # the card's headings start at h3
    assert LLAMA in page.locator(".meta").inner_text()
    page.get_by_role("link", name="acme", exact=True).first.click()  # the namespace page
    page.wait_for_url(re.compile(r"/acme$"))
    assert sorted(result_names(page)) == ["acme/contract-qa", "acme/legal-summarizer"]


# --- adapter page ----------------------------------------------------------------


def test_adapter_page_card_files_snippets(tab, catalog_hub):
    page = tab.page
    push = catalog_hub.seed["pushes"]["legal-v2"]
    tab.goto("/acme/legal-summarizer")
    card = page.locator("#card .markdown")
    assert card.locator("h3").first.inner_text() == "Legal summarizer"
    assert card.locator("table").count() == 1 and card.locator("pre code").count() == 1
    assert card.locator("a[href='https://arxiv.org/abs/1910.00523']").get_attribute("rel").startswith("nofollow")
    files = {f["path"]: f for f in push.detail["files"]}
    row = page.locator("#files tr", has_text="adapter_model.safetensors")
    assert files["adapter_model.safetensors"]["sha256"] in row.inner_text()
    snippets = page.locator("#use").inner_text()
    assert "peft-hub pull acme/legal-summarizer" in snippets
    assert f"export PEFT_HUB_URL={catalog_hub.url}" in snippets
    assert f'os.environ["HF_ENDPOINT"] = "{catalog_hub.url}"' in snippets
    assert f"HF_ENDPOINT={catalog_hub.url} vllm serve {LLAMA} --enable-lora --lora-modules " \
           "legal-summarizer=acme/legal-summarizer --max-lora-rank 8" in snippets
    assert "peft-hub compose acme/legal-summarizer+" in snippets
    # The file link downloads the exact bytes.
    href = page.locator("#files a", has_text="adapter_config.json").get_attribute("href")
    body = httpx.get(catalog_hub.url + href).content
    assert body == (catalog_hub.seed["dirs"]["legal-v2"] / "adapter_config.json").read_bytes()


def test_evals_chart_links_to_revisions(tab, catalog_hub):
    page = tab.page
    v1, v2 = catalog_hub.seed["pushes"]["legal-v1"].revision, catalog_hub.seed["pushes"]["legal-v2"].revision
    tab.goto("/acme/legal-summarizer")
    charts = page.locator("#evals figure.chart")
    assert charts.count() == 2
    accuracy = charts.filter(has_text="accuracy")
    assert accuracy.locator("circle.point").count() == 2
    assert accuracy.locator("line.base-line").count() == 1
    assert "base model 0.548" in accuracy.locator("text.base-label").text_content()
    # vs-base column: 0.655 - 0.548
    row = page.locator("#evals tbody tr", has_text="0.655")
    assert "+0.107" in row.inner_text()
    # Clicking the older point opens that revision.
    accuracy.locator(f"a[href='/acme/legal-summarizer@{v1}'] circle").click()
    page.wait_for_url(re.compile(f"@{v1}$"))
    assert "older revision" in page.locator(".revision-bar").inner_text()
    assert v1[:8] in page.locator(".revision-bar code").inner_text()
    page.locator(".revision-bar").get_by_role("link", name="View main").click()
    page.wait_for_url(re.compile(r"/acme/legal-summarizer$"))
    assert v2[:8] in page.locator(".revision-bar code").inner_text()


def test_revisions_and_tags_link_to_each_revision(tab, catalog_hub):
    page = tab.page
    v1 = catalog_hub.seed["pushes"]["legal-v1"].revision
    tab.goto("/acme/legal-summarizer")
    revisions = page.locator("#revisions li")
    assert revisions.count() == 2
    revisions.get_by_role("link", name="v1").click()
    page.wait_for_url(re.compile(r"@v1$"))
    assert v1[:8] in page.locator(".revision-bar").inner_text()
    assert "peft-hub pull acme/legal-summarizer@v1" in page.locator("#use").inner_text()
    tab.goto(f"/acme/legal-summarizer?revision={v1}")
    assert "older revision" in page.locator(".revision-bar").inner_text()
    tab.goto("/acme/legal-summarizer@nope")
    assert "not found" in page.locator(".notice.error").inner_text()


def test_lineage_links_to_parents_and_children(tab, catalog_hub):
    page = tab.page
    parent_rev = catalog_hub.seed["pushes"]["legal-v2"].revision
    tab.goto("/admin/legal-medical-mix")
    parents = page.locator(".lineage-parents li")
    assert parents.count() == 2
    assert "weight 0.7" in parents.nth(0).inner_text() and "weight 0.3" in parents.nth(1).inner_text()
    assert "stack" in page.locator("#lineage h3").first.inner_text()
    parents.nth(0).get_by_role("link", name="acme/legal-summarizer").click()
    page.wait_for_url(re.compile(f"/acme/legal-summarizer@{parent_rev}$"))
    child = page.locator(".lineage-children a", has_text="admin/legal-medical-mix")
    assert child.count() == 1
    child.click()
    page.wait_for_url(re.compile(r"/admin/legal-medical-mix@[0-9a-f]{40}$"))
    assert page.locator(".badge-composed").inner_text() == "composed (stack)"


# --- compose preview -------------------------------------------------------------


def test_compose_preview_from_catalog_shows_command(tab):
    page = tab.page
    tab.goto("/?base_model=" + LLAMA + "&sort=name&order=asc")
    page.get_by_label("Select acme/legal-summarizer to compose").check()
    page.get_by_label("Select acme/contract-qa to compose").check()
    page.get_by_role("button", name="Compose selected").click()
    page.wait_for_url(re.compile(r"/compose\?"))
    page.get_by_label("Weight").nth(0).fill("0.7")
    page.get_by_label("Weight").nth(1).fill("0.3")
    page.get_by_label("Method").select_option("stack")
    page.get_by_role("button", name="Preview").click()
    page.wait_for_url(re.compile(r"w=0\.7"))
    assert "Compatible" in page.locator("#verdict-title").inner_text()
    command = page.locator("#compose-command").inner_text().strip()
    assert command == "peft-hub compose acme/contract-qa+acme/legal-summarizer --weights 0.7,0.3 --method stack"
    assert page.locator("#result-rank").inner_text() == "24"  # stack: 16 + 8


def test_compose_preview_flags_incompatible_choices(tab):
    page = tab.page
    tab.goto("/compose?a=acme/legal-summarizer&a=admin/code-review&w=0.5&w=0.5&method=stack")
    assert "Not compatible" in page.locator("#verdict-title").inner_text()
    assert "different base models" in page.locator(".problems").inner_text()

    tab.goto("/compose?a=admin/medical-qa&a=admin/legal-medical-mix&method=stack")
    assert page.locator("#result-rank").inner_text() == "72"  # 32 + 40, above the default 64
    assert "above --max-rank 64" in page.locator(".problems").inner_text()
    assert page.locator(".badge-warn").count() == 1

    tab.goto("/compose?a=admin/medical-qa&a=admin/legal-medical-mix&method=svd&rank=32")
    assert "Compatible" in page.locator("#verdict-title").inner_text()
    assert page.locator("#compose-command").inner_text().strip() == (
        "peft-hub compose admin/medical-qa+admin/legal-medical-mix --weights 1,1 --method svd --rank 32")

    tab.goto("/compose?a=admin/sentiment-ia3&a=admin/math-tutor&method=ties")
    problems = page.locator(".problems").inner_text()
    assert "LoRA adapters only" in problems and "needs a density" in problems

    tab.goto("/compose?a=acme/legal-summarizer&a=bob/support-bot")  # private: not visible when signed out
    assert "not found" in page.locator(".problems").inner_text()


def test_compose_add_row_button(tab):
    page = tab.page
    tab.goto("/compose")
    assert page.locator(".compose-row").count() == 2
    page.get_by_role("button", name="Add another adapter").click()
    assert page.locator(".compose-row").count() == 3
    assert page.evaluate("document.activeElement.id") == "a-3"
    page.get_by_label("Adapter 1").fill("acme/legal-summarizer")
    page.get_by_label("Adapter 2").fill("acme/contract-qa")
    page.get_by_label("Adapter 3").fill("admin/medical-qa")
    page.get_by_role("button", name="Preview").click()
    page.wait_for_url(re.compile(r"/compose\?"))
    assert page.locator("#result-rank").inner_text() == "56"


# --- sign-in -----------------------------------------------------------------------


def test_private_adapter_hidden_until_sign_in(tab, catalog_hub):
    page = tab.page
    tab.goto("/")
    assert "bob/support-bot" not in result_names(page)
    response = tab.goto("/bob/support-bot")
    assert response.status == 404 and "sign in" in page.locator(".notice.error").inner_text()

    page.get_by_role("navigation", name="Site").get_by_role("link", name="Sign in").click()
    page.get_by_label("API token").fill("phub_" + "x" * 40)
    page.get_by_role("button", name="Sign in").click()
    assert "not valid" in page.get_by_role("alert").inner_text()

    page.get_by_label("API token").fill(catalog_hub.seed["bob_token"])
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url(re.compile(r"/bob/support-bot$"))  # back where sign-in started
    assert page.locator(".badge-private").count() == 1
    cookie = next(c for c in tab.context.cookies() if c["name"] == "peft_hub_session")
    assert cookie["httpOnly"] and cookie["sameSite"] in ("Lax", "Strict")
    assert "bob" in page.locator(".site-nav").inner_text()
    tab.goto("/")
    assert "bob/support-bot" in result_names(page)

    page.get_by_role("button", name="Sign out").click()
    page.wait_for_url(re.compile(r"/$"))
    assert "bob/support-bot" not in result_names(page)
    assert tab.goto("/bob/support-bot").status == 404


def test_session_is_csrf_safe_and_read_only_for_the_api(browser, catalog_hub):
    url = catalog_hub.url
    with httpx.Client(base_url=url) as anonymous:
        form = anonymous.get("/login")
        token = re.search(r'name="csrf" value="([^"]+)"', form.text).group(1)
        no_csrf = anonymous.post("/login", data={"token": catalog_hub.seed["bob_token"], "csrf": "forged"})
        assert no_csrf.status_code == 403 and anonymous.get("/api/whoami").status_code == 401
        cross_site = anonymous.post("/login", data={"token": catalog_hub.seed["bob_token"], "csrf": token},
                                    headers={"Origin": "http://evil.example"})
        assert cross_site.status_code == 403 and anonymous.get("/api/whoami").status_code == 401
        signed_in = anonymous.post("/login", data={"token": catalog_hub.seed["bob_token"], "csrf": token})
        assert signed_in.status_code == 303
        # The cookie reads through the API…
        assert anonymous.get("/api/adapters/bob/support-bot").status_code == 200
        assert anonymous.get("/api/whoami").json()["name"] == "bob"
        # …but never authenticates a change: that needs the token in a header.
        assert anonymous.delete("/api/adapters/bob/support-bot").status_code == 404
        assert anonymous.post("/api/adapters/bob/support-bot/evals",
                              json={"evals": [{"metric": "m", "value": 1, "dataset": "d"}]}).status_code == 404
        assert anonymous.get("/api/adapters/bob/support-bot").status_code == 200
        assert anonymous.get("/api/adapters/bob/support-bot/evals").json() == []
        # Sign-out with a forged CSRF token does nothing.
        anonymous.post("/logout", data={"csrf": "forged"})
        assert anonymous.get("/api/whoami").status_code == 200


def test_page_routes_do_not_shadow_the_api(catalog_hub):
    url = catalog_hub.url
    api = httpx.get(f"{url}/api/adapters/acme/legal-summarizer")
    assert api.headers["content-type"] == "application/json" and api.json()["id"] == "acme/legal-summarizer"
    for path in ("/api/nope", "/api/adapters", "/api/models/acme/legal-summarizer", "/acme/legal-summarizer.git",
                 "/acme/legal-summarizer/resolve/main/adapter_config.json", "/static/nope.css"):
        response = httpx.get(url + path)
        assert not response.headers.get("content-type", "").startswith("text/html"), path
    page = httpx.get(f"{url}/acme/legal-summarizer")
    assert page.headers["content-type"].startswith("text/html")
    assert "default-src 'self'" in page.headers["content-security-policy"]
    assert httpx.get(f"{url}/static/style.css").headers["content-type"].startswith("text/css")


# --- safety ------------------------------------------------------------------------

EVIL_CARD = """# Totally normal card

<script>window.__pwned = "card script"; alert("card")</script>

<img src=x onerror="window.__pwned = 'img'">

[click me](javascript:window.__pwned='link') and <a href="javascript:alert(1)">raw link</a>
and [data](data:text/html;base64,PHNjcmlwdD5hbGVydCgxKTwvc2NyaXB0Pg==)

![pic](javascript:alert('img'))
"""
EVIL_METRIC = '<img src=x onerror="window.__pwned=1">'
EVIL_DATASET = "<script>window.__pwned=2</script>"
EVIL_BASE = "evil/<svg onload=alert(1)>"


def test_user_content_is_escaped_and_never_runs(browser, embedded_hub, tmp_path):
    from tiny_models import make_lora, tiny_llama

    from peft_hub.client import HubClient

    path = make_lora(tiny_llama(), tmp_path / "evil", r=4, base_name=EVIL_BASE)
    (path / "README.md").write_text(EVIL_CARD)
    client = HubClient(embedded_hub.url, embedded_hub.admin_token, cache_dir=tmp_path / "cache")
    client.push(path, name="admin/evil")
    client.push(path, name="admin/evil-twin")
    client.add_evals("admin/evil", [{"metric": EVIL_METRIC, "value": 0.5, "dataset": EVIL_DATASET,
                                     "split": "<b>test</b>", "extra": {"note": "<i>x</i>"}}])

    raw = httpx.get(f"{embedded_hub.url}/admin/evil").text
    assert "<script>window" not in raw and "<img" not in raw and "<svg onload" not in raw
    # shown as text, never as links
    assert not re.search(r"<a\b[^>]*href=[\"']?\s*(javascript|data):", raw, re.IGNORECASE)

    for tab in _tab(browser, embedded_hub, viewport={"width": 1280, "height": 900}):
        page = tab.page
        for path_ in ("/", "/?q=evil", "/admin/evil", "/compose?a=admin/evil&a=admin/evil-twin",
                      f"/?base_model={EVIL_BASE}", "/admin"):
            tab.goto(path_)
            page.wait_for_load_state("load")
            assert page.evaluate("window.__pwned") is None, path_
        tab.goto("/admin/evil")
        card = page.locator("#card .markdown")
        assert '<script>window.__pwned = "card script"; alert("card")</script>' in card.inner_text()
        assert card.locator("script, img, [onerror]").count() == 0
        assert page.locator("a[href^='javascript'], a[href^='data:']").count() == 0
        assert card.get_by_text("[click me](javascript:window.__pwned='link')").count() == 1
        assert page.locator("#evals tbody td").first.inner_text() == EVIL_METRIC
        assert EVIL_DATASET in page.locator("#evals tbody").inner_text()
        assert EVIL_METRIC in page.locator("#evals figcaption").inner_text()
        assert EVIL_BASE in page.locator(".meta").inner_text()
        assert "vllm serve 'evil/<svg onload=alert(1)>'" in page.locator("#snippet-vllm").inner_text()
        tab.goto("/")
        assert EVIL_BASE in page.locator("ul[data-facet=base_model]").inner_text()
        assert EVIL_METRIC in page.locator("table.results").inner_text()
        assert tab.dialogs == []
        assert page.evaluate("window.__pwned") is None


# --- layout and keyboard -------------------------------------------------------------


@pytest.mark.parametrize("path", ["/", "/acme/legal-summarizer", "/admin/legal-medical-mix",
                                  "/compose?a=acme/legal-summarizer&a=admin/code-review", "/login", "/acme"])
def test_phone_viewport_has_no_horizontal_overflow(browser, catalog_hub, path):
    for tab in _tab(browser, catalog_hub, viewport={"width": 360, "height": 740}, is_mobile=True,
                    has_touch=True, device_scale_factor=2):
        tab.goto(path)
        overflow = tab.page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
        assert overflow <= 0, f"{path} is {overflow}px wider than a 360px screen"


def test_search_box_is_reachable_by_keyboard(tab):
    page = tab.page
    tab.goto("/")
    for _ in range(12):
        page.keyboard.press("Tab")
        if page.evaluate("document.activeElement.id") == "q":
            break
    assert page.evaluate("document.activeElement.id") == "q"
    assert page.get_by_label("Search adapters").evaluate("e => e === document.activeElement")
    page.keyboard.type("medical")
    page.keyboard.press("Enter")
    page.wait_for_url(re.compile(r"q=medical"))
    assert sorted(result_names(page)) == ["admin/legal-medical-mix", "admin/medical-qa"]
    # The first result link is the next stop after the filters, and Enter follows it.
    page.locator("a.adapter-link").first.focus()
    page.keyboard.press("Enter")
    page.wait_for_url(re.compile(r"/admin/(legal-medical-mix|medical-qa)$"))


def test_every_form_control_has_a_label(tab):
    page = tab.page
    for path in ("/", "/compose", "/login", "/acme"):
        tab.goto(path)
        unlabelled = page.evaluate("""() => [...document.querySelectorAll('input:not([type=hidden]), select')]
            .filter(e => !(e.labels && e.labels.length) && !e.getAttribute('aria-label')).map(e => e.outerHTML)""")
        assert unlabelled == [], path


def test_pagination(browser, embedded_hub, tmp_path):
    from tiny_models import make_lora, tiny_llama

    from peft_hub.client import HubClient

    path = make_lora(tiny_llama(), tmp_path / "a", r=4, base_name=LLAMA)
    client = HubClient(embedded_hub.url, embedded_hub.admin_token, cache_dir=tmp_path / "cache")
    for i in range(23):
        client.push(path, name=f"admin/adapter-{i:02d}")
    for tab in _tab(browser, embedded_hub, viewport={"width": 1280, "height": 900}):
        page = tab.page
        tab.goto("/?sort=name&order=asc")
        assert len(result_names(page)) == 20 and result_names(page)[0] == "admin/adapter-00"
        page.get_by_role("link", name="Next →").click()
        page.wait_for_url(re.compile(r"page=2"))
        assert result_names(page) == ["admin/adapter-20", "admin/adapter-21", "admin/adapter-22"]
        assert page.locator(".pagination [aria-current=page]").inner_text() == "2"
        tab.goto("/admin?page=2")
        assert len(result_names(page)) == 3


# --- screenshots -------------------------------------------------------------------------


def test_screenshots(browser, catalog_hub, tmp_path):
    """Full-page screenshots for docs/web.md (written there with PEFT_HUB_WRITE_SCREENSHOTS=1)."""
    out = SCREENSHOTS if os.environ.get("PEFT_HUB_WRITE_SCREENSHOTS") == "1" else tmp_path
    out.mkdir(parents=True, exist_ok=True)
    shots = [  # name, path, viewport, full page or the selector of one part
        ("catalog.png", "/", {"width": 1280, "height": 860}, False),
        ("adapter.png", "/acme/legal-summarizer", {"width": 1280, "height": 900}, True),
        ("evals.png", "/acme/legal-summarizer", {"width": 1280, "height": 900}, "#evals"),
        ("lineage.png", "/admin/legal-medical-mix", {"width": 1280, "height": 900}, "#lineage"),
        ("compose.png", "/compose?a=admin/medical-qa&a=admin/legal-medical-mix&w=0.6&w=0.4&method=stack",
         {"width": 1280, "height": 900}, True),
        ("catalog-phone.png", "/?base_model=" + LLAMA, {"width": 390, "height": 844}, True),
    ]
    for name, path, viewport, part in shots:
        for tab in _tab(browser, catalog_hub, viewport=viewport):
            tab.goto(path)
            if isinstance(part, str):
                tab.page.locator(part).screenshot(path=str(out / name))
            else:
                tab.page.screenshot(path=str(out / name), full_page=part)
        assert (out / name).stat().st_size > 10_000
