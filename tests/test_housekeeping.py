"""The server's daily backup and retention purge, batched purges, and lead data that goes with its lead."""

import asyncio
import sqlite3
import subprocess
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from datetime import UTC, datetime, timedelta
from http.cookiejar import CookieJar
from pathlib import Path

from aiosmtpd.controller import Controller
from conftest import Inbox, drain, form_fields, free_port, post_lead, rows, valid_lead
from test_backups import flask

import db
import db.accounts
import db.leads
import db.migrations
import db.outbox
import outbox.email
from app import create_app


def wait_until(condition, timeout: float = 30, what: str = "the condition") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def add_old_and_recent(path: str, old: int, recent: int, old_age: timedelta, prefix: str = "") -> None:
    """Leads `old_age` old and leads from today, each with a note, a sent email and its delivery attempt."""
    database = db.connect(path)
    now = datetime.now(UTC)
    with db.write(database):
        for kind, count, created in (("old", old, now - old_age), ("recent", recent, now - timedelta(hours=1))):
            stamp = db.iso_utc(created)
            start = database.execute("SELECT coalesce(max(id), 0) FROM leads").fetchone()[0] + 1
            ids = range(start, start + count)
            database.table("leads").insert_all(
                {"id": i, "form_id": f"{prefix}{kind}-{i}", "name": f"{prefix}{kind} {i}", "created_at": stamp,
                 "updated_at": stamp, "status": "new", "is_spam": 0} for i in ids)  # fmt: skip
            database.table("notes").insert_all(
                {"lead_id": i, "at": stamp, "author": "owner", "body": "called"} for i in ids
            )
            database.table("outbox").insert_all(
                {"id": i, "lead_id": i, "kind": "lead", "message_id": f"<{prefix}{kind}-{i}@clinic-site>",
                 "to_addr": "owner@clinic.example", "subject": "s", "body_text": "b", "status": "sent",
                 "attempts": 1, "created_at": stamp} for i in ids)  # fmt: skip
            database.table("email_attempts").insert_all({"outbox_id": i, "at": stamp, "ok": 1} for i in ids)
    database.close()


def write_eml_files(config: dict) -> None:
    """The .eml file of every stored email, as a site without MAIL_SERVER keeps them."""
    Path(config["DATA_DIR"], "mail").mkdir(exist_ok=True)
    for row in rows_of(config, "SELECT message_id FROM outbox"):
        outbox.email.eml_path(row["message_id"], config).write_text("email")


def rows_of(config: dict, sql: str) -> list[dict]:
    conn = sqlite3.connect(config["DATABASE"])
    conn.row_factory = sqlite3.Row
    found = [dict(r) for r in conn.execute(sql)]
    conn.close()
    return found


def test_two_workers_make_exactly_one_backup_and_one_purge_a_day(settings, serve, tmp_path):
    site = tmp_path / "site"
    app = create_app({**settings, "DATA_DIR": str(site), "LEAD_RETENTION_DAYS": 30})
    add_old_and_recent(app.config["DATABASE"], old=20, recent=5, old_age=timedelta(days=31))
    server = serve({"DATA_DIR": str(site), "LEAD_RETENTION_DAYS": "30", "HOUSEKEEPING_POLL_SECONDS": "0.2"}, workers=2)
    purges = "SELECT * FROM housekeeping_log WHERE job = 'purge'"
    wait_until(lambda: len(rows(app, purges)) == 1, what="the first purge")
    time.sleep(2)  # ten more checks by each worker: neither may do the day's work again
    backups = sorted((site / "backups").glob("leads-*.db"))
    assert len(backups) == 1
    assert [r["ok"] for r in rows(app, "SELECT ok FROM housekeeping_log WHERE job = 'backup'")] == [1]
    assert len(rows(app, purges)) == 1
    assert sorted(r["name"] for r in rows(app, "SELECT name FROM leads")) == [f"recent {i}" for i in range(21, 26)]
    assert len(rows_of({"DATABASE": str(backups[0])}, "SELECT id FROM leads")) == 25  # taken before the purge

    # A day later (the clock moved on: the job falls due again), with more leads past retention.
    add_old_and_recent(app.config["DATABASE"], old=7, recent=0, old_age=timedelta(days=30, hours=1), prefix="b")
    rows(app, "UPDATE housekeeping SET due_at = ?", [db.iso_utc(datetime.now(UTC) - timedelta(seconds=1))])
    wait_until(lambda: len(rows(app, purges)) == 2, what="the second purge")
    time.sleep(2)
    assert len(list((site / "backups").glob("leads-*.db"))) == 2
    assert len(rows(app, "SELECT * FROM housekeeping_log WHERE job = 'backup'")) == 2
    assert len(rows(app, purges)) == 2
    assert [r["detail"] for r in rows(app, purges)] == [
        "20 lead(s) older than 30 days, 0 finished email(s), 0 audit line(s)",
        "7 lead(s) older than 30 days, 0 finished email(s), 0 audit line(s)",
    ]
    assert len(rows(app, "SELECT name FROM leads")) == 5
    assert server.output().count("backup written to") == 2


def test_status_page_shows_the_last_backup_and_purge_and_warns_when_they_fail(app, owner, tmp_path):
    page = owner.get("/admin/status").get_data(as_text=True)
    assert "none yet" in page and "Backups need attention" not in page
    assert owner.get("/admin").get_data(as_text=True).count("Backups need attention") == 0
    add_old_and_recent(app.config["DATABASE"], old=3, recent=2, old_age=timedelta(days=400))
    assert flask(app.config["DATA_DIR"], "backup").returncode == 0
    assert flask(app.config["DATA_DIR"], "purge-leads").returncode == 0
    page = owner.get("/admin/status").get_data(as_text=True)
    assert "5 requests" in page and " MB" in page
    assert "3 lead(s) older than 365 days" in page
    assert "Backups need attention" not in page

    failed = flask(app.config["DATA_DIR"], "backup", "--to", str(tmp_path / "no-such-folder" / "x.db"))
    assert failed.returncode == 1
    for path in ("/admin/status", "/admin"):
        page = owner.get(path).get_data(as_text=True)
        assert "Backups need attention:</strong> the last backup failed" in page

    assert flask(app.config["DATA_DIR"], "backup").returncode == 0
    assert "Backups need attention" not in owner.get("/admin").get_data(as_text=True)
    three_days_ago = db.iso_utc(datetime.now(UTC) - timedelta(days=3))
    rows(app, "UPDATE housekeeping_log SET finished_at = ?", [three_days_ago])
    assert "the last good backup is 3 days old" in owner.get("/admin").get_data(as_text=True)


def test_old_backups_are_pruned_after_a_good_one(app):
    folder = Path(app.config["DATA_DIR"]) / "backups"
    folder.mkdir()
    today = datetime.now(UTC).date()
    for age in (0, 13, 14, 30):
        (folder / f"leads-{today - timedelta(days=age)}T010000Z.db").write_bytes(b"")
    (folder / "notes.txt").write_text("not a backup")
    assert flask(app.config["DATA_DIR"], "backup").returncode == 0
    kept = sorted(p.name for p in folder.iterdir())
    assert len(kept) == 4 and "notes.txt" in kept
    assert f"leads-{today - timedelta(days=13)}T010000Z.db" in kept
    assert f"leads-{today - timedelta(days=14)}T010000Z.db" not in kept


def test_backup_keep_days_from_the_environment_sets_how_many_days_stay(app):
    folder = Path(app.config["DATA_DIR"]) / "backups"
    folder.mkdir()
    today = datetime.now(UTC).date()
    for age in (1, 2, 3):
        (folder / f"leads-{today - timedelta(days=age)}T010000Z.db").write_bytes(b"")
    assert flask(app.config["DATA_DIR"], "backup", env={"BACKUP_KEEP_DAYS": "3"}).returncode == 0
    kept = sorted(p.name[:16] for p in folder.iterdir())  # today's new one and the two days before it
    assert kept == [f"leads-{today - timedelta(days=age)}" for age in (2, 1, 0)]


def test_purge_also_removes_old_audit_lines_and_finished_emails(app):
    database = db.connect(app.config["DATABASE"])
    old = db.iso_utc(datetime.now(UTC) - timedelta(days=400))
    db.accounts.audit(database, "owner", "signed in", old)
    db.accounts.audit(database, "owner", "signed in", db.utcnow())
    email = {"lead_id": None, "kind": "test", "to_addr": "a@b", "subject": "s", "body_text": "b"}
    for status in ("sent", "failed", "resent", "pending"):
        outbox_id = db.outbox.enqueue(database, {**email, "message_id": f"<{status}@x>"}, old)
        database.execute("UPDATE outbox SET status = ? WHERE id = ?", [status, outbox_id])
        database.conn.commit()
    database.close()
    result = flask(app.config["DATA_DIR"], "purge-leads")
    assert result.returncode == 0, result.stderr
    assert [r["status"] for r in rows(app, "SELECT status FROM outbox")] == ["pending"]
    assert [r["at"] > old for r in rows(app, "SELECT at FROM audit_log")] == [True, True]  # now's, and the purge's


def post_without_following(url: str, name: str) -> tuple[int, float]:
    """A visitor: open the page, send the form; return the status of the POST and how long it took."""

    class Stay(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *args, **kwargs):
            return None

    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(CookieJar()), Stay)
    fields = form_fields(opener.open(url + "/").read().decode())
    data = urllib.parse.urlencode({**fields, **valid_lead(name=name)}).encode()
    started = time.monotonic()
    try:
        opener.open(url + "/contact", data=data, timeout=30)
        status = 200
    except urllib.error.HTTPError as answer:
        status = answer.code
    return status, time.monotonic() - started


def test_purge_of_thousands_in_batches_while_visitors_keep_posting(settings, serve, tmp_path):
    site = tmp_path / "site"
    app = create_app({**settings, "DATA_DIR": str(site)})
    add_old_and_recent(app.config["DATABASE"], old=3000, recent=100, old_age=timedelta(days=400))
    write_eml_files(app.config)
    server = serve({"DATA_DIR": str(site), "CONTACT_RATE_LIMIT": "100000 per minute"})
    posted: list[tuple[str, int, float]] = []
    stop = threading.Event()

    def visitor() -> None:
        while not stop.is_set():
            name = f"Live {len(posted)}"
            posted.append((name, *post_without_following(server.url, name)))

    thread = threading.Thread(target=visitor)
    thread.start()
    try:
        wait_until(lambda: len(posted) >= 3, what="the first posts")
        purge = subprocess.Popen(
            [*flask_command(), "purge-leads", "--older-than", "365"],
            cwd=ROOT, env=flask_env(site), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        during_start = len(posted)
        out, err = purge.communicate(timeout=120)
        during = len(posted) - during_start
    finally:
        stop.set()
        thread.join()
    assert purge.returncode == 0, err
    assert "Deleted 3000 lead(s) received more than 365 days ago" in out
    assert during > 0, "visitors posted while the purge ran"
    assert {status for _, status, _ in posted} == {303}
    names = {r["name"] for r in rows(app, "SELECT name FROM leads")}
    assert names == {f"recent {i}" for i in range(3001, 3101)} | {name for name, _, _ in posted}
    assert rows(app, "SELECT count(*) AS n FROM notes") == [{"n": 100}]
    assert rows(app, "SELECT count(*) AS n FROM outbox WHERE lead_id NOT IN (SELECT id FROM leads)") == [{"n": 0}]
    assert rows(app, "SELECT count(*) AS n FROM email_attempts WHERE outbox_id < 3001") == [{"n": 0}]
    left = {p.name for p in (site / "mail").glob("*.eml")}
    assert not {n for n in left if n.startswith("old-")}
    assert {f"recent-{i}_clinic-site.eml" for i in range(3001, 3101)} <= left
    print(f"longest POST /contact during the purge: {max(t for _, _, t in posted) * 1000:.0f} ms")


ROOT = Path(__file__).resolve().parent.parent


def flask_command() -> list[str]:
    import sys

    return [str(Path(sys.executable).with_name("flask")), "--app", "app"]


def flask_env(data_dir) -> dict:
    import os

    return {**os.environ, "DATA_DIR": str(data_dir), "SECRET_KEY": "live-test"}


def test_migration_gives_an_existing_database_cascading_deletes(tmp_path):
    path = str(tmp_path / "leads.db")
    database = db.connect(path)
    db.migrations.clinic.apply(database, stop_before=db.migrations.m003_lead_data_goes_with_its_lead.__name__)
    with db.write(database):
        lead_id, _ = db.leads.add_lead(database, {"form_id": "f", "name": "Before", "is_spam": 0}, db.utcnow())
        email = {"lead_id": lead_id, "kind": "lead", "to_addr": "a@b", "subject": "s", "body_text": "b"}
        outbox_id = db.outbox.enqueue(database, {**email, "message_id": "<1@x>"}, db.utcnow())
        db.outbox._record_attempt(database, outbox_id, db.utcnow(), None, 1)
        db.outbox.enqueue(database, {**email, "lead_id": 99, "message_id": "<orphan@x>"}, db.utcnow())
        database.table("notes").insert({"lead_id": lead_id, "at": db.utcnow(), "author": "o", "body": "n"})
    database.close()
    db.migrate(path)
    config = {"DATABASE": path}
    assert [r["message_id"] for r in rows_of(config, "SELECT message_id FROM outbox")] == ["<1@x>"]
    database = db.connect(path)
    assert db.leads.delete_lead(database, lead_id) == ["<1@x>"]
    database.close()
    for table in ("leads", "outbox", "email_attempts", "notes"):
        assert rows_of(config, f"SELECT * FROM {table}") == []


class HeldInbox(Inbox):
    """An SMTP server that holds each message until the test lets it through."""

    def __init__(self):
        super().__init__()
        self.receiving = threading.Event()
        self.release = threading.Event()

    async def handle_DATA(self, server, session, envelope):
        self.receiving.set()
        await asyncio.get_running_loop().run_in_executor(None, self.release.wait, 10)
        return await super().handle_DATA(server, session, envelope)


def test_a_lead_deleted_while_its_email_is_sent_leaves_nothing_behind(settings, caplog):
    inbox = HeldInbox()
    controller = Controller(inbox, hostname="127.0.0.1", port=free_port())
    controller.start()
    try:
        app = create_app({**settings, "MAIL_SERVER": "127.0.0.1", "MAIL_PORT": controller.port})
        post_lead(app.test_client())
        sender = threading.Thread(target=drain, args=(app,))
        sender.start()
        assert inbox.receiving.wait(10)
        database = db.connect(app.config["DATABASE"])
        assert db.leads.delete_lead(database, 1)  # the owner deletes it meanwhile
        database.close()
        inbox.release.set()
        sender.join(20)
    finally:
        controller.stop()
    for table in ("leads", "outbox", "email_attempts"):
        assert rows(app, f"SELECT * FROM {table}") == []
    assert not [r for r in caplog.records if r.levelname in ("ERROR", "CRITICAL")]


def test_a_lead_deleted_while_its_email_file_is_written_leaves_no_file(app, client, monkeypatch):
    post_lead(client)
    write_eml = outbox.email.write_eml

    def write_then_owner_deletes(message, config):
        where = write_eml(message, config)
        database = db.connect(config["DATABASE"])
        db.leads.delete_lead(database, 1)  # the owner deletes the lead the moment its file is written
        database.close()
        return where

    monkeypatch.setattr(outbox.email, "write_eml", write_then_owner_deletes)
    assert drain(app) == 0
    assert list((Path(app.config["DATA_DIR"]) / "mail").glob("*.eml")) == []
    assert rows(app, "SELECT * FROM outbox") == [] and rows(app, "SELECT * FROM email_attempts") == []


def test_the_daily_run_leaves_only_the_newest_leads_in_the_recent_search_index(app, monkeypatch):
    import db.search
    import housekeeping

    monkeypatch.setattr(db.search, "FTS_NEWEST_IDS", 5)
    for i in range(12):
        post_lead(app.test_client(), name=f"Visitor {i}", message="migraine since spring")
    database = db.connect(app.config["DATABASE"])
    recent = "SELECT count(*) FROM leads_fts_recent WHERE leads_fts_recent MATCH 'migraine'"
    assert database.execute(recent).fetchone() == (12,)
    assert housekeeping.run_daily(database, {**app.config, "LEAD_RETENTION_DAYS": 0}, datetime.now(UTC), "test")
    assert database.execute(recent).fetchone() == (5,)
    assert [r["name"] for r in db.search.search_leads(database, q="migraine")][-1] == "Visitor 0"  # all still found
    database.close()
