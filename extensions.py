"""Extension objects, made unbound so any module can import them without cycles."""

from flask import request
from flask_limiter import Limiter
from flask_wtf.csrf import CSRFProtect

csrf = CSRFProtect()


def client_address() -> str:
    """The address a rate limit keys on: the peer, as ProxyFix leaves it when trusted."""
    return request.remote_addr or "unknown"


limiter = Limiter(key_func=client_address, default_limits=[])


@limiter.request_filter
def page_view() -> bool:
    """Reading a page is never rate-limited: the limits guard forms, and skipping the check keeps pages fast."""
    return request.method in ("GET", "HEAD")
