"""The clinic's articles: Markdown files with YAML front matter in CONTENT_DIR, read once at start-up.

Each file is one landing page. Its front matter gives `title`, `description`, `slug`, `published`
and optionally `updated`, `image` and `home: true` (the one article served at `/`); the others are
served at `/articles/<slug>`. `lang: es` makes a Spanish article (English when absent), served at
`/es/articles/<slug>`; `translation_of: <slug>` names the English article it translates, and the
translation of the home article is served at `/es/`. The text may name the clinic's settings as `{{ clinic.name }}`,
`{{ clinic.phone }}`, `{{ clinic.phone_display }}`, `{{ clinic.town }}` or `{{ clinic.address }}`.
Raw HTML in the Markdown is shown as text, never passed to the page.
"""

import re
from collections.abc import Mapping
from datetime import date, datetime
from pathlib import Path

import click
import frontmatter
import yaml
from flask import Flask, current_app
from flask.cli import with_appcontext
from markdown_it import MarkdownIt
from markupsafe import Markup

import config
import languages

REQUIRED = ("title", "description", "slug", "published")
OPTIONAL = ("updated", "image", "home", "lang", "translation_of")
SLUG = re.compile(r"[a-z0-9]+(?:-[a-z0-9]+)*")
PLACEHOLDER = re.compile(r"\{\{\s*clinic\.(\w+)\s*\}\}")
CLINIC_FIELDS = ("name", "phone", "phone_display", "town", "address")
# CommonMark lets a backslash escape any ASCII punctuation: a setting's value is then read as plain text.
MARKDOWN_PUNCTUATION = re.compile(r"([!-/:-@\[-`{-~])")


class ContentError(config.ConfigError):
    """An article cannot be served; stops start-up with the file's name and the problem."""


def markdown() -> MarkdownIt:
    """The Markdown parser: CommonMark with raw HTML escaped, not passed through."""
    return MarkdownIt("commonmark", {"html": False})


def fill_in(text: str, clinic: dict[str, str], path: Path, escape=lambda value: value) -> str:
    """`text` with each `{{ clinic.x }}` replaced by that setting (passed through `escape`)."""

    def value(match: re.Match) -> str:
        if match[1] not in CLINIC_FIELDS:
            names = ", ".join(f"clinic.{name}" for name in CLINIC_FIELDS)
            raise ContentError(f"{path}: unknown placeholder {match[0]} (known: {names})")
        return escape(clinic[match[1]])

    return PLACEHOLDER.sub(value, text)


def as_date(value: object, key: str, path: Path) -> date:
    """A front matter date (YAML reads 2026-11-24 as one), or ContentError."""
    if isinstance(value, datetime):
        return value.date()
    if isinstance(value, date):
        return value
    try:
        return date.fromisoformat(str(value))
    except ValueError:
        raise ContentError(f"{path}: {key}: {value!r} is not a date like 2026-11-24") from None


def read_front_matter(path: Path) -> tuple[dict, str]:
    """The front matter and the Markdown of one file, or ContentError saying what is wrong."""
    try:
        post = frontmatter.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise ContentError(f"{path}: not UTF-8 text") from None
    except yaml.YAMLError as error:
        mark = getattr(error, "context_mark", None) or getattr(error, "problem_mark", None)
        # The parsed text starts with the newline after the opening ---: its 0-based line n is the file's line n + 1.
        where = f" at line {mark.line + 1}" if mark else ""
        problem = ", ".join(filter(None, [getattr(error, "context", None), getattr(error, "problem", None)]))
        raise ContentError(f"{path}: the front matter is not valid YAML{where}: {problem or error}") from None
    meta = dict(post.metadata)
    if not meta:
        raise ContentError(f"{path}: no front matter: start the file with ---, title:, slug: ... and ---")
    unknown = sorted(set(meta) - set(REQUIRED) - set(OPTIONAL))
    if unknown:
        raise ContentError(f"{path}: unknown front matter key {unknown[0]!r} (known: {', '.join(REQUIRED + OPTIONAL)})")
    for key in REQUIRED:
        if meta.get(key) in (None, ""):
            raise ContentError(f"{path}: missing {key}")
    for key in ("title", "description", "slug", "image", "lang", "translation_of"):
        if key in meta and not isinstance(meta[key], str):
            raise ContentError(f"{path}: {key} must be text, not {meta[key]!r}")
    return meta, post.content


def read(path: Path, clinic: dict[str, str], static_folder: Path) -> dict:
    """One article from its file: front matter checked, text rendered as HTML."""
    meta, text = read_front_matter(path)
    slug = meta["slug"].strip()
    if not SLUG.fullmatch(slug):
        raise ContentError(f"{path}: slug {slug!r}: use lowercase letters, digits and single hyphens")
    image = meta.get("image")
    if image is not None:
        found = (static_folder / image).resolve()
        if Path(image).is_absolute() or not found.is_relative_to(static_folder.resolve()):
            raise ContentError(
                f"{path}: image {image!r}: only a relative path to a file inside static/ is accepted, "
                "like images/clinic.jpg"
            )
        if not found.is_file():
            raise ContentError(f"{path}: image {image!r}: no such file in {static_folder}")
    if meta.get("home", False) not in (True, False):
        raise ContentError(f"{path}: home must be true or false, not {meta['home']!r}")
    lang = meta.get("lang", languages.DEFAULT).strip()
    if lang not in languages.NAMES:
        raise ContentError(f"{path}: lang {lang!r}: unknown language (known: {', '.join(languages.NAMES)})")
    translation_of = (meta.get("translation_of") or "").strip() or None
    if translation_of and lang == languages.DEFAULT:
        raise ContentError(
            f"{path}: translation_of needs a `lang:` other than {languages.DEFAULT}: it names the English article"
        )
    if meta.get("home") and lang != languages.DEFAULT:
        raise ContentError(f"{path}: home: the translation of the home article (translation_of) is served at /{lang}/")
    published = as_date(meta["published"], "published", path)
    updated = as_date(meta["updated"], "updated", path) if meta.get("updated") else None
    if updated and updated < published:
        raise ContentError(f"{path}: updated ({updated}) is before published ({published})")
    parser = markdown()
    tokens = parser.parse(fill_in(text, clinic, path, lambda value: MARKDOWN_PUNCTUATION.sub(r"\\\1", value)))
    if not tokens:
        raise ContentError(f"{path}: the article has no text after its front matter")
    if any(token.type == "heading_open" and token.tag == "h1" for token in tokens):
        raise ContentError(f"{path}: a '# ' heading: the title is the page's only top heading, use '## ' for sections")
    home = meta.get("home", False)
    return {
        "file": str(path),
        "slug": slug,
        "lang": lang,
        "translation_of": translation_of,
        "title": fill_in(meta["title"].strip(), clinic, path),
        "description": fill_in(" ".join(meta["description"].split()), clinic, path),
        "published": published,
        "updated": updated,
        "modified": updated or published,
        "image": image,
        "home": home,
        "path": languages.prefixed(lang, "/" if home else f"/articles/{slug}"),
        "html": Markup(parser.renderer.render(tokens, parser.options, {}).rstrip("\n")),
    }


def load(folder: Path, clinic: dict[str, str], static_folder: Path) -> list[dict]:
    """Every article in `folder`, the home one first, then the newest; ContentError if one cannot be served."""
    if not folder.is_dir():
        raise ContentError(f"CONTENT_DIR={str(folder)!r}: no such folder")
    found = [read(path, clinic, static_folder) for path in sorted(folder.glob("*.md"))]
    seen: dict[str, dict] = {}
    for article in found:
        if article["slug"] in seen:
            raise ContentError(
                f"{article['file']}: slug {article['slug']!r} is also the slug of {seen[article['slug']]['file']}"
            )
        seen[article["slug"]] = article
    link_translations(found)
    homes = [article for article in found if article["home"]]
    if not homes:
        raise ContentError(f"{folder}: no article has `home: true`, so nothing would be served at /")
    if len(homes) > 1:
        raise ContentError(
            f"{homes[1]['file']}: `home: true` is also set in {homes[0]['file']}: only one article is served at /"
        )
    found.sort(
        key=lambda a: (
            a["lang"] != languages.DEFAULT,
            a["path"] != languages.prefixed(a["lang"], "/"),
            -a["published"].toordinal(),
            a["title"],
        )
    )
    return found


def link_translations(found: list[dict]) -> None:
    """Give each article `versions` ({language: path}, itself included); the home's translation is served at /es/.

    ContentError, naming the file, for a translation of an article that does not exist or a second one in a language.
    """
    english = {article["slug"]: article for article in found if article["lang"] == languages.DEFAULT}
    for article in found:
        article["versions"] = {article["lang"]: article["path"]}
    for article in found:
        if not article["translation_of"]:
            continue
        original = english.get(article["translation_of"])
        if original is None:
            raise ContentError(
                f"{article['file']}: translation_of {article['translation_of']!r}: no English article has that slug"
            )
        if article["lang"] in original["versions"]:
            other = next(a for a in found if a["path"] == original["versions"][article["lang"]])
            raise ContentError(
                f"{article['file']}: {original['slug']!r} already has a translation in {article['lang']!r}:"
                f" {other['file']}"
            )
        if original["home"]:
            article["path"] = languages.prefixed(article["lang"], "/")
        original["versions"][article["lang"]] = article["path"]
    for article in found:
        if article["translation_of"]:
            article["versions"] = english[article["translation_of"]]["versions"]


def content_folder(settings: Mapping) -> Path:
    """CONTENT_DIR, a relative path being read from the site's folder, not the current one."""
    return config.ROOT / settings["CONTENT_DIR"]


def load_for(settings: Mapping) -> list[dict]:
    """The articles in the settings' CONTENT_DIR, filled in with the settings' clinic; ContentError if one is broken."""
    clinic = {name: settings[f"CLINIC_{name.upper()}"] for name in CLINIC_FIELDS}
    return load(content_folder(settings), clinic, config.ROOT / "static")


def init_app(app: Flask) -> None:
    """Read the articles (start-up stops if one cannot be served) and register `flask articles`."""
    app.extensions["articles"] = load_for(app.config)
    app.cli.add_command(articles_command)


def all_articles() -> list[dict]:
    """Every article, the home article first."""
    return current_app.extensions["articles"]


def home(lang: str = languages.DEFAULT) -> dict | None:
    """The article served at / (`/es/` for Spanish: the home article's translation, None if it has none)."""
    return by_path(languages.prefixed(lang, "/"))


def by_slug(slug: str, lang: str | None = None) -> dict | None:
    """The article with this slug (in `lang`, if given), or None."""
    return next(
        (article for article in all_articles() if article["slug"] == slug and lang in (None, article["lang"])), None
    )


def by_path(path: str | None) -> dict | None:
    """The article served at this path (`/`, `/articles/<slug>`, `/es/`, `/es/articles/<slug>`), or None."""
    return next((article for article in all_articles() if article["path"] == path), None)


@click.command("articles")
@with_appcontext
def articles_command() -> None:
    """List the articles (slug, language, title, URL, published, translations); start-up has checked every file."""
    site = current_app.config["SITE_URL"]
    for article in all_articles():
        others = [
            f"{lang}: {by_path(path)['slug']}" for lang, path in article["versions"].items() if path != article["path"]
        ]
        translations = f"translations: {', '.join(others)}" if others else "no translation"
        click.echo(
            f"{article['slug']}\t{article['lang']}\t{article['title']}\t{site}{article['path']}"
            f"\t{article['published']}\t{translations}"
        )
    click.echo(f"{len(all_articles())} article(s) in {content_folder(current_app.config)}, all ready to serve.")
