"""The email channel: each row goes out over SMTP (MAIL_SERVER) or, with none set, becomes a file under data/mail/."""

import contextlib
import functools
import logging
import os
import smtplib
import ssl
from collections.abc import Callable, Iterator
from datetime import datetime
from email import charset, policy
from pathlib import Path

from flask_mail import Message

from outbox.failures import ChannelUnavailable
from outbox.rows import header_safe

log = logging.getLogger("clinic.outbox")

# Flask-Mail registers UTF-8 with 8-bit bodies when imported, so a visitor's message written as one
# long line would go out as one line, and SMTP servers refuse lines over 998 characters. Quoted-
# printable bodies keep every line under 77 whatever was typed.
charset.add_charset("utf-8", charset.SHORTEST, charset.QP, "utf-8")

# Flask-Mail flattens with policy.SMTP, which parses every header again, at each part of the message: more
# than half of an email's CPU time here. Its headers are encoded and folded as they are set, so compat32
# writes them as they are (no folding of its own), with the line ends SMTP wants.
FLATTENED = policy.compat32.clone(linesep="\r\n", max_line_length=0)


class MailServerUnavailable(ChannelUnavailable):
    """No usable connection to MAIL_SERVER: refused, timed out, certificate not trusted, login refused."""


class InsecureMailLogin(Exception):
    """A login is configured for a connection that would not be encrypted."""


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


def message_bytes(message: Message) -> bytes:
    """The message as it goes over SMTP or into a file: CRLF line ends, its headers as Flask-Mail encoded them."""
    return message._message().as_bytes(policy=FLATTENED)


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
    path.write_bytes(message_bytes(message))
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
    service = f"mail server {config['MAIL_SERVER']}:{config['MAIL_PORT']}"

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
                raise MailServerUnavailable(describe(error), service) from error
        try:
            host.sendmail(message.sender, message.send_to, message_bytes(message))
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


# The channel, as the sender uses it


def prepare(config: dict) -> None:
    """Say where emails go when no mail server is set (once, as the sender starts)."""
    if not config["MAIL_SERVER"]:
        log.warning("MAIL_SERVER is not set: emails are written to %s", Path(config["DATA_DIR"]) / "mail")


@contextlib.contextmanager
def deliveries(config: dict) -> Iterator[Callable[[dict, datetime], str]]:
    """Yield what delivers one email row for a pass, on one connection; it returns where the email went."""
    with mailer(config) as send:
        yield lambda row, now: send(build_message(row, config["MAIL_DEFAULT_SENDER"]))


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


def row_name(row: dict) -> str:
    """How the log names an email: "email 7 for lead 3"."""
    return f"email {row['id']} for lead {row['lead_id']}"


def discard(row: dict, config: dict) -> None:
    """Remove what delivering a row left behind: the file of an email whose lead was deleted while it went out."""
    eml_path(row["message_id"], config).unlink(missing_ok=True)
