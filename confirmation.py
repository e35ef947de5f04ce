"""The visitor's confirmation email (AUTOREPLY) and the booking link (BOOKING_URL) with the visit's campaign."""

import re
from datetime import datetime, timedelta
from email.utils import make_msgid
from urllib.parse import urlencode, urlsplit, urlunsplit

from flask import render_template

import db
import notify

UTM_FIELDS = ("utm_source", "utm_medium", "utm_campaign")
# A campaign tag as ad platforms write them. Anything else is left off the link, so nobody can put
# words of their choosing into the confirmation a stranger receives through a crafted ad link.
UTM_VALUE = re.compile(r"[A-Za-z0-9._+-]{1,64}")
ONE_PER_ADDRESS = timedelta(days=1)


def campaign(visit: dict) -> dict:
    """The visit's utm_source, utm_medium and utm_campaign that look like campaign tags."""
    return {field: visit[field] for field in UTM_FIELDS if UTM_VALUE.fullmatch(visit.get(field) or "")}


def booking_link(base: str | None, visit: dict) -> str | None:
    """BOOKING_URL with the visit's utm_* appended, never replacing a parameter it already has; None if unset."""
    if not base:
        return None
    parts = urlsplit(base)
    have = {pair.split("=", 1)[0] for pair in parts.query.split("&") if pair}
    extra = urlencode([(field, value) for field, value in campaign(visit).items() if field not in have])
    query = "&".join(part for part in (parts.query, extra) if part)
    return urlunsplit(parts._replace(query=query))


def rows(database, lead: dict, config: dict, now: str) -> list[dict]:
    """The confirmation for a new lead: only with AUTOREPLY, an email address, and none sent to it within a day."""
    address = (lead.get("email") or "").strip().lower()
    if not config["AUTOREPLY"] or not address or lead.get("is_spam"):
        return []
    since = db.iso_utc(datetime.fromisoformat(now) - ONE_PER_ADDRESS)
    if db.confirmed_since(database, address, since):
        return []
    # Nothing the visitor typed goes in: not their name, not their message.
    context = {"booking": booking_link(config["BOOKING_URL"], lead)}
    return [
        {
            "lead_id": lead["id"],
            "kind": "autoreply",
            "message_id": make_msgid(domain="clinic-site"),
            "to_addr": notify.header_safe(address),
            "reply_to": notify.header_safe(config["CLINIC_EMAIL"]),
            "subject": notify.header_safe(f"We have your request: {config['CLINIC_NAME']}")[:200],
            "body_text": render_template("email/confirmation.txt", **context),
            "body_html": render_template("email/confirmation.html", **context),
        }
    ]
