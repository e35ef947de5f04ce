"""Long commands say how far they are: purge-leads, backup and restore through the real `flask` command line.

Off a terminal (as here, and under cron or systemd) a command writes a line about every 30 s; the
hidden --progress-every 0 makes that a line per batch, so the tests count lines by batches, not by time.
"""

import math
import re
import sqlite3
from datetime import timedelta

from test_backups import flask, written_to
from test_housekeeping import add_old_and_recent

import backups
import db
import db.leads
import housekeeping

PROGRESS_LINE = re.compile(
    r"^(?P<label>[A-Z][a-z ]+): (?P<done>[\d,]+(?: MB)?) of (?P<total>[\d,]+(?: MB)?) \(\d+%\), .* so far$"
)


def progress_lines(output: str, label: str) -> list[re.Match]:
    return [m for line in output.splitlines() if (m := PROGRESS_LINE.match(line)) and m["label"] == label]


def test_purge_says_how_far_it_is_once_a_batch_and_what_it_did_in_how_long(app):
    add_old_and_recent(
        app.config["DATABASE"], old=2 * housekeeping.PURGE_BATCH + 50, recent=3, old_age=timedelta(days=400)
    )
    result = flask(app.config["DATA_DIR"], "purge-leads", "--older-than", "365", "--progress-every", "0")
    assert result.returncode == 0, result.stderr
    lines = progress_lines(result.stdout, "Deleting leads")
    assert [(m["done"], m["total"]) for m in lines] == [("100", "250"), ("200", "250"), ("250", "250")]
    assert re.search(
        r"Deleted 250 lead\(s\) received more than 365 days ago, with their notes and emails .*, in \d+\.\d s\.$",
        result.stdout,
    )


def test_a_short_purge_off_a_terminal_writes_only_what_it_did(app):
    add_old_and_recent(app.config["DATABASE"], old=250, recent=3, old_age=timedelta(days=400))
    result = flask(app.config["DATA_DIR"], "purge-leads", "--older-than", "365")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("Deleted 250 lead(s)"), result.stdout  # no line a batch: the next is due in 30 s
    assert len(result.stdout.splitlines()) == 1


def test_backup_and_restore_say_how_far_the_copy_is_and_how_long_they_took(app, tmp_path):
    database = db.connect(app.config["DATABASE"])
    with db.write(database):  # about 6 MB, so the copy takes a few steps
        for i in range(600):
            db.leads.add_lead(
                database, {"form_id": f"f{i}", "name": f"Big {i}", "message": "x" * 10_000, "is_spam": 0}, db.utcnow()
            )
    database.close()
    conn = sqlite3.connect(app.config["DATABASE"])
    steps = math.ceil(conn.execute("PRAGMA page_count").fetchone()[0] / backups.STEP_PAGES)
    conn.close()
    assert steps >= 2

    made = flask(app.config["DATA_DIR"], "backup", "--progress-every", "0")
    assert made.returncode == 0, made.stderr
    lines = progress_lines(made.stdout, "Copying the database")
    assert len(lines) == steps and lines[-1]["done"] == lines[-1]["total"], made.stdout
    assert "Checking the copy" in made.stdout
    assert re.search(
        r"Backup written to \S+: 600 lead\(s\), [\d.]+ MB, integrity check ok, in \d+\.\d s\.$", made.stdout
    )

    fresh = tmp_path / "new-server"
    fresh.mkdir(mode=0o700)
    restored = flask(fresh, "restore", str(written_to(made.stdout)), "--progress-every", "0")
    assert restored.returncode == 0, restored.stderr
    assert len(progress_lines(restored.stdout, "Copying the database")) == steps, restored.stdout
    assert re.search(r"Restored 600 lead\(s\) from \S+ into \S+ in \d+\.\d s\.$", restored.stdout, re.M)
