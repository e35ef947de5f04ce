"""Housekeeping: when the daily job is due, its log, and the retention purge in batches."""

from sqlite_utils import Database

from db import insert_row, write
from db.outbox import enqueue


def claim_housekeeping(db: Database, job: str, now: str, next_due_at: str, who: str) -> bool:
    """Take the job if it is due, moving its next time on; only one process can win each time."""
    with write(db):
        won = db.execute(
            "UPDATE housekeeping SET due_at = ?, claimed_at = ?, claimed_by = ? WHERE job = ? AND due_at <= ?",
            [next_due_at, now, who, job, now],
        ).rowcount
        return bool(won)


def set_housekeeping_due(db: Database, job: str, due_at: str) -> None:
    """Set when the job is next due (sooner after a failure)."""
    with write(db):
        db.execute("UPDATE housekeeping SET due_at = ? WHERE job = ?", [due_at, job])


def housekeeping_due_at(db: Database, job: str) -> str | None:
    """When the job is next due, or None if it is unknown."""
    rows = list(db.query("SELECT due_at FROM housekeeping WHERE job = ?", [job]))
    return rows[0]["due_at"] if rows else None


def log_housekeeping(db: Database, entry: dict) -> None:
    """Keep the outcome of one backup or purge (job, started_at, finished_at, ok, detail ...)."""
    with write(db):
        insert_row(db, "housekeeping_log", entry)


def last_housekeeping(db: Database, job: str, ok_only: bool = False) -> dict | None:
    """The latest logged run of `job` ('backup' or 'purge'), or of its successful runs only; None if none."""
    where = "job = ? AND ok = 1" if ok_only else "job = ?"
    rows = list(db.query(f"SELECT * FROM housekeeping_log WHERE {where} ORDER BY id DESC LIMIT 1", [job]))
    return rows[0] if rows else None


# A lead the clinic may not have heard of yet: a delivery of it still waits (e.g. the mail server is down).
UNDELIVERED = (
    "EXISTS (SELECT 1 FROM outbox WHERE outbox.lead_id = leads.id AND outbox.status IN ('pending', 'sending'))"
)


def count_leads_before(db: Database, before: str) -> int:
    """How many leads were created before `before` and delivered (what a purge will delete)."""
    return db.execute(f"SELECT count(*) FROM leads WHERE created_at < ? AND NOT {UNDELIVERED}", [before]).fetchone()[0]


def purge_leads_batch(db: Database, before: str, limit: int) -> tuple[int, list[str]]:
    """Delete up to `limit` of the leads created before `before`, in one short write transaction.

    A lead with a delivery still waiting is kept. Its notes, emails and attempts go by cascade.
    Return how many leads went and the Message-IDs of their emails (for the .eml files).
    """
    with write(db):
        sql = f"SELECT id FROM leads WHERE created_at < ? AND NOT {UNDELIVERED} LIMIT ?"
        ids = [r["id"] for r in db.query(sql, [before, limit])]
        if not ids:
            return 0, []
        marks = ",".join("?" * len(ids))
        message_ids = [
            r["message_id"] for r in db.query(f"SELECT message_id FROM outbox WHERE lead_id IN ({marks})", ids)
        ]
        count = db.execute(f"DELETE FROM leads WHERE id IN ({marks})", ids).rowcount
        return count, message_ids


def count_leads_kept_undelivered(db: Database, before: str) -> int:
    """How many leads created before `before` the purge keeps because a delivery of theirs still waits."""
    return next(db.query(f"SELECT count(*) AS n FROM leads WHERE created_at < ? AND {UNDELIVERED}", [before]))["n"]


def purge_finished_rows_batch(db: Database, before: str, limit: int) -> tuple[int, list[str]]:
    """Delete up to `limit` sent, failed or resent emails created before `before`; return how many and their ids."""
    with write(db):
        rows = list(
            db.query(
                "DELETE FROM outbox WHERE id IN (SELECT id FROM outbox WHERE created_at < ?"
                " AND status IN ('sent', 'failed', 'resent') LIMIT ?) RETURNING message_id",
                [before, limit],
            )
        )
        return len(rows), [r["message_id"] for r in rows]


def purge_audit_batch(db: Database, before: str, limit: int) -> int:
    """Delete up to `limit` audit-log lines written before `before`; return how many."""
    with write(db):
        return db.execute(
            "DELETE FROM audit_log WHERE id IN (SELECT id FROM audit_log WHERE at < ? LIMIT ?)", [before, limit]
        ).rowcount


def claim_offsite_snapshot(db: Database, now: str, changed_before: str, next_due_at: str, who: str) -> bool:
    """Take the next off-site snapshot if it is due (its time came, or a change is old enough); only one process wins.

    The change mark is cleared in the same statement, before the copy is read, so a change made
    after this point is either in the copy or marks the database again.
    """
    with write(db):
        won = db.execute(
            "UPDATE housekeeping SET due_at = ?, claimed_at = ?, claimed_by = ?, changed_at = NULL"
            " WHERE job = 'offsite' AND (due_at <= ? OR changed_at <= ?)",
            [next_due_at, now, who, now, changed_before],
        ).rowcount
        return bool(won)


def offsite_changed_at(db: Database) -> str | None:
    """When the first change not yet in an off-site snapshot was made, or None."""
    rows = list(db.query("SELECT changed_at FROM housekeeping WHERE job = 'offsite'"))
    return rows[0]["changed_at"] if rows else None


def housekeeping_failures_in_a_row(db: Database, job: str) -> int:
    """How many of the job's latest logged runs failed since its last success."""
    rows = db.query(
        "SELECT count(*) AS n FROM housekeeping_log WHERE job = ? AND ok = 0"
        " AND id > coalesce((SELECT max(id) FROM housekeeping_log WHERE job = ? AND ok = 1), 0)",
        [job, job],
    )
    return next(rows)["n"]


def add_housekeeping_job(db: Database, job: str, due_at: str) -> None:
    """Make the job's row, first due at `due_at`, unless it exists."""
    with write(db):
        db.execute("INSERT OR IGNORE INTO housekeeping (job, due_at) VALUES (?, ?)", [job, due_at])


def claim_job_and_queue(db: Database, job: str, now: str, next_due_at: str, who: str, email: dict) -> int | None:
    """Take the job if it is due and queue its `email`, in one transaction; the email's id, or None if not won."""
    with write(db):
        won = db.execute(
            "UPDATE housekeeping SET due_at = ?, claimed_at = ?, claimed_by = ? WHERE job = ? AND due_at <= ?",
            [next_due_at, now, who, job, now],
        ).rowcount
        return enqueue(db, email, now) if won else None
