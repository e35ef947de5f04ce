"""The site's languages: English at `/`, Spanish under `/es/`, chosen by the address alone, never guessed.

The owner's admin stays English; a visitor's page, its form, errors and confirmation email are in the
language of the address they opened.
"""

from collections.abc import Mapping
from urllib.parse import urlencode

from flask import Flask, has_request_context, request

from extensions import babel

DEFAULT = "en"
NAMES = {"en": "English", "es": "Español"}  # each language named in itself, for the header's switch
PREFIXES = {"en": "", "es": "/es"}
PAGE_LABELS = {"en": "English page", "es": "Spanish page"}  # for the owner, whose admin is English
UTM_TAGS = ("utm_source", "utm_medium", "utm_campaign")


def of_path(path: str) -> str:
    """The language of a page address: `es` for `/es` and anything under `/es/`, else English."""
    return "es" if path == "/es" or path.startswith("/es/") else DEFAULT


def current() -> str:
    """The language of this request's page (English outside a request, e.g. in a background thread)."""
    return of_path(request.path) if has_request_context() else DEFAULT


def prefixed(lang: str, path: str) -> str:
    """`path` (an English address, starting with /) as the address of its page in `lang`."""
    return PREFIXES[lang] + path


def init_app(app: Flask) -> None:
    """Flask-Babel with the address deciding the language; catalogs in translations/."""
    babel.init_app(app, locale_selector=current)
    app.jinja_env.globals.update(languages=NAMES, page_labels=PAGE_LABELS)


def switch_query(visit: Mapping[str, str]) -> str:
    """The visit's UTM tags as a query string (`?utm_source=...`, or empty), for the link to the other language."""
    tags = [(name, visit[name][:200]) for name in UTM_TAGS if visit.get(name)]  # as long as the form keeps them
    return "?" + urlencode(tags) if tags else ""
