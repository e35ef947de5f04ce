"""The outbox: queueing rows for every channel, claiming due ones, recording each attempt, reminders."""

import sqlite3
from pathlib import Path

from sqlite_utils import Database
from sqlite_utils.db import NotFoundError

from db import BUSY_TIMEOUT_MS, insert_row, write


def enqueue(db: Database, email: dict, now: str) -> int:
    """Queue an email, due at once; return its outbox id."""
    row = {**email, "status": "pending", "attempts": 0, "next_attempt_at": now, "created_at": now, "updated_at": now}
    return insert_row(db, "outbox", row)


def claim_due_rows(
    db: Database, now: str, stale_before: str, limit: int = 10, channels: tuple[str, ...] = ("email",)
) -> list[dict]:
    """Mark up to `limit` due rows of the first of `channels` that has any as sending and return them.

    Only one process can win each row. A row left in `sending` since before `stale_before`
    belonged to a sender that died. Each channel's rows are found through the (channel, status,
    next_attempt_at) index, so a claim costs the same with thousands waiting: it holds the write lock.
    """
    with write(db):
        for channel in channels:
            rows = list(
                db.query(
                    """
        UPDATE outbox SET status = 'sending', claimed_at = :now, attempts = attempts + 1, updated_at = :now
        WHERE id IN (
            SELECT id FROM (
                SELECT * FROM (
                    SELECT id, next_attempt_at FROM outbox
                    WHERE channel = :channel AND status = 'pending' AND next_attempt_at <= :now
                    ORDER BY next_attempt_at, id LIMIT :limit)
                UNION ALL
                SELECT * FROM (
                    SELECT id, next_attempt_at FROM outbox
                    WHERE channel = :channel AND status = 'sending' AND claimed_at < :stale LIMIT :limit)
            ) ORDER BY next_attempt_at, id LIMIT :limit
        )
        RETURNING *
        """,
                    {"now": now, "stale": stale_before, "limit": limit, "channel": channel},
                )
            )
            if rows:
                return rows
        return []


def next_due_at(db: Database, channels: tuple[str, ...] = ("email",)) -> str | None:
    """Return when the next pending row of `channels` is due, or None when none waits."""
    sql = "SELECT min(next_attempt_at) AS due FROM outbox WHERE channel = ? AND status = 'pending'"
    due = [row["due"] for channel in channels for row in db.query(sql, [channel]) if row["due"]]
    return min(due, default=None)


def defer_waiting(db: Database, channel: str, now: str, error: str, retry_at: str) -> int:
    """Move every waiting row of `channel` due before `retry_at` to then, with the reason; return how many moved.

    One channel only: the mail server being down says nothing about the alert and webhook addresses.
    """
    with write(db):
        return db.execute(
            """
        UPDATE outbox SET next_attempt_at = ?, last_error = ?, updated_at = ?
        WHERE status = 'pending' AND next_attempt_at < ? AND channel = ?
        """,
            [retry_at, error, now, retry_at, channel],
        ).rowcount


def _record_attempt(db: Database, outbox_id: int, now: str, error: str | None, updated: int) -> bool:
    """Log the attempt if its email still exists (`updated` rows); a lead deleted mid-send took it away."""
    if updated:
        insert_row(db, "email_attempts", {"outbox_id": outbox_id, "at": now, "ok": int(error is None), "error": error})
    return bool(updated)


def mark_sent(db: Database, outbox_id: int, now: str) -> bool:
    """Record a delivered email; False if it was deleted (with its lead) while it was being sent."""
    with write(db):
        updated = db.execute(
            "UPDATE outbox SET status = 'sent', sent_at = ?, last_error = NULL, updated_at = ? WHERE id = ?",
            [now, now, outbox_id],
        ).rowcount
        return _record_attempt(db, outbox_id, now, None, updated)


def mark_retry(db: Database, outbox_id: int, now: str, error: str, next_attempt_at: str) -> bool:
    """Record a failed attempt and when to try again; False if the email is gone."""
    with write(db):
        updated = db.execute(
            "UPDATE outbox SET status = 'pending', last_error = ?, next_attempt_at = ?, updated_at = ? WHERE id = ?",
            [error, next_attempt_at, now, outbox_id],
        ).rowcount
        return _record_attempt(db, outbox_id, now, error, updated)


def mark_failed(db: Database, outbox_id: int, now: str, error: str) -> bool:
    """Record a failed attempt after which the email is not tried again by itself; False if it is gone."""
    with write(db):
        updated = db.execute(
            "UPDATE outbox SET status = 'failed', last_error = ?, updated_at = ? WHERE id = ?",
            [error, now, outbox_id],
        ).rowcount
        return _record_attempt(db, outbox_id, now, error, updated)


def rows_for_lead(db: Database, lead_id: int) -> list[dict]:
    """Return the emails queued for one lead, oldest first."""
    return list(db.table("outbox").rows_where("lead_id = ?", [lead_id], order_by="id"))


def attempts_of_row(db: Database, outbox_id: int) -> list[dict]:
    """Return every delivery attempt of one email, oldest first."""
    return list(db.table("email_attempts").rows_where("outbox_id = ?", [outbox_id], order_by="id"))


def get_row(db: Database, outbox_id: int) -> dict | None:
    """Return one outbox row, or None."""
    try:
        return db.table("outbox").get(outbox_id)
    except NotFoundError:
        return None


def resend(db: Database, outbox_id: int, message_id: str, now: str) -> int | None:
    """Send an email again: a waiting one falls due now, any other is queued afresh; return the id to watch."""
    with write(db):
        row = get_row(db, outbox_id)
        if row is None:
            return None
        if row["status"] in ("pending", "sending"):
            db.execute("UPDATE outbox SET next_attempt_at = ?, updated_at = ? WHERE id = ?", [now, now, outbox_id])
            return outbox_id
        if row["status"] == "failed":
            # Taken off the failed list: its copy carries on.
            db.execute("UPDATE outbox SET status = 'resent', updated_at = ? WHERE id = ?", [now, outbox_id])
        fields = ("lead_id", "kind", "channel", "target", "to_addr", "mailbox", "reply_to", "subject")
        fields += ("body_text", "body_html")
        copy = {k: row[k] for k in fields}
        if row["channel"] == "webhook":  # the same event: its webhook-id lets the receiver drop a duplicate
            message_id = row["message_id"]
        return enqueue(db, {**copy, "message_id": message_id}, now)


def delivery_health(db: Database) -> dict:
    """Last successful delivery, and the emails waiting with errors or failed for good."""
    last = next(db.query("SELECT max(sent_at) AS at FROM outbox WHERE status = 'sent' AND channel = 'email'"))["at"]
    troubled = list(
        db.query(
            """
        SELECT * FROM outbox WHERE status = 'failed' OR (status IN ('pending', 'sending') AND last_error IS NOT NULL)
        ORDER BY id DESC LIMIT 50
        """
        )
    )
    return {"last_sent_at": last, "troubled": troubled, "waiting": delivery_counts(db)["waiting"]}


def delivery_counts(db: Database) -> dict[str, int]:
    """How many emails wait to be sent and how many failed for good (the health check's numbers)."""
    return next(
        db.query(
            """
        SELECT (SELECT count(*) FROM outbox WHERE status IN ('pending', 'sending')) AS waiting,
               (SELECT count(*) FROM outbox WHERE status = 'failed') AS failed
        """
        )
    )


def delivery_counts_now(path: str) -> dict[str, int]:
    """delivery_counts() read through a new connection to the file as it is now (one that never creates it)."""
    conn = sqlite3.connect(f"{Path(path).resolve().as_uri()}?mode=rw", uri=True, timeout=BUSY_TIMEOUT_MS / 1000)
    try:
        return delivery_counts(Database(conn))
    finally:
        conn.close()


def mailbox_confirmed_since(db: Database, mailbox: str, since: str) -> bool:
    """Whether a confirmation was queued for `mailbox` (as outbox.rows.mailbox() gives it) since `since`."""
    sql = "SELECT 1 FROM outbox WHERE mailbox = ? AND created_at >= ? LIMIT 1"
    return db.execute(sql, [mailbox, since]).fetchone() is not None


def count_confirmations_since(db: Database, since: str, up_to: int) -> int:
    """How many confirmations were queued since `since`, counting no further than `up_to`."""
    sql = "SELECT count(*) FROM (SELECT 1 FROM outbox WHERE kind = 'autoreply' AND created_at >= ? LIMIT ?)"
    return db.execute(sql, [since, up_to]).fetchone()[0]


def add_skipped_confirmation(db: Database, hour: str, forget_before: str) -> bool:
    """Count one confirmation skipped in `hour` (in the caller's transaction); True if it is the hour's first."""
    db.execute("DELETE FROM autoreply_skips WHERE hour < ?", [forget_before[:13]])
    first = db.execute("INSERT OR IGNORE INTO autoreply_skips (hour, skipped) VALUES (?, 1)", [hour]).rowcount
    if not first:
        db.execute("UPDATE autoreply_skips SET skipped = skipped + 1 WHERE hour = ?", [hour])
    return bool(first)


def skipped_confirmations_since(db: Database, since: str) -> int:
    """How many confirmations the hourly limit skipped since `since` (whole hours)."""
    sql = "SELECT coalesce(sum(skipped), 0) AS n FROM autoreply_skips WHERE hour >= ?"
    return next(db.query(sql, [since[:13]]))["n"]


def channel_health(db: Database, channel: str, target: str | None = None) -> dict:
    """The last delivery and the last failed attempt (with its reason) of one channel's address."""
    where = "o.channel = :channel AND o.target IS :target"
    params = {"channel": channel, "target": target}
    last = next(db.query(f"SELECT max(sent_at) AS at FROM outbox o WHERE {where} AND status = 'sent'", params))
    failures = list(
        db.query(
            f"""SELECT a.at, a.error FROM email_attempts a JOIN outbox o ON o.id = a.outbox_id
            WHERE {where} AND a.ok = 0 ORDER BY a.id DESC LIMIT 1""",
            params,
        )
    )
    troubled = next(
        db.query(
            f"""SELECT count(*) AS n FROM outbox o WHERE {where}
            AND (status = 'failed' OR (status IN ('pending', 'sending') AND last_error IS NOT NULL))""",
            params,
        )
    )
    return {
        "last_sent_at": last["at"],
        "last_failed_at": failures[0]["at"] if failures else None,
        "last_error": failures[0]["error"] if failures else None,
        "troubled": troubled["n"],
    }


def leads_to_remind(db: Database, created_after: str, created_before: str) -> list[dict]:
    """Leads still new, never reminded about, that arrived between the two times."""
    return list(
        db.query(
            """
        SELECT * FROM leads WHERE status = 'new' AND reminded_at IS NULL
            AND created_at >= ? AND created_at < ? ORDER BY id
        """,
            [created_after, created_before],
        )
    )


def queue_reminder(db: Database, lead_id: int, email: dict, now: str) -> bool:
    """Mark the lead reminded and queue its reminder, once; False if another process already did."""
    with write(db):
        won = db.execute(
            "UPDATE leads SET reminded_at = ? WHERE id = ? AND reminded_at IS NULL AND status = 'new'", [now, lead_id]
        ).rowcount
        if won:
            enqueue(db, email, now)
        return bool(won)
