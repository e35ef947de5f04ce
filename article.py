"""The clinic's article: the seed text shaped into a title and blocks, read once."""

import functools
import re
from pathlib import Path

from markupsafe import Markup, escape

SOURCE = Path(__file__).resolve().parent / "article.txt"
NUMBERED = re.compile(r"^\d+\.\s+\S")
DROPPED = re.compile(r"^(call now\b|photo credit\b)", re.IGNORECASE)


@functools.cache
def load(path: Path = SOURCE) -> dict:
    """Return {"title", "blocks"}; each block is {"kind": "h2" | "h3" | "p", "text"}."""
    lines = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
    lines = [line for line in lines if line and not DROPPED.match(line)]
    title = lines[0][:1].upper() + lines[0][1:]
    blocks = []
    for line in lines[1:]:
        if NUMBERED.match(line):
            kind = "h3"
        elif line[-1] not in ".!?:" and len(line) < 120:
            kind = "h2"
        else:
            kind = "p"
        blocks.append({"kind": kind, "text": line})
    return {"title": title, "blocks": blocks}


def to_html(article: dict, phone_href: str, phone_display: str) -> Markup:
    """Render the blocks as HTML, linking the form and the phone number in the text."""
    parts = []
    for block in article["blocks"]:
        text = str(escape(block["text"]))
        text = text.replace("fill out this form", '<a href="#book">fill out this form</a>', 1)
        text = text.replace(phone_display, f'<a href="tel:{escape(phone_href)}">{escape(phone_display)}</a>', 1)
        parts.append(f"<{block['kind']}>{text}</{block['kind']}>")
    return Markup("\n".join(parts))
