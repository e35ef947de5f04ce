"""The database: connections, migrations, and every SQL query the site runs."""

import contextlib
import fcntl
import sqlite3
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import click
from flask import Flask, current_app, g
from flask.cli import with_appcontext
from sqlite_utils import Database
from sqlite_utils.db import NotFoundError
from sqlite_utils.migrations import Migrations

BUSY_TIMEOUT_MS = 10_000

migrations = Migrations("clinic")


def utcnow() -> str:
    """Return the current UTC time as ISO-8601 text, the one format stored."""
    return datetime.now(UTC).isoformat(timespec="seconds")


@migrations()
def m001_leads_and_outbox(db: Database) -> None:
    """Leads, their notification emails, and every delivery attempt."""
    db.table("leads").create(
        {
            "id": int,
            "form_id": str,
            "created_at": str,
            "updated_at": str,
            "name": str,
            "email": str,
            "phone": str,
            "preferred_time": str,
            "message": str,
            "status": str,
            "is_spam": int,
            "spam_reason": str,
            "utm_source": str,
            "utm_medium": str,
            "utm_campaign": str,
            "referrer": str,
            "user_agent": str,
        },
        pk="id",
        not_null={"form_id", "created_at", "updated_at", "name", "status", "is_spam"},
        defaults={"status": "new", "is_spam": 0, "email": "", "phone": "", "message": ""},
    )
    db.table("leads").create_index(["form_id"], unique=True)
    db.table("leads").create_index(["created_at"])
    db.table("outbox").create(
        {
            "id": int,
            "lead_id": int,
            "kind": str,
            "message_id": str,
            "to_addr": str,
            "reply_to": str,
            "subject": str,
            "body_text": str,
            "body_html": str,
            "status": str,
            "attempts": int,
            "next_attempt_at": str,
            "claimed_at": str,
            "sent_at": str,
            "last_error": str,
            "created_at": str,
            "updated_at": str,
        },
        pk="id",
        not_null={"kind", "message_id", "to_addr", "subject", "body_text", "status", "attempts"},
        defaults={"status": "pending", "attempts": 0},
    )
    db.table("outbox").create_index(["status", "next_attempt_at"])
    db.table("outbox").create_index(["lead_id"])
    db.table("email_attempts").create(
        {"id": int, "outbox_id": int, "at": str, "ok": int, "error": str},
        pk="id",
        not_null={"outbox_id", "at", "ok"},
    )
    db.table("email_attempts").create_index(["outbox_id"])


def connect(path: str) -> Database:
    """Open a connection with the busy timeout and foreign keys this site relies on."""
    conn = sqlite3.connect(path, timeout=BUSY_TIMEOUT_MS / 1000)
    db = Database(conn)
    db.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
    db.execute("PRAGMA foreign_keys = ON")
    db.execute("PRAGMA synchronous = NORMAL")
    return db


@contextlib.contextmanager
def write(db: Database) -> Iterator[Database]:
    """Run the block as one write transaction that takes the write lock up front.

    A deferred BEGIN that reads and then writes fails at once with "database is
    locked" when another process committed in between; BEGIN IMMEDIATE waits instead.
    """
    db.conn.execute("BEGIN IMMEDIATE")
    try:
        yield db
    except BaseException:
        db.rollback()
        raise
    else:
        try:
            db.conn.execute("COMMIT")
        except BaseException:
            db.rollback()
            raise


def migrate(path: str) -> None:
    """Create or upgrade the schema and turn WAL on; safe with several workers starting."""
    lock_path = Path(path).with_name(Path(path).name + ".migrate-lock")
    with open(lock_path, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        db = connect(path)
        try:
            db.enable_wal()
            migrations.apply(db)
        finally:
            db.close()


def get_db() -> Database:
    """Return this request's connection, opening it on first use."""
    if "db" not in g:
        g.db = connect(current_app.config["DATABASE"])
    return g.db


def close_db(_exc: BaseException | None = None) -> None:
    """Close this request's connection, if it opened one."""
    db = g.pop("db", None)
    if db is not None:
        db.close()


def init_app(app: Flask) -> None:
    """Migrate the database and register the teardown and the init-db command."""
    migrate(app.config["DATABASE"])
    app.teardown_appcontext(close_db)
    app.cli.add_command(init_db_command)


@click.command("init-db")
@with_appcontext
def init_db_command() -> None:
    """Create or upgrade the database schema."""
    migrate(current_app.config["DATABASE"])
    click.echo(f"Database ready at {current_app.config['DATABASE']}")


# Leads


def add_lead(db: Database, lead: dict, now: str) -> tuple[int, bool]:
    """Store a lead unless its form was sent before; return its id and whether it is new.

    Call inside write(), so the check and the insert cannot interleave with another.
    """
    existing = list(db.query("SELECT id FROM leads WHERE form_id = ?", [lead["form_id"]]))
    if existing:
        return existing[0]["id"], False
    row = {**lead, "created_at": now, "updated_at": now, "status": "spam" if lead.get("is_spam") else "new"}
    return db.table("leads").insert(row).last_pk, True


def get_lead(db: Database, lead_id: int) -> dict | None:
    """Return one lead as a dict, or None."""
    try:
        return db.table("leads").get(lead_id)
    except NotFoundError:
        return None


def count_leads(db: Database) -> int:
    """Return how many leads are stored, spam included."""
    return db.table("leads").count


# Outbox


def enqueue_email(db: Database, email: dict, now: str) -> int:
    """Queue an email, due at once; return its outbox id."""
    row = {**email, "status": "pending", "attempts": 0, "next_attempt_at": now, "created_at": now, "updated_at": now}
    return db.table("outbox").insert(row).last_pk


def claim_due_emails(db: Database, now: str, stale_before: str, limit: int = 10) -> list[dict]:
    """Mark due emails as sending and return them; only one process can win each row.

    A row left in `sending` since before `stale_before` belonged to a sender that died.
    """
    with write(db):
        rows = db.query(
            """
        UPDATE outbox SET status = 'sending', claimed_at = :now, attempts = attempts + 1,
            updated_at = :now
        WHERE id IN (
            SELECT id FROM outbox
            WHERE (status = 'pending' AND next_attempt_at <= :now)
               OR (status = 'sending' AND claimed_at < :stale)
            ORDER BY next_attempt_at LIMIT :limit
        )
        RETURNING *
        """,
            {"now": now, "stale": stale_before, "limit": limit},
        )
        return list(rows)


def next_due_at(db: Database) -> str | None:
    """Return when the next pending email is due, or None when none waits."""
    row = next(db.query("SELECT min(next_attempt_at) AS due FROM outbox WHERE status = 'pending'"))
    return row["due"]


def _record_attempt(db: Database, outbox_id: int, now: str, error: str | None) -> None:
    db.table("email_attempts").insert({"outbox_id": outbox_id, "at": now, "ok": int(error is None), "error": error})


def mark_sent(db: Database, outbox_id: int, now: str) -> None:
    """Record a delivered email."""
    with write(db):
        db.execute(
            "UPDATE outbox SET status = 'sent', sent_at = ?, last_error = NULL, updated_at = ? WHERE id = ?",
            [now, now, outbox_id],
        )
        _record_attempt(db, outbox_id, now, None)


def mark_retry(db: Database, outbox_id: int, now: str, error: str, next_attempt_at: str) -> None:
    """Record a failed attempt and when to try again."""
    with write(db):
        db.execute(
            "UPDATE outbox SET status = 'pending', last_error = ?, next_attempt_at = ?, updated_at = ? WHERE id = ?",
            [error, next_attempt_at, now, outbox_id],
        )
        _record_attempt(db, outbox_id, now, error)


def mark_failed(db: Database, outbox_id: int, now: str, error: str) -> None:
    """Record a failed attempt after which the email is not tried again by itself."""
    with write(db):
        db.execute(
            "UPDATE outbox SET status = 'failed', last_error = ?, updated_at = ? WHERE id = ?",
            [error, now, outbox_id],
        )
        _record_attempt(db, outbox_id, now, error)


def emails_for_lead(db: Database, lead_id: int) -> list[dict]:
    """Return the emails queued for one lead, oldest first."""
    return list(db.table("outbox").rows_where("lead_id = ?", [lead_id], order_by="id"))


def email_attempts(db: Database, outbox_id: int) -> list[dict]:
    """Return every delivery attempt of one email, oldest first."""
    return list(db.table("email_attempts").rows_where("outbox_id = ?", [outbox_id], order_by="id"))
