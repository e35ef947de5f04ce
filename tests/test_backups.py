"""Backups and restore, through the real `flask` command line and the real gunicorn."""

import hashlib
import os
import re
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
from http.cookiejar import CookieJar
from pathlib import Path

import pytest
from conftest import OWNER_PASSWORD, csrf_token, rows

import db
import db.leads

ROOT = Path(__file__).resolve().parent.parent


def flask(data_dir, *args: str, stdin: str = "", env: dict | None = None) -> subprocess.CompletedProcess:
    """Run `flask --app app ARGS` as the owner would on the server, for the site in `data_dir`."""
    env = {**os.environ, "DATA_DIR": str(data_dir), "SECRET_KEY": "live-test", **(env or {})}
    command = [str(Path(sys.executable).with_name("flask")), "--app", "app", *args]
    return subprocess.run(command, cwd=ROOT, env=env, input=stdin, capture_output=True, text=True, timeout=60)


def add_leads(path: str, prefix: str, count: int) -> None:
    database = db.connect(path)
    with db.write(database):
        for i in range(count):
            db.leads.add_lead(
                database, {"form_id": f"{prefix}-{i}", "name": f"{prefix} {i}", "is_spam": 0}, db.utcnow()
            )
    database.close()


def names(path) -> set[str]:
    conn = sqlite3.connect(path)
    found = {r[0] for r in conn.execute("SELECT name FROM leads")}
    conn.close()
    return found


def fingerprint(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def written_to(output: str) -> Path:
    return Path(re.search(r"Backup written to (\S+):", output).group(1))


def test_backup_while_eight_threads_write_holds_every_lead_committed_before_it(app):
    path = app.config["DATABASE"]
    committed: list[str] = []
    stop = threading.Event()

    def visitor(n: int) -> None:
        database = db.connect(path)
        database.execute("PRAGMA wal_autocheckpoint = 0")  # the leads stay in the -wal, as between checkpoints
        i = 0
        while not stop.is_set():
            try:
                with db.write(database):
                    db.leads.add_lead(
                        database, {"form_id": f"t{n}-{i}", "name": f"t{n}-{i}", "is_spam": 0}, db.utcnow()
                    )
            except sqlite3.OperationalError:  # a write that outwaited the busy timeout (a visitor sees the 503
                continue  # page): nothing was committed, so nothing is expected
            committed.append(f"t{n}-{i}")  # only once the commit returned
            i += 1
            stop.wait(0.005)  # a very busy site (up to 1,600 leads a second), not a loop that never lets go
        database.close()

    threads = [threading.Thread(target=visitor, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    try:
        while len(committed) < 400:
            time.sleep(0.01)
        before = set(committed)
        result = flask(app.config["DATA_DIR"], "backup")
        during = len(committed) - len(before)
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert result.returncode == 0, result.stderr
    backup = written_to(result.stdout)
    assert re.fullmatch(r"leads-\d{4}-\d{2}-\d{2}.*\.db", backup.name)
    assert backup.parent == Path(app.config["DATA_DIR"]) / "backups"
    assert oct(backup.stat().st_mode & 0o777) == "0o600"
    assert oct(backup.parent.stat().st_mode & 0o777) == "0o700"
    held = names(backup)
    assert before <= held, f"{len(before - held)} committed leads missing"
    assert f"{len(held)} lead(s)" in result.stdout
    assert during > 0, "the visitors kept writing while the backup ran"
    conn = sqlite3.connect(backup)
    assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    conn.close()
    assert [r["ok"] for r in rows(app, "SELECT ok FROM housekeeping_log WHERE job = 'backup'")] == [1]


def test_backup_to_a_path_of_your_choice(app, tmp_path):
    add_leads(app.config["DATABASE"], "kept", 3)
    result = flask(app.config["DATA_DIR"], "backup", "--to", str(tmp_path / "copy.db"))
    assert result.returncode == 0, result.stderr
    assert f"Backup written to {tmp_path / 'copy.db'}: 3 lead(s)" in result.stdout
    assert names(tmp_path / "copy.db") == {"kept 0", "kept 1", "kept 2"}
    again = flask(app.config["DATA_DIR"], "backup", "--to", str(tmp_path / "copy.db"))
    assert again.returncode == 1 and "already exists" in again.stderr


def sign_in_and_read_inbox(url: str) -> str:
    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(CookieJar()))
    page = opener.open(url + "/admin/login").read().decode()
    form = {"username": "owner", "password": OWNER_PASSWORD, "csrf_token": csrf_token(page)}
    return opener.open(url + "/admin/login", data=urllib.parse.urlencode(form).encode()).read().decode()


def test_restore_brings_the_leads_back_into_a_fresh_site(app, tmp_path, serve):
    made = app.test_cli_runner().invoke(args=["create-admin", "owner"], input=OWNER_PASSWORD + "\n")
    assert made.exit_code == 0
    add_leads(app.config["DATABASE"], "Restored Person", 30)
    backup = written_to(flask(app.config["DATA_DIR"], "backup").stdout)

    fresh = tmp_path / "new-server"
    fresh.mkdir(mode=0o700)
    result = flask(fresh, "restore", str(backup))
    assert result.returncode == 0, result.stderr
    assert "The server must be stopped" in result.stdout
    assert f"Restored 30 lead(s) from {backup}" in result.stdout
    kept = re.search(r"The previous database is kept as (\S+)\.", result.stdout).group(1)
    assert names(kept) == set()  # the fresh site's empty database, kept all the same
    assert oct((fresh / "leads.db").stat().st_mode & 0o777) == "0o600"

    server = serve({"DATA_DIR": str(fresh)})
    inbox = sign_in_and_read_inbox(server.url)
    assert "30 requests" in inbox
    assert "Restored Person 29" in inbox


@pytest.mark.parametrize(
    "kind, message",
    [
        ("garbage", "cannot be read as an SQLite database"),
        ("damaged backup", "fails SQLite's integrity check"),
        ("foreign database", "not this site's"),
    ],
)
def test_restore_refuses_a_bad_file_and_leaves_the_database_alone(app, tmp_path, kind, message):
    add_leads(app.config["DATABASE"], "Current", 5)
    candidate = tmp_path / "candidate.db"
    if kind == "garbage":
        candidate.write_bytes(os.urandom(20_000))
    elif kind == "foreign database":
        other = sqlite3.connect(candidate)
        other.execute("CREATE TABLE photos (id INTEGER PRIMARY KEY, caption TEXT)")
        other.commit()
        other.close()
    else:
        add_leads(app.config["DATABASE"], "Filler " + "x" * 500, 300)
        assert flask(app.config["DATA_DIR"], "backup", "--to", str(candidate)).returncode == 0
        data = bytearray(candidate.read_bytes())
        page = 4096
        data[page * 3 + 8 : page * 3 + 400] = os.urandom(392)  # scribble over a b-tree page
        candidate.write_bytes(bytes(data))
    database = Path(app.config["DATABASE"])
    before = fingerprint(database)
    result = flask(app.config["DATA_DIR"], "restore", str(candidate))
    assert result.returncode == 1
    assert message in result.stderr and "Nothing was changed" in result.stderr
    assert fingerprint(database) == before
    assert not list(database.parent.glob("*before-restore*"))


def test_restore_refuses_while_the_server_runs(app, serve):
    backup = written_to(flask(app.config["DATA_DIR"], "backup").stdout)
    server = serve({"DATA_DIR": app.config["DATA_DIR"]})
    database = Path(app.config["DATABASE"])
    before = fingerprint(database)
    result = flask(app.config["DATA_DIR"], "restore", str(backup))
    assert result.returncode == 1
    assert "server is running" in result.stderr
    assert fingerprint(database) == before
    server.stop()
    assert flask(app.config["DATA_DIR"], "restore", str(backup)).returncode == 0


def test_restore_replaces_a_database_sqlite_cannot_read_and_keeps_it(app):
    add_leads(app.config["DATABASE"], "Saved", 4)
    backup = written_to(flask(app.config["DATA_DIR"], "backup").stdout)
    database = Path(app.config["DATABASE"])
    for leftover in database.parent.glob("leads.db-*"):
        leftover.unlink()
    database.write_bytes(os.urandom(8192))  # the disk went bad
    broken = fingerprint(database)
    result = flask(app.config["DATA_DIR"], "restore", str(backup))
    assert result.returncode == 0, result.stderr
    assert "Restored 4 lead(s)" in result.stdout
    assert names(database) == {f"Saved {i}" for i in range(4)}
    [kept] = database.parent.glob("leads-before-restore-*.db")
    assert fingerprint(kept) == broken
