"""The database: connecting, the write transaction, each thread's connection, migrating, and inserting a row.

Queries live in one module per concern beside this one (leads, search, outbox, accounts, housekeeping, visits).
"""

import contextlib
import fcntl
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import click
from flask import Flask, current_app, g, has_request_context
from flask.cli import with_appcontext
from sqlite_utils import Database

from db.migrations import clinic

BUSY_TIMEOUT_MS = 10_000

log = logging.getLogger("clinic.db")


def utcnow() -> str:
    """Return the current UTC time as ISO-8601 text, the one format stored."""
    return datetime.now(UTC).isoformat(timespec="seconds")


def iso_utc(moment: datetime) -> str:
    """Return `moment` as the stored ISO-8601 UTC text."""
    return moment.astimezone(UTC).isoformat(timespec="seconds")


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
    with writers_turn(db):
        db.conn.execute("BEGIN IMMEDIATE")
        try:
            yield db
        except BaseException as error:
            write_failed(db, error)
            raise
    # Committed once the next writer may go: a commit can go on to copy the log into the database file
    # (a checkpoint, with an fsync), after it has let go of SQLite's lock; the next writer need not wait.
    try:
        db.conn.execute("COMMIT")
    except BaseException as error:
        write_failed(db, error)
        raise


def write_failed(db: Database, error: BaseException) -> None:
    """Roll the write back; in a request, a database error also retires the thread's connection."""
    db.rollback()
    if isinstance(error, sqlite3.Error) and has_request_context() and g.get("db") is db:
        g.db_failed = True  # close_db opens a new one for the thread's next request


# SQLite's own wait for the write lock sleeps 1, 2, 5 ... up to 100 ms between tries, and misses
# the moments the lock is free. Our writers queue here first, so each is woken as the one before it commits.
_writers: dict[tuple[int, str], threading.Lock] = {}
_writers_guard = threading.Lock()


def threads_lock(path: str) -> threading.Lock:
    """This process's lock on writing the database at `path`, for its threads."""
    key = (os.getpid(), path)  # a forked worker makes its own
    with _writers_guard:
        return _writers.setdefault(key, threading.Lock())


@contextlib.contextmanager
def writers_turn(db: Database) -> Iterator[None]:
    """Wait, at most the busy timeout, until no other thread or process of this site is writing `db`."""
    path = db.conn.execute("PRAGMA database_list").fetchone()[2]
    if not path:  # an in-memory database has one connection
        yield
        return
    deadline = time.monotonic() + BUSY_TIMEOUT_MS / 1000
    threads = threads_lock(path)
    if not threads.acquire(timeout=BUSY_TIMEOUT_MS / 1000):
        raise sqlite3.OperationalError("database is locked")
    try:
        with other_processes_out(path, deadline):
            yield
    finally:
        threads.release()


@contextlib.contextmanager
def other_processes_out(path: str, deadline: float) -> Iterator[None]:
    """Hold the lock on `<database>.write-lock`, waiting until `deadline` at most; where that file cannot be
    made (a read-only directory), SQLite's own wait is left to keep the other processes out."""
    try:
        fd = os.open(path + ".write-lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError:
        fd = None
    if fd is None:
        yield
        return
    try:
        while True:  # one thread of each process waits here; the other's write is short
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise sqlite3.OperationalError("database is locked") from None
                time.sleep(0.0005)
        yield
    finally:
        os.close(fd)  # and with it the lock


def migrate(path: str) -> None:
    """Create or upgrade the schema and turn WAL on; safe with several workers starting."""
    lock_path = Path(path).with_name(Path(path).name + ".migrate-lock")
    with open(lock_path, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        db = connect(path)
        try:
            db.enable_wal()
            clinic.apply(db)
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


def reopen_db() -> Database:
    """Close this thread's connection and return a new one (after a write failed on it)."""
    g.pop("db", None)
    g.pop("db_failed", None)
    forget_thread_connection()
    return get_db()


def close_db(exc: BaseException | None = None) -> None:
    """End the request's use of the connection: roll back anything it left open, and keep it for the next."""
    database = g.pop("db", None)
    if database is None:
        return
    vars(database).pop("kept_newest_matches", None)  # a search's matches serve one request (db.search)
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
