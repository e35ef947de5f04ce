"""How the site is served: proxy trust, security and cache headers, request logs, static files, cached pages."""

import gzip
import hashlib
import logging
import mimetypes
import os
import re
import time
from urllib.parse import parse_qs

from flask import Flask, Response, abort, current_app, g, render_template, request, session
from flask.sessions import SecureCookieSessionInterface
from flask_wtf.csrf import generate_csrf
from itsdangerous import URLSafeTimedSerializer
from markupsafe import escape
from werkzeug.http import dump_cookie
from werkzeug.middleware.proxy_fix import ProxyFix
from werkzeug.security import safe_join

import languages
import visits
from extensions import logged_address
from forms import uncompressed, visit_fields

log = logging.getLogger("clinic.request")

CSP = "default-src 'self'; base-uri 'none'; object-src 'none'; frame-ancestors 'none'; form-action 'self'"
PERMISSIONS = "camera=(), microphone=(), geolocation=(), payment=(), usb=(), browsing-topics=()"
YEAR = 365 * 24 * 3600
COMPRESSIBLE = ("text/", "application/json", "application/javascript", "image/svg+xml", "application/manifest+json")
# Per-visitor values stand in the cached page as these private-use characters, which HTML escaping leaves alone.
SLOT = "\ue000{}\ue001"
SLOT_RE = re.compile("\ue000(\\w+)\ue001")
# C0 and C1 controls and Unicode's line and paragraph separators: anything that could end a log line.
CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def init_app(app: Flask) -> None:
    """Trust proxies as configured, add headers and a log line to every response, serve static files."""
    app.session_interface = SessionCookies()
    count = visits.init_app(app)
    app.wsgi_app = visits.calls_route(app, first_visit_landing(app, app.wsgi_app))
    if app.config["TRUSTED_PROXIES"] > 0:
        n = app.config["TRUSTED_PROXIES"]
        # The visitor's address and scheme only: the Host the visitor sent stays the host (a forged
        # X-Forwarded-Host could otherwise pass flask-wtf's same-origin Referer check).
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=n, x_proto=n, x_host=0, x_port=0)
    headers = list(security_headers(app.config["HTTPS"]).items())
    app.wsgi_app = with_headers(app.wsgi_app, headers, count)
    app.after_request(finish_response)
    app.view_functions["static"] = send_static
    keep_log_records_on_one_line()
    # flask-limiter logs each refusal with its key, the visitor's full address; the request line says 429 already.
    logging.getLogger("flask-limiter").setLevel(logging.WARNING)


def security_headers(https: bool) -> dict[str, str]:
    """The headers every response carries; HSTS only when the site is served over HTTPS."""
    headers = {
        "Content-Security-Policy": CSP,
        "X-Content-Type-Options": "nosniff",
        "X-Frame-Options": "DENY",
        "Referrer-Policy": "strict-origin-when-cross-origin",
        "Permissions-Policy": PERMISSIONS,
        "Cross-Origin-Opener-Policy": "same-origin",
        "Cross-Origin-Resource-Policy": "same-origin",
    }
    if https:
        headers["Strict-Transport-Security"] = "max-age=63072000; includeSubDomains"
    return headers


def with_headers(wsgi_app, headers: list[tuple[str, str]], count=None):
    """Wrap a WSGI app so every response it sends, errors and static files included, carries `headers`.

    `count` (visits.Counter), when given, sees every 200 answer, Flask's and the first-visit path's alike.
    """

    def app(environ, start_response):
        environ["clinic.started"] = time.perf_counter()

        def start(status, response_headers, exc_info=None):
            if count is not None and status.startswith("200"):
                try:
                    count(environ, response_headers)
                except Exception:  # a visit not counted must never cost the visitor their page
                    log.exception("could not count a visit")
            response_headers.extend(headers)
            return start_response(status, response_headers, exc_info)

        return wsgi_app(environ, start)

    return app


NO_STORE = "no-store"
PRIVATE = "private, no-cache"
REVALIDATE = "no-cache"
IMMUTABLE = f"public, max-age={YEAR}, immutable"


def keep_private() -> None:
    """Mark this response as showing what the visitor typed: no browser or proxy may keep a copy."""
    g.no_store = True


def cache_policy(response: Response) -> str:
    """The Cache-Control of every response through Flask: the one place that decides it."""
    if (
        g.get("no_store")
        or request.path.startswith("/admin")
        or response.headers.get("Content-Disposition", "").startswith("attachment")
    ):
        return NO_STORE  # leads are health information: never kept anywhere
    if request.endpoint == "static":
        return IMMUTABLE if g.get("versioned_asset") else REVALIDATE  # an unversioned URL: check back every time
    if session.accessed or "csrf_token" in g:
        return PRIVATE  # a form token or the visitor's own session: no shared cache may keep it
    return REVALIDATE


def finish_response(response: Response) -> Response:
    """Set Cache-Control, and log the request in one line without its query or body."""
    response.headers["Cache-Control"] = cache_policy(response)
    req = request._get_current_object()
    elapsed = (time.perf_counter() - req.environ.get("clinic.started", time.perf_counter())) * 1000
    # A streamed body's size is not known yet; asking for it would read the whole stream into memory.
    size = None if response.is_streamed else response.calculate_content_length()
    log.info(
        "%s %s %s %s %.1fms %s",
        req.method,
        req.path[:200],
        response.status_code,
        "-" if size is None else f"{size}B",
        elapsed,
        logged_address(req.remote_addr),
    )
    return response


def escape_controls(text: str) -> str:
    """`text` with each control character written as Python writes it (`\\n`, `\\x1b`): it cannot start a line."""
    return CONTROL.sub(lambda match: ascii(match[0])[1:-1], text)


def keep_log_records_on_one_line() -> None:
    """Escape control characters in the message of every log record, whichever logger or handler.

    A request path is URL-decoded (`GET /x%0aFAKE`), so without this a visitor could forge log lines.
    The message is formatted here, once, which the handler would otherwise do.
    """
    make_record = logging.getLogRecordFactory()
    if getattr(make_record, "escapes_controls", False):
        return

    def one_line_record(*args, **kwargs) -> logging.LogRecord:
        record = make_record(*args, **kwargs)
        try:
            message = record.getMessage()
        except Exception:  # a bad format string: the handler reports it as it always has
            return record
        record.msg = escape_controls(message) if CONTROL.search(message) else message
        record.args = None
        return record

    one_line_record.escapes_controls = True
    logging.setLogRecordFactory(one_line_record)


class SessionCookies(SecureCookieSessionInterface):
    """Flask's signed-cookie sessions; the signing serializer is made once (not twice a request), uncompressed."""

    def get_signing_serializer(self, app: Flask):
        keys = (app.secret_key, tuple(app.config.get("SECRET_KEY_FALLBACKS") or ()))
        cached = app.extensions.get("session_serializer")
        if cached is None or cached[0] != keys:
            serializer = super().get_signing_serializer(app)
            cached = (keys, uncompressed(serializer) if serializer is not None else None)
            app.extensions["session_serializer"] = cached
        return cached[1]


class Asset:
    """A static file's bytes, its gzip form when that is smaller, and its content hash."""

    def __init__(self, path: str):
        with open(path, "rb") as f:
            self.body = f.read()
        self.hash = hashlib.sha256(self.body).hexdigest()
        self.mimetype = mimetypes.guess_type(path)[0] or "application/octet-stream"
        self.mtime = os.stat(path).st_mtime
        packed = gzip.compress(self.body, 9, mtime=0) if self.mimetype.startswith(COMPRESSIBLE) else None
        self.gzipped = packed if packed and len(packed) < len(self.body) else None


def load_asset(path: str) -> Asset:
    """The asset at `path`, read once per process and again whenever the file changes."""
    assets = current_app.extensions.setdefault("static_assets", {})
    stat = os.stat(path)
    key = (stat.st_mtime_ns, stat.st_size)
    cached = assets.get(path)
    if cached is None or cached[0] != key:
        cached = assets[path] = (key, Asset(path))
    return cached[1]


def send_static(filename: str) -> Response:
    """A static file: gzipped when the browser takes it, cached for a year under its hashed URL."""
    path = safe_join(current_app.static_folder, filename)
    if path is None or not os.path.isfile(path):
        abort(404)
    asset = load_asset(path)
    zipped = asset.gzipped is not None and request.accept_encodings["gzip"] > 0
    response = Response(asset.gzipped if zipped else asset.body, mimetype=asset.mimetype)
    response.set_etag(asset.hash[:32] + ("-gz" if zipped else ""))
    response.last_modified = asset.mtime
    if zipped:
        response.headers["Content-Encoding"] = "gzip"
    if asset.gzipped is not None:
        response.vary.add("Accept-Encoding")
    g.versioned_asset = request.args.get("v") == asset.hash[:12]  # cache_policy keeps it for a year
    return response.make_conditional(request)


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


def first_visit_landing(app: Flask, wsgi_app):
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
            ("Cache-Control", PRIVATE),  # what cache_policy says of a new session
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
        elapsed = (time.perf_counter() - environ.get("clinic.started", time.perf_counter())) * 1000
        method, path = environ["REQUEST_METHOD"], environ["PATH_INFO"]
        log.info(
            "%s %s 200 %sB %.1fms %s", method, path, len(body), elapsed, logged_address(environ.get("REMOTE_ADDR"))
        )
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
