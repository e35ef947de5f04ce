"""Analytics: visits per day, page and source (no address, user agent or hash is ever stored)."""

from sqlite_utils import Database

from db import write

VISIT_KEY = ("day", "page", "source", "medium", "campaign")

VISIT_COUNTS = ("page_views", "visitors", "calls", "booking_clicks")


def add_visit_counts(db: Database, rows: list[tuple], max_rows_per_day: int, overflow: str, bounded: set[str]) -> None:
    """Add (day, page, source, medium, campaign, page_views, visitors, calls, booking_clicks) counts to what is
    stored, in one transaction.

    A day makes at most `max_rows_per_day` rows; past that, a new key's counts go to its page's row with
    source `overflow`. Rows of the `bounded` sources (one per page, such as bots or direct) are always made.
    """
    add = (
        "UPDATE visit_counts SET "
        + ", ".join(f"{name} = {name} + ?" for name in VISIT_COUNTS)
        + " WHERE day = ? AND page = ? AND source = ? AND medium = ? AND campaign = ?"
    )
    upsert = (
        f"INSERT INTO visit_counts ({', '.join(VISIT_KEY + VISIT_COUNTS)}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
        f" ON CONFLICT ({', '.join(VISIT_KEY)}) DO UPDATE SET "
        + ", ".join(f"{name} = {name} + excluded.{name}" for name in VISIT_COUNTS)
    )
    marks = ",".join("?" * len(bounded))
    made: dict[str, int] = {}  # rows of each day, bounded sources left out
    with write(db):
        for day, page, source, medium, campaign, *counts in rows:
            if db.conn.execute(add, [*counts, day, page, source, medium, campaign]).rowcount:
                continue
            if source not in bounded:
                if day not in made:
                    sql = f"SELECT count(*) FROM visit_counts WHERE day = ? AND source NOT IN ({marks})"
                    made[day] = db.conn.execute(sql, [day, *bounded]).fetchone()[0]
                if made[day] >= max_rows_per_day:
                    source, medium, campaign = overflow, "", ""
                else:
                    made[day] += 1
            db.conn.execute(upsert, [day, page, source, medium, campaign, *counts])


def purge_visit_counts_batch(db: Database, before_day: str, limit: int) -> int:
    """Delete up to `limit` visit counts of days before `before_day` (an ISO date); return how many."""
    with write(db):
        return db.execute(
            "DELETE FROM visit_counts WHERE rowid IN (SELECT rowid FROM visit_counts WHERE day < ? LIMIT ?)",
            [before_day, limit],
        ).rowcount


def visit_counts(db: Database, first_day: str, last_day: str) -> list[dict]:
    """The stored counts from `first_day` to `last_day` (ISO dates, both included)."""
    return list(
        db.query(
            "SELECT * FROM visit_counts WHERE day BETWEEN ? AND ? ORDER BY day, page, source, medium, campaign",
            [first_day, last_day],
        )
    )


def leads_for_analytics(db: Database, since: str, until: str) -> list[dict]:
    """Time, status, utm tags, referrer and page of the leads that are not spam, received in [since, until)."""
    return list(
        db.query(
            "SELECT created_at, status, utm_source, utm_medium, utm_campaign, referrer, landing_page FROM leads"
            " WHERE created_at >= ? AND created_at < ? AND status != 'spam' ORDER BY created_at",
            [since, until],
        )
    )
