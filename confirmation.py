"""The visitor's confirmation email (AUTOREPLY) and the booking link (BOOKING_URL) with the visit's campaign."""

import logging
import re
from datetime import datetime, timedelta
from email.utils import make_msgid
from urllib.parse import urlencode, urlsplit, urlunsplit

from flask import render_template
from flask_babel import gettext as _
from itsdangerous import BadSignature, URLSafeSerializer

import db
import db.outbox
import notify

log = logging.getLogger("clinic.confirmation")

UTM_FIELDS = ("utm_source", "utm_medium", "utm_campaign")
# A campaign tag as ad platforms write them. Anything else is left off the link, so nobody can put
# words of their choosing into the confirmation a stranger receives through a crafted ad link.
UTM_VALUE = re.compile(r"[A-Za-z0-9._+-]{1,64}")
ONE_PER_ADDRESS = timedelta(days=1)
ONE_HOUR = timedelta(hours=1)
GMAIL = {"gmail.com", "googlemail.com"}  # one mailbox under either name; Gmail ignores dots before the @


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


def booking_token(lead_id: int, secret: str) -> str:
    """The signed token of a lead's booking link (`GET /book/<token>`)."""
    return URLSafeSerializer(secret, salt="booking-link").dumps(lead_id)


def read_booking_token(token: str, secret: str) -> int | None:
    """The lead id a booking-link token names, or None if it was not made here."""
    try:
        lead_id = URLSafeSerializer(secret, salt="booking-link").loads(token)
    except BadSignature:
        return None
    return lead_id if isinstance(lead_id, int) else None


def mailbox(address: str) -> str:
    """The mailbox an address reaches: lower case, without a +tag, without dots at Gmail."""
    local, _, domain = address.strip().lower().rpartition("@")
    local = local.split("+", 1)[0]
    return f"{local.replace('.', '')}@gmail.com" if domain in GMAIL else f"{local}@{domain}"


def rows(database, lead: dict, config: dict, now: str) -> list[dict]:
    """The confirmation for a new lead, in the page's language: only with AUTOREPLY, an email address, none sent to
    its mailbox within a day, and fewer than AUTOREPLY_MAX_PER_HOUR sent by the site in the last hour (call in the
    lead's write transaction).
    """
    address = (lead.get("email") or "").strip().lower()
    if not config["AUTOREPLY"] or not address or lead.get("is_spam"):
        return []
    moment = datetime.fromisoformat(now)
    day = db.outbox.confirmed_addresses_since(database, db.iso_utc(moment - ONE_PER_ADDRESS))
    if mailbox(address) in {mailbox(sent) for sent in day}:
        return []
    if db.outbox.count_confirmations_since(database, db.iso_utc(moment - ONE_HOUR)) >= config["AUTOREPLY_MAX_PER_HOUR"]:
        hour = moment.strftime("%Y-%m-%dT%H")
        if db.outbox.add_skipped_confirmation(database, hour, db.iso_utc(moment - ONE_PER_ADDRESS * 30)):
            log.warning(
                "more than %s confirmations this hour (AUTOREPLY_MAX_PER_HOUR): the rest of the hour's are skipped",
                config["AUTOREPLY_MAX_PER_HOUR"],
            )
        return []
    # Nothing the visitor typed or chose goes in: not their name, their message or their campaign tags.
    booking = f"{config['SITE_URL']}/book/{booking_token(lead['id'], config['SECRET_KEY'])}"
    context = {"booking": booking if config["BOOKING_URL"] else None}
    return [
        {
            "lead_id": lead["id"],
            "kind": "autoreply",
            "message_id": make_msgid(domain="clinic-site"),
            "to_addr": notify.header_safe(address),
            "reply_to": notify.header_safe(config["CLINIC_EMAIL"]),
            "subject": notify.header_safe(_("We have your request: %(clinic)s", clinic=config["CLINIC_NAME"]))[:200],
            "body_text": render_template("email/confirmation.txt", **context),
            "body_html": render_template("email/confirmation.html", **context),
        }
    ]
