"""The inbox filter: full-text search, date and page filters, counts per status and per period."""

import json
import re
from collections import Counter
from collections.abc import Iterator

from sqlite_utils import Database

from db import write
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
FTS_MANY_MATCHES = 10_000  # above this many, a page is looked for among the newest leads first (see search_leads)
COUNT_LIMIT = 10_000  # a search matching more leads is counted only as far as "more than COUNT_LIMIT"
FTS_NEWEST_IDS = 40_000  # the recent index keeps at least this many newest ids (_newest_matches, trim_recent_index)


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


def _newest_matches(db: Database, fts: str) -> dict:
    """The index rowids matching `fts` among the newest leads, those the recent index holds (at least the
    FTS_NEWEST_IDS newest ids): {"from": the lowest rowid looked at, "rowids": a set, "codes": a Counter of their
    status codes, "counted": the counts _count_fts made}; 0 as "from" means every lead.

    A prefix query ("migr"*) first merges the whole list of every word it matches: in leads_fts, for a word
    in half of a million leads, that is most of a page's time; in leads_fts_recent the lists are short. This
    one query serves the page's counts and the page itself, and is kept on the connection for the rest of the
    request while the database does not change.
    """
    version = (db.execute("PRAGMA data_version").fetchone()[0], db.conn.total_changes, fts)
    kept = getattr(db, "kept_newest_matches", None)
    if kept and kept[0] == version:
        return kept[1]
    lowest = db.execute("SELECT from_id FROM search_recent").fetchone()[0] * 8
    sql = "SELECT rowid FROM leads_fts_recent WHERE leads_fts_recent MATCH ?"
    rowids = {row[0] for row in db.execute(sql, [fts])}
    counted = {}
    if lowest and len(rowids) <= COUNT_LIMIT:  # perhaps few in all: then one more query holds every match
        every = "SELECT rowid FROM leads_fts WHERE leads_fts MATCH ? LIMIT ?"
        matches = {row[0] for row in db.execute(every, [fts, COUNT_LIMIT + 1])}
        if len(matches) <= COUNT_LIMIT:
            lowest, rowids = 0, matches
        else:
            counted["any", COUNT_LIMIT] = COUNT_LIMIT + 1
    found = {"from": lowest, "rowids": rowids, "codes": Counter(rowid & 7 for rowid in rowids), "counted": counted}
    db.kept_newest_matches = (version, found)
    return found


def trim_recent_index(db: Database, batch: int = 1000, merge_pages: int = 50, merges: int = 200) -> int:
    """Drop the leads older than the FTS_NEWEST_IDS newest ids from the recent index, `batch` ids per short write
    (a visitor's post waits behind one batch at most); return how many ids it moved past.

    A contentless index records each drop as one more entry until its segments are merged: so then merge them,
    `merge_pages` pages per write, at most `merges` writes (the rest waits for the next trim).
    """
    moved = 0
    while True:
        with write(db):
            sql = "SELECT from_id, (SELECT coalesce(max(id), 0) FROM leads) FROM search_recent"
            start, top = db.execute(sql).fetchone()
            end = min(top - FTS_NEWEST_IDS + 1, start + batch)
            if end <= start:
                break
            db.execute("UPDATE search_recent SET from_id = ?", [end])  # its trigger drops the ids before `end`
        moved += end - start
    for step in range(merges if moved else 0):
        changes = db.conn.total_changes
        with write(db):  # a negative count first: merge every segment, however few there are
            db.execute(
                "INSERT INTO leads_fts_recent (leads_fts_recent, rank) VALUES ('merge', ?)",
                [-merge_pages if step == 0 else merge_pages],
            )
        if db.conn.total_changes - changes <= 1:  # nothing was left to merge
            break
    return moved


def _status_codes(status: str | None) -> set[int]:
    """The index's status codes of `status` (None: all but spam; "any": every status)."""
    if status == "any":
        return set(range(8))
    if status is None:
        return set(range(8)) - {FTS_STATUS_CODES["spam"]}
    return {FTS_STATUS_CODES.get(status, FTS_OTHER_STATUS)}


def _count_fts(db: Database, params: dict, status: str | None, limit: int) -> int:
    """How many leads in `status` (None: all but spam; "any": spam too) the search :fts matches, up to `limit` + 1."""
    newest = _newest_matches(db, params["fts"])
    among_newest = sum(n for code, n in newest["codes"].items() if code in _status_codes(status))
    if among_newest > limit or newest["from"] == 0:
        return min(among_newest, limit + 1)
    if (status, limit) not in newest["counted"]:
        matches = _fts_matches(status) if status != "any" else "SELECT rowid FROM leads_fts WHERE leads_fts MATCH :fts"
        sql = f"SELECT count(*) AS n FROM ({matches} LIMIT {limit + 1})"  # stops counting there
        newest["counted"][status, limit] = next(db.query(sql, params))["n"]
    return newest["counted"][status, limit]


def _inbox_where(
    db: Database, status: str | None, q: str, since: str | None, until: str | None, landing_page: str | None = None
) -> tuple[str, dict, int]:
    """The WHERE clause and parameters of the inbox filter, spam only when `status` is 'spam'; and, for a
    search, how many leads its words match (counted up to FTS_MANY_MATCHES + 1)."""
    clauses, params = _lead_filter(q, since, until, landing_page)
    params["status"] = status
    matches = 0
    if "fts" in params:
        matches = _count_fts(db, params, status, FTS_MANY_MATCHES)
        # Few matches: look each up and sort them. Many: walk the (status,) created_at index from the
        # newest and keep the matches, which finds a page without reading them all (+ forbids the lookup).
        lookup = "" if matches <= FTS_FEW_MATCHES else "+"
        clauses.append(f"{lookup}leads.id IN ({_fts_matches(status)})")
    clauses.append(_status_clause(status))
    return " AND ".join(clauses), params, matches


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
    where, params, matches = _inbox_where(db, status, q, since, until, landing_page)
    email_status = "(SELECT status FROM outbox WHERE lead_id = leads.id AND kind = 'lead' ORDER BY id DESC LIMIT 1)"
    select = f"SELECT *, {email_status} AS email_status FROM leads"
    order = "ORDER BY created_at DESC, id DESC"
    if limit is None:
        return db.query(f"{select} WHERE {where} {order}", params)
    params.update(limit=limit, offset=offset)
    if "fts" in params and not matches:
        return iter(())
    if matches > FTS_MANY_MATCHES:
        return iter(_page_among_newest(db, select, order, status, params))
    return db.query(f"{select} WHERE {where} {order} LIMIT :limit OFFSET :offset", params)


def _page_among_newest(db: Database, select: str, order: str, status: str | None, params: dict) -> list[dict]:
    """A page of the leads a search matching very many leads finds, looked for among the newest leads.

    Collecting every match (hundreds of thousands for a word in half the leads) is what costs; here the
    `window` newest leads of the filter are taken and kept if the index matched them, which the matches
    among the newest ids (_newest_matches) tell, or else the index's matches whose ids lie between the
    window's. The page is exact once the window holds it, or holds every lead of the filter; until then
    the window grows.
    """
    clauses, _ = _lead_filter("", params.get("since"), params.get("until"), params.get("landing_page"))
    where = " AND ".join([*clauses, _status_clause(status)])
    newest = _newest_matches(db, params["fts"])
    wanted, window = params["offset"] + params["limit"], 4 * (params["offset"] + params["limit"])
    while True:
        sql = f"SELECT id, status FROM leads WHERE {where} {order} LIMIT :window"
        leads = db.execute(sql, {**params, "window": window})
        leads = [(lead_id, lead_id * 8 + FTS_STATUS_CODES.get(s, FTS_OTHER_STATUS)) for lead_id, s in leads]
        every = len(leads) < window  # the window holds every lead of the filter
        if leads and min(leads)[0] * 8 < newest["from"]:  # older than the matches at hand: ask the index
            page = _page_in_stretch(db, select, order, where, status, {**params, "window": window})
            if len(page) == params["limit"] or every:
                return page
        else:
            found = [lead_id for lead_id, rowid in leads if rowid in newest["rowids"]]
            if len(found) >= wanted or every:
                ids = json.dumps(found[params["offset"] : wanted])
                return list(db.query(f"{select} WHERE id IN (SELECT value FROM json_each(:ids)) {order}", {"ids": ids}))
        window *= 4


def _page_in_stretch(db: Database, select: str, order: str, where: str, status: str | None, params: dict) -> list[dict]:
    """The page among the `window` newest leads of the filter, from the index's matches between their ids."""
    newest = f"SELECT id FROM leads WHERE {where} {order} LIMIT :window"
    stretch = "rowid BETWEEN (SELECT min(id) FROM newest) * 8 AND (SELECT max(id) FROM newest) * 8 + 7"
    sql = (
        f"WITH newest AS MATERIALIZED ({newest}) {select} WHERE id IN (SELECT id FROM newest)"
        f" AND id IN ({_fts_matches(status)} AND {stretch}) {order} LIMIT :limit OFFSET :offset"
    )
    return list(db.query(sql, params))


def iter_leads_for_export(
    db: Database,
    status: str | None = None,
    q: str = "",
    since: str | None = None,
    until: str | None = None,
    landing_page: str | None = None,
    columns: tuple[str, ...] = ("*",),
    offsets: list[tuple[str, int]] = (),
) -> Iterator[tuple]:
    """The `columns` of every lead the inbox filter shows, newest first, as tuples read as the caller goes.

    With `offsets`, the clinic's UTC offset in minutes from each moment on, newest first (see
    admin.inbox.utc_offsets), each row comes as a CSV's cells, made by SQLite so no Python runs per
    row: created_at as "YYYY-MM-DD HH:MM" in the clinic's time, status as its label, and every other
    text with a quote before a leading = + - @ tab or CR, so a spreadsheet shows it as text.
    """
    where, params, _ = _inbox_where(db, status, q, since, until, landing_page)
    if offsets:
        shifts = " ".join(f"WHEN created_at >= :since{n} THEN :shift{n}" for n in range(len(offsets) - 1))
        for n, (moment, minutes) in enumerate(offsets):
            params.update({f"since{n}": moment, f"shift{n}": f"{minutes:+d} minutes"})
        labels = " ".join(f"WHEN '{value}' THEN '{label}'" for value, label in LEAD_STATUSES.items())
        starts = ", ".join(str(ord(ch)) for ch in "=+-@\t\r")
        shift = f"CASE {shifts} ELSE :shift{len(offsets) - 1} END" if shifts else ":shift0"
        cells = {
            "id": "id",
            "created_at": f"strftime('%Y-%m-%d %H:%M', created_at, {shift})",
            "status": f"CASE status {labels} ELSE status END",
        }
        defused = "CASE WHEN unicode({0}) IN ({1}) THEN '''' || {0} ELSE coalesce({0}, '') END"
        columns = tuple(cells.get(column) or defused.format(column, starts) for column in columns)
    return db.execute(f"SELECT {', '.join(columns)} FROM leads WHERE {where} ORDER BY created_at DESC, id DESC", params)


def first_lead_at(db: Database) -> str | None:
    """When the oldest lead came (the stored UTC text), or None without leads."""
    return db.execute("SELECT min(created_at) FROM leads").fetchone()[0]


def count_by_status(
    db: Database, q: str = "", since: str | None = None, until: str | None = None, landing_page: str | None = None
) -> dict[str, int | None]:
    """How many leads match the search in each status.

    A search alone whose words match more than COUNT_LIMIT leads is not counted (counting them all
    would read hundreds of thousands of index entries): every status is None, and count_matches
    counts one status as far as COUNT_LIMIT.
    """
    counts = dict.fromkeys(LEAD_STATUSES, 0)
    clauses, params = _lead_filter(q, since, until, landing_page)
    statuses = "status IN (" + ", ".join(f"'{status}'" for status in LEAD_STATUSES) + ")"
    if "fts" in params and not clauses:
        if _count_fts(db, params, "any", COUNT_LIMIT) > COUNT_LIMIT:
            return dict.fromkeys(LEAD_STATUSES)
        if (newest := _newest_matches(db, params["fts"]))["from"] == 0:  # the newest are every lead
            return counts | {status: newest["codes"][code] for status, code in FTS_STATUS_CODES.items()}
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


def count_matches(db: Database, q: str, status: str | None = None) -> int:
    """How many leads in `status` (None: all but spam) the words of `q` match, counted up to COUNT_LIMIT + 1."""
    return _count_fts(db, {"fts": fts_query(q)}, status, COUNT_LIMIT)


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
