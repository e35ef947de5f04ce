"""The sender: claim a due row, have its channel deliver it, record the attempt; back off, or give up.

The loop knows no channel. A channel (CHANNELS) says how to deliver a row during a pass and which
failures are permanent. Each server process runs one sender thread per entry of SENDERS, so a slow
webhook receiver never holds back the clinic's email, and a mail server's outage never holds back an alert.
"""

import contextlib
import logging
import threading
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from datetime import UTC, datetime, timedelta
from typing import NamedTuple

import click
from flask import Flask, current_app
from flask.cli import AppGroup

import db
import db.outbox
from outbox import alerts, email, reminders, webhooks
from outbox.failures import ChannelUnavailable
from outbox.rows import header_safe

log = logging.getLogger("clinic.outbox")

BACKOFF_FIRST_SECONDS = 2
BACKOFF_MAX_SECONDS = 60
GIVE_UP_AFTER = timedelta(days=3)  # of temporary failures; the owner can still resend
STOP_WAIT_SECONDS = 5  # a worker shutting down waits this long for the sender's current attempt
PACE_SECONDS = 0.02  # at most 50 alerts or webhook events a second per server process, far above any clinic's need


def describe_plainly(error: Exception) -> str:
    """A failure in one short line, kept as the row's last error."""
    return header_safe(str(error))[:500] or type(error).__name__


def row_name(row: dict) -> str:
    """How the log names a row: "alert 7 (alert) for lead 3"."""
    return f"{row['channel']} {row['id']} ({row['kind']}) for lead {row['lead_id']}"


def leave_nothing(row: dict, config: dict) -> None:
    """A delivery that leaves nothing behind to remove."""


class Channel(NamedTuple):
    """How the sender uses one channel."""

    deliveries: Callable[[dict], AbstractContextManager[Callable[[dict, datetime], str]]]  # for one pass
    is_permanent: Callable[[Exception], bool]  # a failure retrying will not cure
    prepare: Callable[[dict], None]  # once, as the sender starts
    describe: Callable[[Exception], str] = describe_plainly  # a failure in one line, kept as the row's last error
    discard: Callable[[dict, dict], None] = leave_nothing  # after a row vanished (with its lead) mid-delivery
    name: Callable[[dict], str] = row_name  # how the log names a row


CHANNELS = {
    "email": Channel(
        email.deliveries, email.is_permanent, email.prepare, email.describe, email.discard, email.row_name
    ),
    "alert": Channel(alerts.deliveries, alerts.is_permanent, alerts.prepare),
    "webhook": Channel(webhooks.deliveries, webhooks.is_permanent, webhooks.prepare),
}


class Sender(NamedTuple):
    """One sender thread per server process: the channels it claims rows of, in this order, and what wakes it."""

    name: str
    channels: tuple[str, ...]
    wake: threading.Event
    pace: float = 0  # seconds between deliveries, leaving the interpreter to the visitors' requests
    jobs: tuple[Callable[[object, dict, datetime], object], ...] = ()  # run before each pass, e.g. queue reminders


EMAIL = Sender("outbox-sender", ("email",), threading.Event(), jobs=(reminders.queue_due,))
ALERTS_AND_WEBHOOKS = Sender("outbox-channels", ("alert", "webhook"), threading.Event(), PACE_SECONDS)
SENDERS = {"outbox_stop": EMAIL, "channels_stop": ALERTS_AND_WEBHOOKS}  # by the app.extensions key of their stop


def wake_senders() -> None:
    """Wake every sender: something is due now."""
    for sender in SENDERS.values():
        sender.wake.set()


def backoff(attempts: int) -> timedelta:
    """Wait before the next try: 2 s, 4 s, 8 s ... capped at a minute."""
    return timedelta(seconds=min(BACKOFF_MAX_SECONDS, BACKOFF_FIRST_SECONDS * 2 ** max(0, attempts - 1)))


def retry_time(row: dict, now: datetime) -> str:
    """When a row that has just failed is due again: after its backoff."""
    return db.iso_utc(now + backoff(row["attempts"]))


def record_failure(database, row: dict, reason: str, permanent: bool, now: datetime) -> str | None:
    """Record a failed attempt of an outbox row; return when it is due again, or None if it failed for good.

    It fails for good when the failure is `permanent` or the row is older than GIVE_UP_AFTER.
    """
    stamp = db.iso_utc(now)
    if permanent or now - datetime.fromisoformat(row["created_at"]) > GIVE_UP_AFTER:
        db.outbox.mark_failed(database, row["id"], stamp, reason)
        return None
    retry_at = retry_time(row, now)
    db.outbox.mark_retry(database, row["id"], stamp, reason, retry_at)
    return retry_at


def deliver(database, row: dict, send: Callable[[dict, datetime], str], now: datetime, config: dict) -> bool:
    """Try one claimed row and record the outcome; return True if it was delivered.

    ChannelUnavailable passes through unrecorded: the caller backs off every waiting row of the channel.
    """
    channel = CHANNELS[row["channel"]]
    what = channel.name(row)
    try:
        outcome = send(row, now)
    except ChannelUnavailable:
        raise
    except Exception as error:  # noqa: BLE001 - any failure must be recorded, never lose the row
        reason = channel.describe(error)
        retry_at = record_failure(database, row, reason, channel.is_permanent(error), now)
        if retry_at is None:
            log.error("%s failed for good (attempt %s): %s", what, row["attempts"], reason)
        else:
            log.warning("%s not delivered (attempt %s), retry at %s: %s", what, row["attempts"], retry_at, reason)
        return False
    if not db.outbox.mark_sent(database, row["id"], db.iso_utc(now)):
        channel.discard(row, config)  # its lead was deleted while it was out: keep no copy of it either
        log.info("%s was deleted with its lead while being delivered", what)
        return False
    log.info("%s %s (attempt %s)", what, outcome, row["attempts"])
    return True


def back_off_all(database, row: dict, error: ChannelUnavailable, now: datetime) -> None:
    """The channel cannot be used: record the one attempt, move every waiting row of it to the same later time."""
    stamp, retry_at, reason = db.iso_utc(now), retry_time(row, now), str(error)
    db.outbox.mark_retry(database, row["id"], stamp, reason, retry_at)
    others = db.outbox.defer_waiting(database, row["channel"], stamp, reason, retry_at)
    log.warning(
        "%s unavailable; %s %s(s) wait until %s: %s", error.service, others + 1, row["channel"], retry_at, reason
    )


@contextlib.contextmanager
def pass_deliveries(config: dict) -> Iterator[Callable[[str], Callable[[dict, datetime], str]]]:
    """Yield what gives each channel's delivery for one pass, opened when first needed and closed after the pass."""
    with contextlib.ExitStack() as stack:
        opened: dict[str, Callable[[dict, datetime], str]] = {}

        def delivery(channel: str) -> Callable[[dict, datetime], str]:
            if channel not in opened:
                opened[channel] = stack.enter_context(CHANNELS[channel].deliveries(config))
            return opened[channel]

        yield delivery


def drain(
    database,
    config: dict,
    channels: tuple[str, ...] = EMAIL.channels,
    now: datetime | None = None,
    stop: threading.Event | None = None,
    pace: float = 0,
) -> int:
    """Deliver every due row of `channels` until one is unavailable or `stop` is set; return how many went out."""
    delivered = 0
    with pass_deliveries(config) as delivery:
        while not (stop and stop.is_set()):
            moment = now or datetime.now(UTC)
            # A claim older than this is far beyond any delivery's timeout: its sender died.
            stale = moment - timedelta(seconds=config["OUTBOX_STALE_SECONDS"])
            # One at a time: a claimed row is being delivered, so a slow receiver cannot age a
            # batch of claims past OUTBOX_STALE_SECONDS and let another sender take them.
            rows = db.outbox.claim_due_rows(database, db.iso_utc(moment), db.iso_utc(stale), 1, channels)
            if not rows:
                break
            try:
                delivered += deliver(database, rows[0], delivery(rows[0]["channel"]), moment, config)
            except ChannelUnavailable as error:
                back_off_all(database, rows[0], error, moment)
                break
            if pace and stop is not None:
                stop.wait(pace)
    return delivered


def seconds_until_due(database, poll: float, channels: tuple[str, ...]) -> float:
    """How long the sender may sleep before a row of `channels` falls due (at most `poll`)."""
    due = db.outbox.next_due_at(database, channels)
    if due is None:
        return poll
    wait = (datetime.fromisoformat(due) - datetime.now(UTC)).total_seconds()
    return min(poll, max(0.05, wait))


def run_sender(app: Flask, stop: threading.Event, sender: Sender) -> None:
    """Run the sender's jobs and a pass over its channels until `stop` is set; woken at once by its event."""
    database = db.connect(app.config["DATABASE"])
    poll = app.config["OUTBOX_POLL_SECONDS"]
    with app.app_context():
        while not stop.is_set():
            try:
                for job in sender.jobs:
                    job(database, app.config, datetime.now(UTC))
                drain(database, app.config, sender.channels, stop=stop, pace=sender.pace)
                wait = seconds_until_due(database, poll, sender.channels)
            except Exception:
                log.exception("outbox sender (%s) hit an error; trying again shortly", ", ".join(sender.channels))
                wait = poll
            sender.wake.wait(wait)
            sender.wake.clear()
    database.close()


def start_sender(app: Flask, sender: Sender, join_seconds: float = STOP_WAIT_SECONDS) -> Callable[[], None]:
    """Start a sender thread; return what stops it."""
    stop = threading.Event()
    thread = threading.Thread(target=run_sender, args=(app, stop, sender), name=sender.name, daemon=True)
    thread.start()

    def stop_worker(wait: bool = True) -> None:
        """Let the sender finish its current attempt, then end; wait for it a bounded time, unless told not to."""
        stop.set()
        sender.wake.set()
        if wait:
            thread.join(join_seconds)

    return stop_worker


def start(app: Flask, sender: Sender) -> Callable[[], None] | None:
    """Start this process's thread of `sender`, unless the config turns senders off; return what stops it."""
    if not app.config["OUTBOX_WORKER"]:
        return None
    for channel in sender.channels:
        CHANNELS[channel].prepare(app.config)
    return start_sender(app, sender)


def init_app(app: Flask) -> None:
    """Register the outbox CLI commands and the webhook-secret command."""
    app.cli.add_command(outbox_cli)
    webhooks.init_app(app)


@click.group("outbox", cls=AppGroup)
def outbox_cli() -> None:
    """Work the email outbox."""


@outbox_cli.command("send")
@click.option("--to-files", is_flag=True, help="With no MAIL_SERVER, write .eml files under DATA_DIR/mail.")
def send_command(to_files: bool) -> None:
    """Send every email, alert and webhook event that is due now, once."""
    config = current_app.config
    with contextlib.closing(db.connect(config["DATABASE"])) as database:
        delivered = drain(database, config, ALERTS_AND_WEBHOOKS.channels)
        click.echo(f"{delivered} alert(s) and webhook event(s) delivered")
        if not config["MAIL_SERVER"] and not to_files:
            raise click.ClickException(
                "MAIL_SERVER is not set, so nobody would receive these emails; nothing was sent. "
                "Run this with the server's mail settings, or pass --to-files to write them under DATA_DIR/mail."
            )
        for job in EMAIL.jobs:
            job(database, config, datetime.now(UTC))
        click.echo(f"{drain(database, config, EMAIL.channels)} email(s) sent")
