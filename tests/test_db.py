"""Storage: migrations at start-up, and several processes writing at once."""

import multiprocessing
import sqlite3

from conftest import post_lead

import db
import db.leads
import db.migrations
from app import create_app


def lead(form_id: str) -> dict:
    return {"form_id": form_id, "name": "Jane Doe", "phone": "+19495106333", "is_spam": 0}


def test_schema_is_created_and_upgraded_idempotently(settings):
    create_app(settings)
    app = create_app(settings)  # a restart applies nothing twice
    conn = sqlite3.connect(app.config["DATABASE"])
    applied = [r[0] for r in conn.execute("SELECT name FROM _sqlite_migrations")]
    assert len(applied) == len(set(applied)) > 0
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    columns = {r[1] for r in conn.execute("PRAGMA table_info(leads)")}
    for name in [
        "id",
        "created_at",
        "name",
        "email",
        "phone",
        "message",
        "status",
        "is_spam",
        "utm_source",
        "utm_medium",
        "utm_campaign",
        "referrer",
        "user_agent",
    ]:
        assert name in columns


# sqlite-utils records each migration by name and runs them in the order they are registered, which is not the
# order of their numbers. A renamed or reordered migration runs again, or differently, on a database that exists.
APPLIED_MIGRATIONS = [
    "m001_leads_and_outbox",
    "m002_admin",
    "m003_admin_session_browser",
    "m011_account_device_generation",
    "m004_leads_fts",
    "m005_inbox_counts",
    "m003_lead_data_goes_with_its_lead",
    "m004_housekeeping",
    "m008_lead_landing_page",
    "m009_outbox_channels",
    "m012_mask_stored_ntfy_topics",
    "m010_analytics",
    "m013_autoreply_skips",
    "m014_offsite_backups",
    "m015_calls_and_booking_clicks",
    "m016_lead_language",
    "m017_confirmation_mailbox",
    "m018_recent_search_index",
]


def test_migrations_keep_their_names_and_order_and_new_ones_come_last():
    names = [m.name for m in db.migrations.clinic.pending(db.connect(":memory:"))]
    assert names[: len(APPLIED_MIGRATIONS)] == APPLIED_MIGRATIONS


# The migrations a database made by the site before search, channels, articles and analytics holds.
EARLIER_MIGRATIONS = ["m001_leads_and_outbox", "m002_admin", "m003_lead_data_goes_with_its_lead", "m004_housekeeping"]


def test_a_database_from_an_earlier_version_takes_every_later_migration(settings, tmp_path):
    path = str(tmp_path / "leads.db")
    earlier = db.connect(path)
    db.migrations.clinic.ensure_migrations_table(earlier)
    for name in EARLIER_MIGRATIONS:  # as that version applied them: by these names, in this order
        with earlier.atomic():
            getattr(db.migrations, name)(earlier)
            earlier["_sqlite_migrations"].insert({"migration_set": "clinic", "name": name, "applied_at": "2026-11-20"})
    earlier["leads"].insert({"form_id": "f", "created_at": "x", "updated_at": "x", "name": "Old", "status": "new"})
    earlier.conn.commit()
    earlier.close()

    app = create_app({**settings, "DATABASE": path})
    assert [m.name for m in db.migrations.clinic.pending(db.connect(path))] == []
    assert post_lead(app.test_client(), name="New").status_code == 303
    conn = sqlite3.connect(path)
    assert [r[0] for r in conn.execute("SELECT name FROM leads ORDER BY id")] == ["Old", "New"]
    assert [r[0] for r in conn.execute("SELECT landing_page FROM leads ORDER BY id")] == ["/", "/"]


def test_init_db_command(app):
    result = app.test_cli_runner().invoke(args=["init-db"])
    assert "Database ready" in result.output


def test_form_id_is_unique_in_the_database(app):
    with db.connect(app.config["DATABASE"]) as database:
        with db.write(database):
            assert db.leads.add_lead(database, lead("f1"), db.utcnow()) == (1, True)
        with db.write(database):
            assert db.leads.add_lead(database, lead("f1"), db.utcnow()) == (1, False)
        try:
            database.table("leads").insert({**lead("f1"), "created_at": "x", "updated_at": "x", "status": "new"})
        except sqlite3.IntegrityError:
            pass
        else:
            raise AssertionError("a second row with the same form_id was accepted")


def write_many(path: str, worker: int, count: int) -> None:
    database = db.connect(path)
    for i in range(count):
        with db.write(database):
            db.leads.add_lead(database, lead(f"w{worker}-{i}"), db.utcnow())
            db.leads.count_leads(database)
    database.close()


def test_several_processes_writing_at_once_never_fail(app):
    path = app.config["DATABASE"]
    ctx = multiprocessing.get_context("fork")
    workers = [ctx.Process(target=write_many, args=(path, w, 50)) for w in range(4)]
    for p in workers:
        p.start()
    for p in workers:
        p.join(60)
    assert [p.exitcode for p in workers] == [0, 0, 0, 0]
    with db.connect(path) as database:
        assert db.leads.count_leads(database) == 200
