"""Extension objects, made unbound so any module can import them without cycles."""

import ipaddress

from flask import request
from flask_limiter import Limiter
from flask_mail import Mail
from flask_wtf.csrf import CSRFProtect

import ratelimit  # noqa: F401  (registers the sqlite:// store with flask-limiter)

csrf = CSRFProtect()
mail = Mail()


def client_address() -> str:
    """The client a rate limit keys on: the peer (as ProxyFix leaves it when trusted); IPv6 by its /64.

    One IPv6 subscriber usually gets a whole /64, so counting single addresses would give them
    billions of fresh limits.
    """
    address = request.remote_addr or "unknown"
    if ":" not in address:
        return address
    try:
        ip = ipaddress.IPv6Address(address)
    except ValueError:
        return address
    if ip.ipv4_mapped:
        return str(ip.ipv4_mapped)
    return str(ipaddress.IPv6Network((ip, 64), strict=False))


limiter = Limiter(key_func=client_address, default_limits=[])


@limiter.request_filter
def page_view() -> bool:
    """Reading a page is never rate-limited: the limits guard forms, and skipping the check keeps pages fast."""
    return request.method in ("GET", "HEAD")
