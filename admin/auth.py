"""Sign-in, sessions and the guard in front of every admin page."""

import functools
import hashlib
import math
import secrets
import threading
import unicodedata
from datetime import UTC, datetime, timedelta
from urllib.parse import unquote, urlsplit

from flask import (
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
import db.accounts
from admin.blueprint import audit, bp, log
from admin.devices import browser_name, known_device, remember_device
from extensions import client_address, limiter
from forms import LoginForm

OPEN_ENDPOINTS = {"admin.login"}
DATA_ENDPOINTS = {"admin.export_csv", "admin.analytics_csv"}  # answer 401 rather than a redirect to a page
ADDRESS_FAILURE_FACTOR = 4  # an address may fail this many times more than one account
DEVICE_MAX_FAILURES = 3  # a browser that signed in before may fail this often (at most LOGIN_MAX_FAILURES)
# Each password check takes about 0.1 s of CPU and 32 MiB (scrypt): a couple at once per process at most.
# As many again may wait up to HASH_WAIT_SECONDS for a turn; any more are refused at once, so a flood of
# sign-ins holds at most four of a worker's threads and the pages keep theirs.
HASH_SLOTS_MAX = 2
HASH_SLOTS = threading.BoundedSemaphore(HASH_SLOTS_MAX)
HASH_CALLERS = threading.BoundedSemaphore(2 * HASH_SLOTS_MAX)
HASH_WAIT_SECONDS = 2
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
    account = db.accounts.session_account(database, session_hash(sid), *session_limits(now))
    if account is None:
        session.pop("admin_sid")
        flash("Your session has ended. Please sign in again.")
        return None
    if account["last_seen_at"] < db.iso_utc(now - TOUCH_EVERY):
        db.accounts.touch_session(database, account["session_id"], db.iso_utc(now))
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


@functools.cache
def dummy_hash() -> str:
    """A hash to check unknown names against, so they take as long as known ones."""
    return generate_password_hash(secrets.token_hex(16))


def session_limits(now: datetime) -> tuple[str, str]:
    """(idle_before, started_before): a session last used before the first or started before the second has ended."""
    cfg = current_app.config
    idle_before = now - timedelta(minutes=cfg["ADMIN_IDLE_MINUTES"])
    return db.iso_utc(idle_before), db.iso_utc(now - timedelta(hours=cfg["ADMIN_SESSION_HOURS"]))


def live_sessions(account: dict, now: datetime) -> list[dict]:
    """The account's sessions that are still open, the most recently used first."""
    return db.accounts.sessions_of_account(db.get_db(), account["id"], *session_limits(now))


def add_attempt(username: str, device: str | None, now: datetime) -> tuple[list[int], int]:
    """Count this attempt as a failure before its password is checked: (its rows, 0), or ([], minutes paused).

    A known browser counts against its own limit only; any other against the account's and its network's.
    """
    cfg = current_app.config
    most = cfg["LOGIN_MAX_FAILURES"]
    if device:
        limits = {f"device:{device}": min(DEVICE_MAX_FAILURES, most)}
    else:
        limits = {f"account:{username}": most, f"address:{client_address()}": most * ADDRESS_FAILURE_FACTOR}
    window = timedelta(minutes=cfg["LOGIN_LOCK_MINUTES"])
    ids, oldest = db.accounts.add_sign_in_attempt(db.get_db(), limits, db.iso_utc(now - window), db.iso_utc(now))
    if oldest is None:
        return ids, 0
    # Open again once the oldest failure that still counts leaves the window.
    opens = datetime.fromisoformat(oldest) + window
    return [], max(1, math.ceil((opens - now).total_seconds() / 60))


def password_matches(account: dict | None, password: str, known: bool) -> bool | None:
    """Check a password (against a dummy hash for an unknown name); None when too many checks are running."""
    # A browser that signed in before always gets in line, so a flood from strangers cannot keep it out.
    if not known and not HASH_CALLERS.acquire(blocking=False):
        return None
    try:
        if not HASH_SLOTS.acquire(timeout=HASH_WAIT_SECONDS):
            return None
        try:
            return check_password_hash(account["password_hash"] if account else dummy_hash(), password)
        finally:
            HASH_SLOTS.release()
    finally:
        if not known:
            HASH_CALLERS.release()


@bp.route("/login", methods=["GET", "POST"])
@limiter.limit(lambda: current_app.config["LOGIN_RATE_LIMIT"], methods=["POST"], exempt_when=known_device)
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
        username, device = form.username.data, known_device(form.username.data)
        attempt, wait = add_attempt(username, device, now)
        if wait:
            where = "in this browser" if device else "for this account or from this address"
            message = (
                f"Too many failed sign-ins {where}, so sign-in is paused. "
                f"Please try again in {wait} minute{'s' if wait != 1 else ''}."
            )
            return render_template("admin/login.html", form=form, message=message, target=target), 429
        database = db.get_db()
        account = db.accounts.get_account(database, username)
        matches = password_matches(account, form.password.data, known=device is not None)
        if matches is None:
            db.accounts.forget_sign_in_attempt(database, attempt)
            log.warning("admin sign-in refused: %s password checks already running", HASH_SLOTS_MAX)
            message = "Many sign-ins are being checked right now. Please try again in a few seconds."
            page = render_template("admin/login.html", form=form, message=message, target=target)
            return page, 503, {"Retry-After": "5"}
        if account and matches:
            db.accounts.forget_sign_in_attempt(database, attempt)
            if not device:
                db.accounts.clear_login_failures(database, f"account:{username}")
            return start_session(account, target, now)
        audit("sign-in failed", actor=username if account else "(unknown name)")
        log.warning("failed admin sign-in from %s", request.remote_addr)
        message, status = "That username and password do not match. Please try again.", 401
    return render_template("admin/login.html", form=form, message=message, target=target), status


def start_session(account: dict, target: str, now: datetime):
    """Sign in: a brand-new session id (no fixation), recorded on the server; the browser becomes a known one."""
    database = db.get_db()
    session.clear()
    sid = secrets.token_urlsafe(32)
    browser = browser_name(request.user_agent.string)
    db.accounts.start_session(
        database, session_hash(sid), account["id"], request.remote_addr or "", browser, db.iso_utc(now)
    )
    db.accounts.end_expired_sessions(database, *session_limits(now))
    session["admin_sid"] = sid
    g.account = account
    audit("signed in")
    log.info("admin %s signed in", account["id"])
    response = redirect(target, 303)
    remember_device(response, account)
    return response


@bp.post("/logout")
def logout():
    """Sign out: the session ends on the server, so an old copy of the cookie opens nothing."""
    audit("signed out")
    db.accounts.end_session(db.get_db(), g.account["session_id"])
    session.clear()
    flash("You are signed out.")
    return redirect(url_for("admin.login"), 303)


@bp.post("/sessions/end-all")
def sign_out_everywhere():
    """End every session of this account, this one included, so a lost phone or a shared computer opens nothing."""
    audit("signed out everywhere")
    count = db.accounts.end_account_sessions(db.get_db(), g.account["id"])
    session.clear()
    flash(f"You are signed out everywhere: {count} session{'s' if count != 1 else ''} ended.")
    return redirect(url_for("admin.login"), 303)
