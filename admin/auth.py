"""Sign-in, sessions and the guard in front of every admin page."""

import functools
import hashlib
import math
import secrets
import unicodedata
from datetime import UTC, datetime, timedelta
from urllib.parse import unquote, urlsplit

from flask import (
    Response,
    current_app,
    flash,
    g,
    redirect,
    render_template,
    request,
    session,
    url_for,
)
from werkzeug.security import check_password_hash, generate_password_hash

import db
from admin import audit, bp, log, stamp
from extensions import client_address
from forms import LoginForm

OPEN_ENDPOINTS = {"admin.login"}
DATA_ENDPOINTS = {"admin.export_csv"}  # answer 401 rather than a redirect to a page
ADDRESS_FAILURE_FACTOR = 4  # an address may fail this many times more than one account
TOUCH_EVERY = timedelta(minutes=1)


def session_hash(sid: str) -> str:
    """The stored form of a session id, so a copy of the database opens no session."""
    return hashlib.sha256(sid.encode()).hexdigest()


def signed_in_account(now: datetime) -> dict | None:
    """The account whose live session this request's cookie names, or None."""
    sid = session.get("admin_sid")
    if not isinstance(sid, str):
        return None
    database = db.get_db()
    idle_before = stamp(now - timedelta(minutes=current_app.config["ADMIN_IDLE_MINUTES"]))
    account = db.session_account(database, session_hash(sid), idle_before)
    if account is None:
        session.pop("admin_sid")
        flash("Your session has ended. Please sign in again.")
        return None
    if account["last_seen_at"] < stamp(now - TOUCH_EVERY):
        db.touch_session(database, account["session_id"], stamp(now))
    return account


def safe_next(target: str | None) -> str:
    """`target` when it is a path inside this admin area, else the inbox."""
    home = url_for("admin.inbox")
    if not target or len(target) > 2000:
        return home
    decoded = target
    for _ in range(3):
        decoded = unquote(decoded)
    for text in (target, decoded):
        if "\\" in text or text.startswith("//") or any(unicodedata.category(ch)[0] in "CZ" for ch in text):
            return home
    parts = urlsplit(target)
    if parts.scheme or parts.netloc or not (parts.path == home or parts.path.startswith(home + "/")):
        return home
    if parts.path in (url_for("admin.login"), url_for("admin.logout")):
        return home
    return target


@bp.before_request
def require_sign_in():
    """Every admin URL but the sign-in page needs a live session: pages redirect, data answers 401."""
    g.account = signed_in_account(datetime.now(UTC))
    if g.account or request.endpoint in OPEN_ENDPOINTS:
        return None
    if request.endpoint in DATA_ENDPOINTS:
        return render_template("admin/sign_in_needed.html"), 401
    if request.method == "GET":
        target = request.full_path if request.query_string else request.path
        return redirect(url_for("admin.login", next=target))
    return redirect(url_for("admin.login"), 303)


@bp.after_request
def no_store(response: Response) -> Response:
    """Leads are health information: no browser or proxy may keep a copy."""
    response.headers["Cache-Control"] = "no-store"
    return response


@functools.cache
def dummy_hash() -> str:
    """A hash to check unknown names against, so they take as long as known ones."""
    return generate_password_hash(secrets.token_hex(16))


def lock_minutes_left(username: str, address: str, now: datetime) -> int:
    """Minutes until sign-in opens again for this account or address; 0 when it is open."""
    cfg = current_app.config
    window = timedelta(minutes=cfg["LOGIN_LOCK_MINUTES"])
    limits = [(f"account:{username}", cfg["LOGIN_MAX_FAILURES"])]
    limits.append((f"address:{address}", cfg["LOGIN_MAX_FAILURES"] * ADDRESS_FAILURE_FACTOR))
    for key, limit in limits:
        failures = db.login_failures_since(db.get_db(), key, stamp(now - window))
        if len(failures) >= limit:
            # Open again once the oldest failure that still counts leaves the window.
            opens = datetime.fromisoformat(failures[-limit]) + window
            return max(1, math.ceil((opens - now).total_seconds() / 60))
    return 0


@bp.route("/login", methods=["GET", "POST"])
def login():
    """The sign-in form; one generic message for any wrong name or password."""
    target = safe_next(request.args.get("next"))
    if g.account:
        return redirect(target)
    form = LoginForm()
    message, status = None, 200
    if request.method == "POST":
        status = 422
    if form.validate_on_submit():
        now = datetime.now(UTC)
        username, address = form.username.data, client_address()
        wait = lock_minutes_left(username, address, now)
        if wait:
            message = (
                "Too many failed sign-ins for this account or from this address, so sign-in is paused. "
                f"Please try again in {wait} minute{'s' if wait != 1 else ''}."
            )
            return render_template("admin/login.html", form=form, message=message, target=target), 429
        database = db.get_db()
        account = db.get_account(database, username)
        matches = check_password_hash(account["password_hash"] if account else dummy_hash(), form.password.data)
        if account and matches:
            return start_session(account, target, now)
        window = timedelta(minutes=current_app.config["LOGIN_LOCK_MINUTES"])
        db.add_login_failure(database, [f"account:{username}", f"address:{address}"], stamp(now), stamp(now - window))
        audit("sign-in failed", actor=username if account else "(unknown name)")
        log.warning("failed admin sign-in from %s", address)
        message, status = "That username and password do not match. Please try again.", 401
    return render_template("admin/login.html", form=form, message=message, target=target), status


def start_session(account: dict, target: str, now: datetime):
    """Sign in: a brand-new session id (no fixation), recorded on the server."""
    database = db.get_db()
    session.clear()
    sid = secrets.token_urlsafe(32)
    db.start_session(database, session_hash(sid), account["id"], client_address(), stamp(now))
    db.clear_login_failures(database, f"account:{account['username']}")
    idle = timedelta(minutes=current_app.config["ADMIN_IDLE_MINUTES"])
    db.end_idle_sessions(database, stamp(now - idle))
    session["admin_sid"] = sid
    g.account = account
    audit("signed in")
    log.info("admin %s signed in", account["id"])
    return redirect(target, 303)


@bp.post("/logout")
def logout():
    """Sign out: the session ends on the server, so an old copy of the cookie opens nothing."""
    audit("signed out")
    db.end_session(db.get_db(), g.account["session_id"])
    session.clear()
    flash("You are signed out.")
    return redirect(url_for("admin.login"), 303)
