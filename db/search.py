"""The inbox filter: full-text search, date and page filters, counts per status and per period."""

import re
from collections.abc import Iterator

from sqlite_utils import Database

from db.leads import LEAD_STATUSES

# Each index row's rowid is the lead's id * 8 + its status's code, so a search counts its matches per
# status from the index alone, without reading a lead. The index stores these: never renumber them;
# a new status needs a code of its own and a migration that recreates the triggers.
FTS_STATUS_CODES = {"new": 0, "contacted": 1, "booked": 2, "not_interested": 3, "spam": 4}

FTS_OTHER_STATUS = 7


def like_pattern(text: str) -> str:
    """A LIKE pattern matching `text` anywhere, with % _ and the escape character taken literally."""
    escaped = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


WORD_CHARACTER = re.compile(r"[^\W_]")  # a letter or digit: what FTS5's unicode61 tokenizer keeps

FTS_FEW_MATCHES = 2000  # up to this many matches, fetch them all and sort; above, walk the date index instead


def fts_query(q: str) -> str:
    """The FTS5 query for a search-box text, or '' when the text has no letter or digit.

    Each whitespace-separated word becomes a quoted phrase whose last token is a prefix, so FTS5
    reads quotes, *, -, NEAR, OR, AND, : and parentheses as plain text: `jane@example.com` is
    the phrase "jane example com", and `migr` finds "migraine".
    """
    words = [word for word in q.split() if WORD_CHARACTER.search(word)]
    if not words:
        return ""
    query = " AND ".join('"' + word.replace('"', '""') + '"*' for word in words)
    digits = "".join(ch for ch in q if ch in "0123456789")
    if len(digits) >= 3:  # "949-510" finds the stored +19495106333 (the phone column holds its digit tails)
        query = f'({query}) OR phone : "{digits}"*'
    return query


def _lead_filter(
    q: str, since: str | None, until: str | None, landing_page: str | None = None
) -> tuple[list[str], dict]:
    """WHERE clauses (without status or full-text match) for a search text, a time range and the page leads came from.

    The FTS5 query, if the text has a letter or digit, is returned as params["fts"].
    """
    clauses, params = [], {}
    if query := fts_query(q):
        params["fts"] = query
    elif q:  # only punctuation, which the index does not hold: look for it as it is, row by row
        params["q"] = like_pattern(q)
        fields = ("name", "email", "phone", "message")
        clauses.append("(" + " OR ".join(f"{field} LIKE :q ESCAPE '\\'" for field in fields) + ")")
    if since:
        clauses.append("created_at >= :since")
        params["since"] = since
    if until:
        clauses.append("created_at < :until")
        params["until"] = until
    if landing_page:
        clauses.append("landing_page = :landing_page")
        params["landing_page"] = landing_page
    return clauses, params


def _status_clause(status: str | None) -> str:
    return "status = :status" if status else "status != 'spam'"


def _fts_matches(status: str | None) -> str:
    """SQL for the ids of the leads in `status` (None: all but spam) that the full-text query :fts matches."""
    if status:
        code = f"= {FTS_STATUS_CODES.get(status, FTS_OTHER_STATUS)}"
    else:
        code = f"!= {FTS_STATUS_CODES['spam']}"
    return f"SELECT rowid >> 3 FROM leads_fts WHERE leads_fts MATCH :fts AND rowid & 7 {code}"


def _inbox_where(
    db: Database, status: str | None, q: str, since: str | None, until: str | None, landing_page: str | None = None
) -> tuple[str, dict]:
    """The WHERE clause and parameters of the inbox filter; spam only when `status` is 'spam'."""
    clauses, params = _lead_filter(q, since, until, landing_page)
    params["status"] = status
    if "fts" in params:
        few = f"SELECT count(*) AS n FROM ({_fts_matches(status)} LIMIT {FTS_FEW_MATCHES + 1})"  # stops counting there
        matches = next(db.query(few, params))["n"]
        # Few matches: look each up and sort them. Many: walk the (status,) created_at index from the
        # newest and keep the matches, which finds a page without reading them all (+ forbids the lookup).
        lookup = "" if matches <= FTS_FEW_MATCHES else "+"
        clauses.append(f"{lookup}leads.id IN ({_fts_matches(status)})")
    clauses.append(_status_clause(status))
    return " AND ".join(clauses), params


def search_leads(
    db: Database,
    status: str | None = None,
    q: str = "",
    since: str | None = None,
    until: str | None = None,
    limit: int | None = None,
    offset: int = 0,
    landing_page: str | None = None,
) -> Iterator[dict]:
    """Leads matching the inbox filter, newest first, with their email's status; spam only when `status` is 'spam'."""
    where, params = _inbox_where(db, status, q, since, until, landing_page)
    email_status = "(SELECT status FROM outbox WHERE lead_id = leads.id AND kind = 'lead' ORDER BY id DESC LIMIT 1)"
    sql = f"SELECT *, {email_status} AS email_status FROM leads WHERE {where} ORDER BY created_at DESC, id DESC"
    if limit is not None:
        sql += " LIMIT :limit OFFSET :offset"
        params.update(limit=limit, offset=offset)
    return db.query(sql, params)


def iter_leads_for_export(
    db: Database,
    status: str | None = None,
    q: str = "",
    since: str | None = None,
    until: str | None = None,
    landing_page: str | None = None,
) -> Iterator[dict]:
    """Every lead matching the inbox filter, newest first, read one at a time as the caller goes."""
    where, params = _inbox_where(db, status, q, since, until, landing_page)
    return db.query(f"SELECT * FROM leads WHERE {where} ORDER BY created_at DESC, id DESC", params)


def count_by_status(
    db: Database, q: str = "", since: str | None = None, until: str | None = None, landing_page: str | None = None
) -> dict[str, int]:
    """How many leads match the search in each status."""
    counts = dict.fromkeys(LEAD_STATUSES, 0)
    clauses, params = _lead_filter(q, since, until, landing_page)
    statuses = "status IN (" + ", ".join(f"'{status}'" for status in LEAD_STATUSES) + ")"
    if not q and not clauses:
        rows = db.query("SELECT status, n FROM lead_counts")
    elif not clauses:  # a search alone: the status is in each match's rowid
        by_code = {code: status for status, code in FTS_STATUS_CODES.items()}
        rows = (
            {"status": by_code.get(row["code"]), "n": row["n"]}
            for row in db.query(
                "SELECT rowid & 7 AS code, count(*) AS n FROM leads_fts WHERE leads_fts MATCH :fts GROUP BY code",
                params,
            )
        )
    else:  # one range of the (status, created_at) index per status
        if "fts" in params:
            clauses.append("id IN (SELECT rowid >> 3 FROM leads_fts WHERE leads_fts MATCH :fts)")
        where = " AND ".join([statuses, *clauses])
        rows = db.query(f"SELECT status, count(*) AS n FROM leads WHERE {where} GROUP BY status", params)
    for row in rows:
        if row["status"] in counts:
            counts[row["status"]] = row["n"]
    return counts


def leads_per_period(db: Database, bounds: list[str]) -> list[int]:
    """How many leads that are not spam arrived between each two consecutive times of `bounds`, for the chart."""
    # Ranges of the (status, created_at) index, one per status and period: no lead is read.
    statuses = ", ".join(f"'{status}'" for status in LEAD_STATUSES if status != "spam")
    periods = ", ".join("(?, ?, ?)" for _ in bounds[1:])
    sql = f"""
        WITH periods (i, start, stop) AS (VALUES {periods})
        SELECT i, (
            SELECT count(*) FROM leads WHERE status IN ({statuses}) AND created_at >= start AND created_at < stop
        ) AS n FROM periods
    """
    params = [value for i in range(len(bounds) - 1) for value in (i, bounds[i], bounds[i + 1])]
    return [row["n"] for row in sorted(db.query(sql, params), key=lambda row: row["i"])]


def lead_sources_since(db: Database, since: str) -> dict[str, int]:
    """How many leads that are not spam arrived since `since` from each `utm_source`, for the chart."""
    rows = db.query(
        "SELECT utm_source, count(*) AS n FROM leads WHERE created_at >= ? AND status != 'spam' GROUP BY utm_source",
        [since],
    )
    return {row["utm_source"]: row["n"] for row in rows}
