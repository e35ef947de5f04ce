"""The owner's guide, docs/owner-guide.md, rendered at /admin/help with its pictures."""

import re
from pathlib import Path

from flask import render_template, send_from_directory, url_for
from markdown_it import MarkdownIt
from markupsafe import Markup

from admin.blueprint import bp

GUIDE = Path(__file__).resolve().parent.parent / "docs" / "owner-guide.md"
IMAGES = GUIDE.parent / "images"


def heading_id(text: str) -> str:
    """A heading's anchor as GitHub makes it, so the guide's links work on both: lower case, hyphens for spaces."""
    return re.sub(r"[^\w\- ]", "", text.strip().lower()).replace(" ", "-")


def name_headings(tokens: list) -> list[str]:
    """Give each heading among markdown-it's `tokens` its id (a repeated one gets -1, -2 ...); return the ids."""
    ids: list[str] = []
    for heading, inline in zip(tokens, tokens[1:], strict=False):
        if heading.type == "heading_open":
            base = heading_id("".join(c.content for c in inline.children if c.type in ("text", "code_inline")))
            anchor, count = base, 0
            while anchor in ids:
                count += 1
                anchor = f"{base}-{count}"
            ids.append(anchor)
            heading.attrSet("id", anchor)
    return ids


def png_size(path: Path) -> tuple[int, int]:
    """A PNG's width and height in pixels, from its header."""
    header = path.read_bytes()[16:24]
    return int.from_bytes(header[:4], "big"), int.from_bytes(header[4:], "big")


def render_guide(text: str, image_url) -> Markup:
    """The guide as HTML: each heading with its id, each picture from `image_url(name)` at its size on screen."""
    parser = MarkdownIt("commonmark", {"html": False}).enable("table")
    tokens = parser.parse(text)
    name_headings(tokens)
    for image in (child for token in tokens for child in token.children or [] if child.type == "image"):
        name = Path(image.attrGet("src")).name
        width, height = png_size(IMAGES / name)
        scale = 2 if name.endswith("-phone.png") else 1  # phone pictures are taken at twice the pixels
        image.attrSet("src", image_url(name))
        image.attrSet("width", str(width // scale))
        image.attrSet("height", str(height // scale))
        image.attrSet("loading", "lazy")
    return Markup(parser.renderer.render(tokens, parser.options, {}))


@bp.get("/help")
def help_page():
    """The owner's guide, for signed-in owners."""
    guide = render_guide(GUIDE.read_text(encoding="utf-8"), lambda name: url_for("admin.help_image", name=name))
    return render_template("admin/help.html", guide=guide)


@bp.get("/help/images/<name>")
def help_image(name: str):
    """One of the guide's pictures (signed-in owners only, like every admin URL)."""
    return send_from_directory(IMAGES, name, mimetype="image/png" if name.endswith(".png") else None)
