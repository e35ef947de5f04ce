"""How the site is served: proxy trust, security and cache headers, request logs, session cookies, static files."""

import gzip
import hashlib
import logging
import mimetypes
import os
import re
import time

from flask import Flask, Response, abort, current_app, g, request, session
from flask.sessions import SecureCookieSessionInterface
from werkzeug.middleware.proxy_fix import ProxyFix
from werkzeug.security import safe_join

import form_pages
import visits
from extensions import logged_address
from forms import uncompressed

log = logging.getLogger("clinic.request")

CSP = "default-src 'self'; base-uri 'none'; object-src 'none'; frame-ancestors 'none'; form-action 'self'"
PERMISSIONS = "camera=(), microphone=(), geolocation=(), payment=(), usb=(), browsing-topics=()"
YEAR = 365 * 24 * 3600
COMPRESSIBLE = ("text/", "application/json", "application/javascript", "image/svg+xml", "application/manifest+json")
# C0 and C1 controls and Unicode's line and paragraph separators: anything that could end a log line.
CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def init_app(app: Flask) -> None:
    """Trust proxies as configured, add headers and a log line to every response, serve static files."""
    app.session_interface = SessionCookies()
    count = visits.init_app(app)
    app.wsgi_app = visits.calls_route(app, form_pages.first_visit_landing(app, app.wsgi_app, PRIVATE, log_request))
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
    # A streamed body's size is not known yet; asking for it would read the whole stream into memory.
    size = None if response.is_streamed else response.calculate_content_length()
    log_request(req.method, req.path, response.status_code, size, req.environ.get("clinic.started"), req.remote_addr)
    return response


def log_request(method: str, path: str, status: int, size: int | None, started: float | None, address: str | None):
    """Log one request in one line: method, path without its query, status, size, time taken, address."""
    elapsed = (time.perf_counter() - (started or time.perf_counter())) * 1000
    size_text = "-" if size is None else f"{size}B"
    log.info("%s %s %s %s %.1fms %s", method, path[:200], status, size_text, elapsed, logged_address(address))


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
