"""Pages with the lead form (the landing page, each article): rendered once per worker, filled in per visitor.

`first_visit_landing` answers a new visitor's GET of such a page below Flask's dispatch (see its docstring).
"""

import hashlib
import logging
import os
import re
from collections.abc import Callable
from urllib.parse import parse_qs

from flask import Flask, current_app, render_template, request, session
from flask_wtf.csrf import generate_csrf
from itsdangerous import URLSafeTimedSerializer
from markupsafe import escape
from werkzeug.http import dump_cookie

import languages
from forms import uncompressed, visit_fields

log = logging.getLogger("clinic.request")

# Per-visitor values stand in the cached page as these private-use characters, which HTML escaping leaves alone.
SLOT = "\ue000{}\ue001"

SLOT_RE = re.compile("\ue000(\\w+)\ue001")


def new_form(form_class, values: dict):
    """An empty `form_class` form with `values` in its hidden fields."""
    form = form_class(formdata=None)
    for name, value in values.items():
        form[name].data = value
    return form


def render_form_page(template: str, form_class, values: dict, **context) -> str:
    """Render `template` with a fresh form and `context`, from a copy made once per process, language and path.

    Everything on such a page is the same for every visitor except the form's hidden fields (the
    CSRF and form tokens, where the visitor came from) and the visit's UTM tags on the link to the
    other language, so the page is rendered once with markers in their place and each visit fills
    in its own values. Flashed messages and template
    auto-reload (debug) take the normal path.
    """
    if current_app.jinja_env.auto_reload or "_flashes" in session:
        return render_template(template, form=new_form(form_class, values), **context)
    pages = current_app.extensions.setdefault("form_pages", {})
    key = (languages.current(), request.path)
    page = pages.get(key)
    if page is None:
        page = pages[key] = page_with_slots(template, new_form(form_class, values), values, **context)
    csrf_names, parts = page
    return fill_page(page, values, generate_csrf() if csrf_names else "")


def fill_page(page: tuple[list[str], list[str]], values: dict, csrf_token: str) -> str:
    """Put one visitor's hidden-field values (and CSRF token) into a page made by page_with_slots."""
    csrf_names, parts = page
    filled = {name: escape(value) for name, value in values.items()}
    filled.update(dict.fromkeys(csrf_names, escape(csrf_token)))
    filled["switch_query"] = escape(languages.switch_query(values))
    return "".join(filled[part] if i % 2 else part for i, part in enumerate(parts))


def first_visit_landing(app: Flask, wsgi_app, cache_control: str, log_request: Callable[..., None]):
    """Answer GET of a landing page (`/`, an article) for a visitor with no session cookie, below Flask's dispatch.

    A landing page is a path whose page render_form_page has cached. This is where a burst of ad
    visitors lands, and Flask's per-request machinery (contexts, hooks, limiter, response object)
    costs more than the page itself. The answer is what the landing view
    gives a new visitor: the cached page filled in, a CSRF token made as flask-wtf's generate_csrf
    makes it, and a new session cookie from Flask's own session serializer and cookie settings.
    Anything else, and the very first request of a process (which builds the cached page), takes the
    normal path. Because this copies library internals, tests/test_serving.py compares its answer
    with Flask's own for the same request (status, headers, cookie attributes, page), over HTTP and
    HTTPS. If it ever raises, the error is logged once and Flask answers from then on.
    The `FIRST_VISIT_FAST_PATH: False` override (for that comparison) leaves Flask to answer always.
    serving passes in the Cache-Control of a new session and the request log, which it decides.
    """
    if not app.config.get("FIRST_VISIT_FAST_PATH", True):
        return wsgi_app
    interface = app.session_interface
    cookie_name = interface.get_cookie_name(app)
    csrf_key = app.config.get("WTF_CSRF_FIELD_NAME", "csrf_token")
    csrf_secret = app.config.get("WTF_CSRF_SECRET_KEY") or app.secret_key
    csrf_signer = uncompressed(URLSafeTimedSerializer(csrf_secret, salt="wtf-csrf-token"))
    cookie_options = {
        "domain": interface.get_cookie_domain(app),
        "path": interface.get_cookie_path(app),
        "secure": interface.get_cookie_secure(app),
        "httponly": interface.get_cookie_httponly(app),
        "samesite": interface.get_cookie_samesite(app),
        "partitioned": interface.get_cookie_partitioned(app),
    }
    broken = False

    def answer(environ, page) -> tuple[bytes, list[tuple[str, str]]]:
        """The page and headers for one first visit."""
        query = environ.get("QUERY_STRING", "")
        args = {k: v[0] for k, v in parse_qs(query).items()} if query else {}
        raw_token = hashlib.sha1(os.urandom(64)).hexdigest()
        with app.app_context():
            values = visit_fields(args, environ.get("HTTP_REFERER"))
            cookie = interface.get_signing_serializer(app).dumps({csrf_key: raw_token})
        body = fill_page(page, values, csrf_signer.dumps(raw_token)).encode()
        headers = [
            ("Content-Type", "text/html; charset=utf-8"),
            ("Content-Length", str(len(body))),
            ("Cache-Control", cache_control),
            ("Vary", "Cookie"),
            ("Set-Cookie", dump_cookie(cookie_name, cookie, **cookie_options)),
        ]
        return body, headers

    def landing(environ, start_response):
        nonlocal broken
        path = environ.get("PATH_INFO", "")
        page = app.extensions.get("form_pages", {}).get((languages.of_path(path), path))
        if (
            page is None
            or broken
            or environ.get("REQUEST_METHOD") not in ("GET", "HEAD")
            or cookie_name in environ.get("HTTP_COOKIE", "")
        ):
            return wsgi_app(environ, start_response)
        try:
            body, headers = answer(environ, page)
        except Exception:
            broken = True
            log.exception("the first-visit fast path failed; Flask answers first visits from now on")
            return wsgi_app(environ, start_response)
        start_response("200 OK", headers)
        method, path = environ["REQUEST_METHOD"], environ["PATH_INFO"]
        log_request(method, path, 200, len(body), environ.get("clinic.started"), environ.get("REMOTE_ADDR"))
        return [body] if environ["REQUEST_METHOD"] == "GET" else []

    return landing


def page_with_slots(template: str, form, values: dict, **context) -> tuple[list[str], list[str]]:
    """Render `template` with a marker in each varying hidden field and the switch link's query; return the parts.

    Also returns the CSRF fields.

    The parts alternate: page text, a field name, page text, ...
    """
    csrf_names = [field.name for field in form if field.type == "CSRFTokenField"]
    slotted = [form[name] for name in [*values, *csrf_names]]
    try:
        for field in slotted:
            marker = SLOT.format(field.name)
            field._value = lambda marker=marker: marker
        html = render_template(template, form=form, switch_query=SLOT.format("switch_query"), **context)
    finally:
        for field in slotted:
            del field._value
    return csrf_names, SLOT_RE.split(html)
