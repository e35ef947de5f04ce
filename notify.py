"""The clinic's notification emails: built at queue time, delivered from the outbox."""

import contextlib
import functools
import logging
import os
import smtplib
import ssl
import threading
import unicodedata
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from email import charset
from email.utils import make_msgid
from pathlib import Path
from urllib.parse import urlsplit

import click
from flask import Flask, current_app, render_template
from flask.cli import AppGroup
from flask_mail import Message

import articles
import db
import db.outbox
import reminders

log = logging.getLogger("clinic.outbox")

BACKOFF_FIRST_SECONDS = 2
BACKOFF_MAX_SECONDS = 60
GIVE_UP_AFTER = timedelta(days=3)  # of temporary failures; the owner can still resend
STOP_WAIT_SECONDS = 5  # a worker shutting down waits this long for the sender's current attempt

wake = threading.Event()

# Flask-Mail registers UTF-8 with 8-bit bodies when imported, so a visitor's message written as one
# long line would go out as one line, and SMTP servers refuse lines over 998 characters. Quoted-
# printable bodies keep every line under 77 whatever was typed.
charset.add_charset("utf-8", charset.SHORTEST, charset.QP, "utf-8")


def header_safe(value: str | None) -> str:
    """Return `value` fit for one header line: no control or line-separator characters."""
    if not value:
        return ""
    kept = "".join(" " if unicodedata.category(ch) in ("Cc", "Zl", "Zp") else ch for ch in value)
    return " ".join(kept.split())


def admin_link(lead: dict, config: dict) -> str:
    """The lead's page in the admin."""
    return f"{config['SITE_URL']}/admin/leads/{lead['id']}"


def lead_email(lead: dict, config: dict) -> dict:
    """Return the outbox row for a new lead's notification, rendered now."""
    link = admin_link(lead, config)
    context = {
        "lead": lead,
        "link": link,
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


def check_email(actor: str, config: dict) -> dict:
    """Return the outbox row of a test email the owner asked for."""
    context = {"actor": actor, "link": f"{config['SITE_URL']}/admin/status"}
    return {
        "lead_id": None,
        "kind": "test",
        "message_id": make_msgid(domain="clinic-site"),
        "to_addr": config["CLINIC_EMAIL"],
        "reply_to": None,
        "subject": "Test email from the clinic website",
        "body_text": render_template("email/test.txt", **context),
        "body_html": render_template("email/test.html", **context),
    }


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


def build_message(row: dict, sender: str) -> Message:
    """Turn an outbox row into a Flask-Mail message with its stable Message-ID and quoted-printable bodies."""
    message = Message(
        subject=header_safe(row["subject"]),
        recipients=[header_safe(row["to_addr"])],
        body=row["body_text"],
        html=row["body_html"] or None,
        sender=sender,
        reply_to=header_safe(row["reply_to"]) or None,
        charset="utf-8",  # even for plain ASCII, so the quoted-printable rule above applies
        date=datetime.fromisoformat(row["created_at"]).timestamp(),
    )
    message.msgId = row["message_id"]
    return message


class MailServerUnavailable(Exception):
    """No usable connection to MAIL_SERVER: refused, timed out, certificate not trusted, login refused."""


class InsecureMailLogin(Exception):
    """A login is configured for a connection that would not be encrypted."""


def tls_context() -> ssl.SSLContext:
    """A context that verifies certificates and host names against the system's CAs or SSL_CERT_FILE.

    Loading the CA bundle costs about 30 ms of CPU, so one context is made per CA file and kept
    (a new one when SSL_CERT_FILE names another file or the file changes); connections share it.
    """
    paths = ssl.get_default_verify_paths()  # SSL_CERT_FILE and SSL_CERT_DIR as OpenSSL reads them now
    try:
        changed = os.stat(paths.cafile).st_mtime_ns if paths.cafile else None
    except OSError:
        changed = None
    return verifying_context(paths.cafile, paths.capath, changed)


@functools.lru_cache(maxsize=4)
def verifying_context(cafile: str | None, capath: str | None, changed: int | None) -> ssl.SSLContext:
    """The default verifying context for these CA locations (the arguments are only the cache's key)."""
    return ssl.create_default_context()


def smtp_connect(config: dict) -> smtplib.SMTP:
    """Connect to MAIL_SERVER within MAIL_TIMEOUT, encrypt with a verified certificate if set, log in.

    The default context checks the certificate and the host name against the system's CAs, or
    the file named by SSL_CERT_FILE (OpenSSL reads it). A password never crosses a connection
    that is not encrypted.
    """
    server, port, timeout = config["MAIL_SERVER"], config["MAIL_PORT"], config["MAIL_TIMEOUT"]
    encrypted = config["MAIL_USE_SSL"] or config["MAIL_USE_TLS"]
    if config["MAIL_USERNAME"] and not encrypted:  # without a username nothing is sent: no login
        raise InsecureMailLogin(
            "MAIL_USERNAME is set but the connection would not be encrypted, so the password was not sent: "
            "set MAIL_USE_TLS=true (port 587) or MAIL_USE_SSL=true (port 465)"
        )
    if config["MAIL_USE_SSL"]:
        host = smtplib.SMTP_SSL(server, port, timeout=timeout, context=tls_context())
    else:
        host = smtplib.SMTP(server, port, timeout=timeout)
    try:
        if config["MAIL_USE_TLS"]:
            host.starttls(context=tls_context())  # raises if the server does not offer it: never falls back
        if config["MAIL_USERNAME"]:
            host.login(config["MAIL_USERNAME"], config["MAIL_PASSWORD"] or "")
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
    """Yield a send function that connects when first needed and keeps the connection for the pass.

    A failure to connect raises MailServerUnavailable, which ends the pass.
    """
    if not config["MAIL_SERVER"]:
        yield lambda message: write_eml(message, config)
        return
    host: smtplib.SMTP | None = None

    def hang_up() -> None:
        nonlocal host
        if host is not None:
            try:
                host.quit()
            except (smtplib.SMTPException, OSError):
                host.close()
            host = None

    def send(message: Message) -> str:
        nonlocal host
        reused = host is not None
        if host is None:
            try:
                host = smtp_connect(config)
            except Exception as error:
                raise MailServerUnavailable(describe(error)) from error
        try:
            host.sendmail(message.sender, message.send_to, message.as_bytes())
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
    if isinstance(error, (MailServerUnavailable, InsecureMailLogin)):
        return header_safe(str(error))[:500]
    if isinstance(error, ssl.SSLCertVerificationError):
        hint = "the mail server's certificate is not trusted (a private CA goes in SSL_CERT_FILE)"
        return header_safe(f"{hint}: {error.verify_message or error}")[:500]
    return header_safe(f"{type(error).__name__}: {error}")[:500] or type(error).__name__


def backoff(attempts: int) -> timedelta:
    """Wait before the next try: 2 s, 4 s, 8 s ... capped at a minute."""
    return timedelta(seconds=min(BACKOFF_MAX_SECONDS, BACKOFF_FIRST_SECONDS * 2 ** max(0, attempts - 1)))


def send_one(database, row: dict, send: Callable[[Message], str], now: datetime, config: dict) -> bool:
    """Try one claimed email and record the outcome; return True if it went out.

    MailServerUnavailable passes through unrecorded: the caller backs off every waiting email.
    """
    stamp = now.isoformat(timespec="seconds")
    try:
        where = send(build_message(row, config["MAIL_DEFAULT_SENDER"]))
    except MailServerUnavailable:
        raise
    except Exception as error:  # noqa: BLE001 - any failure must be recorded, never lose the row
        reason = describe(error)
        retry_at = record_failure(database, row, reason, is_permanent(error), now)
        if retry_at is None:
            log.error(
                "email %s for lead %s failed for good (attempt %s): %s",
                row["id"],
                row["lead_id"],
                row["attempts"],
                reason,
            )
        else:
            log.warning(
                "email %s for lead %s not sent (attempt %s), retry at %s: %s",
                row["id"],
                row["lead_id"],
                row["attempts"],
                retry_at,
                reason,
            )
        return False
    if not db.outbox.mark_sent(database, row["id"], stamp):
        # Its lead was deleted while it was out: keep no copy of it on disk either.
        eml_path(row["message_id"], config).unlink(missing_ok=True)
        log.info("email %s for lead %s was deleted with its lead while being sent", row["id"], row["lead_id"])
        return False
    log.info("email %s for lead %s %s (attempt %s)", row["id"], row["lead_id"], where, row["attempts"])
    return True


def retry_time(row: dict, now: datetime) -> str:
    """When a row that has just failed is due again: after its backoff."""
    return (now + backoff(row["attempts"])).isoformat(timespec="seconds")


def record_failure(database, row: dict, reason: str, permanent: bool, now: datetime) -> str | None:
    """Record a failed attempt of an outbox row; return when it is due again, or None if it failed for good.

    It fails for good when the failure is `permanent` or the row is older than GIVE_UP_AFTER.
    """
    stamp = now.isoformat(timespec="seconds")
    if permanent or now - datetime.fromisoformat(row["created_at"]) > GIVE_UP_AFTER:
        db.outbox.mark_failed(database, row["id"], stamp, reason)
        return None
    retry_at = retry_time(row, now)
    db.outbox.mark_retry(database, row["id"], stamp, reason, retry_at)
    return retry_at


def back_off_all(database, row: dict, reason: str, now: datetime, config: dict) -> None:
    """The mail server cannot be used: record the one attempt, move every waiting email to the same later time."""
    stamp = now.isoformat(timespec="seconds")
    retry_at = retry_time(row, now)
    db.outbox.mark_retry(database, row["id"], stamp, reason, retry_at)
    others = db.outbox.defer_waiting_emails(database, stamp, reason, retry_at)
    log.warning(
        "mail server %s:%s unavailable; %s email(s) wait until %s: %s",
        config["MAIL_SERVER"],
        config["MAIL_PORT"],
        others + 1,
        retry_at,
        reason,
    )


def drain(database, config: dict, now: datetime | None = None, stop: threading.Event | None = None) -> int:
    """Send every email that is due, until the server is unavailable or `stop` is set; return how many went out."""
    sent = 0
    reminders.queue_due(database, config, now or datetime.now(UTC))
    with mailer(config) as send:
        while not (stop and stop.is_set()):
            moment = now or datetime.now(UTC)
            stamp = moment.isoformat(timespec="seconds")
            # A claim older than this is far beyond any SMTP timeout: its sender died.
            stale = (moment - timedelta(seconds=config["OUTBOX_STALE_SECONDS"])).isoformat(timespec="seconds")
            # One at a time: a claimed email is being sent, so a slow server cannot age a
            # batch of claims past OUTBOX_STALE_SECONDS and let another sender take them.
            rows = db.outbox.claim_due_rows(database, stamp, stale, limit=1)
            if not rows:
                break
            try:
                sent += send_one(database, rows[0], send, moment, config)
            except MailServerUnavailable as error:
                back_off_all(database, rows[0], str(error), moment, config)
                break
    return sent


def seconds_until_due(database, poll: float, channels: tuple[str, ...] = ("email",)) -> float:
    """How long the sender may sleep before a row of `channels` falls due (at most `poll`)."""
    due = db.outbox.next_due_at(database, channels)
    if due is None:
        return poll
    wait = (datetime.fromisoformat(due) - datetime.now(UTC)).total_seconds()
    return min(poll, max(0.05, wait))


def run_sender(
    app: Flask,
    stop: threading.Event,
    send_pass: Callable[..., int] = drain,
    woken_by: threading.Event = wake,
    channels: tuple[str, ...] = ("email",),
) -> None:
    """Run `send_pass` over the rows of `channels` until `stop` is set; woken at once by `woken_by`."""
    database = db.connect(app.config["DATABASE"])
    poll = app.config["OUTBOX_POLL_SECONDS"]
    with app.app_context():
        while not stop.is_set():
            try:
                send_pass(database, app.config, stop=stop)
                wait = seconds_until_due(database, poll, channels)
            except Exception:
                log.exception("outbox sender (%s) hit an error; trying again shortly", ", ".join(channels))
                wait = poll
            woken_by.wait(wait)
            woken_by.clear()
    database.close()


def start_sender(
    app: Flask,
    name: str,
    send_pass: Callable[..., int] = drain,
    woken_by: threading.Event = wake,
    channels: tuple[str, ...] = ("email",),
    join_seconds: float = STOP_WAIT_SECONDS,
) -> Callable[[], None]:
    """Start a sender thread for the rows of `channels`; return what stops it."""
    stop = threading.Event()
    args = (app, stop, send_pass, woken_by, channels)
    thread = threading.Thread(target=run_sender, args=args, name=name, daemon=True)
    thread.start()

    def stop_worker(wait: bool = True) -> None:
        """Let the sender finish its current attempt, then end; wait for it a bounded time, unless told not to."""
        stop.set()
        woken_by.set()
        if wait:
            thread.join(join_seconds)

    return stop_worker


def start_worker(app: Flask) -> Callable[[], None] | None:
    """Start this process's email sender thread, unless the config turns it off; return what stops it."""
    if not app.config["OUTBOX_WORKER"]:
        return None
    stop_worker = start_sender(app, "outbox-sender")
    if not app.config["MAIL_SERVER"]:
        log.warning("MAIL_SERVER is not set: emails are written to %s", Path(app.config["DATA_DIR"]) / "mail")
    return stop_worker


def init_app(app: Flask) -> None:
    """Register the outbox CLI commands."""
    app.cli.add_command(outbox_cli)


@click.group("outbox", cls=AppGroup)
def outbox_cli() -> None:
    """Work the email outbox."""


@outbox_cli.command("send")
@click.option("--to-files", is_flag=True, help="With no MAIL_SERVER, write .eml files under DATA_DIR/mail.")
def send_command(to_files: bool) -> None:
    """Send every email, alert and webhook event that is due now, once."""
    config = current_app.config
    import channels  # here, not at the top: channels builds on this module

    with contextlib.closing(db.connect(config["DATABASE"])) as database:
        click.echo(f"{channels.drain(database, config)} alert(s) and webhook event(s) delivered")
        if not config["MAIL_SERVER"] and not to_files:
            raise click.ClickException(
                "MAIL_SERVER is not set, so nobody would receive these emails; nothing was sent. "
                "Run this with the server's mail settings, or pass --to-files to write them under DATA_DIR/mail."
            )
        click.echo(f"{drain(database, config)} email(s) sent")
