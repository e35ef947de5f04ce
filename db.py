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
            ORDER BY next_attempt_at, id LIMIT :limit
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


def defer_waiting_emails(db: Database, now: str, error: str, retry_at: str) -> int:
    """Move every waiting email due before `retry_at` to then, with the reason; return how many moved."""
    with write(db):
        return db.execute(
            """
        UPDATE outbox SET next_attempt_at = ?, last_error = ?, updated_at = ?
        WHERE status = 'pending' AND next_attempt_at < ?
        """,
            [retry_at, error, now, retry_at],
        ).rowcount


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


@migrations()
def m008_lead_landing_page(db: Database) -> None:
    """The page each lead was sent from (`/` or `/articles/<slug>`); every earlier lead came from `/`."""
    db.table("leads").add_column("landing_page", str)
    db.execute("UPDATE leads SET landing_page = '/'")
    db.table("leads").create_index(["landing_page", "created_at"])


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
    """Forget every session of an account (sign out everywhere); return how many there were."""
    with write(db):
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


def _lead_filter(q: str, since: str | None, until: str | None, landing_page: str | None = None) -> tuple[str, dict]:
    """The WHERE clause (without status) for a search text, a time range and the page leads were sent from."""
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
    if landing_page:
        clauses.append("landing_page = :landing_page")
        params["landing_page"] = landing_page
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
    landing_page: str | None = None,
) -> Iterator[dict]:
    """Leads matching the inbox filter, newest first, with their email's status; spam only when `status` is 'spam'."""
    where, params = _lead_filter(q, since, until, landing_page)
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


def count_by_status(
    db: Database, q: str = "", since: str | None = None, until: str | None = None, landing_page: str | None = None
) -> dict[str, int]:
    """How many leads match the search in each status."""
    where, params = _lead_filter(q, since, until, landing_page)
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


def _delete_leads_where(db: Database, where: str, params: list) -> int:
    """Delete the matching leads with their notes, emails and attempts; call inside write()."""
    ids = f"SELECT id FROM leads WHERE {where}"
    db.execute(
        f"DELETE FROM email_attempts WHERE outbox_id IN (SELECT id FROM outbox WHERE lead_id IN ({ids}))", params
    )
    db.execute(f"DELETE FROM outbox WHERE lead_id IN ({ids})", params)
    db.execute(f"DELETE FROM notes WHERE lead_id IN ({ids})", params)
    return db.execute(f"DELETE FROM leads WHERE {where}", params).rowcount


def delete_lead(db: Database, lead_id: int) -> bool:
    """Delete one lead with its notes and emails; return True if it existed."""
    with write(db):
        return _delete_leads_where(db, "id = ?", [lead_id]) == 1


def purge_leads(db: Database, before: str) -> int:
    """Delete every lead created before `before` with its notes and emails; return how many."""
    with write(db):
        return _delete_leads_where(db, "created_at < ?", [before])


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
