"""The owner's admin area: sign-in, the leads inbox, a lead's page, email status, CSV export, CLI.

The blueprint and what every section shares live here; each section is a module of its own:
`auth` (sign-in, sessions and the guard), `devices` (device cookies, browser names),
`inbox` (list, charts, CSV), `analytics` (visits, requests and bookings by source), `lead` (one lead),
`status` (email status, open sessions, the audit log), `guide` (the owner's guide at /admin/help),
`commands` (`create-admin`, `purge-leads`).
"""

import contextlib
import logging
import sqlite3
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import phonenumbers
from flask import Blueprint, Flask, current_app, g, request

import db
import db.accounts

log = logging.getLogger("clinic.admin")
bp = Blueprint("admin", __name__, url_prefix="/admin")


def init_app(app: Flask) -> None:
    """Register the admin pages, their commands and filters; say how to make an owner if none exists."""
    app.register_blueprint(bp)
    app.cli.add_command(commands.create_admin_command)
    app.cli.add_command(commands.purge_leads_command)
    zone = ZoneInfo(app.config["CLINIC_TIMEZONE"])
    app.jinja_env.filters["ago"] = lambda iso: ago(iso, datetime.now(UTC), zone)
    app.jinja_env.filters["phone"] = phone_display
    try:
        with contextlib.closing(db.connect(app.config["DATABASE"])) as database:
            if not db.accounts.count_accounts(database):
                log.warning("No admin account yet: create one with `flask --app app create-admin USERNAME`")
    except sqlite3.DatabaseError:
        pass  # db.init_app said what is wrong with the database


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


def audit(action: str, lead_id: int | None = None, detail: str = "", actor: str | None = None) -> None:
    """Append to the audit log as the signed-in account, from this request's address."""
    who = actor or (g.account["username"] if g.get("account") else "(nobody)")
    db.accounts.audit(
        db.get_db(), who, action, db.utcnow(), lead_id=lead_id, detail=detail, address=request.remote_addr or ""
    )


# The sections add their views to `bp` when imported, so they come after it.
from admin import analytics, auth, commands, guide, inbox, lead, status  # noqa: E402, F401
