"""The catalog page renders the same HTML after #15's rendering changes.

Two things changed: :meth:`CatalogQuery.url` encodes links from pre-encoded
pairs instead of ``asdict``/``replace``/``urlencode`` per link, and the
Browse lists are built in Python (:func:`catalog.browse`) instead of in the
template. The code as it was is kept here as the reference: the old ``url``,
and the old Browse section's template text. Over the bench's query shapes
(and pages, sorts, hostile and unknown values) on one seeded database, the
served page must equal the page with the reference ``url``, and its Browse
section must equal the reference template's output for the same data.
"""

from __future__ import annotations

import random
import re
from dataclasses import asdict, replace
from datetime import datetime, timedelta, timezone
from typing import Any
from urllib.parse import urlencode

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import insert
from sqlmodel import Session
from starlette.datastructures import QueryParams

from peft_hub.hub import Settings, create_app
from peft_hub.hub.models import Adapter, Eval, Namespace, Revision, Tag
from peft_hub.hub.web import catalog
from peft_hub.hub.web.catalog import CatalogQuery
from peft_hub.hub.web.render import make_env

EVIL = '<script>alert("x")</script>&base'
OWNERS = [f"user-{i}" for i in range(70)] + ["Org-Mixed", "o&wner"]
BASES = [f"org-{i}/base-model-{i}" for i in range(12)] + [EVIL, "plain base"]
METHODS = ["LORA", "LORA", "LOHA", "IA3", "lokr", "VERA"]

#: The bench's 10 shapes (bench/bench_search.py) on this seed, then pages, sorts and bad values.
SHAPES = [
    "", "q=legal", "q=poetry-fin", "q=qa", "base_model=org-7/base-model-7", "method=LOHA", "owner=user-12",
    "min_rank=16&max_rank=64&sort=rank&order=asc", "tag=v1&sort=downloads",
    "q=chat&base_model=org-3/base-model-3&method=LORA&sort=name&order=asc",
    "page=2", "page=4&sort=name", "sort=rank&order=desc", "kind=model", "kind=adapter&method=lora",
    "owner=org-mixed", "method=lokr", "base_model=" + EVIL.replace("&", "%26"), "q=%3Cscript%3E%26%22'+x&tag=a%2Bb",
    "min_rank=abc&page=-3&sort=zzz&kind=bogus", "base_model=nope/none", "page=9999",
    "q=%C3%A9t%C3%A9&sort=downloads&order=asc",
    "min_rank=0&max_rank=0", "page=1&sort=updated&order=desc", "page=3&owner=user-3&q=a",
]

#: The Browse section of catalog.html before :func:`catalog.browse` (commit ce38bb0).
OLD_BROWSE = """\
  <section class="facets" aria-labelledby="facets-title">
    <h2 id="facets-title">Browse</h2>
    {% for facet, title in (("kind", "Kind"), ("base_model", "Base models"), ("method", "Methods"), ("owner", "Owners")) %}
    <h3>{{ title }}</h3>
    <ul class="facet-list" data-facet="{{ facet }}">
      {% for value, count in facets[facet][:shown] %}
      {% set selected = (query[facet] or "") | upper == value | upper %}
      <li>
        <a href="{{ query.url(base_path, **{facet: (None if selected else value)}) }}"{% if selected %} aria-current="true" class="selected"{% endif %}>
          <span class="facet-value">{{ kinds.get(value, value) if facet == "kind" else value }}</span> <span class="count" aria-label="{{ count }} adapters">{{ count }}</span>
        </a>
      </li>
      {% else %}
      <li class="muted">none</li>
      {% endfor %}
      {% if facets[facet] | length > shown %}<li class="muted">and {{ facets[facet] | length - shown }} more: type in the filter above</li>{% endif %}
    </ul>
    {% endfor %}
  </section>
"""  # noqa: E501 - the template's own lines
SECTION = re.compile(r'  <section class="facets".*?</section>', re.S)  # Jinja drops a template's last newline


def old_url(self: CatalogQuery, path: str = "/", **changes: Any) -> str:
    """``CatalogQuery.url`` as it was (commit ce38bb0)."""
    if changes and "page" not in changes:
        changes["page"] = 1
    state = asdict(replace(self, **changes))
    state.pop("problems")
    state.pop("_encoded", None)
    if state["sort"] == "updated" and state["order"] == "desc":
        state.pop("sort"), state.pop("order")
    if state.get("page") == 1:
        state.pop("page")
    pairs = [(k, v) for k, v in state.items() if v not in (None, "")]
    return path + ("?" + urlencode(pairs) if pairs else "")


def seed(engine) -> None:
    """240 repos, all updated long ago (so "… ago" never changes between two renders)."""
    rng = random.Random(15)
    t0 = datetime(2020, 1, 1, tzinfo=timezone.utc)
    words = ["legal", "chat", "poetry", "fin", "qa", "code", "été", "math"]
    adapters, revisions, tags, evals = [], [], [], []
    for i in range(1, 241):
        owner, model = rng.choice(OWNERS), rng.random() < 0.05
        name = f"{rng.choice(words)}-{rng.choice(words)}-{i}".replace("é", "e")
        rank = rng.choice([4, 8, 16, 16, 32, 64, 256])
        adapters.append({
            "id": i, "owner": owner, "name": name, "name_key": f"{owner}/{name}".lower(),
            "private": rng.random() < 0.05, "kind": "model" if model else "adapter",
            "downloads": rng.randrange(5) * rng.randrange(100), "created_at": t0,
            "updated_at": t0 + timedelta(minutes=rng.randrange(1000)),
            "base_model": None if model else rng.choice(BASES), "method": "model" if model else rng.choice(METHODS),
            "rank": None if model else rank, "max_rank": None if model else rank * rng.choice([1, 2]),
            "total_size": rng.randrange(1, 10**9), "target_modules": ["q_proj"],
            "description": f"A {rng.choice(words)} adapter",
        })
        revisions.append({"id": i, "adapter_id": i, "sha": f"{i:040x}", "message": "", "author": owner,
                          "created_at": t0, "meta": {}})
        tags.append({"adapter_id": i, "name": "main", "revision_id": i, "updated_at": t0})
        if i % 4 == 0:
            tags.append({"adapter_id": i, "name": "v1", "revision_id": i, "updated_at": t0})
        for k in range(i % 3):
            extra = {"base_value": rng.random()} if k else {}
            evals.append({"revision_id": i, "metric": rng.choice(["accuracy", "loss"]), "value": rng.random(),
                          "dataset": f"set-{k}", "extra": extra, "added_by": owner, "created_at": t0})
    with engine.begin() as conn:
        conn.execute(insert(Namespace), [{"name": o, "name_key": o.lower(), "kind": "user", "is_admin": False,
                                          "created_at": t0} for o in OWNERS])
        for table, rows in ((Adapter, adapters), (Revision, revisions), (Tag, tags), (Eval, evals)):
            conn.execute(insert(table), rows)


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("render")
    settings = Settings(db_url=f"sqlite:///{tmp / 'hub.db'}", storage=str(tmp / "blobs"), token_file=tmp / "token",
                        admin_token="phub_" + "x" * 48)
    with TestClient(create_app(settings)) as client:
        seed(client.app.state.engine)
        yield client


@pytest.mark.parametrize("path", ["/", "/user-12", "/org-mixed"])
def test_page_links_match_the_reference(client, path, monkeypatch):
    new = {qs: client.get(f"{path}?{qs}") for qs in SHAPES}
    monkeypatch.setattr(CatalogQuery, "url", old_url)
    for qs, response in new.items():
        assert response.status_code == 200, qs
        reference = client.get(f"{path}?{qs}")
        assert response.text == reference.text, qs


def test_browse_section_matches_the_reference_template(client):
    env = make_env()
    template = env.from_string(OLD_BROWSE)
    seen_selected = seen_more = 0
    for qs in SHAPES:
        html = client.get(f"/?{qs}").text
        query = CatalogQuery.parse(QueryParams(qs))
        with Session(client.app.state.engine) as session:
            facets, _ = catalog.counts(session, None, query)
        expected = template.render(query=query, facets=facets, base_path="/", kinds=catalog.KINDS, shown=catalog.SHOWN)
        assert SECTION.findall(html) == [expected], qs
        seen_selected += 'class="selected"' in expected
        seen_more += "more: type in the filter above" in expected
    assert seen_selected >= 5 and seen_more >= 1  # the cases the section branches on are covered


def test_url_matches_the_reference_for_any_change():
    rng = random.Random(3)
    texts = [None, "", "legal", "a b&c=d", EVIL, "été/ü", "+%20", "x" * 300, "Org-Mixed", "0"]
    numbers = [None, 0, 1, 2, 16, 2**31 - 1]
    for _ in range(3000):
        query = CatalogQuery(
            q=rng.choice(texts), base_model=rng.choice(texts), method=rng.choice(texts), owner=rng.choice(texts),
            tag=rng.choice(texts), min_rank=rng.choice(numbers), max_rank=rng.choice(numbers),
            kind=rng.choice([None, "", "model", "adapter"]), sort=rng.choice(list(catalog.SORTS)),
            order=rng.choice(["asc", "desc"]), page=rng.choice([1, 2, 17]),
        )
        for _ in range(4):  # several links from one query: the cached pairs must follow changes to it
            changes: dict[str, Any] = {}
            for key in rng.sample(catalog.URL_FIELDS, rng.randrange(3)):
                pool = numbers if key in ("min_rank", "max_rank", "page") else texts
                changes[key] = rng.choice(pool if key not in ("sort", "order") else ["name", "asc", "desc", "updated"])
            path = rng.choice(["/", "/user-1"])
            assert query.url(path, **dict(changes)) == old_url(query, path, **dict(changes)), (query, changes)
            if rng.random() < 0.3:
                query.q = rng.choice(texts)
        assert query.sort_url("/", "rank") == old_url(query, "/", sort="rank",
                                                      order="desc" if query.sort == "rank" and query.order == "asc"
                                                      else "asc")
    with pytest.raises(TypeError):
        CatalogQuery().url("/", nope=1)
