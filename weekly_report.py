"""The weekly report: one email to the clinic on how last week went, sent by one server process, and `flask report`.

Once a week (WEEKLY_REPORT_DAY at WEEKLY_REPORT_HOUR in CLINIC_TIMEZONE) each server process's thread
tries to claim the job's row in `housekeeping`, as the daily housekeeping does: the one conditional
UPDATE that wins queues the email in the outbox and moves the row to the next week, so two workers
send one email, a restart sends none again, and a week missed while the server was down is sent
once when it starts. The report holds counts, sources, request numbers and links: never a visitor's
name, contact or message.
"""

import contextlib
import logging
import os
import socket
import threading
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

import click
from flask import Flask, current_app, render_template
from flask.cli import with_appcontext

import db
import db.housekeeping
import db.leads
import db.outbox
import housekeeping
import offsite
import outbox.addresses
import outbox.rows
import outbox.sender
import visits
from admin.analytics import add_up, counts_by_row

log = logging.getLogger("clinic.weekly_report")

JOB = "weekly-report"
TOTALS = (("visitors", "Visitors"), ("calls", "Calls"), ("requests", "Requests"), ("booked", "Booked"))
BEST_SOURCES = 5
WAITING_SHOWN = 20  # requests still new listed by link; the rest are counted


def week_name(monday: date) -> str:
    """The ISO name of the week starting `monday`, e.g. 2026-W48."""
    year, week, _ = monday.isocalendar()
    return f"{year}-W{week:02d}"


def parse_week(text: str) -> date:
    """The Monday of an ISO week written YYYY-Www (2026-W48), or a click error saying what is expected."""
    try:
        year, week = text.upper().split("-W")
        monday = date.fromisocalendar(int(year), int(week), 1)
        if not date.min + timedelta(days=7) <= monday <= date.max - timedelta(days=14):  # it reads the weeks around
            raise ValueError(text)
    except ValueError:
        raise click.BadParameter(f"{text!r}: expected a week like 2026-W48") from None
    return monday


def last_week(now: datetime, zone: ZoneInfo) -> date:
    """The Monday of the last whole week (Monday to Sunday in the clinic's zone) before `now`."""
    today = now.astimezone(zone).date()
    return today - timedelta(days=today.weekday() + 7)


def next_due(now: datetime, config: dict) -> datetime:
    """The first WEEKLY_REPORT_DAY at WEEKLY_REPORT_HOUR (clinic's zone) after `now`."""
    zone = ZoneInfo(config["CLINIC_TIMEZONE"])
    today = now.astimezone(zone).date()
    day = today + timedelta(days=(config["WEEKLY_REPORT_WEEKDAY"] - today.weekday()) % 7)
    due = datetime.combine(day, time(config["WEEKLY_REPORT_HOUR"]), zone)
    return due if due > now else datetime.combine(day + timedelta(days=7), time(config["WEEKLY_REPORT_HOUR"]), zone)


def change(now: int, before: int) -> str:
    """`now` against `before` in words: 'up 25 %', 'down 10 %', 'same', 'new' (nothing the week before)."""
    if now == before:
        return "same"
    if not before:
        return "new"
    percent = round(100 * (now - before) / before)
    return f"{'up' if percent > 0 else 'down'} {abs(percent)} %"


def people(first: date, last: date) -> dict[tuple, dict[str, int]]:
    """The analytics page's rows for the days from `first` to `last`, bots left out as the page leaves them."""
    return {key: counts for key, counts in counts_by_row(first, last).items() if key[2] != visits.BOTS}


def health(database, config: dict, now: datetime) -> str:
    """One line on the site's health: emails, alerts and webhooks failing; the last backup and off-site copy."""
    zone = ZoneInfo(config["CLINIC_TIMEZONE"])
    troubled = len(db.outbox.delivery_health(database)["troubled"])
    parts = [f"{troubled} email(s) failing" if troubled else "emails working"]
    failing = [item["label"].lower() for item in outbox.addresses.status(database, config) if item["troubled"]]
    if failing:
        parts.append(", ".join(failing) + " failing")
    elif outbox.addresses.destinations(config):
        parts.append("alerts and webhooks working")
    last = db.housekeeping.last_housekeeping(database, "backup", ok_only=True)
    alarm = housekeeping.backup_alarm(database, now)
    when = f"{datetime.fromisoformat(last['finished_at']).astimezone(zone):%a %-d %b}" if last else None
    parts.append(alarm or (f"last backup {when}" if when else "no backup yet"))
    if offsite.enabled(config):
        good = db.housekeeping.last_housekeeping(database, offsite.JOB, ok_only=True)
        copied = f"{datetime.fromisoformat(good['finished_at']).astimezone(zone):%a %-d %b}" if good else None
        parts.append(offsite.alarm(database, config, now) or f"off-site copy {copied}")
    return "; ".join(parts)


def build(monday: date, now: datetime) -> dict:
    """The report of the week starting `monday` (in an app context): what the email and the command show."""
    config = current_app.config
    database = db.get_db()
    sunday = monday + timedelta(days=6)
    week = people(monday, sunday)
    before = add_up(people(monday - timedelta(days=7), monday - timedelta(days=1)).values())
    total = add_up(week.values())
    sources: dict[tuple[str, str], dict[str, int]] = {}
    for (_day, _page, source, _medium, campaign), counts in week.items():
        line = sources.setdefault((source, campaign), {"requests": 0, "calls": 0, "visitors": 0})
        for name in line:
            line[name] += counts[name]
    best = sorted(sources.items(), key=lambda item: (-(item[1]["requests"] + item[1]["calls"]), -item[1]["visitors"]))
    waiting_count, waiting = db.leads.leads_still_new(database, WAITING_SHOWN)
    site = config["SITE_URL"]
    zone = ZoneInfo(config["CLINIC_TIMEZONE"])
    return {
        "week": week_name(monday),
        "first": monday,
        "last": sunday,
        "totals": [
            {"label": label, "count": total[name], "before": before[name], "change": change(total[name], before[name])}
            for name, label in TOTALS
        ],
        "sources": [
            {"source": source, "campaign": campaign, **counts}
            for (source, campaign), counts in best[:BEST_SOURCES]
            if counts["requests"] + counts["calls"]
        ],
        "waiting": [
            {
                "id": lead["id"],
                "received": f"{datetime.fromisoformat(lead['created_at']).astimezone(zone):%a %-d %b}",
                "link": outbox.rows.admin_link(lead, config),
            }
            for lead in waiting
        ],
        "waiting_count": waiting_count,
        "health": health(database, config, now),
        "analytics": f"{site}/admin/analytics?from={monday.isoformat()}&to={sunday.isoformat()}",
        "clinic": config["CLINIC_NAME"],
    }


def queue(monday: date, now: datetime) -> int:
    """Build the week's report and queue its email (in an app context); return its outbox id."""
    row = outbox.rows.weekly_report_email(build(monday, now), current_app.config)
    database = db.get_db()
    with db.write(database):
        outbox_id = db.outbox.enqueue(database, row, db.iso_utc(now))
    outbox.sender.wake_senders()
    return outbox_id


def run_due(app: Flask, now: datetime, who: str) -> bool:
    """Queue last week's report if it is due and this process wins the claim; True if it did.

    The claim and the email are one transaction: a process that dies in between has done neither.
    """
    config = app.config
    stamp = db.iso_utc(now)
    with contextlib.closing(db.connect(config["DATABASE"])) as database:
        due = db.housekeeping.housekeeping_due_at(database, JOB)
        if due is None:  # a new site: its first report is the next one, not one at once
            db.housekeeping.add_housekeeping_job(database, JOB, db.iso_utc(next_due(now, config)))
            return False
        if due > stamp:
            return False
        monday = last_week(now, ZoneInfo(config["CLINIC_TIMEZONE"]))
        with app.app_context():
            row = outbox.rows.weekly_report_email(build(monday, now), config)
        next_time = db.iso_utc(next_due(now, config))
        outbox_id = db.housekeeping.claim_job_and_queue(database, JOB, stamp, next_time, who, row)
    if outbox_id is None:
        return False  # another worker won it
    outbox.sender.wake_senders()
    log.info("weekly report of %s queued for %s (email %s)", week_name(monday), config["CLINIC_EMAIL"], outbox_id)
    return True


def run(app: Flask, stop: threading.Event) -> None:
    """Every HOUSEKEEPING_POLL_SECONDS, send the weekly report if it is due, until `stop` is set."""
    who = f"{socket.gethostname()}:{os.getpid()}"
    while not stop.wait(app.config["HOUSEKEEPING_POLL_SECONDS"]):
        try:
            run_due(app, datetime.now(UTC), who)
        except Exception:
            log.exception("the weekly report hit an error; trying again at the next check")


def start(app: Flask) -> threading.Event | None:
    """Start this server process's weekly-report thread, unless WEEKLY_REPORT is off; set the event to stop it."""
    if not app.config["WEEKLY_REPORT"]:
        return None
    stop = threading.Event()
    threading.Thread(target=run, args=(app, stop), name="weekly-report", daemon=True).start()
    return stop


def init_app(app: Flask) -> None:
    """Register `flask report`."""
    app.cli.add_command(report_command)


@click.command("report")
@click.option("--week", help="The week to report, like 2026-W48 (default: last week).")
@click.option("--send", is_flag=True, help="Queue it as the email to CLINIC_EMAIL now; the server sends it.")
@with_appcontext
def report_command(week: str | None, send: bool) -> None:
    """Print last week's report (visitors, calls, requests, bookings, sources, waiting requests, health)."""
    now = datetime.now(UTC)
    monday = parse_week(week) if week else last_week(now, ZoneInfo(current_app.config["CLINIC_TIMEZONE"]))
    visits.flush(current_app)
    click.echo(render_template("email/weekly_report.txt", report=build(monday, now)))
    if send:
        outbox_id = queue(monday, now)
        click.echo(f"Queued for {current_app.config['CLINIC_EMAIL']} (email {outbox_id}): the server sends it.")
