"""Off-site backups with restic: encrypted snapshots soon after each change, pruned daily, restored by one command."""

import contextlib
import json
import logging
import os
import re
import shutil
import socket
import subprocess
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

from flask import Flask

import backups
import db
import db.housekeeping

log = logging.getLogger("clinic.offsite")

JOB = "offsite"
PRUNE_JOB = "offsite-prune"
TAG = "clinic-site"
FILENAME = "leads.db"
EVERY = timedelta(days=1)  # a snapshot at least this often, and a prune
STALE_AFTER = timedelta(days=1)  # the inbox banner's threshold
POLL_SECONDS = 5.0
MAX_RETRY = timedelta(hours=1)
UPLOAD_TIMEOUT = 3600  # seconds restic may take to back up, prune or download before it is stopped
PROBE_TIMEOUT = 60  # ... to answer `flask check`
LOCKED = "unlock` command can be used to remove stale locks"
SNAPSHOT_ID = re.compile(r"[0-9a-f]{8,64}|latest")


class OffsiteError(Exception):
    """restic failed, or the off-site backups are not set up; the message says why (secrets masked)."""


def enabled(config: dict) -> bool:
    """Whether an off-site repository is configured."""
    return bool(config["RESTIC_REPOSITORY"])


def masked(text: str) -> str:
    """`text` with the password of any user:password@ in it replaced by ***."""
    return re.sub(r"(://[^/:@\s]+:)[^@\s]+@", r"\1***@", text)


def restic_env(config: dict) -> dict:
    """The environment restic runs with: the repository, its key and the backend's variables, nothing else."""
    env = dict(config["RESTIC_ENV"])
    for name in ("RESTIC_REPOSITORY", "RESTIC_PASSWORD_FILE", "RESTIC_PASSWORD"):
        if config[name]:
            env[name] = config[name]
    env.setdefault("RESTIC_CACHE_DIR", str(Path(config["DATA_DIR"]) / "restic-cache"))  # data/ is writable
    return env


def describe(stderr: str) -> str:
    """restic's complaint, in words that say what to do about it."""
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    fatal = next((line for line in lines if line.startswith("Fatal:")), lines[-1] if lines else "no message")
    text = stderr.lower()
    if LOCKED in stderr:
        return f"the repository is locked by another restic: {masked(lines[0])}"
    if "wrong password" in text:
        return "the key (RESTIC_PASSWORD_FILE or RESTIC_PASSWORD) does not open the repository"
    if any(
        sign in text
        for sign in ("dial tcp", "connection refused", "no such host", "timeout", "unreachable", "connection reset")
    ):
        return f"the repository cannot be reached ({masked(fatal)})"
    if any(sign in text for sign in ("does not exist", "no such file", "is there a repository", "nosuchbucket")):
        return "the repository was never initialised: run `flask --app app backup --offsite --init`"
    return masked(fatal)


def restic(config: dict, args: list[str], stdin=None, stdout=subprocess.PIPE, timeout: float = UPLOAD_TIMEOUT):
    """Run `restic ARGS` with the site's settings; return its standard output, or raise OffsiteError.

    A lock left by a restic that was killed (a server lost or stopped mid-upload) is removed with
    `restic unlock`, which only removes stale locks, and the command runs once more.
    """
    if not enabled(config):
        raise OffsiteError('RESTIC_REPOSITORY is not set: see README, "Off-site backups"')
    program = shutil.which("restic", path=config["RESTIC_ENV"].get("PATH"))
    if program is None:
        raise OffsiteError("restic is not installed: `apt-get install restic`")
    for attempt in (1, 2):
        try:
            done = subprocess.run(
                [program, *args],
                env=restic_env(config),
                stdin=stdin if stdin is not None else subprocess.DEVNULL,
                stdout=stdout,
                stderr=subprocess.PIPE,
                timeout=timeout,
                check=False,
            )
        except subprocess.TimeoutExpired:
            raise OffsiteError(f"restic {args[0]} took longer than {timeout} s and was stopped") from None
        stderr = done.stderr.decode(errors="replace")
        if done.returncode == 0:
            return done.stdout.decode(errors="replace") if done.stdout is not None else ""
        if attempt == 1 and LOCKED in stderr:
            subprocess.run(
                [program, "unlock"], env=restic_env(config), capture_output=True, timeout=timeout, check=False
            )
            for stream in (stdin, stdout):
                if hasattr(stream, "seek"):  # the database copy read again, the download written again
                    stream.seek(0)
                    if stream is stdout:
                        stream.truncate()
            continue
        raise OffsiteError(describe(stderr))


def snapshot(config: dict) -> dict:
    """Send an online copy of the database to the repository; return the snapshot id, its size and its leads.

    The copy is made as `flask backup` makes it (SQLite's backup API, integrity check) into a
    private file in DATA_DIR, which is unlinked before restic reads it from the open descriptor:
    no copy stays on disk, and none is left if the process dies mid-upload.
    """
    copy = Path(config["DATA_DIR"]) / f".offsite-{os.getpid()}-{threading.get_ident()}.db"
    copy.unlink(missing_ok=True)
    try:
        leads = backups.copy_database(config["DATABASE"], copy)
        with open(copy, "rb") as data:
            copy.unlink()
            size = os.fstat(data.fileno()).st_size
            args = ["backup", "--stdin", "--stdin-filename", FILENAME, "--tag", TAG, "--json", "--quiet"]
            output = restic(config, args, stdin=data)
    except backups.BackupError as error:
        raise OffsiteError(f"the database could not be copied: {error}") from None
    finally:
        copy.unlink(missing_ok=True)
    summary = next((item for item in map(json.loads, output.splitlines()) if item.get("message_type") == "summary"), {})
    return {"snapshot": summary.get("snapshot_id", "?"), "size_bytes": size, "leads": leads}


def snapshots(config: dict) -> list[dict]:
    """The site's snapshots in the repository, oldest first: id, short id, time."""
    found = json.loads(restic(config, ["snapshots", "--no-lock", "--json", "--tag", TAG]) or "[]")
    return sorted(
        ({"id": item["id"], "short_id": item["short_id"], "time": item["time"]} for item in found),
        key=lambda item: item["time"],
    )


def init(config: dict) -> None:
    """Create the repository, encrypted with the key (repository format 2: compressed)."""
    restic(config, ["init", "--repository-version", "2"])


def forget(config: dict) -> None:
    """Keep hourly snapshots for 48 hours and daily ones for OFFSITE_KEEP_DAYS; delete the rest and their data.

    Run right after a snapshot, once a day, so "relative to the latest snapshot" means "to now" and
    a snapshot is gone at most OFFSITE_KEEP_DAYS after it was taken. `--max-unused 0` rewrites
    every pack that holds any deleted data, so none of it is kept for packing's sake.
    """
    days = max(1, config["OFFSITE_KEEP_DAYS"] - 1)  # plus up to a day until the next daily prune
    policy = ["--keep-within-hourly", "48h", "--keep-within-daily", f"{days}d"]
    restic(config, ["forget", "--prune", "--max-unused", "0", "--tag", TAG, "--group-by", "tags", *policy])


def problem(config: dict) -> str | None:
    """Why off-site backups cannot work right now (restic missing, repository unreachable, wrong key,
    not initialised), or None when they can or none are configured."""
    if not enabled(config):
        return None
    key_file = config["RESTIC_PASSWORD_FILE"]
    if key_file and not config["RESTIC_PASSWORD"]:
        try:
            mode = Path(key_file).stat().st_mode & 0o777
        except OSError as error:
            return f"RESTIC_PASSWORD_FILE {key_file} cannot be read ({error.strerror})"
        if mode & 0o077:
            return (
                f"RESTIC_PASSWORD_FILE {key_file} is open to other users (mode {mode:04o}): run `chmod 600 {key_file}`"
            )
    try:
        restic(config, ["cat", "--no-lock", "config"], timeout=PROBE_TIMEOUT)
    except OffsiteError as error:
        return str(error)
    return None


def download(config: dict, snapshot_id: str, target: Path) -> None:
    """Write the database in the snapshot `snapshot_id` ('latest': the newest) to the new private file `target`."""
    if not SNAPSHOT_ID.fullmatch(snapshot_id):
        raise OffsiteError(f"{snapshot_id!r} is not a snapshot id: see `flask --app app backup --offsite --list`")
    backups.create_private(target)
    try:
        with open(target, "wb") as out:
            restic(config, ["dump", "--no-lock", "--tag", TAG, snapshot_id, f"/{FILENAME}"], stdout=out)
    except BaseException:
        target.unlink(missing_ok=True)
        raise


def restore(config: dict, snapshot_id: str, now: datetime) -> dict:
    """Replace the database with the one in an off-site snapshot, as `backups.restore` does with a file."""
    with backups.server_stopped(config):
        pass  # refuse before downloading anything; backups.restore checks again while it replaces the file
    incoming = Path(config["DATA_DIR"]) / f".offsite-restore-{os.getpid()}.db"
    incoming.unlink(missing_ok=True)
    download(config, snapshot_id, incoming)
    try:
        return backups.restore(config, incoming, now)
    finally:
        incoming.unlink(missing_ok=True)


def snapshot_and_log(database, config: dict, now: datetime, actor: str) -> dict:
    """Take a snapshot and log it; raise OffsiteError on failure."""
    try:
        result = snapshot(config)
    except OffsiteError as error:
        backups.log_job(database, JOB, now, actor, None, str(error))
        raise
    backups.log_job(database, JOB, now, actor, result, None)
    return result


def retry_after(failures: int, config: dict) -> timedelta:
    """How long to wait after `failures` failed snapshots in a row: the delay, doubled each time, at most an hour."""
    base = max(1.0, config["OFFSITE_DELAY_SECONDS"])
    return min(MAX_RETRY, timedelta(seconds=base * 2 ** min(failures - 1, 20)))


def run_due(database, config: dict, now: datetime, who: str) -> bool:
    """Take the off-site snapshot if it is due and this process wins it, then the daily prune; True if it tried."""
    changed_before = now - timedelta(seconds=config["OFFSITE_DELAY_SECONDS"])
    if not db.housekeeping.claim_offsite_snapshot(
        database, db.iso_utc(now), db.iso_utc(changed_before), db.iso_utc(now + EVERY), who
    ):
        return False
    was_failing = db.housekeeping.housekeeping_failures_in_a_row(database, JOB) > 0
    try:
        result = snapshot_and_log(database, config, now, "housekeeping")
    except OffsiteError as error:
        failures = db.housekeeping.housekeeping_failures_in_a_row(database, JOB)
        wait = retry_after(failures, config)
        db.housekeeping.set_housekeeping_due(database, JOB, db.iso_utc(now + wait))
        if not was_failing:  # once per outage; the status page keeps the latest error
            log.error("off-site backup failed: %s; trying again with backoff (at most hourly) until it works", error)
        return True
    if was_failing:
        log.info("off-site backup works again: snapshot %s", result["snapshot"])
    if db.housekeeping.claim_housekeeping(database, PRUNE_JOB, db.iso_utc(now), db.iso_utc(now + EVERY), who):
        try:
            forget(config)
            backups.log_job(database, PRUNE_JOB, now, "housekeeping", None, None)
        except OffsiteError as error:
            backups.log_job(database, PRUNE_JOB, now, "housekeeping", None, str(error))
            db.housekeeping.set_housekeeping_due(database, PRUNE_JOB, db.iso_utc(now + MAX_RETRY))
            log.warning("off-site prune failed: %s; trying again in an hour", error)
    return True


def run(app: Flask, stop: threading.Event) -> None:
    """Every few seconds, send a snapshot off-site if one is due, until `stop` is set."""
    who = f"{socket.gethostname()}:{os.getpid()}"
    poll = min(POLL_SECONDS, app.config["HOUSEKEEPING_POLL_SECONDS"])
    while not stop.wait(poll):
        try:
            with contextlib.closing(db.connect(app.config["DATABASE"])) as database:
                run_due(database, app.config, datetime.now(UTC), who)
        except Exception:
            log.exception("off-site backup hit an error; trying again at the next check")


def start(app: Flask) -> threading.Event | None:
    """Start this server process's off-site thread when a repository is configured; set the event to stop it."""
    if not enabled(app.config):
        return None
    stop = threading.Event()
    threading.Thread(target=run, args=(app, stop), name="offsite", daemon=True).start()
    return stop


def alarm(database, config: dict, now: datetime) -> str | None:
    """Why the off-site backups need the owner's attention, or None (also when none are configured).

    The last good snapshot is more than a day old, or attempts failed and none ever succeeded.
    """
    if not enabled(config):
        return None
    last = db.housekeeping.last_housekeeping(database, JOB)
    if last is None:
        return None
    error = f" (last error: {last['detail']})" if not last["ok"] else ""
    good = last if last["ok"] else db.housekeeping.last_housekeeping(database, JOB, ok_only=True)
    if good is None:
        return f"no off-site backup has been made yet{error}"
    age = now - datetime.fromisoformat(good["finished_at"])
    if age <= STALE_AFTER:
        return None
    return f"the last good off-site backup is {age.days * 24 + age.seconds // 3600} hours old{error}"


def status(database, config: dict, now: datetime) -> dict:
    """The last snapshot, the last good one, the last prune, the masked repository and any alarm (status page)."""
    return {
        "repository": masked(config["RESTIC_REPOSITORY"] or ""),
        "last": db.housekeeping.last_housekeeping(database, JOB),
        "last_good": db.housekeeping.last_housekeeping(database, JOB, ok_only=True),
        "last_prune": db.housekeeping.last_housekeeping(database, PRUNE_JOB),
        "changed_at": db.housekeeping.offsite_changed_at(database),
        "alarm": alarm(database, config, now),
        "keep_days": config["OFFSITE_KEEP_DAYS"],
    }
