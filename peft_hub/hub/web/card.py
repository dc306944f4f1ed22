"""Model cards: Markdown rendered with markdown-it-py, then sanitised with nh3.

Two layers, so that a bug in one is not a hole: markdown-it runs with raw
HTML off (a ``<script>`` in the card comes out as text) and refuses
``javascript:``/``vbscript:``/``data:`` links; nh3 then keeps only an
allowlist of tags, attributes and URL schemes. Images are turned into links,
because the catalog loads nothing from outside the hub, and headings are
demoted two levels to nest under the page's own.

Rendering is bounded twice over. markdown-it-py spends 5-50 µs on each
character that can start markup (``[``, ``*``, ``|``, a line break, ...), so
a card is rendered as Markdown only up to :data:`MAX_RENDER_UNITS` of those
(a fifth of a second at worst, and far more than any real card
needs) and the rest is shown as escaped plain text; nesting stops at
markdown-it's ``maxNesting``. And each card is rendered once: the HTML is
kept, by the sha256 of the text, in a cache bounded in bytes.
"""

from __future__ import annotations

import hashlib
import html as html_lib
import re
from typing import Any

import nh3
from markdown_it import MarkdownIt
from markdown_it.common.utils import escapeHtml

from peft_hub.hub.limits import SizedCache
from peft_hub.modelcard import split_front_matter

TAGS = {
    "a", "abbr", "b", "blockquote", "br", "code", "dd", "del", "details", "div", "dl", "dt", "em",
    "h1", "h2", "h3", "h4", "h5", "h6", "hr", "i", "kbd", "li", "ol", "p", "pre", "s", "span",
    "strong", "sub", "summary", "sup", "table", "tbody", "td", "th", "thead", "tr", "ul",
}
ATTRIBUTES = {"a": {"href", "title"}, "td": {"align"}, "th": {"align"}, "code": {"class"}, "ol": {"start"}}
URL_SCHEMES = {"http", "https", "mailto"}

_COMMENT = re.compile(r"<!--.*?(?:-->|\Z)", re.DOTALL)

#: Characters where markdown-it's inline parser stops to try a rule, plus line
#: breaks (each starts a block); the cost of rendering follows their count.
MARKUP_CHARS = "\n!#$%&*+-:<=>@[\\]^_`{}~|"
MAX_RENDER_UNITS = 8_000
_CHUNK = 4096
#: The most of a stored card that is read (the push cap for ``.md`` files).
CARD_READ_MAX = 1024 * 1024
_rendered = SizedCache(32 * 1024 * 1024)


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


def markup_units(text: str) -> int:
    """How much work ``text`` is for markdown-it: its markup characters, and
    line breaks three times (each may open a block: a list item costs ~50 µs)."""
    return sum(text.count(c) for c in MARKUP_CHARS) + 2 * text.count("\n")


def render_budget(text: str, units: int = MAX_RENDER_UNITS) -> int:
    """Where to stop rendering Markdown: the end of the last line within ``units``."""
    spent = 0
    for start in range(0, len(text), _CHUNK):
        spent += markup_units(text[start:start + _CHUNK])
        if spent > units:
            cut = text.rfind("\n", 0, start)
            return cut + 1 if cut > 0 else start
    return len(text)


def render_card(text: str) -> str:
    """Markdown -> HTML that is safe to insert in a page, rendered once per text.

    HTML comments (Hugging Face card templates are full of them) are dropped
    rather than shown as escaped text; all other raw HTML shows as text.
    Past the render budget the card continues as plain text.
    """
    key = hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()
    cached = _rendered.get(key)
    if cached is not None:
        return cached
    body = _COMMENT.sub("", text)
    cut = render_budget(body)
    safe = nh3.clean(_MD.render(body[:cut]), tags=TAGS, attributes=ATTRIBUTES, url_schemes=URL_SCHEMES,
                     link_rel="nofollow noopener noreferrer", strip_comments=True)
    if cut < len(body):  # escaped text has no markup left for nh3 to judge
        safe += ("<p><em>The rest of this card is too long to render; it is shown as plain text.</em></p>"
                 f"<pre>{html_lib.escape(body[cut:], quote=False)}</pre>")
    _rendered.put(key, safe, len(safe))
    return safe


def card_from_blob(store: Any, sha256: str, size: int) -> tuple[str | None, str]:
    """A stored card's YAML header (as text) and its body as safe HTML, read
    and rendered once per blob (blobs never change)."""
    cached = _rendered.get(f"blob:{sha256}")
    if cached is not None:
        return cached
    with store.open(sha256, 0, min(size, CARD_READ_MAX)) as fh:
        text = fh.read().decode("utf-8", errors="replace")
    front, body = split_front_matter(text)
    result = (front, render_card(body))
    # The HTML string is shared with render_card's own entry; count it once more anyway.
    _rendered.put(f"blob:{sha256}", result, len(result[1]) + len(front or ""))
    return result
