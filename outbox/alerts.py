"""The alert channel: a short message to the owner's phone through Apprise, one row per ALERT_URLS address."""

import contextlib
import logging
import re
import threading
from collections.abc import Callable, Iterator
from datetime import datetime

import apprise

from outbox.addresses import address_of, delivery_seconds, ntfy_parts, shown_url
from outbox.failures import PermanentFailure


def masked_topics(text: str, plugin: apprise.URLBase) -> str:
    """`text` (an error Apprise logged) with the address's ntfy topics masked wherever they stand on their own."""
    ntfy = ntfy_parts(plugin)
    for topic in ntfy[2] if ntfy else []:
        text = re.sub(rf"(?<![\w-]){re.escape(topic)}(?![\w-])", plugin.pprint(topic), text)
    return text


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


def problems(config: dict) -> list[str]:
    """What stops alerts from working, one line each (for `flask --app app check`)."""
    return [
        f"ALERT_URLS: {shown_url('alert', url)}: check the address against Apprise's list"
        for url in config["ALERT_URLS"]
        if apprise.Apprise.instantiate(url) is None
    ]


# The channel, as the sender uses it


def prepare(config: dict) -> None:
    """Load Apprise's plugins before the first request needs an address shown (as the sender starts)."""
    for url in config["ALERT_URLS"]:
        shown_url("alert", url)


@contextlib.contextmanager
def deliveries(config: dict) -> Iterator[Callable[[dict, datetime], str]]:
    """Yield what delivers one alert row; it returns what the service said."""
    yield lambda row, now: send_alert(address_of(row, config), row, delivery_seconds(config))


def is_permanent(error: Exception) -> bool:
    """True when retrying will not help: an address Apprise does not know, or one no longer set."""
    return isinstance(error, PermanentFailure)
