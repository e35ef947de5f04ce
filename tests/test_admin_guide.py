"""The owner's guide at /admin/help: for signed-in owners, rendered from docs/owner-guide.md with its pictures."""

import re
from pathlib import Path

from markdown_it import MarkdownIt

ROOT = Path(__file__).resolve().parent.parent
GUIDE = ROOT / "docs" / "owner-guide.md"


def headings() -> list[str]:
    """The text of each heading of the guide, as written."""
    tokens = MarkdownIt("commonmark").parse(GUIDE.read_text())
    pairs = zip(tokens, tokens[1:], strict=False)
    return [inline.content.replace("`", "") for opener, inline in pairs if opener.type == "heading_open"]


def test_the_guide_needs_a_signed_in_owner(client):
    for url in ["/admin/help", "/admin/help/images/inbox-desktop.png"]:
        response = client.get(url)
        assert response.status_code == 302, url
        assert response.location.startswith("/admin/login"), url


def test_the_admin_menu_links_to_the_guide(owner):
    page = owner.get("/admin").get_data(as_text=True)
    assert '<a href="/admin/help">Help</a>' in page


def test_the_guide_shows_every_heading_with_its_anchor(owner):
    response = owner.get("/admin/help")
    assert response.status_code == 200
    assert response.headers["Cache-Control"] == "no-store"
    page = response.get_data(as_text=True)
    found = re.findall(r'<h([1-3]) id="([^"]+)">(.*?)</h\1>', page)
    assert [text.replace("&quot;", '"').replace("&#x27;", "'") for _, _, text in found] == headings()
    ids = {anchor for _, anchor, _ in found}
    guide = page.split('<article class="guide">', 1)[1].split("</article>", 1)[0]
    targets = re.findall(r'href="#([^"]+)"', guide)
    assert targets  # the guide links to its own sections; those links work here too
    assert set(targets) <= ids


def test_every_picture_of_the_guide_loads(owner):
    page = owner.get("/admin/help").get_data(as_text=True)
    sources = re.findall(r'<img src="([^"]+)" alt="([^"]+)"', page)
    assert len(sources) >= 4
    for src, alt in sources:
        assert alt.strip(), src
        response = owner.get(src)
        body = response.data
        response.close()  # the file it streamed
        assert response.status_code == 200, src
        assert response.mimetype == "image/png"
        assert body == (ROOT / "docs" / "images" / Path(src).name).read_bytes()


def test_a_picture_that_is_not_there_is_a_404(owner):
    assert owner.get("/admin/help/images/nothing.png").status_code == 404
    assert owner.get("/admin/help/images/..%2Fowner-guide.md").status_code == 404
