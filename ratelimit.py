"""The rate-limit counters: a flask-limiter store in one SQLite file that every gunicorn worker shares."""

import sqlite3
import threading
import time
from pathlib import Path

from limits.storage import Storage

BUSY_TIMEOUT_MS = 10_000


class SQLiteStorage(Storage):
    """A flask-limiter store in a SQLite file, so every gunicorn worker counts against the same limit.

    `RATELIMIT_STORAGE_URI = "sqlite:///path/to/ratelimit.db"`; fixed windows only. Defining the
    class registers the `sqlite` scheme with `limits`, so this module must be imported before the
    limiter is bound (extensions.py does).
    """

    STORAGE_SCHEME = ["sqlite"]

    def __init__(self, uri: str | None = None, wrap_exceptions: bool = False, **options):
        super().__init__(uri, wrap_exceptions, **options)
        self.path = str(Path((uri or "").removeprefix("sqlite://")))
        self.local = threading.local()
        self.hits = 0
        open_store(self.path).close()

    @property
    def base_exceptions(self):
        return sqlite3.Error

    def conn(self) -> sqlite3.Connection:
        """This thread's connection (a sqlite3 connection belongs to one thread)."""
        if getattr(self.local, "conn", None) is None:
            self.local.conn = open_store(self.path)
        return self.local.conn

    def incr(self, key: str, expiry: float, amount: int = 1) -> int:
        self.hits += 1
        if self.hits % 1000 == 0:  # ended windows would otherwise stay in the file for good
            forget_ended(self.conn(), time.time())
        return count_hit(self.conn(), key, expiry, amount, time.time())

    def get(self, key: str) -> int:
        return hits_in_window(self.conn(), key, time.time())

    def get_expiry(self, key: str) -> float:
        return window_end(self.conn(), key) or time.time()

    def check(self) -> bool:
        try:
            hits_in_window(self.conn(), "", time.time())
        except self.base_exceptions:
            return False
        return True

    def reset(self) -> int | None:
        return forget(self.conn(), None)

    def clear(self, key: str) -> None:
        forget(self.conn(), key)


def open_store(path: str) -> sqlite3.Connection:
    """Open the counters file in autocommit mode, creating its table if needed."""
    conn = sqlite3.connect(path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None, check_same_thread=False)
    conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = OFF")  # counters, not records: losing one on power loss is harmless
    conn.execute(
        "CREATE TABLE IF NOT EXISTS hits (key TEXT PRIMARY KEY, count INTEGER NOT NULL, expires REAL NOT NULL)"
    )
    return conn


def count_hit(conn: sqlite3.Connection, key: str, expiry: float, amount: int, now: float) -> int:
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


def hits_in_window(conn: sqlite3.Connection, key: str, now: float) -> int:
    """Return the hits on `key` in its current window."""
    row = conn.execute("SELECT count FROM hits WHERE key = ? AND expires > ?", [key, now]).fetchone()
    return row[0] if row else 0


def window_end(conn: sqlite3.Connection, key: str) -> float | None:
    """Return when the window of `key` ends (epoch seconds), or None."""
    row = conn.execute("SELECT expires FROM hits WHERE key = ?", [key]).fetchone()
    return row[0] if row else None


def forget(conn: sqlite3.Connection, key: str | None) -> int:
    """Forget the hits on `key`, or on every key when it is None; return how many keys went."""
    if key is None:
        return conn.execute("DELETE FROM hits").rowcount
    return conn.execute("DELETE FROM hits WHERE key = ?", [key]).rowcount


def forget_ended(conn: sqlite3.Connection, now: float) -> int:
    """Drop counters whose window has ended; return how many went."""
    return conn.execute("DELETE FROM hits WHERE expires <= ?", [now]).rowcount
