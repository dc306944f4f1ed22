"""Model cards: the YAML front matter, its checks, and the one-paragraph summary."""

from __future__ import annotations

import re

from peft_hub.errors import InvalidAdapterError
from peft_hub.safeparse import load_yaml

#: The model card's file name in an adapter or model directory.
CARD_NAME = "README.md"

_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f]")


def card_summary(card: str, limit: int = 300) -> str:
    """The first paragraph of prose in a model card (no front matter, headings, HTML or code)."""
    text = split_front_matter(card)[1].replace("\x00", "")
    text = re.sub(r"```.*?```", "", text, flags=re.S)
    for block in re.split(r"\n\s*\n", text):
        lines = [ln.strip() for ln in block.strip().splitlines()]
        if lines and not lines[0].startswith(("#", "<", "|", "-", "*", "!", "[")):
            # No control characters: the summary is printed by the CLI and shown in lists.
            return _CONTROL.sub(" ", " ".join(lines))[:limit]
    return ""


def split_front_matter(text: str) -> tuple[str | None, str]:
    """A model card's YAML header (the lines between a leading ``---`` line and the
    next one) and the body after it; ``(None, text)`` when there is no header.
    The one rule for the push check, the web card and ``cardData``."""
    stripped = text.lstrip("\ufeff")
    lines, kept = stripped.splitlines(), stripped.splitlines(keepends=True)
    if not lines or lines[0].strip() != "---":
        return None, text
    for end in range(1, len(lines)):
        if lines[end].strip() == "---":
            return "\n".join(lines[1:end]), "".join(kept[end + 1:])
    return None, text


def front_matter(text: str) -> str | None:
    """A model card's YAML header, or None; see :func:`split_front_matter`."""
    return split_front_matter(text)[0]


def check_card(text: str) -> None:
    """Refuse a model card whose YAML header is invalid, too deep, or an alias bomb."""
    front = front_matter(text)
    if front is not None:
        load_yaml(front, what=f"the YAML front matter of {CARD_NAME}", error=InvalidAdapterError)
