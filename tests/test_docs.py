"""The documentation stays true to the code: every setting listed, every relative link and image found."""

import re
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest
from markdown_it import MarkdownIt

import config
from admin.guide import name_headings

ROOT = Path(__file__).resolve().parent.parent
PAGES = sorted([ROOT / "README.md", ROOT / "CHANGELOG.md", *(ROOT / "docs").glob("*.md")])


def tokens(path: Path) -> list:
    """The page's markdown-it tokens, tables included, with inline children flattened in."""
    found = []
    for token in MarkdownIt("commonmark").enable("table").parse(path.read_text()):
        found.append(token)
        found.extend(token.children or [])
    return found


def anchors(path: Path) -> set[str]:
    """Every heading anchor of a page, as GitHub and /admin/help make them."""
    return set(name_headings(MarkdownIt("commonmark").enable("table").parse(path.read_text())))


def relative_targets(path: Path) -> list[str]:
    """Every link and image address on the page (in Markdown or in an HTML tag) that points inside the repository."""
    targets = []
    for token in tokens(path):
        if token.type == "link_open":
            targets.append(token.attrs["href"])
        elif token.type == "image":
            targets.append(token.attrs["src"])
        elif token.type in ("html_inline", "html_block"):
            targets.extend(re.findall(r'\b(?:src|href)="([^"]+)"', token.content))
    return [address for address in targets if not urlsplit(address).scheme]


def test_settings_tables_list_exactly_the_settings_read():
    documented = set()
    for line in (ROOT / "docs" / "configuration.md").read_text().splitlines():
        if line.startswith("| `"):
            documented.update(re.findall(r"`([A-Z][A-Z0-9_]*)`", line.split("|")[1]))
    gunicorn_conf = (ROOT / "gunicorn.conf.py").read_text()
    read_by_gunicorn = set(re.findall(r"os\.environ\.get\(\s*['\"]([A-Z0-9_]+)['\"]", gunicorn_conf))
    assert read_by_gunicorn  # the pattern still finds what gunicorn.conf.py reads
    assert documented == set(config.SETTINGS) | read_by_gunicorn


@pytest.mark.parametrize("name, most", [("README.md", 2500), ("docs/owner-guide.md", 1500)])
def test_the_readme_and_the_owners_guide_stay_short(name, most):
    assert len((ROOT / name).read_text().split()) <= most


@pytest.mark.parametrize("page", PAGES, ids=lambda page: str(page.relative_to(ROOT)))
def test_every_relative_link_and_image_resolves(page):
    missing = []
    for address in relative_targets(page):
        parts = urlsplit(address)
        target = (page.parent / unquote(parts.path)).resolve() if parts.path else page
        if not target.exists():
            missing.append(f"{address}: no such file")
        elif parts.fragment and target.suffix == ".md" and parts.fragment not in anchors(target):
            missing.append(f"{address}: no such heading")
    assert not missing


def test_the_link_check_sees_links_images_and_anchors(tmp_path):
    page = tmp_path / "page.md"
    page.write_text(
        "# A `flask` check, twice\n\n## Two\n\n## Two\n\n[x](other.md#top) ![y](pic.png) [z](https://a.example)\n"
        '\n<p><img src="b.png" alt=""></p>\n'
    )
    assert relative_targets(page) == ["other.md#top", "pic.png", "b.png"]
    assert anchors(page) == {"a-flask-check-twice", "two", "two-1"}
