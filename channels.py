"""Alerts on the owner's phone (Apprise) and signed webhooks out (Standard Webhooks), sent from the outbox.

Their rows sit in the outbox beside the emails (`channel` alert or webhook, `target` naming the
address), are queued in the same transaction as the lead, and are sent by a sender thread of their
own, so an alert service or webhook receiver that is slow or down never holds back the clinic's email.
"""

import base64
import contextlib
import functools
import hashlib
import http.client
import json
import logging
import re
import secrets
import socket
import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from urllib.parse import urlsplit

import apprise
import click
from flask import Flask
from standardwebhooks import Webhook

import confirmation
import db
import db.outbox
import notify

log = logging.getLogger("clinic.channels")

CHANNELS = ("alert", "webhook")
WEBHOOK_TIMEOUT_SECONDS = 10
RETRIED_STATUSES = {408, 429}  # and every 5xx
PACE_SECONDS = 0.02  # at most 50 deliveries a second per server process, far above any clinic's need
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

# Apprise masks these services' tokens but shows an ntfy topic in full, though anyone who knows it can
# read the alerts: its topics are masked here the way Apprise masks a token ("a...z").
SECRET_TOPIC_SCHEMES = {"ntfy", "ntfys"}

wake = threading.Event()


def wake_senders() -> None:
    """Wake the email sender and the alert and webhook sender: something is due now."""
    notify.wake.set()
    wake.set()


class PermanentFailure(Exception):
    """Trying again will not help: the address refused the message, redirected it, or is no longer set."""


def target_key(url: str) -> str:
    """A short stable name for an alert or webhook address, stored instead of the address and its secrets."""
    return hashlib.sha256(url.encode()).hexdigest()[:16]


@functools.cache  # Apprise loads its plugins on first use (a third of a second): once, not per request
def shown_url(channel: str, url: str) -> str:
    """The address as the owner may see it: Apprise's privacy-safe form, a webhook's origin only."""
    if channel == "alert":
        plugin = apprise.Apprise.instantiate(url)
        if plugin is None:
            return f"{url.split(':', 1)[0]}:// (not an address Apprise knows)"
        ntfy = ntfy_parts(plugin)
        if ntfy is None:
            return plugin.url(privacy=True).split("?", 1)[0]
        scheme, host, topics = ntfy
        return f"{scheme}://" + "/".join(host + [plugin.pprint(topic) for topic in topics])
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}" + ("/…" if parts.path.strip("/") or parts.query else "/")


def ntfy_parts(plugin: apprise.URLBase) -> tuple[str, list[str], list[str]] | None:
    """An ntfy address's privacy form split as (scheme, [host] or [] for ntfy.sh itself, topics); None for others."""
    shown, _, query = plugin.url(privacy=True).partition("?")
    scheme, _, rest = shown.partition("://")
    if scheme not in SECRET_TOPIC_SCHEMES:
        return None
    parts = rest.split("/")
    first_topic = 0 if "mode=cloud" in query.split("&") else 1
    return scheme, parts[:first_topic], [topic for topic in parts[first_topic:] if topic]


def masked_topics(text: str, plugin: apprise.URLBase) -> str:
    """`text` (an error Apprise logged) with the address's ntfy topics masked wherever they stand on their own."""
    ntfy = ntfy_parts(plugin)
    for topic in ntfy[2] if ntfy else []:
        text = re.sub(rf"(?<![\w-]){re.escape(topic)}(?![\w-])", plugin.pprint(topic), text)
    return text


def destinations(config: dict) -> dict[str, tuple[str, str]]:
    """Every alert and webhook address configured now, by key: {key: (channel, url)}."""
    found = {target_key(url): ("alert", url) for url in config["ALERT_URLS"]}
    if config["WEBHOOK_URL"]:
        found[target_key(config["WEBHOOK_URL"])] = ("webhook", config["WEBHOOK_URL"])
    return found


def alert_rows(lead: dict, config: dict) -> list[dict]:
    """One alert per ALERT_URLS address for a new lead: its number and link; name and phone only if ALERT_DETAILS."""
    title = f"New appointment request #{lead['id']}"
    body = f"{title} — open it: {notify.admin_link(lead, config)}"
    if config["ALERT_DETAILS"]:  # never the message: chat and SMS services are third parties
        body += "\n" + " · ".join(part for part in (lead["name"], lead.get("phone")) if part)
    return [alert_row(url, lead["id"], "alert", title, body) for url in config["ALERT_URLS"]]


def alert_row(url: str, lead_id: int | None, kind: str, title: str, body: str) -> dict:
    """The outbox row of one alert to one address."""
    return {
        "lead_id": lead_id,
        "kind": kind,
        "channel": "alert",
        "target": target_key(url),
        "message_id": f"alert_{secrets.token_hex(12)}",
        "to_addr": shown_url("alert", url),
        "reply_to": None,
        "subject": notify.header_safe(title)[:200],
        "body_text": body,
        "body_html": None,
    }


def webhook_row(event: str, data: dict, config: dict, now: str, lead_id: int | None = None) -> dict:
    """The outbox row of one webhook event: its JSON body, fixed now, and its webhook-id, kept across retries."""
    body = json.dumps({"type": event, "timestamp": now, "data": data}, ensure_ascii=False, separators=(",", ":"))
    return {
        "lead_id": lead_id,
        "kind": event,
        "channel": "webhook",
        "target": target_key(config["WEBHOOK_URL"]),
        "message_id": f"msg_{secrets.token_hex(12)}",
        "to_addr": shown_url("webhook", config["WEBHOOK_URL"]),
        "reply_to": None,
        "subject": event,
        "body_text": body,
        "body_html": None,
    }


def lead_event(event: str, lead: dict, config: dict, now: str) -> list[dict]:
    """The `lead.created` or `lead.updated` webhook row for a lead; none without WEBHOOK_URL or for spam."""
    if not config["WEBHOOK_URL"] or lead["status"] == "spam":
        return []
    data = {field: lead.get(field) for field in LEAD_FIELDS}
    if "landing_page" in lead:
        data["landing_page"] = lead["landing_page"]
    data["admin_url"] = notify.admin_link(lead, config)
    return [webhook_row(event, data, config, now, lead["id"])]


def new_lead_rows(database, lead: dict, config: dict, now: str) -> list[dict]:
    """Everything a new lead (not spam) sends besides the clinic's email: alerts, lead.created, the confirmation."""
    rows = alert_rows(lead, config) + lead_event("lead.created", lead, config, now)
    return rows + confirmation.rows(database, lead, config, now)


def test_row(key: str, actor: str, config: dict, now: str) -> dict | None:
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


def delivery_seconds(config: dict) -> float:
    """One delivery's whole time, answer included: WEBHOOK_TIMEOUT_SECONDS, and well below OUTBOX_STALE_SECONDS,
    so no other worker reclaims the row (and sends it twice) while this one still waits."""
    return min(WEBHOOK_TIMEOUT_SECONDS, config["OUTBOX_STALE_SECONDS"] / 2)


def post_webhook(url: str, secret: str | None, row: dict, now: datetime, seconds: float) -> str:
    """POST one event, signed now, within `seconds` in all; return what the receiver answered, or raise
    (PermanentFailure: never retry). A redirect is never followed: it is the outcome."""
    if not secret:
        raise RuntimeError("WEBHOOK_SECRET is not set: make one with `flask --app app webhook-secret`")
    moment = now.astimezone(UTC).replace(microsecond=0)
    headers = {
        "Content-Type": "application/json",
        "User-Agent": "clinic-site-webhooks",
        "webhook-id": row["message_id"],
        "webhook-timestamp": str(int(moment.timestamp())),
        "webhook-signature": Webhook(secret).sign(row["message_id"], moment, row["body_text"]),
    }
    parts = urlsplit(url)
    if parts.scheme.lower() == "https":
        conn = http.client.HTTPSConnection(parts.hostname, parts.port, timeout=seconds, context=notify.tls_context())
    else:
        conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=seconds)
    # The socket timeout bounds each read only: a receiver sending a byte now and then could hold the
    # sender for ever. At the deadline the socket is shut, which ends whatever read or write waits.
    late = threading.Event()
    watchdog = threading.Timer(seconds, cut_off, [conn, late])
    watchdog.start()
    try:
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        conn.request("POST", target, row["body_text"].encode(), headers)
        response = conn.getresponse()
        code, reason, location = response.status, response.reason, response.getheader("Location", "elsewhere")
    except (OSError, http.client.HTTPException) as error:
        if not late.is_set():
            raise RuntimeError(f"could not connect: {error}") from None
    finally:
        watchdog.cancel()
        conn.close()
    if late.is_set():  # also when the cut ended the headers early: the answer read is not the receiver's whole
        raise RuntimeError(f"no complete answer within {seconds:g} s")
    if 200 <= code < 300:
        return f"answered {code}"
    if 300 <= code < 400:
        raise PermanentFailure(f"answered {code}, a redirect to {location}, which is not followed")
    if code >= 500 or code in RETRIED_STATUSES:
        raise RuntimeError(f"answered {code} {reason}")
    raise PermanentFailure(f"answered {code} {reason}")


def cut_off(conn: http.client.HTTPConnection, late: threading.Event) -> None:
    """End a webhook's connection where it stands (its deadline passed)."""
    late.set()
    with contextlib.suppress(OSError, AttributeError):
        conn.sock.shutdown(socket.SHUT_RDWR)


def send_alert(url: str, row: dict, seconds: float) -> str:
    """Send one alert through Apprise within `seconds` in all; return 'delivered', or raise with the reason.

    Apprise's own timeouts bound each read, not the whole; past `seconds` the alert is left to its
    thread (it may still arrive: alerts are at-least-once) and counted as not delivered, to try again.
    """
    plugin = apprise.Apprise.instantiate(url)
    if plugin is None:
        raise PermanentFailure("ALERT_URLS holds an address Apprise does not know")
    outcome: list = []

    def notify_now() -> None:
        with apprise.LogCapture(level=logging.WARNING, fmt="%(message)s") as captured:
            # The body says it all: a title would repeat it on an SMS (the subject names the row in the admin).
            outcome.append((plugin.notify(body=row["body_text"]), captured.getvalue()))

    worker = threading.Thread(target=notify_now, name="alert-delivery", daemon=True)
    worker.start()
    worker.join(seconds)
    if not outcome:
        raise RuntimeError(f"no complete answer within {seconds:g} s")
    delivered, logged = outcome[0]
    if not delivered:
        lines = [line for line in logged.splitlines() if line.strip()]
        raise RuntimeError(masked_topics(lines[-1], plugin) if lines else "the service did not accept the alert")
    return "delivered"


def send_row(database, row: dict, found: tuple[str, str] | None, now: datetime, config: dict) -> bool:
    """Try one claimed alert or webhook event and record the outcome; return True if it was delivered."""
    stamp = now.isoformat(timespec="seconds")
    what = f"{row['channel']} {row['id']} ({row['kind']}) for lead {row['lead_id']}"
    try:
        if found is None:
            raise PermanentFailure("this address is no longer in ALERT_URLS or WEBHOOK_URL")
        seconds = delivery_seconds(config)
        if row["channel"] == "alert":
            outcome = send_alert(found[1], row, seconds)
        else:
            outcome = post_webhook(found[1], config["WEBHOOK_SECRET"], row, now, seconds)
    except Exception as error:  # noqa: BLE001 - any failure must be recorded, never lose the row
        reason = notify.header_safe(str(error))[:500] or type(error).__name__
        retry_at = notify.record_failure(database, row, reason, isinstance(error, PermanentFailure), now)
        if retry_at is None:
            log.error("%s failed for good (attempt %s): %s", what, row["attempts"], reason)
        else:
            log.warning("%s not delivered (attempt %s), retry at %s: %s", what, row["attempts"], retry_at, reason)
        return False
    if db.outbox.mark_sent(database, row["id"], stamp):
        log.info("%s %s (attempt %s)", what, outcome, row["attempts"])
        return True
    return False


def drain(database, config: dict, now: datetime | None = None, stop: threading.Event | None = None) -> int:
    """Send every alert and webhook event that is due, one claimed row at a time; return how many were delivered."""
    delivered = 0
    where = destinations(config)
    while not (stop and stop.is_set()):
        moment = now or datetime.now(UTC)
        stale = moment - timedelta(seconds=config["OUTBOX_STALE_SECONDS"])
        rows = db.outbox.claim_due_rows(database, db.iso_utc(moment), db.iso_utc(stale), limit=1, channels=CHANNELS)
        if not rows:
            break
        delivered += send_row(database, rows[0], where.get(rows[0]["target"]), moment, config)
        if stop is not None:
            # The sender thread leaves the interpreter to the visitors' requests between deliveries.
            stop.wait(PACE_SECONDS)
    return delivered


def start_worker(app: Flask) -> Callable[[], None] | None:
    """Start this process's alert and webhook sender, unless the config turns senders off; return what stops it."""
    if not app.config["OUTBOX_WORKER"]:
        return None
    for channel, url in destinations(app.config).values():
        shown_url(channel, url)  # before the first request needs it
    return notify.start_sender(app, "outbox-channels", drain, wake, CHANNELS)


def status(database, config: dict) -> list[dict]:
    """Each alert address and the webhook, as the status page shows them, with their last success and failure."""
    found = []
    for key, (channel, url) in destinations(config).items():
        label = "Phone alert" if channel == "alert" else "Webhook"
        health = db.outbox.channel_health(database, channel, key)
        found.append({"key": key, "channel": channel, "label": label, "shown": shown_url(channel, url), **health})
    return found


def reachable_problem(url: str) -> str | None:
    """Why the webhook's host cannot be reached, or None when a TCP connection opens."""
    parts = urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        socket.create_connection((parts.hostname, port), timeout=WEBHOOK_TIMEOUT_SECONDS).close()
    except OSError as error:
        return f"WEBHOOK_URL {shown_url('webhook', url)} cannot be reached: {error}"
    return None


def problems(config: dict) -> list[str]:
    """What stops alerts or webhooks from working, one line each (for `flask --app app check`)."""
    found = []
    for url in config["ALERT_URLS"]:
        if apprise.Apprise.instantiate(url) is None:
            found.append(f"ALERT_URLS: {shown_url('alert', url)}: check the address against Apprise's list")
    if config["WEBHOOK_URL"]:
        if not config["WEBHOOK_SECRET"]:
            found.append("WEBHOOK_URL is set without WEBHOOK_SECRET: make one with `flask --app app webhook-secret`")
        found.append(reachable_problem(config["WEBHOOK_URL"]))
    return [line for line in found if line]


def init_app(app: Flask) -> None:
    """Register the webhook-secret command."""
    app.cli.add_command(webhook_secret_command)


@click.command("webhook-secret")
def webhook_secret_command() -> None:
    """Print a fresh WEBHOOK_SECRET (whsec_ and 32 random bytes in base64) for the site and the receiver."""
    click.echo("whsec_" + base64.b64encode(secrets.token_bytes(32)).decode())
