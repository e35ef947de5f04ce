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
from admin import audit, bp, clinic_zone

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
    counts = db.search.count_by_status(database, **args)
    total = counts[filters["status"]] if filters["status"] else sum(n for s, n in counts.items() if s != "spam")
    pages = max(1, math.ceil(total / PAGE_SIZE))
    page = min(max(1, request.args.get("page", 1, type=int)), pages)
    leads = list(
        db.search.search_leads(
            database, filters["status"] or None, **args, limit=PAGE_SIZE, offset=(page - 1) * PAGE_SIZE
        )
    )
    return render_template(
        "admin/inbox.html",
        leads=leads,
        counts=counts,
        total=total,
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
        yield "\ufeff" + buffer.getvalue()
        buffer.seek(0)
        buffer.truncate()
        found = db.search.iter_leads_for_export(db.get_db(), filters["status"] or None, **query_args(filters))
        for n, lead in enumerate(found, 1):
            lead = {**lead, "created_at": datetime.fromisoformat(lead["created_at"]).astimezone(zone)}
            lead["created_at"] = lead["created_at"].strftime("%Y-%m-%d %H:%M")
            lead["status"] = db.leads.LEAD_STATUSES.get(lead["status"], lead["status"])
            writer.writerow([csv_cell(lead[key]) for _, key in CSV_COLUMNS])
            if n % 200 == 0:  # one write to the socket per 200 rows, not per row
                yield buffer.getvalue()
                buffer.seek(0)
                buffer.truncate()
        yield buffer.getvalue()

    name = f"leads-{datetime.now(zone):%Y-%m-%d}.csv"
    return Response(
        stream_with_context(rows()),
        mimetype="text/csv",
        headers={"Content-Disposition": f'attachment; filename="{name}"'},
    )


def csv_cell(value) -> str:
    """A cell a spreadsheet will show as text: a leading = + - @ (or their full-width forms), tab or CR is defused."""
    text = "" if value is None else str(value)
    return "'" + text if text.startswith(FORMULA_STARTS) else text
