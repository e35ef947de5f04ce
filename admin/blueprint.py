"""The admin blueprint and what every section shares: its log, the audit line, the clinic's time zone, filters."""

import logging
from datetime import datetime
from zoneinfo import ZoneInfo

import phonenumbers
from flask import Blueprint, current_app, g, request

import db
import db.accounts

log = logging.getLogger("clinic.admin")
bp = Blueprint("admin", __name__, url_prefix="/admin")


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
