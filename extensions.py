"""Extension objects, made unbound so any module can import them without cycles."""

import ipaddress

from flask import request
from flask_babel import Babel
from flask_limiter import Limiter
from flask_mail import Mail
from flask_wtf.csrf import CSRFProtect

import ratelimit  # noqa: F401  (registers the sqlite:// store with flask-limiter)

babel = Babel()
csrf = CSRFProtect()
mail = Mail()


def client_address() -> str:
    """The client a rate limit keys on: the peer (as ProxyFix leaves it when trusted); IPv6 by its /64."""
    return client_network(request.remote_addr or "unknown")


def client_network(address: str) -> str:
    """The network a rate limit counts an address in: an IPv4 address itself, IPv6 by its /64.

    One IPv6 subscriber usually gets a whole /64, so counting single addresses would give them
    billions of fresh limits.
    """
    if ":" not in address:
        return address
    try:
        ip = ipaddress.IPv6Address(address)
    except ValueError:
        return address
    if ip.ipv4_mapped:
        return str(ip.ipv4_mapped)
    return str(ipaddress.IPv6Network((ip, 64), strict=False))


def logged_address(address: str | None) -> str:
    """A visitor's address as the logs show it: IPv4 cut to its /24, IPv6 to its /48 (`203.0.113.0/24`)."""
    try:
        ip = ipaddress.ip_address(address or "")
    except ValueError:
        return "-"
    if ip.version == 6 and ip.ipv4_mapped:
        ip = ip.ipv4_mapped
    return str(ipaddress.ip_network((ip, 24 if ip.version == 4 else 48), strict=False))


limiter = Limiter(key_func=client_address, default_limits=[])


@limiter.request_filter
def page_view() -> bool:
    """Reading a page is never rate-limited: the limits guard forms, and skipping the check keeps pages fast."""
    return request.method in ("GET", "HEAD")
