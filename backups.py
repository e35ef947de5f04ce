"""Backups of the leads database: taken online, checked, kept for BACKUP_KEEP_DAYS, and restored."""

import contextlib
import fcntl
import itertools
import logging
import os
import re
import sqlite3
import time
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import click

import db
import db.housekeeping
import progress

log = logging.getLogger("clinic.backups")

NAME = re.compile(r"leads-(\d{4}-\d{2}-\d{2}).*\.db")
SERVER_LOCK = "server.lock"
STEP_PAGES = 1024  # pages copied per step of a backup that shows its progress


def megabytes(size: int) -> str:
    return f"{size / 1e6:,.0f} MB"


class BackupError(Exception):
    """A backup could not be made, or a file cannot be restored; the message says why."""


def backup_dir(config: dict) -> Path:
    """The folder the daily backups go to: $DATA_DIR/backups."""
    return Path(config["DATA_DIR"]) / "backups"


def create_private(path: Path) -> None:
    """Create `path` as an empty file only its owner can read (0600 from the first moment)."""
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    os.chmod(path, 0o600)  # the process umask may have kept bits back; never added any


def copy_database(source: str, target: Path, every: float | None = None) -> int:
    """Copy the SQLite file `source` into the new file `target` and check the copy; return its leads.

    SQLite's online backup API copies inside one read transaction held for the whole copy, so the
    copy is one snapshot while visitors keep writing (in WAL mode writers do not wait for it). With
    `every`, it shows how far it is (see progress.shown). Raise BackupError when the source cannot
    be read, the copy fails PRAGMA integrity_check, or it is not this site's database.
    """
    create_private(target)
    try:
        src = sqlite3.connect(source, timeout=db.BUSY_TIMEOUT_MS / 1000, isolation_level=None)
        dst = sqlite3.connect(target)
        try:
            # Copied a few MB per step, each step in the snapshot this transaction holds (a step outside
            # one would start the copy again whenever a visitor wrote in between).
            src.execute("BEGIN")
            page_size, pages = (src.execute(f"PRAGMA {name}").fetchone()[0] for name in ("page_size", "page_count"))
            size = pages * page_size
            shown = progress.shown("Copying the database", size, every, megabytes) if every is not None else None
            with shown or contextlib.nullcontext(lambda n: None) as advance:
                left = [pages]

                def copied(status: int, remaining: int, total: int) -> None:
                    advance((left[0] - remaining) * page_size)
                    left[0] = remaining

                src.backup(dst, pages=STEP_PAGES, progress=copied)
            src.execute("COMMIT")
            if every is not None:
                click.echo("Checking the copy (SQLite's integrity check)...")
            dst.execute("PRAGMA journal_mode = DELETE")  # one self-contained file, no -wal beside it
            problems = [row[0] for row in dst.execute("PRAGMA integrity_check")]
            if problems != ["ok"]:
                raise BackupError(f"it fails SQLite's integrity check: {'; '.join(problems[:3])}")
            tables = {row[0] for row in dst.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            if not {"leads", "outbox", "_sqlite_migrations"} <= tables:
                raise BackupError("it is an SQLite database, but not this site's: it has no leads and outbox tables")
            return dst.execute("SELECT count(*) FROM leads").fetchone()[0]
        finally:
            dst.close()
            src.close()
    except sqlite3.Error as error:
        target.unlink(missing_ok=True)
        raise BackupError(f"it cannot be read as an SQLite database ({error})") from None
    except BackupError:
        target.unlink(missing_ok=True)
        raise


def backup_name(now: datetime) -> str:
    """A backup's file name, dated so a listing sorts by age: leads-2026-11-29T091500Z.db."""
    return f"leads-{now.astimezone(UTC):%Y-%m-%dT%H%M%SZ}.db"


def make_backup(config: dict, now: datetime, to: Path | None = None, every: float | None = None) -> dict:
    """Back the database up to `to` or into $DATA_DIR/backups; return its path, size and number of leads.

    The copy is written beside its final name and renamed only once it passed the checks, so
    a file named leads-*.db is always a good backup.
    """
    if to is not None and to.is_dir():
        to = to / backup_name(now)
    if to is None:
        folder = backup_dir(config)
        folder.mkdir(mode=0o700, exist_ok=True)
        to = folder / backup_name(now)
        for n in range(2, 100):  # two backups in one second (the daily one and one by hand)
            if not to.exists():
                break
            to = folder / backup_name(now).replace(".db", f"-{n}.db")
    if to.exists():
        raise BackupError(f"{to} already exists; choose another name")
    partial = to.with_name(f".{to.name}.partial")
    partial.unlink(missing_ok=True)
    try:
        leads = copy_database(config["DATABASE"], partial, every)
        os.replace(partial, to)
        return {"path": str(to), "size_bytes": to.stat().st_size, "leads": leads}
    except (BackupError, OSError) as error:
        raise BackupError(f"The database could not be backed up to {to}: {error}") from None


def prune_backups(config: dict, today: date) -> list[Path]:
    """Delete the backups in $DATA_DIR/backups dated more than BACKUP_KEEP_DAYS ago; return them.

    Called after a good backup, so the newest one always stays.
    """
    oldest_kept = today - timedelta(days=max(1, config["BACKUP_KEEP_DAYS"]) - 1)
    removed = []
    for path in backup_dir(config).glob(".leads-*.partial"):  # left by a worker stopped mid-backup
        if path.stat().st_mtime < time.time() - 3600:
            path.unlink(missing_ok=True)
    for path in sorted(backup_dir(config).glob("leads-*.db")):
        match = NAME.fullmatch(path.name)
        if match and date.fromisoformat(match.group(1)) < oldest_kept:
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed


def hold_server_lock(config: dict):
    """Take this server process's shared lock on $DATA_DIR/server.lock and keep it until it exits.

    `restore` needs the lock exclusively, so it cannot replace the database under a running server.
    """
    path = Path(config["DATA_DIR"]) / SERVER_LOCK
    handle = open(os.open(path, os.O_RDWR | os.O_CREAT, 0o600))  # noqa: SIM115 - held for the process's life
    fcntl.flock(handle, fcntl.LOCK_SH)
    return handle


@contextlib.contextmanager
def server_stopped(config: dict) -> Iterator[None]:
    """Hold the server lock exclusively for the block; raise BackupError while a server process holds it."""
    path = Path(config["DATA_DIR"]) / SERVER_LOCK
    with open(os.open(path, os.O_RDWR | os.O_CREAT, 0o600)) as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise BackupError(
                "The site's server is running. Stop it first (e.g. `sudo systemctl stop clinic-site`), "
                "run restore again, then start it."
            ) from None
        yield


def restore(config: dict, source: Path, now: datetime, every: float | None = None) -> dict:
    """Replace the database with the backup `source`, keeping the current one as a dated copy.

    Nothing changes unless `source` is a sound copy of this site's database and no server runs.
    Return the number of leads restored and where the previous database was kept.
    """
    if not source.is_file():
        raise BackupError(f"{source} is not a file: nothing was changed.")
    database = Path(config["DATABASE"])
    stamp = f"{now.astimezone(UTC):%Y-%m-%dT%H%M%SZ}"
    with server_stopped(config):
        incoming = database.with_name(f".{database.name}.restoring")
        incoming.unlink(missing_ok=True)
        try:
            leads = copy_database(str(source), incoming, every)
        except BackupError as error:
            raise BackupError(f"{source} cannot be restored: {error}. Nothing was changed.") from None
        kept = keep_aside(database, stamp) if database.exists() else None
        os.replace(incoming, database)
        db.migrate(str(database))
    return {"leads": leads, "kept": kept}


def keep_aside(database: Path, stamp: str) -> Path:
    """Move the database to a name no file has had: leads-before-restore-STAMP.db, else -2, -3 ...; return it.

    Moved as files, -wal included, so even a database SQLite cannot read any more is kept whole. Each
    name is taken with a hard link, which fails when the name exists, so no earlier copy is ever overwritten.
    """
    for number in itertools.count(1):
        kept = database.with_name(f"{database.stem}-before-restore-{stamp}{f'-{number}' if number > 1 else ''}.db")
        if Path(f"{kept}-wal").exists() or Path(f"{kept}-shm").exists():
            continue
        try:
            os.link(database, kept)
        except FileExistsError:
            continue
        for suffix in ("-wal", "-shm"):
            current = Path(f"{database}{suffix}")
            if current.exists():
                os.link(current, f"{kept}{suffix}")
        for suffix in ("", "-wal", "-shm"):
            Path(f"{database}{suffix}").unlink(missing_ok=True)
        return kept


def log_job(database, job: str, started: datetime, actor: str, result: dict | None, error: str | None) -> None:
    """Record one backup, off-site snapshot or prune in the housekeeping log (the status page, banners, `check`)."""
    entry = {
        "job": job,
        "started_at": db.iso_utc(started),
        "finished_at": db.utcnow(),
        "ok": int(error is None),
        "detail": error,
        "actor": actor,
    }
    try:
        db.housekeeping.log_housekeeping(database, {**entry, **(result or {})})
    except sqlite3.OperationalError as failure:  # e.g. writers held the lock past the busy timeout
        # The job's work stands; only the status page will not list it.
        log.warning(
            "%s %s: could not record it in the housekeeping log: %s", job, error and "failed" or "done", failure
        )


def backup_and_log(
    database, config: dict, now: datetime, actor: str, to: Path | None = None, every: float | None = None
) -> dict:
    """Make a backup, prune old ones when it went to $DATA_DIR/backups, and log it; raise BackupError on failure."""
    try:
        result = make_backup(config, now, to, every)
    except BackupError as error:
        log_job(database, "backup", now, actor, None, str(error))
        raise
    log_job(database, "backup", now, actor, result, None)
    if to is None:
        prune_backups(config, now.astimezone(UTC).date())
    return result
