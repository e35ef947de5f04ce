"""Browsers the owner has signed in with: the signed device cookie, and a short name for each browser.

A browser that has signed in successfully carries a device cookie naming the account (OWASP's
"device cookies"). Failed sign-ins from elsewhere do not pause it; it has its own, smaller limit.
"Sign out everywhere" and a new password revoke every device cookie the account issued before.
"""

import secrets
from datetime import timedelta

from flask import Response, current_app, request, url_for
from itsdangerous import BadSignature, URLSafeTimedSerializer

import db
import db.accounts

DEVICE_COOKIE = "admin_device"
DEVICE_LIFETIME = timedelta(days=365)
# (marker in the user agent, name); the first match wins, so browsers that also say "Chrome" or "Safari" come first.
BROWSERS = [
    ("Edg", "Edge"),
    ("OPR/", "Opera"),
    ("SamsungBrowser/", "Samsung Internet"),
    ("Firefox/", "Firefox"),
    ("FxiOS/", "Firefox"),
    ("CriOS/", "Chrome"),
    ("Chrome/", "Chrome"),
    ("Chromium/", "Chromium"),
    ("Safari/", "Safari"),
]
SYSTEMS = [
    ("iPhone", "iPhone"),
    ("iPad", "iPad"),
    ("Android", "Android"),
    ("Windows", "Windows"),
    ("Macintosh", "Mac"),
    ("CrOS", "ChromeOS"),
    ("Linux", "Linux"),
]


def browser_name(user_agent: str) -> str:
    """A short name for a browser, like "Safari on iPhone", from its User-Agent header."""
    browser = next((name for marker, name in BROWSERS if marker in user_agent), None)
    system = next((name for marker, name in SYSTEMS if marker in user_agent), None)
    if browser and system:
        return f"{browser} on {system}"
    if browser or system:
        return browser or f"A browser on {system}"
    program = user_agent.split("/")[0].split(" ")[0].strip()[:30]
    return program or "An unknown browser"


def serializer() -> URLSafeTimedSerializer:
    return URLSafeTimedSerializer(current_app.secret_key, salt="admin-device")


def known_device(username: str | None = None) -> str | None:
    """This browser's device id when its cookie is genuine, unexpired, names `username` (if given) and is not revoked.

    A cookie is revoked when its account's device generation has changed since it was issued:
    "Sign out everywhere" and a new password change it.
    """
    raw = request.cookies.get(DEVICE_COOKIE)
    if not raw:
        return None
    try:
        data = serializer().loads(raw, max_age=DEVICE_LIFETIME.total_seconds())
    except BadSignature:
        return None
    if not isinstance(data, dict) or not all(isinstance(data.get(k), str) for k in ("account", "device", "generation")):
        return None
    if username is not None and data["account"] != username:
        return None
    account = db.accounts.get_account(db.get_db(), data["account"])
    if account is None or account["device_generation"] != data["generation"]:
        return None
    return data["device"]


def remember_device(response: Response, account: dict) -> None:
    """Give the browser a fresh device cookie naming the account and its device generation, sent only to sign-in."""
    generation, device = account["device_generation"], secrets.token_urlsafe(16)
    response.set_cookie(
        DEVICE_COOKIE,
        serializer().dumps({"account": account["username"], "device": device, "generation": generation}),
        max_age=int(DEVICE_LIFETIME.total_seconds()),
        path=url_for("admin.login"),
        secure=current_app.config["HTTPS"],
        httponly=True,
        samesite="Strict",
    )
