"""Every outbox row the site queues, built in one place: emails, the confirmation, reminders, alerts, webhook events.

A row is rendered when it is queued, so what goes out is what the lead looked like then.
"""

import json
import logging
import re
import secrets
import unicodedata
from datetime import datetime, timedelta
from email.utils import make_msgid
from urllib.parse import urlencode, urlsplit, urlunsplit

from flask import current_app, render_template
from flask_babel import gettext as _
from itsdangerous import BadSignature, URLSafeSerializer

import articles
import db
import db.outbox
import languages
from outbox.addresses import destinations, shown_url, target_key

log = logging.getLogger("clinic.confirmation")

UTM_FIELDS = ("utm_source", "utm_medium", "utm_campaign")
# A campaign tag as ad platforms write them; anything else is left off the booking link.
UTM_VALUE = re.compile(r"[A-Za-z0-9._+-]{1,64}")
ONE_PER_ADDRESS = timedelta(days=1)
ONE_HOUR = timedelta(hours=1)
SKIPS_KEPT = timedelta(days=30)  # the hourly counts of skipped confirmations (Email status shows 30 days)
BOOKING_LINK = "https://booking-link.invalid/lead"  # stands for each lead's own link in the rendered confirmation
GMAIL = {"gmail.com", "googlemail.com"}  # one mailbox under either name; Gmail ignores dots before the @
# What a webhook event tells about a lead.
LEAD_FIELDS = (
    "id",
    "name",
    "email",
    "phone",
    "message",
    "status",
    "utm_source",
    "utm_medium",
    "utm_campaign",
    "referrer",
    "created_at",
)


def header_safe(value: str | None) -> str:
    """Return `value` fit for one header line: no control or line-separator characters."""
    if not value:
        return ""
    kept = "".join(" " if unicodedata.category(ch) in ("Cc", "Zl", "Zp") else ch for ch in value)
    return " ".join(kept.split())


def admin_link(lead: dict, config: dict) -> str:
    """The lead's page in the admin."""
    return f"{config['SITE_URL']}/admin/leads/{lead['id']}"


def outbox_row(
    kind: str,
    to_addr: str,
    subject: str,
    body_text: str,
    body_html: str | None = None,
    lead_id: int | None = None,
    reply_to: str | None = None,
    channel: str = "email",
    target: str | None = None,
    message_id: str | None = None,
    mailbox: str | None = None,
) -> dict:
    """One outbox row: an email (with a fresh Message-ID) unless `channel` says otherwise; a confirmation
    names the `mailbox` it reaches."""
    return {
        "lead_id": lead_id,
        "kind": kind,
        "channel": channel,
        "target": target,
        "message_id": message_id or make_msgid(domain="clinic-site"),
        "to_addr": to_addr,
        "reply_to": reply_to,
        "subject": subject,
        "body_text": body_text,
        "body_html": body_html,
        "mailbox": mailbox,
    }


# Emails


def origin_and_path(url: str | None) -> str:
    """What the email shows of the page the browser says the visitor came from: origin and path only."""
    if not url:
        return ""
    try:
        parts = urlsplit(url)
        host, port = parts.hostname, parts.port
    except ValueError:  # e.g. "http://[x" or a port that is not a number
        return "(not a web address)"
    if parts.scheme not in ("http", "https") or not host:
        return "(not a web address)"
    netloc = (f"[{host}]" if ":" in host else host) + (f":{port}" if port else "")
    return f"{parts.scheme}://{netloc}{parts.path}"


def lead_email(lead: dict, config: dict) -> dict:
    """Return the outbox row for a new lead's notification, rendered now."""
    context = {
        "lead": lead,
        "link": admin_link(lead, config),
        "details": config["NOTIFY_DETAILS"],
        "referrer": origin_and_path(lead.get("referrer")),
        "article": articles.by_path(lead.get("landing_page")),
        "site_url": config["SITE_URL"],
    }
    spanish = " (Spanish page)" if lead.get("language") == "es" else ""
    if config["NOTIFY_DETAILS"]:
        subject = f"New appointment request{spanish}: {lead['name']}"
        reply_to = lead.get("email") or None
    else:
        subject = f"New request #{lead['id']}{spanish}"
        reply_to = None
    return outbox_row(
        "lead",
        header_safe(config["CLINIC_EMAIL"]),
        header_safe(subject)[:200],
        render_template("email/lead.txt", **context),
        render_template("email/lead.html", **context),
        lead_id=lead["id"],
        reply_to=header_safe(reply_to) or None,
    )


def check_email(actor: str, config: dict) -> dict:
    """Return the outbox row of a test email the owner asked for."""
    context = {"actor": actor, "link": f"{config['SITE_URL']}/admin/status"}
    return outbox_row(
        "test",
        config["CLINIC_EMAIL"],
        "Test email from the clinic website",
        render_template("email/test.txt", **context),
        render_template("email/test.html", **context),
    )


def reminder_email(lead: dict, waited_hours: float, config: dict) -> dict:
    """Return the outbox row reminding the clinic of a request nobody has answered."""
    context = {
        "lead": lead,
        "link": admin_link(lead, config),
        "details": config["NOTIFY_DETAILS"],
        "hours": waited_hours,
    }
    return outbox_row(
        "reminder",
        config["CLINIC_EMAIL"],
        f"Still waiting for a call back: request #{lead['id']}",
        render_template("email/reminder.txt", **context),
        render_template("email/reminder.html", **context),
        lead_id=lead["id"],
    )


def weekly_report_email(report: dict, config: dict) -> dict:
    """The outbox row of the weekly report's email to CLINIC_EMAIL (see weekly_report.py)."""
    visitors, calls, requests, _booked = (item["count"] for item in report["totals"])
    subject = f"Your website last week: {visitors} visitors, {calls} calls, {requests} requests ({report['week']})"
    return outbox_row(
        "weekly_report",
        config["CLINIC_EMAIL"],
        subject,
        render_template("email/weekly_report.txt", report=report),
        render_template("email/weekly_report.html", report=report),
    )


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


def confirmation_bodies(booking: bool) -> tuple[str, str]:
    """The confirmation's text and HTML in the page's language, its booking link (if `booking`) as BOOKING_LINK.

    Nothing the visitor typed or chose goes in (not their name, their message or their campaign tags), so it is
    the same for every lead but that link: rendered once per language and server process, outside a lead's write.
    """
    kept = current_app.extensions.setdefault("confirmation_bodies", {})
    key = (languages.current(), booking)
    if key not in kept:
        context = {"booking": BOOKING_LINK if booking else None}
        kept[key] = (
            render_template("email/confirmation.txt", **context),
            render_template("email/confirmation.html", **context),
        )
    return kept[key]


def confirmation_rows(database, lead: dict, config: dict, now: str) -> list[dict]:
    """The confirmation for a new lead, in the page's language: only with AUTOREPLY, an email address, none sent to
    its mailbox within a day, and fewer than AUTOREPLY_MAX_PER_HOUR sent by the site in the last hour (call in the
    lead's write transaction).
    """
    address = (lead.get("email") or "").strip().lower()
    if not config["AUTOREPLY"] or not address or lead.get("is_spam"):
        return []
    moment, reaches = datetime.fromisoformat(now), mailbox(address)
    if db.outbox.mailbox_confirmed_since(database, reaches, db.iso_utc(moment - ONE_PER_ADDRESS)):
        return []
    limit = config["AUTOREPLY_MAX_PER_HOUR"]
    if db.outbox.count_confirmations_since(database, db.iso_utc(moment - ONE_HOUR), limit) >= limit:
        hour = moment.strftime("%Y-%m-%dT%H")
        if db.outbox.add_skipped_confirmation(database, hour, db.iso_utc(moment - SKIPS_KEPT)):
            log.warning(
                "more than %s confirmations this hour (AUTOREPLY_MAX_PER_HOUR): the rest of the hour's are skipped",
                config["AUTOREPLY_MAX_PER_HOUR"],
            )
        return []
    booking = f"{config['SITE_URL']}/book/{booking_token(lead['id'], config['SECRET_KEY'])}"
    text, html = confirmation_bodies(bool(config["BOOKING_URL"]))
    row = outbox_row(
        "autoreply",
        header_safe(address),
        header_safe(_("We have your request: %(clinic)s", clinic=config["CLINIC_NAME"]))[:200],
        text.replace(BOOKING_LINK, booking),
        html.replace(BOOKING_LINK, booking),
        lead_id=lead["id"],
        reply_to=header_safe(config["CLINIC_EMAIL"]),
        mailbox=reaches,
    )
    return [row]


# Alerts and webhook events


def alert_rows(lead: dict, config: dict) -> list[dict]:
    """One alert per ALERT_URLS address for a new lead: its number and link; name and phone only if ALERT_DETAILS."""
    title = f"New appointment request #{lead['id']}"
    body = f"{title} — open it: {admin_link(lead, config)}"
    if config["ALERT_DETAILS"]:  # never the message: chat and SMS services are third parties
        body += "\n" + " · ".join(part for part in (lead["name"], lead.get("phone")) if part)
    return [alert_row(url, lead["id"], "alert", title, body) for url in config["ALERT_URLS"]]


def alert_row(url: str, lead_id: int | None, kind: str, title: str, body: str) -> dict:
    """The outbox row of one alert to one address."""
    return outbox_row(
        kind,
        shown_url("alert", url),
        header_safe(title)[:200],
        body,
        lead_id=lead_id,
        channel="alert",
        target=target_key(url),
        message_id=f"alert_{secrets.token_hex(12)}",
    )


def webhook_row(event: str, data: dict, config: dict, now: str, lead_id: int | None = None) -> dict:
    """The outbox row of one webhook event: its JSON body, fixed now, and its webhook-id, kept across retries."""
    body = json.dumps({"type": event, "timestamp": now, "data": data}, ensure_ascii=False, separators=(",", ":"))
    return outbox_row(
        event,
        shown_url("webhook", config["WEBHOOK_URL"]),
        event,
        body,
        lead_id=lead_id,
        channel="webhook",
        target=target_key(config["WEBHOOK_URL"]),
        message_id=f"msg_{secrets.token_hex(12)}",
    )


def lead_event(event: str, lead: dict, config: dict, now: str) -> list[dict]:
    """The `lead.created` or `lead.updated` webhook row for a lead; none without WEBHOOK_URL or for spam."""
    if not config["WEBHOOK_URL"] or lead["status"] == "spam":
        return []
    data = {field: lead.get(field) for field in LEAD_FIELDS}
    if "landing_page" in lead:
        data["landing_page"] = lead["landing_page"]
    data["admin_url"] = admin_link(lead, config)
    return [webhook_row(event, data, config, now, lead["id"])]


def new_lead_rows(database, lead: dict, config: dict, now: str) -> list[dict]:
    """Everything a new lead (not spam) sends: the clinic's email, alerts, lead.created, the confirmation."""
    rows = [lead_email(lead, config), *alert_rows(lead, config), *lead_event("lead.created", lead, config, now)]
    return rows + confirmation_rows(database, lead, config, now)


def check_row(key: str, actor: str, config: dict, now: str) -> dict | None:
    """A test message to the alert or webhook address named by `key`, or None if no such address is set."""
    found = destinations(config).get(key)
    if found is None:
        return None
    channel, url = found
    if channel == "alert":
        title = "Test alert from the clinic website"
        body = f"{title}, sent by {actor}. New appointment requests will arrive like this."
        return alert_row(url, None, "test", title, body)
    data = {"message": f"Test event from the clinic website, sent by {actor}", "admin_url": config["SITE_URL"]}
    return webhook_row("webhook.test", data, config, now)
