"""The database: connections, migrations, and every SQL query the site runs."""

import contextlib
import fcntl
import logging
import os
import re
import sqlite3
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import click
from flask import Flask, current_app, g, has_request_context
from flask.cli import with_appcontext
from sqlite_utils import Database
from sqlite_utils.db import ForeignKey, NotFoundError
from sqlite_utils.migrations import Migrations

BUSY_TIMEOUT_MS = 10_000

log = logging.getLogger("clinic.db")

migrations = Migrations("clinic")


def utcnow() -> str:
    """Return the current UTC time as ISO-8601 text, the one format stored."""
    return datetime.now(UTC).isoformat(timespec="seconds")


def iso_utc(moment: datetime) -> str:
    """Return `moment` as the stored ISO-8601 UTC text."""
    return moment.astimezone(UTC).isoformat(timespec="seconds")


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
    In a request, a failed write also retires the thread's kept connection (see close_db): one whose
    write failed (a full disk, a file made read-only) can stay failed after the cause is gone.
    """
    db.conn.execute("BEGIN IMMEDIATE")
    try:
        yield db
        db.conn.execute("COMMIT")
    except BaseException as error:
        db.rollback()
        if isinstance(error, sqlite3.Error) and has_request_context() and g.get("db") is db:
            g.db_failed = True  # close_db opens a new one for the thread's next request
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


# Each thread keeps its connection between requests: opening one parses the whole schema
# (triggers, FTS tables), which was most of a POST's cost.
_thread = threading.local()


def file_identity(path: str) -> tuple[int, int] | None:
    """The device and inode of the file at `path`, or None when there is none."""
    try:
        found = os.stat(path)
    except OSError:
        return None
    return found.st_dev, found.st_ino


def get_db() -> Database:
    """Return this thread's connection to the database, opening it again when the file was replaced."""
    if "db" in g:
        return g.db
    path = current_app.config["DATABASE"]
    identity = file_identity(path)
    kept = getattr(_thread, "kept", None)
    if kept is not None and (kept[0] != path or kept[1] != identity or identity is None):
        forget_thread_connection()  # another database, or a file restored or moved in its place
        kept = None
    if kept is None:
        database = connect(path)
        kept = _thread.kept = (path, file_identity(path), database)
    g.db = kept[2]
    return g.db


def close_db(exc: BaseException | None = None) -> None:
    """End the request's use of the connection: roll back anything it left open, and keep it for the next."""
    database = g.pop("db", None)
    if database is None:
        return
    if isinstance(exc, sqlite3.Error) or g.pop("db_failed", False):
        forget_thread_connection()
        return
    try:
        if database.conn.in_transaction:
            database.conn.rollback()
    except sqlite3.Error:
        forget_thread_connection()


def forget_thread_connection() -> None:
    """Close this thread's kept connection, if any (a test or a command that is done with the database)."""
    kept = getattr(_thread, "kept", None)
    _thread.kept = None
    if kept is not None:
        with contextlib.suppress(sqlite3.Error):
            kept[2].close()


def init_app(app: Flask) -> None:
    """Migrate the database and register the teardown and the init-db command."""
    try:
        migrate(app.config["DATABASE"])
    except sqlite3.DatabaseError as error:
        # Start all the same: pages that need no database still show the phone number, and
        # `flask restore` (a command of this app) can put a backup in its place.
        log.error(
            "The database %s cannot be used (%s): restore a backup with `flask --app app restore PATH`",
            app.config["DATABASE"],
            error,
        )
    app.teardown_appcontext(close_db)
    app.cli.add_command(init_db_command)


@click.command("init-db")
@with_appcontext
def init_db_command() -> None:
    """Create or upgrade the database schema."""
    migrate(current_app.config["DATABASE"])
    click.echo(f"Database ready at {current_app.config['DATABASE']}")


def insert_row(db: Database, table: str, row: dict) -> int:
    """Insert one row and return its id: sqlite-utils' insert() costs 60 µs more, on every lead and email."""
    columns = ", ".join(f"[{column}]" for column in row)
    marks = ", ".join("?" for _ in row)
    return db.execute(f"INSERT INTO [{table}] ({columns}) VALUES ({marks})", list(row.values())).lastrowid


# Leads


def add_lead(db: Database, lead: dict, now: str) -> tuple[int, bool]:
    """Store a lead unless its form was sent before; return its id and whether it is new.

    Call inside write(), so the check and the insert cannot interleave with another.
    """
    existing = list(db.query("SELECT id FROM leads WHERE form_id = ?", [lead["form_id"]]))
    if existing:
        return existing[0]["id"], False
    row = {**lead, "created_at": now, "updated_at": now, "status": "spam" if lead.get("is_spam") else "new"}
    return insert_row(db, "leads", row), True


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
    return insert_row(db, "outbox", row)


def claim_due_emails(
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


def defer_waiting_emails(db: Database, now: str, error: str, retry_at: str) -> int:
    """Move every waiting email due before `retry_at` to then, with the reason; return how many moved.

    Emails only: the mail server being down says nothing about the alert and webhook addresses.
    """
    with write(db):
        return db.execute(
            """
        UPDATE outbox SET next_attempt_at = ?, last_error = ?, updated_at = ?
        WHERE status = 'pending' AND next_attempt_at < ? AND channel = 'email'
        """,
            [retry_at, error, now, retry_at],
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


def emails_for_lead(db: Database, lead_id: int) -> list[dict]:
    """Return the emails queued for one lead, oldest first."""
    return list(db.table("outbox").rows_where("lead_id = ?", [lead_id], order_by="id"))


def email_attempts(db: Database, outbox_id: int) -> list[dict]:
    """Return every delivery attempt of one email, oldest first."""
    return list(db.table("email_attempts").rows_where("outbox_id = ?", [outbox_id], order_by="id"))


# Admin: accounts, sessions, sign-in failures, audit, notes, reminders


@migrations()
def m002_admin(db: Database) -> None:
    """Owner accounts, server-side sessions, sign-in failures, the audit log, notes, reminders."""
    db.table("accounts").create(
        {"id": int, "username": str, "password_hash": str, "created_at": str, "updated_at": str},
        pk="id",
        not_null={"username", "password_hash", "created_at", "updated_at"},
    )
    db.table("accounts").create_index(["username"], unique=True)
    db.table("admin_sessions").create(
        {"id": str, "account_id": int, "created_at": str, "last_seen_at": str, "address": str},
        pk="id",
        not_null={"account_id", "created_at", "last_seen_at"},
        foreign_keys=[("account_id", "accounts", "id")],
    )
    db.table("admin_sessions").create_index(["account_id"])
    db.table("login_failures").create({"id": int, "key": str, "at": str}, pk="id", not_null={"key", "at"})
    db.table("login_failures").create_index(["key", "at"])
    db.table("audit_log").create(
        {"id": int, "at": str, "actor": str, "action": str, "lead_id": int, "detail": str, "address": str},
        pk="id",
        not_null={"at", "actor", "action"},
    )
    db.table("audit_log").create_index(["at"])
    db.table("notes").create(
        {"id": int, "lead_id": int, "at": str, "author": str, "body": str},
        pk="id",
        not_null={"lead_id", "at", "author", "body"},
        foreign_keys=[("lead_id", "leads", "id")],
    )
    db.table("notes").create_index(["lead_id"])
    db.table("leads").add_column("reminded_at", str)
    db.table("leads").create_index(["status", "created_at"])


@migrations()
def m003_admin_session_browser(db: Database) -> None:
    """The short name of the browser each admin session signed in from ("Safari on iPhone")."""
    db.table("admin_sessions").add_column("browser", str)


# A random token per account, written into each device cookie it issues: a cookie counts only while its
# token is the account's current one. Rotating it (sign out everywhere, a new password) revokes every
# cookie issued before, whatever the clocks say.
NEW_DEVICE_GENERATION = "lower(hex(randomblob(16)))"


@migrations()
def m011_account_device_generation(db: Database) -> None:
    """Each account's device generation; a fresh one, so device cookies from before it count no more."""
    db.table("accounts").add_column("device_generation", str)
    db.execute(f"UPDATE accounts SET device_generation = {NEW_DEVICE_GENERATION}")


def revoke_devices(db: Database, account_id: int) -> None:
    """Give the account a new device generation, so no device cookie issued before counts (inside a write)."""
    db.execute(f"UPDATE accounts SET device_generation = {NEW_DEVICE_GENERATION} WHERE id = ?", [account_id])


def get_account(db: Database, username: str) -> dict | None:
    """Return the account with this username, or None."""
    rows = list(db.query("SELECT * FROM accounts WHERE username = ?", [username]))
    return rows[0] if rows else None


def count_accounts(db: Database) -> int:
    """Return how many admin accounts exist."""
    return db.table("accounts").count


def set_password(db: Database, username: str, password_hash: str, now: str) -> bool:
    """Create the account or replace its password, ending its sessions and device cookies; return True if created."""
    with write(db):
        account = get_account(db, username)
        if account is None:
            account_id = (
                db.table("accounts")
                .insert({"username": username, "password_hash": password_hash, "created_at": now, "updated_at": now})
                .last_pk
            )
            revoke_devices(db, account_id)
            return True
        db.execute(
            "UPDATE accounts SET password_hash = ?, updated_at = ? WHERE id = ?", [password_hash, now, account["id"]]
        )
        db.execute("DELETE FROM admin_sessions WHERE account_id = ?", [account["id"]])
        revoke_devices(db, account["id"])
        return False


def start_session(db: Database, session_hash: str, account_id: int, address: str, browser: str, now: str) -> None:
    """Record a new signed-in session under the hash of its id, with the browser's short name."""
    with write(db):
        db.table("admin_sessions").insert(
            {
                "id": session_hash,
                "account_id": account_id,
                "created_at": now,
                "last_seen_at": now,
                "address": address,
                "browser": browser,
            }
        )


def session_account(db: Database, session_hash: str, idle_before: str, started_before: str) -> dict | None:
    """Return the session joined with its account's name, unless unknown, idle since `idle_before` or too old."""
    rows = list(
        db.query(
            """
        SELECT s.id AS session_id, s.last_seen_at, a.id, a.username FROM admin_sessions s
        JOIN accounts a ON a.id = s.account_id WHERE s.id = ? AND s.last_seen_at >= ? AND s.created_at >= ?
        """,
            [session_hash, idle_before, started_before],
        )
    )
    return rows[0] if rows else None


def sessions_of_account(db: Database, account_id: int, idle_before: str, started_before: str) -> list[dict]:
    """Return an account's live sessions, the most recently used first."""
    return list(
        db.query(
            """
        SELECT id AS session_id, created_at, last_seen_at, address, browser FROM admin_sessions
        WHERE account_id = ? AND last_seen_at >= ? AND created_at >= ? ORDER BY last_seen_at DESC, created_at DESC
        """,
            [account_id, idle_before, started_before],
        )
    )


def touch_session(db: Database, session_hash: str, now: str) -> None:
    """Note that a session was just used."""
    with write(db):
        db.execute("UPDATE admin_sessions SET last_seen_at = ? WHERE id = ?", [now, session_hash])


def end_session(db: Database, session_hash: str) -> None:
    """Forget a session, so its cookie opens nothing any more."""
    with write(db):
        db.execute("DELETE FROM admin_sessions WHERE id = ?", [session_hash])


def end_account_sessions(db: Database, account_id: int) -> int:
    """Sign out everywhere: end every session of an account and revoke its device cookies; return how many sessions."""
    with write(db):
        revoke_devices(db, account_id)
        return db.execute("DELETE FROM admin_sessions WHERE account_id = ?", [account_id]).rowcount


def end_expired_sessions(db: Database, idle_before: str, started_before: str) -> None:
    """Forget every session idle since before `idle_before` or started before `started_before`."""
    with write(db):
        db.execute("DELETE FROM admin_sessions WHERE last_seen_at < ? OR created_at < ?", [idle_before, started_before])


def add_sign_in_attempt(db: Database, limits: dict[str, int], since: str, now: str) -> tuple[list[int], str | None]:
    """Count a sign-in attempt as a failure under every key unless one already has its limit of them since `since`.

    The check and the record are one BEGIN IMMEDIATE transaction, so parallel attempts cannot all pass
    the check before any is recorded. Returns the new rows' ids (undo them with `forget_sign_in_attempt`
    when the password matches), or no ids and the time of the oldest failure that keeps the key paused.
    """
    with write(db):
        db.execute("DELETE FROM login_failures WHERE at < ?", [since])
        for key, limit in limits.items():
            failures = [
                r["at"]
                for r in db.query("SELECT at FROM login_failures WHERE key = ? AND at >= ? ORDER BY at", [key, since])
            ]
            if len(failures) >= limit:
                return [], failures[-limit]
        table = db.table("login_failures")
        return [table.insert({"key": key, "at": now}).last_pk for key in limits], None


def forget_sign_in_attempt(db: Database, attempt_ids: list[int]) -> None:
    """Remove an attempt's failure rows: the password matched, or it was never checked."""
    with write(db):
        db.execute(f"DELETE FROM login_failures WHERE id IN ({', '.join('?' * len(attempt_ids))})", attempt_ids)


def clear_login_failures(db: Database, key: str) -> None:
    """Forget the failed sign-ins under `key`."""
    with write(db):
        db.execute("DELETE FROM login_failures WHERE key = ?", [key])


def audit(
    db: Database, actor: str, action: str, now: str, lead_id: int | None = None, detail: str = "", address: str = ""
) -> None:
    """Append one line to the audit log: who did what, when, from where."""
    with write(db):
        db.table("audit_log").insert(
            {"at": now, "actor": actor, "action": action, "lead_id": lead_id, "detail": detail, "address": address}
        )


def recent_audit(db: Database, limit: int = 100) -> list[dict]:
    """Return the newest audit lines first."""
    return list(db.query("SELECT * FROM audit_log ORDER BY id DESC LIMIT ?", [limit]))


# Full-text search: leads_fts indexes each lead's name, email, phone and message

FTS_COLUMNS = "name, email, phone, message"
PHONE_DIGITS_MAX = 15  # E.164
# Each index row's rowid is the lead's id * 8 + its status's code, so a search counts its matches per
# status from the index alone, without reading a lead. The index stores these: never renumber them;
# a new status needs a code of its own and a migration that recreates the triggers.
FTS_STATUS_CODES = {"new": 0, "contacted": 1, "booked": 2, "not_interested": 3, "spam": 4}
FTS_OTHER_STATUS = 7


def _phone_suffixes(column: str) -> str:
    """SQL for every tail of the phone's digits, space-separated, so a prefix search matches digits anywhere."""
    digits = column
    for ch in "+ -().":
        digits = f"replace({digits}, '{ch}', '')"
    return " || ' ' || ".join(f"substr({digits}, {start})" for start in range(1, PHONE_DIGITS_MAX - 1))


def _fts_values(row: str) -> str:
    """SQL for the rowid and the indexed columns of the lead `row` (new, old or leads)."""
    codes = " ".join(f"WHEN '{status}' THEN {code}" for status, code in FTS_STATUS_CODES.items())
    rowid = f"{row}.id * 8 + CASE {row}.status {codes} ELSE {FTS_OTHER_STATUS} END"
    return f"{rowid}, {row}.name, {row}.email, {_phone_suffixes(f'{row}.phone')}, {row}.message"


@migrations()
def m004_leads_fts(db: Database) -> None:
    """A full-text index of the leads, kept in step by triggers, and built for the leads already stored."""
    # Contentless (the text stays in leads only): its phone column holds derived digit tails and its
    # rowid the status too, which an external-content table could not read back from leads. Deleting a
    # row needs the indexed values, which the triggers compute from old.* exactly as from new.*.
    db.execute(
        f"""CREATE VIRTUAL TABLE leads_fts USING fts5({FTS_COLUMNS}, content='',
        tokenize='unicode61 remove_diacritics 2', prefix='2 3')"""
    )
    insert = f"INSERT INTO leads_fts (rowid, {FTS_COLUMNS}) VALUES ({_fts_values('new')});"
    delete = f"INSERT INTO leads_fts (leads_fts, rowid, {FTS_COLUMNS}) VALUES ('delete', {_fts_values('old')});"
    db.execute(f"CREATE TRIGGER leads_fts_insert AFTER INSERT ON leads BEGIN {insert} END")
    db.execute(f"CREATE TRIGGER leads_fts_delete AFTER DELETE ON leads BEGIN {delete} END")
    db.execute(
        f"CREATE TRIGGER leads_fts_update AFTER UPDATE OF id, status, {FTS_COLUMNS} ON leads"
        f" BEGIN {delete} {insert} END"
    )
    db.execute(f"INSERT INTO leads_fts (rowid, {FTS_COLUMNS}) SELECT {_fts_values('leads')} FROM leads")


@migrations()
def m005_inbox_counts(db: Database) -> None:
    """What the inbox counts without reading every lead: a count per status kept by triggers; the last delivery."""
    db.table("lead_counts").create({"status": str, "n": int}, pk="status", not_null={"n"})
    add = "INSERT INTO lead_counts (status, n) VALUES (new.status, 1) ON CONFLICT (status) DO UPDATE SET n = n + 1;"
    remove = "UPDATE lead_counts SET n = n - 1 WHERE status = old.status;"
    db.execute(f"CREATE TRIGGER lead_counts_insert AFTER INSERT ON leads BEGIN {add} END")
    db.execute(f"CREATE TRIGGER lead_counts_delete AFTER DELETE ON leads BEGIN {remove} END")
    db.execute(
        "CREATE TRIGGER lead_counts_update AFTER UPDATE OF status ON leads WHEN old.status IS NOT new.status"
        f" BEGIN {remove} {add} END"
    )
    db.execute("INSERT INTO lead_counts (status, n) SELECT status, count(*) FROM leads GROUP BY status")
    db.table("outbox").create_index(["status", "sent_at"])  # the last delivery, for the inbox's email banner


# Admin: the inbox

# Every status a lead can have, in the order the admin shows them, with the label the owner reads.
LEAD_STATUSES = {
    "new": "New",
    "contacted": "Contacted",
    "booked": "Booked",
    "not_interested": "Not interested",
    "spam": "Spam",
}


def like_pattern(text: str) -> str:
    """A LIKE pattern matching `text` anywhere, with % _ and the escape character taken literally."""
    escaped = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


WORD_CHARACTER = re.compile(r"[^\W_]")  # a letter or digit: what FTS5's unicode61 tokenizer keeps
FTS_FEW_MATCHES = 2000  # up to this many matches, fetch them all and sort; above, walk the date index instead


def fts_query(q: str) -> str:
    """The FTS5 query for a search-box text, or '' when the text has no letter or digit.

    Each whitespace-separated word becomes a quoted phrase whose last token is a prefix, so FTS5
    reads quotes, *, -, NEAR, OR, AND, : and parentheses as plain text: `jane@example.com` is
    the phrase "jane example com", and `migr` finds "migraine".
    """
    words = [word for word in q.split() if WORD_CHARACTER.search(word)]
    if not words:
        return ""
    query = " AND ".join('"' + word.replace('"', '""') + '"*' for word in words)
    digits = "".join(ch for ch in q if ch in "0123456789")
    if len(digits) >= 3:  # "949-510" finds the stored +19495106333 (the phone column holds its digit tails)
        query = f'({query}) OR phone : "{digits}"*'
    return query


def _lead_filter(
    q: str, since: str | None, until: str | None, landing_page: str | None = None
) -> tuple[list[str], dict]:
    """WHERE clauses (without status or full-text match) for a search text, a time range and the page leads came from.

    The FTS5 query, if the text has a letter or digit, is returned as params["fts"].
    """
    clauses, params = [], {}
    if query := fts_query(q):
        params["fts"] = query
    elif q:  # only punctuation, which the index does not hold: look for it as it is, row by row
        params["q"] = like_pattern(q)
        fields = ("name", "email", "phone", "message")
        clauses.append("(" + " OR ".join(f"{field} LIKE :q ESCAPE '\\'" for field in fields) + ")")
    if since:
        clauses.append("created_at >= :since")
        params["since"] = since
    if until:
        clauses.append("created_at < :until")
        params["until"] = until
    if landing_page:
        clauses.append("landing_page = :landing_page")
        params["landing_page"] = landing_page
    return clauses, params


def _status_clause(status: str | None) -> str:
    return "status = :status" if status else "status != 'spam'"


def _fts_matches(status: str | None) -> str:
    """SQL for the ids of the leads in `status` (None: all but spam) that the full-text query :fts matches."""
    if status:
        code = f"= {FTS_STATUS_CODES.get(status, FTS_OTHER_STATUS)}"
    else:
        code = f"!= {FTS_STATUS_CODES['spam']}"
    return f"SELECT rowid >> 3 FROM leads_fts WHERE leads_fts MATCH :fts AND rowid & 7 {code}"


def _inbox_where(
    db: Database, status: str | None, q: str, since: str | None, until: str | None, landing_page: str | None = None
) -> tuple[str, dict]:
    """The WHERE clause and parameters of the inbox filter; spam only when `status` is 'spam'."""
    clauses, params = _lead_filter(q, since, until, landing_page)
    params["status"] = status
    if "fts" in params:
        few = f"SELECT count(*) AS n FROM ({_fts_matches(status)} LIMIT {FTS_FEW_MATCHES + 1})"  # stops counting there
        matches = next(db.query(few, params))["n"]
        # Few matches: look each up and sort them. Many: walk the (status,) created_at index from the
        # newest and keep the matches, which finds a page without reading them all (+ forbids the lookup).
        lookup = "" if matches <= FTS_FEW_MATCHES else "+"
        clauses.append(f"{lookup}leads.id IN ({_fts_matches(status)})")
    clauses.append(_status_clause(status))
    return " AND ".join(clauses), params


def search_leads(
    db: Database,
    status: str | None = None,
    q: str = "",
    since: str | None = None,
    until: str | None = None,
    limit: int | None = None,
    offset: int = 0,
    landing_page: str | None = None,
) -> Iterator[dict]:
    """Leads matching the inbox filter, newest first, with their email's status; spam only when `status` is 'spam'."""
    where, params = _inbox_where(db, status, q, since, until, landing_page)
    email_status = "(SELECT status FROM outbox WHERE lead_id = leads.id AND kind = 'lead' ORDER BY id DESC LIMIT 1)"
    sql = f"SELECT *, {email_status} AS email_status FROM leads WHERE {where} ORDER BY created_at DESC, id DESC"
    if limit is not None:
        sql += " LIMIT :limit OFFSET :offset"
        params.update(limit=limit, offset=offset)
    return db.query(sql, params)


def iter_leads_for_export(
    db: Database,
    status: str | None = None,
    q: str = "",
    since: str | None = None,
    until: str | None = None,
    landing_page: str | None = None,
) -> Iterator[dict]:
    """Every lead matching the inbox filter, newest first, read one at a time as the caller goes."""
    where, params = _inbox_where(db, status, q, since, until, landing_page)
    return db.query(f"SELECT * FROM leads WHERE {where} ORDER BY created_at DESC, id DESC", params)


def count_by_status(
    db: Database, q: str = "", since: str | None = None, until: str | None = None, landing_page: str | None = None
) -> dict[str, int]:
    """How many leads match the search in each status."""
    counts = dict.fromkeys(LEAD_STATUSES, 0)
    clauses, params = _lead_filter(q, since, until, landing_page)
    statuses = "status IN (" + ", ".join(f"'{status}'" for status in LEAD_STATUSES) + ")"
    if not q and not clauses:
        rows = db.query("SELECT status, n FROM lead_counts")
    elif not clauses:  # a search alone: the status is in each match's rowid
        by_code = {code: status for status, code in FTS_STATUS_CODES.items()}
        rows = (
            {"status": by_code.get(row["code"]), "n": row["n"]}
            for row in db.query(
                "SELECT rowid & 7 AS code, count(*) AS n FROM leads_fts WHERE leads_fts MATCH :fts GROUP BY code",
                params,
            )
        )
    else:  # one range of the (status, created_at) index per status
        if "fts" in params:
            clauses.append("id IN (SELECT rowid >> 3 FROM leads_fts WHERE leads_fts MATCH :fts)")
        where = " AND ".join([statuses, *clauses])
        rows = db.query(f"SELECT status, count(*) AS n FROM leads WHERE {where} GROUP BY status", params)
    for row in rows:
        if row["status"] in counts:
            counts[row["status"]] = row["n"]
    return counts


def leads_per_period(db: Database, bounds: list[str]) -> list[int]:
    """How many leads that are not spam arrived between each two consecutive times of `bounds`, for the chart."""
    # Ranges of the (status, created_at) index, one per status and period: no lead is read.
    statuses = ", ".join(f"'{status}'" for status in LEAD_STATUSES if status != "spam")
    periods = ", ".join("(?, ?, ?)" for _ in bounds[1:])
    sql = f"""
        WITH periods (i, start, stop) AS (VALUES {periods})
        SELECT i, (
            SELECT count(*) FROM leads WHERE status IN ({statuses}) AND created_at >= start AND created_at < stop
        ) AS n FROM periods
    """
    params = [value for i in range(len(bounds) - 1) for value in (i, bounds[i], bounds[i + 1])]
    return [row["n"] for row in sorted(db.query(sql, params), key=lambda row: row["i"])]


def lead_sources_since(db: Database, since: str) -> dict[str, int]:
    """How many leads that are not spam arrived since `since` from each `utm_source`, for the chart."""
    rows = db.query(
        "SELECT utm_source, count(*) AS n FROM leads WHERE created_at >= ? AND status != 'spam' GROUP BY utm_source",
        [since],
    )
    return {row["utm_source"]: row["n"] for row in rows}


# Admin: one lead


def set_status(db: Database, lead_id: int, status: str, now: str, queue: list[dict] = ()) -> str | None:
    """Change a lead's status (spam flag follows) and queue the outbox rows in `queue` with it.

    Return the old status, or None if no such lead.
    """
    with write(db):
        lead = get_lead(db, lead_id)
        if lead is None:
            return None
        db.execute(
            "UPDATE leads SET status = ?, is_spam = ?, updated_at = ? WHERE id = ?",
            [status, int(status == "spam"), now, lead_id],
        )
        for row in queue:
            enqueue_email(db, row, now)
        return lead["status"]


def add_note(db: Database, lead_id: int, author: str, body: str, now: str, queue: list[dict] = ()) -> None:
    """Append a note to a lead and queue the outbox rows in `queue` with it."""
    with write(db):
        db.table("notes").insert({"lead_id": lead_id, "at": now, "author": author, "body": body})
        db.execute("UPDATE leads SET updated_at = ? WHERE id = ?", [now, lead_id])
        for row in queue:
            enqueue_email(db, row, now)


def notes_for_lead(db: Database, lead_id: int) -> list[dict]:
    """Return a lead's notes, oldest first."""
    return list(db.query("SELECT * FROM notes WHERE lead_id = ? ORDER BY id", [lead_id]))


def delete_lead(db: Database, lead_id: int) -> list[str]:
    """Delete one lead; its notes, emails and attempts go with it (ON DELETE CASCADE).

    Return the Message-IDs of its emails, so their files can go too; empty if there was no such lead.
    """
    with write(db):
        message_ids = [e["message_id"] for e in emails_for_lead(db, lead_id)]
        deleted = db.execute("DELETE FROM leads WHERE id = ?", [lead_id]).rowcount
        return message_ids if deleted else []


# A lead the clinic may not have heard of yet: a delivery of it still waits (e.g. the mail server is down).
UNDELIVERED = (
    "EXISTS (SELECT 1 FROM outbox WHERE outbox.lead_id = leads.id AND outbox.status IN ('pending', 'sending'))"
)


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


def purge_finished_emails_batch(db: Database, before: str, limit: int) -> tuple[int, list[str]]:
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


# Admin: email health and the outbox by hand


def get_email(db: Database, outbox_id: int) -> dict | None:
    """Return one outbox row, or None."""
    try:
        return db.table("outbox").get(outbox_id)
    except NotFoundError:
        return None


def resend_email(db: Database, outbox_id: int, message_id: str, now: str) -> int | None:
    """Send an email again: a waiting one falls due now, any other is queued afresh; return the id to watch."""
    with write(db):
        row = get_email(db, outbox_id)
        if row is None:
            return None
        if row["status"] in ("pending", "sending"):
            db.execute("UPDATE outbox SET next_attempt_at = ?, updated_at = ? WHERE id = ?", [now, now, outbox_id])
            return outbox_id
        if row["status"] == "failed":
            # Taken off the failed list: its copy carries on.
            db.execute("UPDATE outbox SET status = 'resent', updated_at = ? WHERE id = ?", [now, outbox_id])
        fields = ("lead_id", "kind", "channel", "target", "to_addr", "reply_to", "subject", "body_text", "body_html")
        copy = {k: row[k] for k in fields}
        if row["channel"] == "webhook":  # the same event: its webhook-id lets the receiver drop a duplicate
            message_id = row["message_id"]
        return enqueue_email(db, {**copy, "message_id": message_id}, now)


def email_health(db: Database) -> dict:
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
    return {"last_sent_at": last, "troubled": troubled, "waiting": email_counts(db)["waiting"]}


def email_counts(db: Database) -> dict[str, int]:
    """How many emails wait to be sent and how many failed for good (the health check's numbers)."""
    return next(
        db.query(
            """
        SELECT (SELECT count(*) FROM outbox WHERE status IN ('pending', 'sending')) AS waiting,
               (SELECT count(*) FROM outbox WHERE status = 'failed') AS failed
        """
        )
    )


def email_counts_now(path: str) -> dict[str, int]:
    """email_counts() read through a new connection to the file as it is now (one that never creates it)."""
    conn = sqlite3.connect(f"{Path(path).resolve().as_uri()}?mode=rw", uri=True, timeout=BUSY_TIMEOUT_MS / 1000)
    try:
        return email_counts(Database(conn))
    finally:
        conn.close()


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
            enqueue_email(db, email, now)
        return bool(won)


# Housekeeping: the daily backup and retention purge, and what every lead's data hangs on


@migrations()
def m003_lead_data_goes_with_its_lead(db: Database) -> None:
    """Emails, their attempts and notes point at their lead with ON DELETE CASCADE (a table rebuild each)."""
    # Rows whose parent is already gone would fail the new constraint; they belong to nobody.
    db.execute("DELETE FROM email_attempts WHERE outbox_id NOT IN (SELECT id FROM outbox)")
    db.execute("DELETE FROM outbox WHERE lead_id IS NOT NULL AND lead_id NOT IN (SELECT id FROM leads)")
    db.execute("DELETE FROM notes WHERE lead_id NOT IN (SELECT id FROM leads)")
    # outbox first: email_attempts must not point at it with a cascade while it is rebuilt.
    for table, column, parent in (
        ("outbox", "lead_id", "leads"),
        ("email_attempts", "outbox_id", "outbox"),
        ("notes", "lead_id", "leads"),
    ):
        db.table(table).transform(foreign_keys=[ForeignKey(table, column, parent, "id", on_delete="CASCADE")])


@migrations()
def m004_housekeeping(db: Database) -> None:
    """When the daily housekeeping is next due, and a log of each backup and purge."""
    db.table("housekeeping").create(
        {"job": str, "due_at": str, "claimed_at": str, "claimed_by": str}, pk="job", not_null={"due_at"}
    )
    db.table("housekeeping").insert({"job": "daily", "due_at": ""})  # a new site is due at once
    db.table("housekeeping_log").create(
        {
            "id": int,
            "job": str,
            "started_at": str,
            "finished_at": str,
            "ok": int,
            "detail": str,
            "path": str,
            "size_bytes": int,
            "leads": int,
            "actor": str,
        },
        pk="id",
        not_null={"job", "started_at", "finished_at", "ok"},
    )
    db.table("housekeeping_log").create_index(["job", "id"])


@migrations()
def m008_lead_landing_page(db: Database) -> None:
    """The page each lead was sent from (`/` or `/articles/<slug>`); every earlier lead came from `/`."""
    db.table("leads").add_column("landing_page", str)
    db.execute("UPDATE leads SET landing_page = '/'")
    db.table("leads").create_index(["landing_page", "created_at"])


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
        db.table("housekeeping_log").insert(entry)


def last_housekeeping(db: Database, job: str, ok_only: bool = False) -> dict | None:
    """The latest logged run of `job` ('backup' or 'purge'), or of its successful runs only; None if none."""
    where = "job = ? AND ok = 1" if ok_only else "job = ?"
    rows = list(db.query(f"SELECT * FROM housekeeping_log WHERE {where} ORDER BY id DESC LIMIT 1", [job]))
    return rows[0] if rows else None


# Channels: alerts (Apprise), webhooks and the visitor's confirmation ride the outbox beside the emails


@migrations()
def m009_outbox_channels(db: Database) -> None:
    """Each outbox row's channel (email, alert, webhook) and, for alerts and webhooks, which address it goes to."""
    db.table("outbox").add_column("channel", str, not_null_default="email")
    db.table("outbox").add_column("target", str)
    db.table("outbox").create_index(["channel", "status", "next_attempt_at"])  # each sender's claim
    db.table("outbox").create_index(["channel", "target", "status"])
    db.table("outbox").create_index(["kind", "to_addr", "created_at"])  # one confirmation a day per address


# Before m012, an ntfy alert's address and Apprise's errors about it were stored with the topic in full.
STORED_NTFY_ADDRESS = re.compile(r"\bntfys?://[^\s?'\"]*")
STORED_NTFY_ERROR_TOPIC = re.compile(r"(?<=topic ')[a-z0-9_-]+(?=')", re.IGNORECASE)


def _masked_topic(topic: str) -> str:
    """A topic as Apprise masks a token: its first and last character."""
    return f"{topic[0]}...{topic[-1]}" if topic else topic


def _masked_ntfy_address(address: str) -> str:
    """A stored ntfy address with its topics masked; a host of your own stays shown."""
    scheme, _, rest = address.partition("://")
    parts = rest.split("/")
    # ntfy.sh itself was shown as topics only, and a topic is letters, digits, _ and -: a part with more is a host
    # (a bare host name is masked too, which hides nothing secret).
    first_topic = 1 if re.search(r"[.:@\[]", parts[0]) or parts[0] == "localhost" else 0
    return f"{scheme}://" + "/".join(parts[:first_topic] + [_masked_topic(topic) for topic in parts[first_topic:]])


def masked_stored_ntfy(text: str | None) -> str | None:
    """Stored text with each ntfy topic masked, in an address or in an error naming the topic."""
    if not text:
        return text
    text = STORED_NTFY_ERROR_TOPIC.sub(lambda match: _masked_topic(match[0]), text)
    return STORED_NTFY_ADDRESS.sub(lambda match: _masked_ntfy_address(match[0]), text)


@migrations()
def m012_mask_stored_ntfy_topics(db: Database) -> None:
    """Mask the ntfy topics stored in full before: alert addresses, their errors, the audit log's test lines."""
    db.register_function(masked_stored_ntfy, deterministic=True)
    db.execute(
        "UPDATE outbox SET to_addr = masked_stored_ntfy(to_addr), last_error = masked_stored_ntfy(last_error)"
        " WHERE channel = 'alert'"
    )
    db.execute(
        "UPDATE email_attempts SET error = masked_stored_ntfy(error)"
        " WHERE outbox_id IN (SELECT id FROM outbox WHERE channel = 'alert')"
    )
    db.execute("UPDATE audit_log SET detail = masked_stored_ntfy(detail) WHERE action = 'test alert queued'")


def confirmed_addresses_since(db: Database, since: str) -> list[str]:
    """The addresses confirmations were queued for since `since` (at most AUTOREPLY_MAX_PER_HOUR an hour)."""
    sql = "SELECT to_addr FROM outbox WHERE kind = 'autoreply' AND created_at >= ?"
    return [row["to_addr"] for row in db.query(sql, [since])]


def count_confirmations_since(db: Database, since: str) -> int:
    """How many confirmations were queued since `since`."""
    sql = "SELECT count(*) AS n FROM outbox WHERE kind = 'autoreply' AND created_at >= ?"
    return next(db.query(sql, [since]))["n"]


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


# Analytics: visits per day, page and source (no address, user agent or hash is ever stored)

VISIT_KEY = ("day", "page", "source", "medium", "campaign")


@migrations()
def m010_analytics(db: Database) -> None:
    """Page views and unique visitors per day (the clinic's calendar), page and source."""
    db.table("visit_counts").create(
        {"day": str, "page": str, "source": str, "medium": str, "campaign": str, "page_views": int, "visitors": int},
        pk=VISIT_KEY,
        not_null={*VISIT_KEY, "page_views", "visitors"},
        defaults={"medium": "", "campaign": "", "page_views": 0, "visitors": 0},
    )


VISIT_COUNTS = ("page_views", "visitors", "calls", "booking_clicks")


def add_visit_counts(db: Database, rows: list[tuple], max_rows_per_day: int, overflow: str, bounded: set[str]) -> None:
    """Add (day, page, source, medium, campaign, page_views, visitors, calls, booking_clicks) counts to what is
    stored, in one transaction.

    A day makes at most `max_rows_per_day` rows; past that, a new key's counts go to its page's row with
    source `overflow`. Rows of the `bounded` sources (one per page, such as bots or direct) are always made.
    """
    add = (
        "UPDATE visit_counts SET "
        + ", ".join(f"{name} = {name} + ?" for name in VISIT_COUNTS)
        + " WHERE day = ? AND page = ? AND source = ? AND medium = ? AND campaign = ?"
    )
    upsert = (
        f"INSERT INTO visit_counts ({', '.join(VISIT_KEY + VISIT_COUNTS)}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
        f" ON CONFLICT ({', '.join(VISIT_KEY)}) DO UPDATE SET "
        + ", ".join(f"{name} = {name} + excluded.{name}" for name in VISIT_COUNTS)
    )
    marks = ",".join("?" * len(bounded))
    made: dict[str, int] = {}  # rows of each day, bounded sources left out
    with write(db):
        for day, page, source, medium, campaign, *counts in rows:
            if db.conn.execute(add, [*counts, day, page, source, medium, campaign]).rowcount:
                continue
            if source not in bounded:
                if day not in made:
                    sql = f"SELECT count(*) FROM visit_counts WHERE day = ? AND source NOT IN ({marks})"
                    made[day] = db.conn.execute(sql, [day, *bounded]).fetchone()[0]
                if made[day] >= max_rows_per_day:
                    source, medium, campaign = overflow, "", ""
                else:
                    made[day] += 1
            db.conn.execute(upsert, [day, page, source, medium, campaign, *counts])


def purge_visit_counts_batch(db: Database, before_day: str, limit: int) -> int:
    """Delete up to `limit` visit counts of days before `before_day` (an ISO date); return how many."""
    with write(db):
        return db.execute(
            "DELETE FROM visit_counts WHERE rowid IN (SELECT rowid FROM visit_counts WHERE day < ? LIMIT ?)",
            [before_day, limit],
        ).rowcount


def visit_counts(db: Database, first_day: str, last_day: str) -> list[dict]:
    """The stored counts from `first_day` to `last_day` (ISO dates, both included)."""
    return list(
        db.query(
            "SELECT * FROM visit_counts WHERE day BETWEEN ? AND ? ORDER BY day, page, source, medium, campaign",
            [first_day, last_day],
        )
    )


def leads_for_analytics(db: Database, since: str, until: str) -> list[dict]:
    """Time, status, utm tags, referrer and page of the leads that are not spam, received in [since, until)."""
    return list(
        db.query(
            "SELECT created_at, status, utm_source, utm_medium, utm_campaign, referrer, landing_page FROM leads"
            " WHERE created_at >= ? AND created_at < ? AND status != 'spam' ORDER BY created_at",
            [since, until],
        )
    )


@migrations()
def m013_autoreply_skips(db: Database) -> None:
    """Confirmations the hourly limit (AUTOREPLY_MAX_PER_HOUR) skipped, counted per UTC hour."""
    db.table("autoreply_skips").create({"hour": str, "skipped": int}, pk="hour", not_null={"skipped"})
    db.table("outbox").create_index(["kind", "created_at"])  # the confirmations of the last hour and day


# Off-site backups: any change to leads or notes marks the database changed; a snapshot follows
# OFFSITE_DELAY_SECONDS later (offsite.py). After the first change the trigger finds the mark set
# and writes nothing, so a busy minute costs one small UPDATE, not one per post.
OFFSITE_JOBS = ("offsite", "offsite-prune")


@migrations()
def m014_offsite_backups(db: Database) -> None:
    """When the database last changed since an off-site snapshot, the jobs that upload and prune them."""
    db.table("housekeeping").add_column("changed_at", str)
    db.table("housekeeping_log").add_column("snapshot", str)
    for job in OFFSITE_JOBS:
        db.table("housekeeping").insert({"job": job, "due_at": ""})  # a newly configured repository gets one at once
    for table in ("leads", "notes"):
        for event in ("INSERT", "UPDATE", "DELETE"):
            db.execute(
                f"CREATE TRIGGER offsite_{table}_{event.lower()} AFTER {event} ON {table} BEGIN"
                " UPDATE housekeeping SET changed_at = strftime('%Y-%m-%dT%H:%M:%S+00:00', 'now')"
                " WHERE job = 'offsite' AND changed_at IS NULL; END"
            )


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


@migrations()
def m015_calls_and_booking_clicks(db: Database) -> None:
    """Taps on the phone number and clicks on Book online, counted per day, page and source beside the visits."""
    db.table("visit_counts").add_column("calls", int, not_null_default=0)
    db.table("visit_counts").add_column("booking_clicks", int, not_null_default=0)
