"""Analytics a stranger cannot grow: a daily row limit, the retention purge, tags without control characters."""

import csv
import io
import random
import sqlite3
import string
from datetime import UTC, datetime, timedelta
from pathlib import Path

import db
import db.housekeeping
import db.visits
import housekeeping
import visits

FIREFOX = "Mozilla/5.0 (X11; Linux x86_64; rv:140.0) Gecko/20100101 Firefox/140.0"


def database_bytes(app) -> int:
    """The database file's size once its write-ahead log is folded in."""
    with sqlite3.connect(app.config["DATABASE"]) as conn:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    return Path(app.config["DATABASE"]).stat().st_size


def random_word(rng: random.Random, length: int = 100) -> str:
    return "".join(rng.choices(string.ascii_letters + string.digits, k=length))


def test_ten_thousand_tagged_visits_grow_the_database_by_less_than_a_megabyte(app, owner):
    rng = random.Random(16)
    before = database_bytes(app)
    wsgi = app.test_client()
    for i in range(10_000):
        if i % 2:
            tags = f"utm_source={random_word(rng)}&utm_medium={random_word(rng)}&utm_campaign={random_word(rng)}"
            path, referrer = f"/?{tags}", ""
        else:
            path, referrer = "/", f"https://{random_word(rng, 60)}.example/"
        address = f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}"
        wsgi.get(path, headers={"User-Agent": FIREFOX, "Referer": referrer}, environ_base={"REMOTE_ADDR": address})
    visits.flush(app)
    assert database_bytes(app) - before < 1_000_000
    with sqlite3.connect(app.config["DATABASE"]) as conn:
        made = conn.execute("SELECT count(*) FROM visit_counts WHERE source != 'other'").fetchone()[0]
        other, total = conn.execute(
            "SELECT sum(CASE WHEN source = 'other' THEN page_views END), sum(page_views) FROM visit_counts"
        ).fetchone()
    assert made == 1000  # ANALYTICS_MAX_ROWS_PER_DAY
    assert (other, total) == (9000, 10_000)  # every visit still counted
    today = datetime.now(visits.ZoneInfo(app.config["CLINIC_TIMEZONE"])).date().isoformat()
    page = owner.get(f"/admin/analytics?from={today}&to={today}")
    assert page.status_code == 200
    html = page.get_data(as_text=True)
    assert len(page.get_data()) < 200_000
    assert "other" in html and "more sources and campaigns (in the CSV)" in html


def test_past_the_daily_limit_new_sources_are_counted_as_other(app, settings):
    app.config["ANALYTICS_MAX_ROWS_PER_DAY"] = 2
    counter = visits.Counter(app)
    counter.visits.extend(
        ("2026-03-01", "/", FIREFOX, f"utm_source=s{i}", "", "clinic.example", True, visits.VIEW) for i in range(4)
    )
    counter.visits.append(
        ("2026-03-01", "/", FIREFOX, "", "", "clinic.example", True, visits.VIEW)
    )  # direct: always its row
    counter.visits.append(("2026-03-01", "/", FIREFOX, "utm_source=s0", "", "clinic.example", False, visits.VIEW))
    counter.flush()
    counter.visits.append(("2026-03-02", "/", FIREFOX, "utm_source=s9", "", "clinic.example", True, visits.VIEW))
    counter.flush()
    with sqlite3.connect(app.config["DATABASE"]) as conn:
        stored = conn.execute("SELECT day, source, page_views, visitors FROM visit_counts ORDER BY 1, 2").fetchall()
    assert stored == [
        ("2026-03-01", "direct", 1, 1),
        ("2026-03-01", "other", 2, 2),
        ("2026-03-01", "s0", 2, 1),
        ("2026-03-01", "s1", 1, 1),
        ("2026-03-02", "s9", 1, 1),
    ]


def test_visit_counts_older_than_the_retention_period_go_with_the_daily_purge(app):
    app.config["ANALYTICS_RETENTION_DAYS"] = 30
    now = datetime(2026, 6, 30, 19, 0, tzinfo=UTC)  # noon on 30 June in the clinic's zone
    days = ["2026-05-30", "2026-05-31", "2026-06-01", "2026-06-30"]
    database = db.connect(app.config["DATABASE"])
    db.visits.add_visit_counts(
        database, [(day, "/", "direct", "", "", 1, 1, 0, 0) for day in days], 1000, "other", visits.BOUNDED
    )
    assert housekeeping.run_daily(database, app.config, now, "test")
    assert [r["day"] for r in database.query("SELECT day FROM visit_counts ORDER BY day")] == days[1:]
    app.config["ANALYTICS_RETENTION_DAYS"] = 0  # keeps every day
    db.housekeeping.set_housekeeping_due(database, housekeeping.JOB, db.iso_utc(now))
    assert housekeeping.run_daily(database, app.config, now + timedelta(days=400), "test")
    assert len(list(database.query("SELECT day FROM visit_counts"))) == 3
    database.close()


def test_control_characters_leave_tags_and_full_width_formulas_are_defused_in_the_csv(app, owner):
    tags = "utm_source=%00=1%2B1&utm_medium=e%1bmail&utm_campaign=%E2%80%AEspring"
    owner.get(f"/?{tags}", headers={"User-Agent": FIREFOX})
    owner.get("/?utm_source=%EF%BC%9D2%2B2", headers={"User-Agent": FIREFOX}, environ_base={"REMOTE_ADDR": "10.0.0.9"})
    rows = list(csv.DictReader(io.StringIO(owner.get("/admin/analytics.csv").get_data().decode("utf-8-sig"))))
    sources = {(row["source"], row["medium"], row["campaign"]) for row in rows}
    assert ("'=1+1", "email", "spring") in sources
    assert ("'\uff1d2+2", "", "") in sources
