"""The inbox: newest leads first, filters, search, pages, the charts, and the CSV export."""

import csv
import io
import math
from collections import Counter
from datetime import UTC, date, datetime, time, timedelta

from flask import Response, current_app, render_template, request, stream_with_context

import articles
import db
import db.leads
import db.outbox
import db.search
import housekeeping
import offsite
from admin.blueprint import audit, bp, clinic_zone

PAGE_SIZE = 25
# Full-width forms too: some spreadsheets read "＝1+1" as a formula.
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r", "\uff1d", "\uff0b", "\uff0d", "\uff20")
CSV_COLUMNS = [
    ("id", "id"),
    ("received", "created_at"),
    ("status", "status"),
    ("name", "name"),
    ("phone", "phone"),
    ("email", "email"),
    ("best time", "preferred_time"),
    ("message", "message"),
    ("utm_source", "utm_source"),
    ("utm_medium", "utm_medium"),
    ("utm_campaign", "utm_campaign"),
    ("referring page", "referrer"),
    ("landing page", "landing_page"),
    ("language", "language"),  # last: columns are only ever added at the end, so saved spreadsheets keep working
]


def read_filters(args) -> dict:
    """The inbox filter from the query string, with anything unusable dropped."""
    status = args.get("status", "")
    filters = {
        "status": status if status in db.leads.LEAD_STATUSES else "",
        "q": args.get("q", "").strip()[:200],
        "from": "",
        "to": "",
        "article": args.get("article", "") if articles.by_slug(args.get("article", "")) else "",
    }
    for key in ("from", "to"):
        try:
            filters[key] = date.fromisoformat(args.get(key, "")).isoformat()
        except ValueError:
            pass
    return filters


def query_args(filters: dict) -> dict:
    """The search arguments for db.search.search_leads and db.search.count_by_status."""
    zone = clinic_zone()
    since = until = None
    if filters["from"]:
        since = db.iso_utc(datetime.combine(date.fromisoformat(filters["from"]), time.min, zone))
    if filters["to"]:
        until = db.iso_utc(datetime.combine(date.fromisoformat(filters["to"]) + timedelta(days=1), time.min, zone))
    landing_page = articles.by_slug(filters["article"])["path"] if filters["article"] else None
    return {"q": filters["q"], "since": since, "until": until, "landing_page": landing_page}


def dashboard(now: datetime) -> dict:
    """Leads per day over the last 30 days and leads by source, shaped for inline SVG."""
    zone = clinic_zone()
    today = now.astimezone(zone).date()
    first = today - timedelta(days=29)
    bounds = [db.iso_utc(datetime.combine(first + timedelta(days=i), time.min, zone)) for i in range(31)]
    counts = db.search.leads_per_period(db.get_db(), bounds)
    per_day = dict(zip((first + timedelta(days=i) for i in range(30)), counts, strict=True))
    sources = Counter()
    for source, n in db.search.lead_sources_since(db.get_db(), bounds[0]).items():
        sources[(source or "").strip()[:16] or "(direct)"] += n
    peak = max([*per_day.values(), 1])
    days = []
    for i in range(30):
        day = first + timedelta(days=i)
        height = round(per_day[day] / peak * 74, 1)
        days.append(
            {"x": i * 10, "y": 90 - height, "height": height, "count": per_day[day], "label": f"{day:%a %-d %b}"}
        )
    top = sources.most_common(5)
    rest = sum(sources.values()) - sum(n for _, n in top)
    if rest:
        top.append(("other", rest))
    widest = max([n for _, n in top] or [1])
    bars = [
        {"name": name, "count": n, "width": round(n / widest * 150, 1), "y": i * 22} for i, (name, n) in enumerate(top)
    ]
    return {"days": days, "peak": peak, "total": sum(per_day.values()), "first": first, "today": today, "sources": bars}


def periods(now: datetime) -> list[tuple[str, str, str]]:
    """Quick date ranges in the clinic's calendar: (label, from, to)."""
    today = now.astimezone(clinic_zone()).date()
    return [
        ("Today", today.isoformat(), today.isoformat()),
        ("Last 7 days", (today - timedelta(days=6)).isoformat(), today.isoformat()),
        ("This month", today.replace(day=1).isoformat(), today.isoformat()),
    ]


@bp.get("")
def inbox():
    """Newest leads first, with status counts, search, pages, the charts and a banner when email fails."""
    filters = read_filters(request.args)
    database = db.get_db()
    args = query_args(filters)
    status = filters["status"] or None
    counts = db.search.count_by_status(database, **args)
    if None in counts.values():  # words found in very many leads: only this tab is counted, as far as the bound
        counts["all"] = None
        total = counts[status or "all"] = db.search.count_matches(database, filters["q"], status)
    else:
        counts["all"] = sum(counts.values()) - counts["spam"]
        total = counts[status or "all"]
    page = max(1, request.args.get("page", 1, type=int))
    if total > db.search.COUNT_LIMIT:  # how many pages is not known: one lead more than a page says if there is a next
        pages = None
        leads = list(
            db.search.search_leads(database, status, **args, limit=PAGE_SIZE + 1, offset=(page - 1) * PAGE_SIZE)
        )
        older = len(leads) > PAGE_SIZE
        del leads[PAGE_SIZE:]
    else:
        pages = max(1, math.ceil(total / PAGE_SIZE))
        page = min(page, pages)
        leads = list(db.search.search_leads(database, status, **args, limit=PAGE_SIZE, offset=(page - 1) * PAGE_SIZE))
        older = page < pages
    return render_template(
        "admin/inbox.html",
        leads=leads,
        counts=counts,
        count_limit=db.search.COUNT_LIMIT,
        total=total,
        older=older,
        filters=filters,
        keep={k: filters[k] for k in ("q", "from", "to", "article") if filters[k]},
        current={k: v for k, v in filters.items() if v},
        page=page,
        pages=pages,
        labels=db.leads.LEAD_STATUSES,
        article_titles={article["path"]: article["title"] for article in articles.all_articles()},
        chart=dashboard(datetime.now(UTC)),
        periods=periods(datetime.now(UTC)),
        health=db.outbox.delivery_health(database),
        backup_alarm=housekeeping.backup_alarm(database, datetime.now(UTC)),
        offsite_alarm=offsite.alarm(database, current_app.config, datetime.now(UTC)),
    )


@bp.get("/leads.csv")
def export_csv():
    """The leads the inbox filter shows, as a CSV file Excel opens as is."""
    filters = read_filters(request.args)
    shown = ", ".join(f"{k}={v}" for k, v in filters.items() if v and k != "q") or "all but spam"
    audit("exported leads", detail=shown + (", with a search" if filters["q"] else ""))
    zone = clinic_zone()

    def rows():
        buffer = io.StringIO()
        writer = csv.writer(buffer)  # excel dialect: quotes as RFC 4180 asks, CRLF line ends
        writer.writerow([title for title, _ in CSV_COLUMNS])
        yield "\ufeff" + taken(buffer)
        database = db.get_db()
        offsets = utc_offsets(zone, db.search.first_lead_at(database), datetime.now(UTC))
        columns = tuple(key for _, key in CSV_COLUMNS)
        found = db.search.iter_leads_for_export(
            database, filters["status"] or None, **query_args(filters), columns=columns, offsets=offsets
        )
        while chunk := found.fetchmany(500):  # one write to the socket per 500 rows, not per row
            writer.writerows(chunk)
            yield taken(buffer)

    name = f"leads-{datetime.now(zone):%Y-%m-%d}.csv"
    return Response(
        stream_with_context(rows()),
        mimetype="text/csv",
        headers={"Content-Disposition": f'attachment; filename="{name}"'},
    )


def taken(buffer: io.StringIO) -> str:
    """What `buffer` holds, leaving it empty."""
    text = buffer.getvalue()
    buffer.seek(0)
    buffer.truncate()
    return text


def utc_offsets(zone, first: str | None, last: datetime) -> list[tuple[str, int]]:
    """The UTC offset of `zone` in minutes from each change on, newest first, from `first` (stored UTC
    text; None: `last` only) to `last`: [("2026-11-01T09:00:00+00:00", -480), ..., (first, -420)]."""

    def offset(moment: datetime) -> int:
        return int(moment.astimezone(zone).utcoffset().total_seconds() // 60)

    moment = datetime.fromisoformat(first) if first else last
    changes = [(db.iso_utc(moment), offset(moment))]
    while moment < last:  # a day at a time, then to the minute where the offset changed
        step = min(moment + timedelta(days=1), last)
        if offset(step) != changes[-1][1]:
            before, after = moment, step
            while after - before > timedelta(minutes=1):
                middle = before + (after - before) / 2
                before, after = (middle, after) if offset(middle) == changes[-1][1] else (before, middle)
            changes.append((db.iso_utc(after.replace(second=0, microsecond=0)), offset(after)))
        moment = step
    return changes[::-1]


def csv_cell(value) -> str:
    """A cell a spreadsheet will show as text: a leading = + - @ (or their full-width forms), tab or CR is defused."""
    text = "" if value is None else str(value)
    return "'" + text if text.startswith(FORMULA_STARTS) else text
