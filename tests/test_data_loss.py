"""Housekeeping that never loses data: no lead purged before the clinic heard of it, no restore overwriting a copy."""

import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path

from conftest import OWNER_PASSWORD, add_lead, free_port, post_lead, rows, sign_in

import backups
import db
import housekeeping
from app import create_app


def test_the_retention_purge_keeps_a_lead_whose_email_still_waits(settings):
    closed = free_port()  # nothing listens: the notification waits, as it should, for days
    app = create_app({**settings, "MAIL_SERVER": "127.0.0.1", "MAIL_PORT": closed, "LEAD_RETENTION_DAYS": 30})
    client = app.test_client()
    post_lead(client, name="Waiting Walter")
    long_ago = db.iso_utc(datetime.now(UTC) - timedelta(days=40))
    with sqlite3.connect(app.config["DATABASE"]) as conn:
        conn.execute("UPDATE leads SET created_at = ?", [long_ago])
        conn.execute("UPDATE outbox SET created_at = ?", [long_ago])
    add_lead(app, datetime.now(UTC) - timedelta(days=40), name="Delivered Dora")  # nothing of hers waits
    database = db.connect(app.config["DATABASE"])
    assert housekeeping.run_daily(database, app.config, datetime.now(UTC), "test")
    assert [r["name"] for r in rows(app, "SELECT name FROM leads")] == ["Waiting Walter"]
    assert [r["status"] for r in rows(app, "SELECT status FROM outbox")] == ["pending"]
    assert (
        "1 lead(s) kept past the retention period: not yet delivered"
        in housekeeping.status(database, datetime.now(UTC))["last_purge"]["detail"]
    )
    result = app.test_cli_runner().invoke(args=["create-admin", "owner"], input=OWNER_PASSWORD + "\n")
    assert result.exit_code == 0
    sign_in(client)
    assert "1 request kept past the retention period: not yet delivered" in client.get("/admin/status").get_data(
        as_text=True
    )
    # Once it is delivered (or fails for good), the next purge takes it.
    with sqlite3.connect(app.config["DATABASE"]) as conn:
        conn.execute("UPDATE outbox SET status = 'sent'")
    housekeeping.purge_and_log(database, app.config, datetime.now(UTC), 30, "test")
    assert rows(app, "SELECT name FROM leads") == []
    database.close()


def names_in(path: Path) -> list[str]:
    with sqlite3.connect(path) as conn:
        return [name for (name,) in conn.execute("SELECT name FROM leads ORDER BY id")]


def test_two_restores_in_one_second_keep_both_databases_they_replaced(app, tmp_path):
    add_lead(app, name="In the backup")
    backup = tmp_path / "backup.db"
    backups.copy_database(app.config["DATABASE"], backup)
    add_lead(app, name="Only in the live database")
    now = datetime(2026, 12, 6, 22, 0, 0, tzinfo=UTC)
    first = backups.restore(app.config, backup, now)
    second = backups.restore(app.config, backup, now)  # the same second
    assert first["kept"] != second["kept"]
    assert names_in(first["kept"]) == ["In the backup", "Only in the live database"]
    assert names_in(second["kept"]) == ["In the backup"]
    assert names_in(Path(app.config["DATABASE"])) == ["In the backup"]
    third = backups.restore(app.config, backup, now)
    assert len({first["kept"], second["kept"], third["kept"]}) == 3 and first["kept"].exists()
