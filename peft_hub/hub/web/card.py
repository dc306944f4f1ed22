"""Model cards: Markdown rendered with markdown-it-py, then sanitised with nh3.

Two layers, so that a bug in one is not a hole: markdown-it runs with raw
HTML off (a ``<script>`` in the card comes out as text) and refuses
``javascript:``/``vbscript:``/``data:`` links; nh3 then keeps only an
allowlist of tags, attributes and URL schemes. Images are turned into links,
because the catalog loads nothing from outside the hub, and headings are
demoted two levels to nest under the page's own.
"""

from __future__ import annotations

import re

import nh3
from markdown_it import MarkdownIt
from markdown_it.common.utils import escapeHtml

TAGS = {
    "a", "abbr", "b", "blockquote", "br", "code", "dd", "del", "details", "div", "dl", "dt", "em",
    "h1", "h2", "h3", "h4", "h5", "h6", "hr", "i", "kbd", "li", "ol", "p", "pre", "s", "span",
    "strong", "sub", "summary", "sup", "table", "tbody", "td", "th", "thead", "tr", "ul",
}
ATTRIBUTES = {"a": {"href", "title"}, "td": {"align"}, "th": {"align"}, "code": {"class"}, "ol": {"start"}}
URL_SCHEMES = {"http", "https", "mailto"}

_COMMENT = re.compile(r"<!--.*?(?:-->|\Z)", re.DOTALL)
_FRONT_MATTER = re.compile(r"\A---[ \t]*\r?\n(.*?)\r?\n---[ \t]*(?:\r?\n|\Z)", re.DOTALL)


def _markdown() -> MarkdownIt:
    md = MarkdownIt("commonmark", {"html": False}).enable(["table", "strikethrough"])

    def image_as_link(renderer, tokens, idx, options, env) -> str:
        token = tokens[idx]
        alt = renderer.renderInlineAsText(token.children or [], options, env) or "image"
        src = escapeHtml(str(token.attrGet("src") or ""))
        return f'<a href="{src}">[image: {escapeHtml(alt)}]</a>'

    def demote(renderer, tokens, idx, options, env) -> str:
        # The card sits under the page's h1 and the section's h2.
        token = tokens[idx]
        token.tag = f"h{min(int(token.tag[1]) + 2, 6)}"
        return renderer.renderToken(tokens, idx, options, env)

    md.add_render_rule("image", image_as_link)
    md.add_render_rule("heading_open", demote)
    md.add_render_rule("heading_close", demote)
    return md


_MD = _markdown()


def split_front_matter(text: str) -> tuple[str | None, str]:
    """A Hugging Face card's YAML header (shown as-is) and its Markdown body."""
    m = _FRONT_MATTER.match(text)
    if not m:
        return None, text
    return m.group(1), text[m.end():]


def render_card(text: str) -> str:
    """Markdown -> HTML that is safe to insert in a page.

    HTML comments (Hugging Face card templates are full of them) are dropped
    rather than shown as escaped text; all other raw HTML shows as text.
    """
    html = _MD.render(_COMMENT.sub("", text))
    return nh3.clean(html, tags=TAGS, attributes=ATTRIBUTES, url_schemes=URL_SCHEMES,
                     link_rel="nofollow noopener noreferrer", strip_comments=True)
