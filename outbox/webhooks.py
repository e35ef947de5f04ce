"""The webhook channel: each event POSTed to WEBHOOK_URL, signed as Standard Webhooks says, never redirected."""

import base64
import contextlib
import http.client
import secrets
import socket
import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from urllib.parse import urlsplit

import click
from flask import Flask
from standardwebhooks import Webhook

from outbox.addresses import WEBHOOK_TIMEOUT_SECONDS, address_of, delivery_seconds, shown_url
from outbox.email import tls_context
from outbox.failures import PermanentFailure

RETRIED_STATUSES = {408, 429}  # and every 5xx


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
        conn = http.client.HTTPSConnection(parts.hostname, parts.port, timeout=seconds, context=tls_context())
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
    """What stops webhooks from working, one line each (for `flask --app app check`)."""
    if not config["WEBHOOK_URL"]:
        return []
    found = []
    if not config["WEBHOOK_SECRET"]:
        found.append("WEBHOOK_URL is set without WEBHOOK_SECRET: make one with `flask --app app webhook-secret`")
    found.append(reachable_problem(config["WEBHOOK_URL"]))
    return [line for line in found if line]


# The channel, as the sender uses it


def prepare(config: dict) -> None:
    """Work out the address as the owner sees it before the first request needs it (as the sender starts)."""
    if config["WEBHOOK_URL"]:
        shown_url("webhook", config["WEBHOOK_URL"])


@contextlib.contextmanager
def deliveries(config: dict) -> Iterator[Callable[[dict, datetime], str]]:
    """Yield what delivers one webhook row, signed at the moment it is sent; it returns what the receiver answered."""
    yield lambda row, now: post_webhook(
        address_of(row, config), config["WEBHOOK_SECRET"], row, now, delivery_seconds(config)
    )


def is_permanent(error: Exception) -> bool:
    """True when retrying will not help: a redirect or a 4xx answer (but 408 and 429), an address no longer set."""
    return isinstance(error, PermanentFailure)


def init_app(app: Flask) -> None:
    """Register the webhook-secret command."""
    app.cli.add_command(webhook_secret_command)


@click.command("webhook-secret")
def webhook_secret_command() -> None:
    """Print a fresh WEBHOOK_SECRET (whsec_ and 32 random bytes in base64) for the site and the receiver."""
    click.echo("whsec_" + base64.b64encode(secrets.token_bytes(32)).decode())
