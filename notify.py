"""The clinic's notification emails: built at queue time, delivered from the outbox."""

import contextlib
import logging
import smtplib
import ssl
import threading
import unicodedata
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from email.utils import make_msgid
from pathlib import Path

import click
from flask import Flask, current_app, render_template
from flask.cli import AppGroup
from flask_mail import Connection, Message

import db
import reminders

log = logging.getLogger("clinic.outbox")

BACKOFF_FIRST_SECONDS = 2
BACKOFF_MAX_SECONDS = 60
GIVE_UP_AFTER = timedelta(days=3)  # of temporary failures; the owner can still resend

wake = threading.Event()


def header_safe(value: str | None) -> str:
    """Return `value` fit for one header line: no control or line-separator characters."""
    if not value:
        return ""
    kept = "".join(" " if unicodedata.category(ch) in ("Cc", "Zl", "Zp") else ch for ch in value)
    return " ".join(kept.split())


def lead_email(lead: dict, config: dict) -> dict:
    """Return the outbox row for a new lead's notification, rendered now."""
    link = f"{config['SITE_URL']}/admin/leads/{lead['id']}"
    context = {"lead": lead, "link": link, "details": config["NOTIFY_DETAILS"]}
    if config["NOTIFY_DETAILS"]:
        subject = f"New appointment request: {lead['name']}"
        reply_to = lead.get("email") or None
    else:
        subject = f"New request #{lead['id']}"
        reply_to = None
    return {
        "lead_id": lead["id"],
        "kind": "lead",
        "message_id": make_msgid(domain="clinic-site"),
        "to_addr": header_safe(config["CLINIC_EMAIL"]),
        "reply_to": header_safe(reply_to) or None,
        "subject": header_safe(subject)[:200],
        "body_text": render_template("email/lead.txt", **context),
        "body_html": render_template("email/lead.html", **context),
    }


def build_message(row: dict) -> Message:
    """Turn an outbox row into a flask-mail Message with its stable Message-ID."""
    msg = Message(
        subject=header_safe(row["subject"]),
        recipients=[header_safe(row["to_addr"])],
        body=row["body_text"],
        html=row["body_html"] or None,
        reply_to=header_safe(row["reply_to"]) or None,
    )
    msg.msgId = row["message_id"]
    return msg


def open_smtp(state, timeout: float) -> smtplib.SMTP:
    """Connect as flask-mail would, but with every socket wait capped at `timeout`."""
    smtp_class = smtplib.SMTP_SSL if state.use_ssl else smtplib.SMTP
    host = smtp_class(state.server, state.port, timeout=timeout)
    if state.use_tls:
        host.starttls()
    if state.username and state.password:
        host.login(state.username, state.password)
    return host


def smtp_connect(config: dict) -> smtplib.SMTP:
    """Connect to MAIL_SERVER within MAIL_TIMEOUT: EHLO, TLS with a verified certificate when set, the login."""
    context = ssl.create_default_context()
    server, port, timeout = config["MAIL_SERVER"], config["MAIL_PORT"], config["MAIL_TIMEOUT"]
    if config["MAIL_USE_SSL"]:
        host = smtplib.SMTP_SSL(server, port, timeout=timeout, context=context)
    else:
        host = smtplib.SMTP(server, port, timeout=timeout)
    try:
        host.ehlo()
        if config["MAIL_USE_TLS"] and not config["MAIL_USE_SSL"]:
            host.starttls(context=context)
            host.ehlo()
        if config["MAIL_USERNAME"] and config["MAIL_PASSWORD"]:
            if not (config["MAIL_USE_TLS"] or config["MAIL_USE_SSL"]):
                raise smtplib.SMTPException("refusing to send MAIL_PASSWORD over an unencrypted connection")
            host.login(config["MAIL_USERNAME"], config["MAIL_PASSWORD"])
    except BaseException:
        host.close()
        raise
    return host


def eml_path(message_id: str, config: dict) -> Path:
    """Where the email with `message_id` is kept as a file when no mail server is set."""
    name = message_id.strip("<>").replace("@", "_").replace("/", "_")
    return Path(config["DATA_DIR"]) / "mail" / f"{name}.eml"


def write_eml(message: Message, config: dict) -> str:
    """Keep the message as a file under data/mail/ (no mail server set); say where."""
    path = eml_path(message.msgId, config)
    path.parent.mkdir(exist_ok=True)
    path.write_bytes(message.as_bytes())
    return f"written to {path}"


@contextlib.contextmanager
def mailer(config: dict) -> Iterator[Callable[[Message], str]]:
    """Yield a send function that opens one SMTP connection when first needed and reuses it."""
    if not config["MAIL_SERVER"]:
        yield lambda message: write_eml(message, config)
        return
    state = current_app.extensions["mail"]
    connection = Connection(state)

    def hang_up() -> None:
        if connection.host is not None:
            try:
                connection.host.quit()
            except (smtplib.SMTPException, OSError):
                connection.host.close()
            connection.host = None

    def send(message: Message) -> str:
        reused = connection.host is not None
        if not reused:
            connection.host = open_smtp(state, config["MAIL_TIMEOUT"])
        try:
            connection.send(message)
        except smtplib.SMTPServerDisconnected:
            hang_up()
            if not reused:
                raise
            return send(message)  # the server closed an idle connection: one fresh try
        except Exception:
            hang_up()  # the connection's state is unknown after any other failure
            raise
        return f"sent to {config['MAIL_SERVER']}:{config['MAIL_PORT']}"

    try:
        yield send
    finally:
        hang_up()


def is_permanent(error: Exception) -> bool:
    """True for a 5xx refusal, which retrying will not cure."""
    if isinstance(error, smtplib.SMTPRecipientsRefused):
        return all(code >= 500 for code, _ in error.recipients.values())
    code = getattr(error, "smtp_code", None)
    return isinstance(code, int) and code >= 500


def describe(error: Exception) -> str:
    """A short, single-line account of a delivery error."""
    if isinstance(error, smtplib.SMTPResponseException):
        text = (
            error.smtp_error.decode(errors="replace") if isinstance(error.smtp_error, bytes) else str(error.smtp_error)
        )
        return header_safe(f"{error.smtp_code} {text}")[:500]
    if isinstance(error, smtplib.SMTPRecipientsRefused):
        parts = [f"{addr}: {code} {msg.decode(errors='replace')}" for addr, (code, msg) in error.recipients.items()]
        return header_safe("refused " + "; ".join(parts))[:500]
    return header_safe(f"{type(error).__name__}: {error}")[:500] or type(error).__name__


def backoff(attempts: int) -> timedelta:
    """Wait before the next try: 2 s, 4 s, 8 s ... capped at a minute."""
    return timedelta(seconds=min(BACKOFF_MAX_SECONDS, BACKOFF_FIRST_SECONDS * 2 ** max(0, attempts - 1)))


def send_one(database, row: dict, send: Callable[[Message], str], now: datetime) -> bool:
    """Try one claimed email and record the outcome; return True if it went out."""
    stamp = now.isoformat(timespec="seconds")
    try:
        where = send(build_message(row))
    except Exception as error:  # noqa: BLE001 - any failure must be recorded, never lose the row
        reason = describe(error)
        age = now - datetime.fromisoformat(row["created_at"])
        if is_permanent(error) or age > GIVE_UP_AFTER:
            db.mark_failed(database, row["id"], stamp, reason)
            log.error(
                "email %s for lead %s failed for good (attempt %s): %s",
                row["id"],
                row["lead_id"],
                row["attempts"],
                reason,
            )
        else:
            retry_at = (now + backoff(row["attempts"])).isoformat(timespec="seconds")
            db.mark_retry(database, row["id"], stamp, reason, retry_at)
            log.warning(
                "email %s for lead %s not sent (attempt %s), retry at %s: %s",
                row["id"],
                row["lead_id"],
                row["attempts"],
                retry_at,
                reason,
            )
        return False
    if not db.mark_sent(database, row["id"], stamp):
        # Its lead was deleted while it was out: keep no copy of it on disk either.
        eml_path(row["message_id"], current_app.config).unlink(missing_ok=True)
        log.info("email %s for lead %s was deleted with its lead while being sent", row["id"], row["lead_id"])
        return False
    log.info("email %s for lead %s %s (attempt %s)", row["id"], row["lead_id"], where, row["attempts"])
    return True


def drain(database, config: dict, now: datetime | None = None) -> int:
    """Send every email that is due; return how many went out."""
    sent = 0
    reminders.queue_due(database, config, now or datetime.now(UTC))
    with mailer(config) as send:
        while True:
            moment = now or datetime.now(UTC)
            stamp = moment.isoformat(timespec="seconds")
            # A claim older than this is far beyond any SMTP timeout: its sender died.
            stale = (moment - timedelta(seconds=config["OUTBOX_STALE_SECONDS"])).isoformat(timespec="seconds")
            # One at a time: a claimed email is being sent, so a slow server cannot age a
            # batch of claims past OUTBOX_STALE_SECONDS and let another sender take them.
            rows = db.claim_due_emails(database, stamp, stale, limit=1)
            if not rows:
                return sent
            sent += send_one(database, rows[0], send, moment)


def seconds_until_due(database, poll: float) -> float:
    """How long the sender may sleep before an email falls due (at most `poll`)."""
    due = db.next_due_at(database)
    if due is None:
        return poll
    wait = (datetime.fromisoformat(due) - datetime.now(UTC)).total_seconds()
    return min(poll, max(0.05, wait))


def run_sender(app: Flask, stop: threading.Event) -> None:
    """Deliver due emails until `stop` is set; woken at once when a lead is saved."""
    database = db.connect(app.config["DATABASE"])
    poll = app.config["OUTBOX_POLL_SECONDS"]
    with app.app_context():
        while not stop.is_set():
            try:
                drain(database, app.config)
                wait = seconds_until_due(database, poll)
            except Exception:
                log.exception("outbox sender hit an error; trying again shortly")
                wait = poll
            wake.wait(wait)
            wake.clear()
    database.close()


def start_worker(app: Flask) -> threading.Event | None:
    """Start this process's sender thread, unless the config turns it off."""
    if not app.config["OUTBOX_WORKER"]:
        return None
    stop = threading.Event()
    threading.Thread(target=run_sender, args=(app, stop), name="outbox-sender", daemon=True).start()
    if not app.config["MAIL_SERVER"]:
        log.warning("MAIL_SERVER is not set: emails are written to %s", Path(app.config["DATA_DIR"]) / "mail")
    return stop


def init_app(app: Flask) -> None:
    """Register the outbox CLI commands."""
    app.cli.add_command(outbox_cli)


@click.group("outbox", cls=AppGroup)
def outbox_cli() -> None:
    """Work the email outbox."""


@outbox_cli.command("send")
def send_command() -> None:
    """Send every email that is due now, once."""
    database = db.connect(current_app.config["DATABASE"])
    try:
        sent = drain(database, current_app.config)
    finally:
        database.close()
    click.echo(f"{sent} email(s) sent")
