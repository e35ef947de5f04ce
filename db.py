"""The database: connections, migrations, and every SQL query the site runs."""

import contextlib
import fcntl
import logging
import sqlite3
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import click
from flask import Flask, current_app, g
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


def ping(db: Database) -> None:
    """Read from the database, raising if it cannot be read."""
    next(db.query("SELECT 1 AS ok"))


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


def _record_attempt(db: Database, outbox_id: int, now: str, error: str | None, updated: int) -> bool:
    """Log the attempt if its email still exists (`updated` rows); a lead deleted mid-send took it away."""
    if updated:
        db.table("email_attempts").insert({"outbox_id": outbox_id, "at": now, "ok": int(error is None), "error": error})
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


def get_account(db: Database, username: str) -> dict | None:
    """Return the account with this username, or None."""
    rows = list(db.query("SELECT * FROM accounts WHERE username = ?", [username]))
    return rows[0] if rows else None


def count_accounts(db: Database) -> int:
    """Return how many admin accounts exist."""
    return db.table("accounts").count


def set_password(db: Database, username: str, password_hash: str, now: str) -> bool:
    """Create the account or replace its password and end its sessions; return True if created."""
    with write(db):
        account = get_account(db, username)
        if account is None:
            db.table("accounts").insert(
                {"username": username, "password_hash": password_hash, "created_at": now, "updated_at": now}
            )
            return True
        db.execute(
            "UPDATE accounts SET password_hash = ?, updated_at = ? WHERE id = ?", [password_hash, now, account["id"]]
        )
        db.execute("DELETE FROM admin_sessions WHERE account_id = ?", [account["id"]])
        return False


def start_session(db: Database, session_hash: str, account_id: int, address: str, now: str) -> None:
    """Record a new signed-in session under the hash of its id."""
    with write(db):
        db.table("admin_sessions").insert(
            {"id": session_hash, "account_id": account_id, "created_at": now, "last_seen_at": now, "address": address}
        )


def session_account(db: Database, session_hash: str, idle_before: str) -> dict | None:
    """Return the session joined with its account's name, unless it is unknown or idle since `idle_before`."""
    rows = list(
        db.query(
            """
        SELECT s.id AS session_id, s.last_seen_at, a.id, a.username FROM admin_sessions s
        JOIN accounts a ON a.id = s.account_id WHERE s.id = ? AND s.last_seen_at >= ?
        """,
            [session_hash, idle_before],
        )
    )
    return rows[0] if rows else None


def touch_session(db: Database, session_hash: str, now: str) -> None:
    """Note that a session was just used."""
    with write(db):
        db.execute("UPDATE admin_sessions SET last_seen_at = ? WHERE id = ?", [now, session_hash])


def end_session(db: Database, session_hash: str) -> None:
    """Forget a session, so its cookie opens nothing any more."""
    with write(db):
        db.execute("DELETE FROM admin_sessions WHERE id = ?", [session_hash])


def end_idle_sessions(db: Database, idle_before: str) -> None:
    """Forget every session idle since before `idle_before`."""
    with write(db):
        db.execute("DELETE FROM admin_sessions WHERE last_seen_at < ?", [idle_before])


def add_login_failure(db: Database, keys: list[str], now: str, forget_before: str) -> None:
    """Record one failed sign-in under each key (account, address); drop records too old to count."""
    with write(db):
        db.execute("DELETE FROM login_failures WHERE at < ?", [forget_before])
        db.table("login_failures").insert_all({"key": key, "at": now} for key in keys)


def login_failures_since(db: Database, key: str, since: str) -> list[str]:
    """Return the times of failed sign-ins under `key` since `since`, oldest first."""
    return [
        r["at"] for r in db.query("SELECT at FROM login_failures WHERE key = ? AND at >= ? ORDER BY at", [key, since])
    ]


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


# Admin: the inbox

LEAD_STATUSES = ("new", "contacted", "booked", "not_interested", "spam")


def like_pattern(text: str) -> str:
    """A LIKE pattern matching `text` anywhere, with % _ and the escape character taken literally."""
    escaped = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


def _lead_filter(q: str, since: str | None, until: str | None) -> tuple[str, dict]:
    """The WHERE clause (without status) for a search text and a time range."""
    clauses, params = ["1 = 1"], {}
    if q:
        params["q"] = like_pattern(q)
        fields = ["name", "email", "phone", "message"]
        clauses_q = [f"{field} LIKE :q ESCAPE '\\'" for field in fields]
        digits = "".join(ch for ch in q if ch.isdigit())
        if len(digits) >= 3:  # "949-510" finds the stored +19495106333
            params["digits"] = f"%{digits}%"
            clauses_q.append("phone LIKE :digits")
        clauses.append("(" + " OR ".join(clauses_q) + ")")
    if since:
        clauses.append("created_at >= :since")
        params["since"] = since
    if until:
        clauses.append("created_at < :until")
        params["until"] = until
    return " AND ".join(clauses), params


def _status_clause(status: str | None) -> str:
    return "status = :status" if status else "status != 'spam'"


def search_leads(
    db: Database,
    status: str | None = None,
    q: str = "",
    since: str | None = None,
    until: str | None = None,
    limit: int | None = None,
    offset: int = 0,
) -> Iterator[dict]:
    """Leads matching the inbox filter, newest first, with their email's status; spam only when `status` is 'spam'."""
    where, params = _lead_filter(q, since, until)
    params["status"] = status
    email_status = "(SELECT status FROM outbox WHERE lead_id = leads.id AND kind = 'lead' ORDER BY id DESC LIMIT 1)"
    sql = (
        f"SELECT *, {email_status} AS email_status FROM leads WHERE {where} AND {_status_clause(status)}"
        " ORDER BY created_at DESC, id DESC"
    )
    if limit is not None:
        sql += " LIMIT :limit OFFSET :offset"
        params.update(limit=limit, offset=offset)
    return db.query(sql, params)


def count_by_status(db: Database, q: str = "", since: str | None = None, until: str | None = None) -> dict[str, int]:
    """How many leads match the search in each status."""
    where, params = _lead_filter(q, since, until)
    counts = dict.fromkeys(LEAD_STATUSES, 0)
    for row in db.query(f"SELECT status, count(*) AS n FROM leads WHERE {where} GROUP BY status", params):
        counts[row["status"]] = row["n"]
    return counts


def lead_times_since(db: Database, since: str) -> list[dict]:
    """Arrival time and source of every lead that is not spam since `since`, for the charts."""
    return list(
        db.query(
            "SELECT created_at, utm_source FROM leads WHERE created_at >= ? AND status != 'spam' ORDER BY created_at",
            [since],
        )
    )


# Admin: one lead


def set_status(db: Database, lead_id: int, status: str, now: str) -> str | None:
    """Change a lead's status (spam flag follows); return the old status, or None if no such lead."""
    with write(db):
        lead = get_lead(db, lead_id)
        if lead is None:
            return None
        db.execute(
            "UPDATE leads SET status = ?, is_spam = ?, updated_at = ? WHERE id = ?",
            [status, int(status == "spam"), now, lead_id],
        )
        return lead["status"]


def add_note(db: Database, lead_id: int, author: str, body: str, now: str) -> None:
    """Append a note to a lead."""
    with write(db):
        db.table("notes").insert({"lead_id": lead_id, "at": now, "author": author, "body": body})
        db.execute("UPDATE leads SET updated_at = ? WHERE id = ?", [now, lead_id])


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


def purge_leads_batch(db: Database, before: str, limit: int) -> tuple[int, list[str]]:
    """Delete up to `limit` of the leads created before `before`, in one short write transaction.

    Their notes, emails and attempts go by cascade. Return how many leads went and the
    Message-IDs of their emails (for the .eml files).
    """
    with write(db):
        ids = [r["id"] for r in db.query("SELECT id FROM leads WHERE created_at < ? LIMIT ?", [before, limit])]
        if not ids:
            return 0, []
        marks = ",".join("?" * len(ids))
        message_ids = [
            r["message_id"] for r in db.query(f"SELECT message_id FROM outbox WHERE lead_id IN ({marks})", ids)
        ]
        count = db.execute(f"DELETE FROM leads WHERE id IN ({marks})", ids).rowcount
        return count, message_ids


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
        copy = {k: row[k] for k in ("lead_id", "kind", "to_addr", "reply_to", "subject", "body_text", "body_html")}
        return enqueue_email(db, {**copy, "message_id": message_id}, now)


def email_health(db: Database) -> dict:
    """Last successful delivery, and the emails waiting with errors or failed for good."""
    last = next(db.query("SELECT max(sent_at) AS at FROM outbox WHERE status = 'sent'"))["at"]
    troubled = list(
        db.query(
            """
        SELECT * FROM outbox WHERE status = 'failed' OR (status IN ('pending', 'sending') AND last_error IS NOT NULL)
        ORDER BY id DESC LIMIT 50
        """
        )
    )
    waiting = next(db.query("SELECT count(*) AS n FROM outbox WHERE status IN ('pending', 'sending')"))["n"]
    return {"last_sent_at": last, "troubled": troubled, "waiting": waiting}


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


# Rate limits: one small file shared by every worker (serving.SQLiteStorage)


def open_rate_store(path: str) -> sqlite3.Connection:
    """Open the rate-limit counters file in autocommit mode, creating its table if needed."""
    conn = sqlite3.connect(path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None, check_same_thread=False)
    conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = OFF")  # counters, not records: losing one on power loss is harmless
    conn.execute(
        "CREATE TABLE IF NOT EXISTS hits (key TEXT PRIMARY KEY, count INTEGER NOT NULL, expires REAL NOT NULL)"
    )
    return conn


def close_rate_store(conn: sqlite3.Connection) -> None:
    """Close a connection from open_rate_store."""
    conn.close()


def rate_hit(conn: sqlite3.Connection, key: str, expiry: float, amount: int, now: float) -> int:
    """Count `amount` hits on `key` in its window (a new one of `expiry` seconds once it ended); return the count."""
    row = conn.execute(
        """
        INSERT INTO hits (key, count, expires) VALUES (:key, :amount, :now + :expiry)
        ON CONFLICT (key) DO UPDATE SET
            count = CASE WHEN expires <= :now THEN :amount ELSE count + :amount END,
            expires = CASE WHEN expires <= :now THEN :now + :expiry ELSE expires END
        RETURNING count
        """,
        {"key": key, "amount": amount, "now": now, "expiry": expiry},
    ).fetchone()
    return row[0]


def rate_count(conn: sqlite3.Connection, key: str, now: float) -> int:
    """Return the hits on `key` in its current window."""
    row = conn.execute("SELECT count FROM hits WHERE key = ? AND expires > ?", [key, now]).fetchone()
    return row[0] if row else 0


def rate_expiry(conn: sqlite3.Connection, key: str) -> float | None:
    """Return when the window of `key` ends (epoch seconds), or None."""
    row = conn.execute("SELECT expires FROM hits WHERE key = ?", [key]).fetchone()
    return row[0] if row else None


def rate_clear(conn: sqlite3.Connection, key: str | None) -> int:
    """Forget the hits on `key`, or on every key when it is None; return how many keys went."""
    if key is None:
        return conn.execute("DELETE FROM hits").rowcount
    return conn.execute("DELETE FROM hits WHERE key = ?", [key]).rowcount


def rate_forget_expired(conn: sqlite3.Connection, now: float) -> int:
    """Drop counters whose window has ended; return how many went."""
    return conn.execute("DELETE FROM hits WHERE expires <= ?", [now]).rowcount


# Housekeeping: the daily backup and retention purge, and what every lead's data hangs on


@migrations()
def m004_lead_data_goes_with_its_lead(db: Database) -> None:
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
def m005_housekeeping(db: Database) -> None:
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
