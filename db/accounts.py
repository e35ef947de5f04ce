"""Admin accounts, their sessions and device generation, sign-in failures, and the audit log."""

from sqlite_utils import Database

from db import insert_row, write

# A random token per account, written into each device cookie it issues: a cookie counts only while its
# token is the account's current one. Rotating it (sign out everywhere, a new password) revokes every
# cookie issued before, whatever the clocks say.
NEW_DEVICE_GENERATION = "lower(hex(randomblob(16)))"


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
            new = {"username": username, "password_hash": password_hash, "created_at": now, "updated_at": now}
            account_id = insert_row(db, "accounts", new)
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
        insert_row(
            db,
            "admin_sessions",
            {
                "id": session_hash,
                "account_id": account_id,
                "created_at": now,
                "last_seen_at": now,
                "address": address,
                "browser": browser,
            },
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
        return [insert_row(db, "login_failures", {"key": key, "at": now}) for key in limits], None


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
        line = {"at": now, "actor": actor, "action": action, "lead_id": lead_id, "detail": detail, "address": address}
        insert_row(db, "audit_log", line)


def recent_audit(db: Database, limit: int = 100) -> list[dict]:
    """Return the newest audit lines first."""
    return list(db.query("SELECT * FROM audit_log ORDER BY id DESC LIMIT ?", [limit]))
