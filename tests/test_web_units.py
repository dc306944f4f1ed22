"""The catalog's pure parts: card sanitising, chart layout, query links,
the compose command, route convertors and redirects. No server, no browser."""

from __future__ import annotations

import itertools
import re
from datetime import datetime, timedelta, timezone

import pytest
from starlette.datastructures import QueryParams

from peft_hub.hub.models import Eval, Revision
from peft_hub.hub.web import NamespaceConvertor, OwnerConvertor, RefConvertor, charts
from peft_hub.hub.web.card import render_card, split_front_matter
from peft_hub.hub.web.catalog import CatalogQuery, pages
from peft_hub.hub.web.compose_preview import Picked, build, command
from peft_hub.hub.web.render import ago, breakable, filesize, number
from peft_hub.hub.web.signin import safe_next

# --- model cards ---------------------------------------------------------------


def test_card_escapes_raw_html_and_drops_dangerous_links():
    html = render_card(
        "# Title\n\n<script>alert(1)</script>\n\n<img src=x onerror=alert(2)>\n\n"
        "[a](javascript:alert(3)) [b](JaVaScRiPt:alert(4)) [c](data:text/html,x) [d](vbscript:x) "
        "[ok](https://example.org/x) [rel](#usage) <a href='javascript:alert(5)'>raw</a>\n"
    )
    assert "<script" not in html and "<img" not in html and "onerror=alert(2)&gt;" in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    hrefs = re.findall(r'href="([^"]*)"', html)
    assert hrefs == ["https://example.org/x", "#usage"]
    assert 'rel="nofollow noopener noreferrer"' in html


def test_card_images_become_links_headings_nest_and_comments_go():
    html = render_card("# Top\n\n## Sub\n\n<!-- template hint -->\n\n![chart <b>](https://example.org/c.png)")
    assert "<h3>Top</h3>" in html and "<h4>Sub</h4>" in html
    assert "template hint" not in html
    assert '<a href="https://example.org/c.png" rel="nofollow noopener noreferrer">[image: chart &lt;b&gt;]</a>' in html
    assert "<img" not in html


def test_front_matter_is_split_off():
    assert split_front_matter("---\nlicense: mit\ntags: [a]\n---\n# Card\n") == ("license: mit\ntags: [a]", "# Card\n")
    assert split_front_matter("# No header\n---\n") == (None, "# No header\n---\n")


# --- evals and charts ------------------------------------------------------------


def _rev(i: int, sha: str) -> Revision:
    return Revision(id=i, adapter_id=1, sha=sha)


def _eval(i: int, metric: str, value: float, dataset: str = "mmlu", **extra) -> Eval:
    return Eval(id=i, revision_id=1, metric=metric, value=value, dataset=dataset, extra=extra)


def test_charts_follow_revisions_and_draw_the_base_model_line():
    old, new = "a" * 40, "b" * 40
    evals = [
        (_eval(1, "acc", 0.6), old), (_eval(2, "acc", 0.5, variant="base"), old),
        (_eval(3, "acc", 0.7), new), (_eval(4, "acc", 0.72), new),  # a re-run: the newest value wins
        (_eval(5, "f1", 0.4, dataset="squad"), new),
    ]
    rows, drawn = charts.build(evals, [_rev(2, new), _rev(1, old)], current_sha=new)
    assert [r["eval"].id for r in rows] == [5, 4, 3, 2, 1]
    assert rows[1]["delta"] == pytest.approx(0.22) and rows[3]["delta"] is None and rows[3]["is_base"]
    assert rows[0]["delta"] is None  # no base score for f1 on squad
    acc = next(c for c in drawn if c.metric == "acc")
    assert [(p.sha, p.value, p.current) for p in acc.points] == [(old, 0.6, False), (new, 0.72, True)]
    assert acc.points[0].x < acc.points[1].x and acc.points[0].y > acc.points[1].y  # higher is up
    assert acc.base is not None and acc.base[1] == 0.5 and acc.base[0] > acc.points[0].y
    for p in acc.points:
        assert acc.left <= p.x <= acc.right and acc.top <= p.y <= acc.bottom
    f1 = next(c for c in drawn if c.metric == "f1")
    assert len(f1.points) == 1 and f1.base is None and f1.yticks


@pytest.mark.parametrize("lo,hi", [(0.0, 1.0), (0.55, 0.66), (-3.0, 1200.0), (0.9999, 1.0001)])
def test_nice_ticks_cover_the_range(lo, hi):
    ticks = charts.nice_ticks(lo, hi)
    assert 2 <= len(ticks) <= 12 and all(lo - 1e-9 <= t <= hi + 1e-9 for t in ticks)
    steps = {round(b - a, 9) for a, b in itertools.pairwise(ticks)}
    assert len(steps) == 1


def test_headline_skips_base_model_scores():
    assert charts.headline([_eval(2, "acc", 0.5, variant="base"), _eval(1, "acc", 0.6)]).value == 0.6
    assert charts.headline([_eval(2, "acc", 0.5, variant="base")]) is None


# --- catalog links ----------------------------------------------------------------


def test_query_parses_leniently_and_links_back():
    q = CatalogQuery.parse(QueryParams("q=legal&min_rank=x&max_rank=16&sort=bogus&page=2&base_model="))
    parsed = (q.q, q.min_rank, q.max_rank, q.sort, q.order, q.page, q.base_model)
    assert parsed == ("legal", None, 16, "updated", "desc", 2, None)
    assert len(q.problems) == 2
    assert q.url("/") == "/?q=legal&max_rank=16&page=2"  # itself: bad values dropped
    assert q.url("/", page=3) == "/?q=legal&max_rank=16&page=3"
    assert q.url("/", q=None) == "/?max_rank=16"  # a changed filter goes back to page 1
    assert CatalogQuery.parse(QueryParams(q.url("/", method="LORA").split("?")[1])).method == "LORA"


def test_sort_links_toggle_the_order():
    q = CatalogQuery.parse(QueryParams("sort=rank&order=asc"))
    assert q.sort_url("/", "rank") == "/?sort=rank&order=desc"
    assert q.sort_url("/", "name") == "/?sort=name&order=asc"
    assert q.sort_url("/", "updated") == "/"


def test_pages_show_neighbours_and_gaps():
    assert pages(1, 0) == (1, [1])
    assert pages(1, 45) == (3, [1, 2, 3])
    assert pages(10, 400) == (20, [1, None, 8, 9, 10, 11, 12, None, 20])


def test_filters_format_values():
    assert filesize(512) == "512 B" and filesize(37_990) == "37.1 KiB" and filesize(3 * 1024**3) == "3.0 GiB"
    assert number(0.65500001) == "0.655" and number(1234567.0) == "1,234,567.0" and number(0.00012) == "0.00012"
    now = datetime(2026, 1, 10, tzinfo=timezone.utc)
    assert ago(now - timedelta(days=1, hours=2), now) == "1 day ago"
    assert ago(now - timedelta(days=90), now) == "2025-10-12"
    assert str(breakable("org/<b>")) == "org/<wbr>&lt;b&gt;"


# --- compose command ---------------------------------------------------------------


def _picked(ref: str, weight: float, base: str = "llama", rank: int = 8, shape: int = 32) -> Picked:
    modules = {"base_model.model.layers.0.q_proj": ((rank, shape), (shape, rank))}
    return Picked(ref=ref, weight=weight, weight_text=str(weight), repo_id=ref.split("@")[0], sha="c" * 40,
                  meta={"base_model": base, "method": "LORA", "target_modules": ["q_proj"]}, modules=modules)


def test_compose_stack_sums_ranks_and_quotes_the_command():
    preview = build([_picked("a/x", 0.7), _picked("a/y@v1", 0.3, rank=16)], "stack", None, None, 64)
    assert preview.compatible and preview.result_rank == 24 and preview.vllm_rank == 32
    assert preview.command == "peft-hub compose a/x+a/y@v1 --weights 0.7,0.3 --method stack"
    weird = Picked(ref="a/x;rm -rf ~", weight=1.0)
    quoted = command(build([weird, _picked("a/y", 1.0)], "stack", None, None, 64))
    assert quoted.startswith("peft-hub compose 'a/x;rm -rf ~+a/y'")


def test_compose_flags_base_models_shapes_rank_and_arguments():
    bases = build([_picked("a/x", 1), _picked("a/y", 1, base="mistral")], "stack", None, None, 64)
    assert "different base models" in " ".join(bases.errors)
    shapes = build([_picked("a/x", 1), _picked("a/y", 1, shape=64)], "stack", None, None, 64)
    assert "shapes do not match" in " ".join(shapes.errors)
    over = build([_picked("a/x", 1, rank=48), _picked("a/y", 1, rank=32)], "stack", None, None, 64)
    assert over.result_rank == 80 and "above --max-rank 64" in " ".join(over.errors)
    svd = build([_picked("a/x", 1, rank=48), _picked("a/y", 1, rank=32)], "svd", 16, None, 64)
    assert svd.compatible and svd.result_rank == 16 and svd.command.endswith("--method svd --rank 16")
    ties = build([_picked("a/x", 1), _picked("a/y", 1)], "ties", None, None, 128)
    assert "needs a density" in " ".join(ties.errors) and ties.command.endswith("--max-rank 128")
    assert build([_picked("a/x", 1), _picked("a/y", 1)], "ties", None, 0.5, 64).command.endswith("--density 0.5")
    zeros = build([_picked("a/x", 0), _picked("a/y", 0)], "stack", None, None, 64)
    assert "every weight is zero" in " ".join(zeros.errors)
    assert "at least two" in " ".join(build([_picked("a/x", 1)], "stack", None, None, 64).errors)


# --- routing and redirects -----------------------------------------------------------


@pytest.mark.parametrize("segment,matches", [
    ("acme", True), ("a", True), ("api", False), ("static", False), ("compose", False), ("login", False),
    ("apis", True), ("api.v2", True), ("Acme", True), ("-x", False), ("API", False), ("Login", False),
])
def test_owner_convertor_leaves_the_hubs_own_paths_alone(segment, matches):
    assert bool(re.fullmatch(OwnerConvertor.regex, segment)) == matches


@pytest.mark.parametrize("path,matches", [
    ("acme/x", True), ("api/x", False), ("static/x", False), ("compose/x", True), ("login/x", True), ("apis/x", True),
])
def test_adapter_pages_exclude_only_the_api_and_static_prefixes(path, matches):
    assert bool(re.fullmatch(NamespaceConvertor.regex + "/" + RefConvertor.regex, path)) == matches


@pytest.mark.parametrize("segment,matches", [
    ("legal", True), ("legal@main", True), (f"legal@{'a' * 40}", True), ("repo.git", False),
    ("legal@", False), ("legal@v1.0", True), ("a.gitx", True),
])
def test_ref_convertor_is_name_or_name_at_revision(segment, matches):
    assert bool(re.fullmatch(RefConvertor.regex, segment)) == matches


@pytest.mark.parametrize("target,expected", [
    ("/acme/x", "/acme/x"), ("//evil.example", "/"), ("https://evil.example", "/"), ("/\\evil", "/"), (None, "/"),
])
def test_sign_in_only_redirects_within_the_hub(target, expected):
    assert safe_next(target) == expected


def test_base_value_recorded_by_validate_is_the_base_line():
    from datetime import datetime, timezone

    from peft_hub.hub.models import Eval, Revision
    from peft_hub.hub.web import charts

    now = datetime.now(timezone.utc)
    revisions = [Revision(id=1, adapter_id=1, sha="a" * 40, created_at=now)]
    own = Eval(id=1, revision_id=1, metric="loss", value=0.9, dataset="upper.jsonl", extra={"base_value": 8.9})
    rows, built = charts.build([(own, "a" * 40)], revisions, "a" * 40)
    assert rows[0]["delta"] == pytest.approx(0.9 - 8.9)
    assert built[0].base[1] == 8.9
    assert charts.headline([own]) is own


def test_headline_prefers_the_largest_gain_over_the_base():
    from peft_hub.hub.models import Eval

    def ev(i: int, metric: str, value: float, base: float) -> Eval:
        return Eval(id=i, revision_id=1, metric=metric, value=value, dataset="d", extra={"base_value": base})

    off_task = ev(3, "exact_match", 0.0, 0.0)       # newest, no gain
    on_task = ev(2, "exact_match", 1.0, 0.1)        # +900 %
    loss = ev(1, "loss", 0.9, 8.9)                  # -90 %: lower is better, so +90 %
    assert charts.headline([off_task, on_task, loss]) is on_task
    assert charts.headline([off_task, loss]) is loss
