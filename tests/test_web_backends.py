"""The catalog's pages on both storage backends (SQLite + local files, and
PostgreSQL + S3), fetched over HTTP: the card and the compose preview's
shape checks read blobs from the store, so they must work on S3 too."""

from __future__ import annotations

import re

import httpx
import pytest
from test_web import add_lineage, parent_record

pytestmark = pytest.mark.integration


def test_pages_render_on_each_backend(hub, tmp_path):
    from tiny_models import make_lora, tiny_llama

    from peft_hub.client import HubClient

    base = tiny_llama()
    a = make_lora(base, tmp_path / "a", r=8, seed=1, base_name="llama")
    (a / "README.md").write_text("# Card A\n\nSome *emphasis*.\n")
    b = make_lora(base, tmp_path / "b", r=4, seed=2, base_name="llama")
    c = make_lora(base, tmp_path / "c", r=12, seed=3, base_name="llama")
    client = HubClient(hub.url, hub.admin_token, cache_dir=tmp_path / "cache")
    pa = client.push(a, name="team/a")
    pb = client.push(b, name="team/b", private=True)
    add_lineage(c, [parent_record(pa, "team/a", 0.5), parent_record(pb, "team/b", 0.5)])
    client.push(c, name="team/c")
    client.add_evals("team/a", [{"metric": "acc", "value": 0.8, "dataset": "d"},
                                {"metric": "acc", "value": 0.7, "dataset": "d", "extra": {"variant": "base"}}])

    catalog = httpx.get(f"{hub.url}/?q=team").text
    assert "team/<strong>a</strong>" in catalog and "team/<strong>b</strong>" not in catalog  # b is private
    assert "acc</span> <span class=\"num\">0.8" in catalog

    page = httpx.get(f"{hub.url}/team/a").text
    assert "<h3>Card A</h3>" in page and "<em>emphasis</em>" in page
    assert 'class="base-line"' in page and "+0.1" in page
    assert 'href="/team/c@' in page  # used in team/c

    composed = httpx.get(f"{hub.url}/team/c").text
    assert re.search(r'href="/team/a@[0-9a-f]{40}" class="lineage-link"', composed)
    # Not linked for the public, and not told apart from a parent that does not exist.
    assert "team/b</span> <span class=\"muted\">not in this hub" in composed and pb.revision not in composed

    picks = [("a", "team/a"), ("a", "team/c"), ("w", "0.5"), ("w", "0.5")]
    preview = httpx.get(f"{hub.url}/compose", params=picks).text
    assert "✓ Compatible" in preview and '<strong id="result-rank">20</strong>' in preview
    assert "peft-hub compose team/a+team/c --weights 0.5,0.5 --method stack" in preview

    signed_in = httpx.Client(base_url=hub.url)
    csrf = re.search(r'name="csrf" value="([^"]+)"', signed_in.get("/login").text).group(1)
    assert signed_in.post("/login", data={"token": hub.admin_token, "csrf": csrf}).status_code == 303
    assert "team/<strong>b</strong>" in signed_in.get("/?q=team").text
    assert 'href="/team/b@' in signed_in.get("/team/c").text
    signed_in.close()
