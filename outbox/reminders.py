"""Speed to lead: a reminder when a request waits too long, queued by the email sender before each of its passes."""

import logging
import sqlite3
from datetime import UTC, datetime, time, timedelta
from zoneinfo import ZoneInfo

import db.outbox
from outbox.rows import reminder_email

log = logging.getLogger("clinic.reminders")

LOOK_BACK = timedelta(days=14)  # older leads were seen long ago, or predate the reminders


def working_seconds(start: datetime, end: datetime, config: dict) -> float:
    """Seconds between two moments that fall inside the clinic's working hours."""
    zone = ZoneInfo(config["CLINIC_TIMEZONE"])
    opens, closes = config["WORK_HOURS"]
    total = 0.0
    day = start.astimezone(zone).date()
    while day <= end.astimezone(zone).date():
        if day.weekday() in config["WORK_DAYS"]:
            day_open = datetime.combine(day, time(opens // 60, opens % 60), zone)
            day_close = datetime.combine(day, time.min, zone) + timedelta(minutes=closes)
            low, high = max(day_open, start), min(day_close, end)
            if high > low:
                # Subtract in UTC: aware times sharing one tzinfo subtract as wall clocks, wrong across DST.
                total += (high.astimezone(UTC) - low.astimezone(UTC)).total_seconds()
        day += timedelta(days=1)
    return total


def queue_due(database, config: dict, now: datetime) -> int:
    """Queue one reminder for each lead still new after REMINDER_AFTER_HOURS working hours; return how many."""
    limit = config["REMINDER_AFTER_HOURS"] * 3600
    if limit <= 0:
        return 0
    queued = 0
    try:
        # A lead younger than the limit in plain hours cannot be due yet.
        candidates = db.outbox.leads_to_remind(
            database,
            (now - LOOK_BACK).isoformat(timespec="seconds"),
            (now - timedelta(seconds=limit)).isoformat(timespec="seconds"),
        )
        for lead in candidates:
            waited = working_seconds(datetime.fromisoformat(lead["created_at"]), now, config)
            if waited >= limit:
                email = reminder_email(lead, round(waited / 3600, 1), config)
                if db.outbox.queue_reminder(database, lead["id"], email, now.isoformat(timespec="seconds")):
                    log.info("reminder queued for lead %s, waiting %.1f working hours", lead["id"], waited / 3600)
                    queued += 1
    except sqlite3.Error:
        log.exception("could not check for leads waiting too long")
    return queued
