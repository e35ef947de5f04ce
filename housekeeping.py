"""The server's own daily housekeeping: a backup and the retention purge, done by one worker a day."""

import contextlib
import logging
import os
import socket
import sqlite3
import threading
import time
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

from flask import Flask

import backups
import db
import db.accounts
import db.housekeeping
import db.visits
import outbox.email

log = logging.getLogger("clinic.housekeeping")

JOB = "daily"
EVERY = timedelta(days=1)
RETRY_AFTER_FAILURE = timedelta(hours=1)
BACKUP_STALE_AFTER = timedelta(days=2)
PURGE_BATCH = 100  # leads per transaction: a visitor's POST /contact waits for at most one batch
# Writers take turns (db.writers_turn), and nothing makes the turn go to whoever waited longest: without
# a pause, the purge could take it again at once and keep a post waiting batch after batch. The pause
# lets every waiting post in before the next batch.
PAUSE_SECONDS = 0.05


def purge(database, config: dict, before: datetime, stop: threading.Event | None = None, advance=None) -> dict:
    """Delete what is older than `before`: leads with their notes, emails and .eml files, then
    finished emails and audit-log lines; return how many of each went. `advance(n)`, if given,
    hears how many leads each batch deleted.

    Each batch is its own BEGIN IMMEDIATE transaction of normal DELETEs (so triggers fire), and
    the purge pauses after it (at least PAUSE_SECONDS, twice the batch's time on a slow day), so
    waiting visitors get the write lock in between.
    """
    stamp = db.iso_utc(before)
    steps = {
        "leads": lambda: db.housekeeping.purge_leads_batch(database, stamp, PURGE_BATCH),
        "emails": lambda: db.housekeeping.purge_finished_rows_batch(database, stamp, PURGE_BATCH),
        "audit": lambda: (db.housekeeping.purge_audit_batch(database, stamp, PURGE_BATCH), []),
    }
    counts = dict.fromkeys(steps, 0)
    for kind, step in steps.items():
        while not (stop and stop.is_set()):
            started = time.monotonic()
            count, message_ids = step()
            for message_id in message_ids:  # exactly the purged emails' files, whatever their age
                outbox.email.eml_path(message_id, config).unlink(missing_ok=True)
            counts[kind] += count
            if advance and kind == "leads":
                advance(count)
            if count < PURGE_BATCH:
                break
            time.sleep(max(PAUSE_SECONDS, 2 * (time.monotonic() - started)))
    counts["kept"] = db.housekeeping.count_leads_kept_undelivered(database, stamp)
    return counts


def purge_and_log(database, config: dict, now: datetime, days: int, actor: str, stop=None, advance=None) -> dict:
    """Purge what is older than `days` days, and log it (server log, housekeeping log, audit log)."""
    started = now
    try:
        counts = purge(database, config, now - timedelta(days=days), stop, advance)
    except sqlite3.Error as error:
        entry = {"job": "purge", "started_at": db.iso_utc(started), "finished_at": db.utcnow(), "ok": 0}
        db.housekeeping.log_housekeeping(database, {**entry, "detail": f"failed: {error}", "actor": actor})
        raise
    detail = (
        f"{counts['leads']} lead(s) older than {days} days, {counts['emails']} finished email(s), "
        f"{counts['audit']} audit line(s)"
    )
    if counts["kept"]:
        detail += f"; {counts['kept']} lead(s) kept past the retention period: not yet delivered"
    entry = {"job": "purge", "started_at": db.iso_utc(started), "finished_at": db.utcnow(), "ok": 1}
    db.housekeeping.log_housekeeping(database, {**entry, "detail": detail, "leads": counts["leads"], "actor": actor})
    db.accounts.audit(database, actor, "purged leads", db.utcnow(), detail=f"{counts['leads']} older than {days} days")
    log.info("retention purge by %s: %s deleted", actor, detail)
    return counts


def run_daily(database, config: dict, now: datetime, who: str, stop=None) -> bool:
    """Back up and purge if the day's housekeeping is due and this process wins it; return True if it did."""
    if not db.housekeeping.claim_housekeeping(database, JOB, db.iso_utc(now), db.iso_utc(now + EVERY), who):
        return False
    try:
        result = backups.backup_and_log(database, config, now, "housekeeping")
        log.info("backup written to %s: %s lead(s), %s bytes", result["path"], result["leads"], result["size_bytes"])
    except backups.BackupError as error:
        log.error("%s; trying again in an hour", error)
        db.housekeeping.set_housekeeping_due(database, JOB, db.iso_utc(now + RETRY_AFTER_FAILURE))
    days = config["LEAD_RETENTION_DAYS"]
    if days > 0:
        purge_and_log(database, config, now, days, "housekeeping", stop)
    else:
        log.info("retention purge off (LEAD_RETENTION_DAYS=0): no lead deleted")
    purge_visit_counts(database, config, now, stop)
    db.search.trim_recent_index(database)
    return True


def purge_visit_counts(database, config: dict, now: datetime, stop=None) -> int:
    """Delete the visit counts of days more than ANALYTICS_RETENTION_DAYS ago (the clinic's calendar); how many."""
    days = config["ANALYTICS_RETENTION_DAYS"]
    if days <= 0:
        return 0
    today = now.astimezone(ZoneInfo(config["CLINIC_TIMEZONE"])).date()
    before = (today - timedelta(days=days)).isoformat()
    deleted = 0
    while not (stop and stop.is_set()):
        count = db.visits.purge_visit_counts_batch(database, before, PURGE_BATCH)
        deleted += count
        if count < PURGE_BATCH:
            break
        time.sleep(PAUSE_SECONDS)
    if deleted:
        log.info("retention purge: visit counts of %s row(s) from before %s deleted", deleted, before)
    return deleted


def run(app: Flask, stop: threading.Event) -> None:
    """Every HOUSEKEEPING_POLL_SECONDS, do the day's housekeeping if it is due, until `stop` is set."""
    who = f"{socket.gethostname()}:{os.getpid()}"
    while not stop.wait(app.config["HOUSEKEEPING_POLL_SECONDS"]):
        try:
            with contextlib.closing(db.connect(app.config["DATABASE"])) as database:
                run_daily(database, app.config, datetime.now(UTC), who, stop)
        except Exception:
            log.exception("housekeeping hit an error; trying again at the next check")


def start(app: Flask) -> threading.Event:
    """Start this server process's housekeeping thread; set the returned event to stop it."""
    stop = threading.Event()
    threading.Thread(target=run, args=(app, stop), name="housekeeping", daemon=True).start()
    return stop


def backup_alarm(database, now: datetime) -> str | None:
    """Why the backups need the owner's attention (the last failed, or the last good one is old), or None.

    A new site that has made no backup yet is fine.
    """
    last = db.housekeeping.last_housekeeping(database, "backup")
    if last is None:
        return None
    if not last["ok"]:
        return f"the last backup failed: {last['detail']}"
    age = now - datetime.fromisoformat(last["finished_at"])
    if age > BACKUP_STALE_AFTER:
        return f"the last good backup is {age.days} days old"
    return None


def status(database, now: datetime) -> dict:
    """The last backup, the last good one, the last purge and any alarm, for the status page."""
    return {
        "last_backup": db.housekeeping.last_housekeeping(database, "backup"),
        "last_good_backup": db.housekeeping.last_housekeeping(database, "backup", ok_only=True),
        "last_purge": db.housekeeping.last_housekeeping(database, "purge"),
        "alarm": backup_alarm(database, now),
        "due_at": db.housekeeping.housekeeping_due_at(database, JOB),
    }
