"""The owner's admin area: sign-in, the leads inbox, a lead's page, email status, CSV export, CLI."""

import csv
import functools
import hashlib
import io
import logging
import math
import re
import secrets
import sys
import unicodedata
from collections import Counter
from datetime import UTC, date, datetime, time, timedelta
from email.utils import make_msgid
from pathlib import Path
from urllib.parse import unquote, urlsplit
from zoneinfo import ZoneInfo

import click
import phonenumbers
from flask import (
    Blueprint,
    Flask,
    Response,
    abort,
    current_app,
    flash,
    g,
    redirect,
    render_template,
    request,
    session,
    stream_with_context,
    url_for,
)
from flask.cli import with_appcontext
from werkzeug.security import check_password_hash, generate_password_hash

import db
import notify
import reminders
from extensions import client_address
from forms import STATUS_LABELS, LeadUpdateForm, LoginForm

log = logging.getLogger("clinic.admin")
bp = Blueprint("admin", __name__, url_prefix="/admin")

OPEN_ENDPOINTS = {"admin.login"}
DATA_ENDPOINTS = {"admin.export_csv"}  # answer 401 rather than a redirect to a page
PAGE_SIZE = 25
USERNAME = re.compile(r"[a-z0-9][a-z0-9._@-]{0,63}")
PASSWORD_MIN = 10
ADDRESS_FAILURE_FACTOR = 4  # an address may fail this many times more than one account
TOUCH_EVERY = timedelta(minutes=1)
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
CSV_COLUMNS = [
    ("id", "id"),
    ("received", "created_at"),
    ("status", "status"),
    ("name", "name"),
    ("phone", "phone"),
    ("email", "email"),
    ("best time", "preferred_time"),
    ("message", "message"),
    ("utm_source", "utm_source"),
    ("utm_medium", "utm_medium"),
    ("utm_campaign", "utm_campaign"),
    ("referring page", "referrer"),
]


def init_app(app: Flask) -> None:
    """Register the admin pages, their commands and filters; say how to make an owner if none exists."""
    app.register_blueprint(bp)
    app.cli.add_command(create_admin_command)
    app.cli.add_command(purge_leads_command)
    zone = ZoneInfo(app.config["CLINIC_TIMEZONE"])
    app.jinja_env.filters["ago"] = lambda iso: ago(iso, datetime.now(UTC), zone)
    app.jinja_env.filters["phone"] = phone_display
    database = db.connect(app.config["DATABASE"])
    try:
        if not db.count_accounts(database):
            log.warning("No admin account yet: create one with `flask --app app create-admin USERNAME`")
    finally:
        database.close()


def stamp(moment: datetime) -> str:
    """A moment as the stored ISO-8601 UTC text."""
    return moment.astimezone(UTC).isoformat(timespec="seconds")


def clinic_zone() -> ZoneInfo:
    return ZoneInfo(current_app.config["CLINIC_TIMEZONE"])


def ago(iso: str | None, now: datetime, zone: ZoneInfo) -> str:
    """'just now', '5 minutes ago', '2 hours ago', '3 days ago', or the clinic's date for older times."""
    if not iso:
        return ""
    moment = datetime.fromisoformat(iso)
    seconds = (now - moment).total_seconds()
    for limit, unit, size in ((3600, "minute", 60), (86400, "hour", 3600), (7 * 86400, "day", 86400)):
        if seconds < limit:
            count = int(seconds // size)
            if count < 1:
                return "just now"
            return f"{count} {unit}{'s' if count != 1 else ''} ago"
    return moment.astimezone(zone).strftime("%-d %b %Y")


def phone_display(number: str | None) -> str:
    """A stored E.164 number as people read it: (949) 510-6333 at home, +44 20 ... abroad."""
    if not number:
        return ""
    try:
        parsed = phonenumbers.parse(number)
    except phonenumbers.NumberParseException:
        return number
    style = phonenumbers.PhoneNumberFormat
    return phonenumbers.format_number(parsed, style.NATIONAL if parsed.country_code == 1 else style.INTERNATIONAL)


# Sign-in, sessions and the guard


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


def audit(action: str, lead_id: int | None = None, detail: str = "", actor: str | None = None) -> None:
    """Append to the audit log as the signed-in account, from this request's address."""
    who = actor or (g.account["username"] if g.get("account") else "(nobody)")
    db.audit(db.get_db(), who, action, db.utcnow(), lead_id=lead_id, detail=detail, address=client_address())


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


# The inbox


def read_filters(args) -> dict:
    """The inbox filter from the query string, with anything unusable dropped."""
    status = args.get("status", "")
    filters = {
        "status": status if status in STATUS_LABELS else "",
        "q": args.get("q", "").strip()[:200],
        "from": "",
        "to": "",
    }
    for key in ("from", "to"):
        try:
            filters[key] = date.fromisoformat(args.get(key, "")).isoformat()
        except ValueError:
            pass
    return filters


def query_args(filters: dict) -> dict:
    """The search arguments for db.search_leads and db.count_by_status."""
    zone = clinic_zone()
    since = until = None
    if filters["from"]:
        since = stamp(datetime.combine(date.fromisoformat(filters["from"]), time.min, zone))
    if filters["to"]:
        until = stamp(datetime.combine(date.fromisoformat(filters["to"]) + timedelta(days=1), time.min, zone))
    return {"q": filters["q"], "since": since, "until": until}


def dashboard(now: datetime) -> dict:
    """Leads per day over the last 30 days and leads by source, shaped for inline SVG."""
    zone = clinic_zone()
    today = now.astimezone(zone).date()
    first = today - timedelta(days=29)
    bounds = [stamp(datetime.combine(first + timedelta(days=i), time.min, zone)) for i in range(31)]
    counts = db.leads_per_period(db.get_db(), bounds)
    per_day = dict(zip((first + timedelta(days=i) for i in range(30)), counts, strict=True))
    sources = Counter()
    for source, n in db.lead_sources_since(db.get_db(), bounds[0]).items():
        sources[(source or "").strip()[:16] or "(direct)"] += n
    peak = max([*per_day.values(), 1])
    days = []
    for i in range(30):
        day = first + timedelta(days=i)
        height = round(per_day[day] / peak * 74, 1)
        days.append(
            {"x": i * 10, "y": 90 - height, "height": height, "count": per_day[day], "label": f"{day:%a %-d %b}"}
        )
    top = sources.most_common(5)
    rest = sum(sources.values()) - sum(n for _, n in top)
    if rest:
        top.append(("other", rest))
    widest = max([n for _, n in top] or [1])
    bars = [
        {"name": name, "count": n, "width": round(n / widest * 150, 1), "y": i * 22} for i, (name, n) in enumerate(top)
    ]
    return {"days": days, "peak": peak, "total": sum(per_day.values()), "first": first, "today": today, "sources": bars}


def periods(now: datetime) -> list[tuple[str, str, str]]:
    """Quick date ranges in the clinic's calendar: (label, from, to)."""
    today = now.astimezone(clinic_zone()).date()
    return [
        ("Today", today.isoformat(), today.isoformat()),
        ("Last 7 days", (today - timedelta(days=6)).isoformat(), today.isoformat()),
        ("This month", today.replace(day=1).isoformat(), today.isoformat()),
    ]


@bp.get("")
def inbox():
    """Newest leads first, with status counts, search, pages, the charts and a banner when email fails."""
    filters = read_filters(request.args)
    database = db.get_db()
    args = query_args(filters)
    counts = db.count_by_status(database, **args)
    total = counts[filters["status"]] if filters["status"] else sum(n for s, n in counts.items() if s != "spam")
    pages = max(1, math.ceil(total / PAGE_SIZE))
    page = min(max(1, request.args.get("page", 1, type=int)), pages)
    leads = list(
        db.search_leads(database, filters["status"] or None, **args, limit=PAGE_SIZE, offset=(page - 1) * PAGE_SIZE)
    )
    return render_template(
        "admin/inbox.html",
        leads=leads,
        counts=counts,
        total=total,
        filters=filters,
        keep={k: filters[k] for k in ("q", "from", "to") if filters[k]},
        current={k: v for k, v in filters.items() if v},
        page=page,
        pages=pages,
        labels=STATUS_LABELS,
        chart=dashboard(datetime.now(UTC)),
        periods=periods(datetime.now(UTC)),
        health=db.email_health(database),
    )


@bp.get("/leads.csv")
def export_csv():
    """The leads the inbox filter shows, as a CSV file Excel opens as is."""
    filters = read_filters(request.args)
    shown = ", ".join(f"{k}={v}" for k, v in filters.items() if v and k != "q") or "all but spam"
    audit("exported leads", detail=shown + (", with a search" if filters["q"] else ""))
    zone = clinic_zone()

    def rows():
        buffer = io.StringIO()
        writer = csv.writer(buffer)  # excel dialect: quotes as RFC 4180 asks, CRLF line ends
        writer.writerow([title for title, _ in CSV_COLUMNS])
        yield "\ufeff" + buffer.getvalue()
        buffer.seek(0)
        buffer.truncate()
        found = db.iter_leads_for_export(db.get_db(), filters["status"] or None, **query_args(filters))
        for n, lead in enumerate(found, 1):
            lead = {**lead, "created_at": datetime.fromisoformat(lead["created_at"]).astimezone(zone)}
            lead["created_at"] = lead["created_at"].strftime("%Y-%m-%d %H:%M")
            lead["status"] = STATUS_LABELS.get(lead["status"], lead["status"])
            writer.writerow([csv_cell(lead[key]) for _, key in CSV_COLUMNS])
            if n % 200 == 0:  # one write to the socket per 200 rows, not per row
                yield buffer.getvalue()
                buffer.seek(0)
                buffer.truncate()
        yield buffer.getvalue()

    name = f"leads-{datetime.now(zone):%Y-%m-%d}.csv"
    return Response(
        stream_with_context(rows()),
        mimetype="text/csv",
        headers={"Content-Disposition": f'attachment; filename="{name}"'},
    )


def csv_cell(value) -> str:
    """A cell a spreadsheet will show as text: a leading = + - @ tab or CR is defused with a quote."""
    text = "" if value is None else str(value)
    return "'" + text if text.startswith(FORMULA_STARTS) else text


# One lead


def lead_or_404(lead_id: int) -> dict:
    lead = db.get_lead(db.get_db(), lead_id)
    if lead is None:
        abort(404)
    return lead


def render_lead(lead: dict, form: LeadUpdateForm, status: int = 200):
    database = db.get_db()
    emails = [
        {**e, "attempts_log": db.email_attempts(database, e["id"])} for e in db.emails_for_lead(database, lead["id"])
    ]
    notes = db.notes_for_lead(database, lead["id"])
    page = render_template("admin/lead.html", lead=lead, form=form, emails=emails, notes=notes, labels=STATUS_LABELS)
    return page, status


@bp.get("/leads/<int:lead_id>")
def lead_detail(lead_id: int):
    """Every field of one lead, its email's delivery log, notes, and what can be done with it."""
    lead = lead_or_404(lead_id)
    return render_lead(lead, LeadUpdateForm(status=lead["status"]))


@bp.post("/leads/<int:lead_id>")
def update_lead(lead_id: int):
    """Change a lead's status and/or add a note."""
    lead = lead_or_404(lead_id)
    form = LeadUpdateForm()
    if not form.validate():
        return render_lead(lead, form, 422)
    database, now, done = db.get_db(), db.utcnow(), []
    if form.status.data != lead["status"]:
        db.set_status(database, lead_id, form.status.data, now)
        audit("status changed", lead_id, f"{lead['status']} → {form.status.data}")
        done.append(f"marked {STATUS_LABELS[form.status.data].lower()}")
    if form.note.data:
        db.add_note(database, lead_id, g.account["username"], form.note.data, now)
        audit("note added", lead_id)
        done.append("note added")
    flash(f"Saved: {', '.join(done)}." if done else "Nothing to change.")
    return redirect(url_for("admin.lead_detail", lead_id=lead_id), 303)


@bp.post("/leads/<int:lead_id>/spam")
def mark_spam(lead_id: int):
    """Mark a lead as spam, or as not spam (it goes back to new)."""
    lead = lead_or_404(lead_id)
    status = "spam" if request.form.get("spam") == "1" else "new"
    db.set_status(db.get_db(), lead_id, status, db.utcnow())
    audit("status changed", lead_id, f"{lead['status']} → {status}")
    flash(
        "Marked as spam: it is hidden from the inbox." if status == "spam" else "Marked as not spam: it is new again."
    )
    return redirect(url_for("admin.lead_detail", lead_id=lead_id), 303)


@bp.get("/leads/<int:lead_id>/delete")
def confirm_delete(lead_id: int):
    """Ask before deleting a lead for good."""
    return render_template("admin/delete.html", lead=lead_or_404(lead_id))


@bp.post("/leads/<int:lead_id>/delete")
def delete_lead(lead_id: int):
    """Delete a lead, its notes and its emails (a privacy request)."""
    lead_or_404(lead_id)
    database = db.get_db()
    mail_files = [notify.eml_path(e["message_id"], current_app.config) for e in db.emails_for_lead(database, lead_id)]
    db.delete_lead(database, lead_id)
    for path in mail_files:
        path.unlink(missing_ok=True)
    audit("deleted lead", lead_id)
    log.info("lead %s deleted by admin %s", lead_id, g.account["id"])
    flash(f"Request #{lead_id} and its emails are deleted.")
    return redirect(url_for("admin.inbox"), 303)


@bp.post("/emails/<int:email_id>/resend")
def resend_email(email_id: int):
    """Send an email again through the outbox."""
    database = db.get_db()
    email = db.get_email(database, email_id)
    if email is None:
        abort(404)
    db.resend_email(database, email_id, make_msgid(domain="clinic-site"), db.utcnow())
    notify.wake.set()
    audit("email sent again", email["lead_id"], f"email #{email_id}")
    flash("The email is queued to be sent again. Its delivery shows below in a moment.")
    if email["lead_id"] and db.get_lead(database, email["lead_id"]):
        return redirect(url_for("admin.lead_detail", lead_id=email["lead_id"]), 303)
    return redirect(url_for("admin.status"), 303)


# Email status and the audit log


@bp.get("/status")
def status():
    """Is email working: settings, last delivery, emails in trouble, the test button, the audit log."""
    cfg = current_app.config
    database = db.get_db()
    opens, closes = cfg["WORK_HOURS"]
    return render_template(
        "admin/status.html",
        health=db.email_health(database),
        mail_server=f"{cfg['MAIL_SERVER']}:{cfg['MAIL_PORT']}" if cfg["MAIL_SERVER"] else None,
        mail_folder=Path(cfg["DATA_DIR"]) / "mail",
        clinic_email=cfg["CLINIC_EMAIL"],
        reminder_hours=cfg["REMINDER_AFTER_HOURS"],
        work_hours=f"{cfg['CLINIC_DAYS']}, {opens // 60:02d}:{opens % 60:02d}–{closes // 60:02d}:{closes % 60:02d}",
        audit_log=db.recent_audit(database),
    )


@bp.post("/status/test-email")
def send_test_email():
    """Queue a test email to the clinic's mailbox."""
    email = reminders.check_email(g.account["username"], current_app.config)
    db.enqueue_email(db.get_db(), email, db.utcnow())
    notify.wake.set()
    audit("test email queued")
    flash(f"A test email is on its way to {current_app.config['CLINIC_EMAIL']}. Reload this page to see it arrive.")
    return redirect(url_for("admin.status"), 303)


# Commands


@click.command("create-admin")
@click.argument("username")
@with_appcontext
def create_admin_command(username: str) -> None:
    """Create an admin account, or reset its password (which signs out its sessions)."""
    name = username.strip().lower()
    if not USERNAME.fullmatch(name):
        raise click.BadParameter("use up to 64 letters, digits and . _ @ -, starting with a letter or digit")
    if sys.stdin.isatty():
        password = click.prompt("Password", hide_input=True, confirmation_prompt=True)
    else:
        password = sys.stdin.readline().rstrip("\r\n")
    if len(password) < PASSWORD_MIN:
        raise click.ClickException(f"Please choose a password of at least {PASSWORD_MIN} characters.")
    database = db.connect(current_app.config["DATABASE"])
    try:
        created = db.set_password(database, name, generate_password_hash(password), db.utcnow())
        action = "account created" if created else "password reset"
        db.audit(database, "command line", action, db.utcnow(), detail=name)
    finally:
        database.close()
    if created:
        click.echo(f"Account {name!r} created. Sign in at {current_app.config['SITE_URL']}/admin/login")
    else:
        click.echo(f"Password of {name!r} changed; its open sessions are signed out.")


@click.command("purge-leads")
@click.option(
    "--older-than",
    "days",
    metavar="DAYS",
    type=click.IntRange(min=1),
    default=None,
    help="Delete leads received more than DAYS days ago (default: LEAD_RETENTION_DAYS).",
)
@with_appcontext
def purge_leads_command(days: int | None) -> None:
    """Delete old leads with their notes and emails, and say how many."""
    days = days or current_app.config["LEAD_RETENTION_DAYS"]
    before = datetime.now(UTC) - timedelta(days=days)
    database = db.connect(current_app.config["DATABASE"])
    try:
        count = db.purge_leads(database, stamp(before))
        db.audit(database, "command line", "purged leads", db.utcnow(), detail=f"{count} older than {days} days")
    finally:
        database.close()
    # Without a mail server, emails were written as files: those as old go too.
    files = [
        p
        for p in (Path(current_app.config["DATA_DIR"]) / "mail").glob("*.eml")
        if p.stat().st_mtime < before.timestamp()
    ]
    for path in files:
        path.unlink(missing_ok=True)
    click.echo(f"Deleted {count} lead(s) received more than {days} days ago, with their notes and emails.")
    if files:
        click.echo(f"Deleted {len(files)} email file(s) as old from {Path(current_app.config['DATA_DIR']) / 'mail'}.")
