"""Analytics: visitors, calls, requests and bookings by source and campaign over a period, charts per day, the CSV."""

import csv
import io
import math
from collections.abc import Iterable
from datetime import date, datetime, time, timedelta

from flask import Response, current_app, render_template, request

import articles
import db
import db.visits
import languages
import visits
from admin.blueprint import bp, clinic_zone
from admin.inbox import csv_cell, read_filters

CSV_COLUMNS = [
    *("day", "page", "source", "medium", "campaign"),
    *("page_views", "visitors", "requests", "booked", "calls", "booking_clicks"),
]
COUNTS = ("visitors", "page_views", "calls", "requests", "booked", "booking_clicks")
STORED = ("page_views", "visitors", "calls", "booking_clicks")  # in visit_counts; the rest come from the leads
CHARTED = ("visitors", "calls", "requests")
SORTS = ("source", "campaign", *COUNTS, "conversion")
CHART_BARS_MAX = 62  # a longer period is drawn a few days to a bar
LINES_SHOWN = 100  # sources and campaigns on the page; the rest are added up in one line (the CSV has them all)


def period(args, today: date, default_days: int | None) -> tuple[date | None, date | None]:
    """The days asked for with `from` and `to` (the inbox CSV's parameters); the last `default_days` if none."""
    filters = read_filters(args)
    first = date.fromisoformat(filters["from"]) if filters["from"] else None
    last = date.fromisoformat(filters["to"]) if filters["to"] else None
    if first is None and last is None and default_days:
        return today - timedelta(days=default_days - 1), today
    first, last = first or date(2000, 1, 1), last or today
    return (last, first) if first > last else (first, last)


def page_language(args) -> str:
    """The `language` filter: `en` or `es` for that language's pages only, empty for all."""
    language = args.get("language", "")
    return language if language in languages.NAMES else ""


def counts_by_row(first: date, last: date, language: str = "") -> dict[tuple, dict[str, int]]:
    """Stored visit counts and the leads of the period, on the same (day, page, source, medium, campaign) keys.

    With `language`, only the pages in that language (a page's language is its address: /es/... is Spanish).
    """
    database = db.get_db()
    zone = clinic_zone()
    merged: dict[tuple, dict[str, int]] = {}
    for row in db.visits.visit_counts(database, first.isoformat(), last.isoformat()):
        key = tuple(row[name] for name in db.visits.VISIT_KEY)
        merged[key] = {**{name: row[name] for name in STORED}, "requests": 0, "booked": 0}
    since = db.iso_utc(datetime.combine(first, time.min, zone))
    until = db.iso_utc(datetime.combine(last + timedelta(days=1), time.min, zone))
    own_hosts = {visits.host_of(current_app.config["SITE_URL"])}
    for lead in db.visits.leads_for_analytics(database, since, until):
        day = visits.day_of(lead["created_at"], zone).isoformat()
        key = (day, lead["landing_page"] or "/", *visits.source_of(lead, lead["referrer"], own_hosts))
        counts = merged.setdefault(key, dict.fromkeys(COUNTS, 0))
        counts["requests"] += 1
        counts["booked"] += lead["status"] == "booked"
    if language:
        return {key: counts for key, counts in merged.items() if languages.of_path(key[1]) == language}
    return merged


def add_up(rows: Iterable[dict[str, int]]) -> dict:
    """The sums of the counts, with the conversion rate (requests per 100 visitors; None without visitors)."""
    total = dict.fromkeys(COUNTS, 0)
    for counts in rows:
        for name in COUNTS:
            total[name] += counts[name]
    total["conversion"] = round(100 * total["requests"] / total["visitors"], 1) if total["visitors"] else None
    return total


def by_source(merged: dict[tuple, dict[str, int]], sort: str, descending: bool) -> list[dict]:
    """One line per source and campaign, sorted by `sort`."""
    groups: dict[tuple[str, str], list[dict[str, int]]] = {}
    for (_day, _page, source, _medium, campaign), counts in merged.items():
        groups.setdefault((source, campaign), []).append(counts)
    lines = [{"source": source, "campaign": campaign, **add_up(rows)} for (source, campaign), rows in groups.items()]

    def order(line: dict):
        value = line[sort]
        return (value is not None, value if value is not None else 0) if sort not in ("source", "campaign") else value

    lines.sort(key=lambda line: line["visitors"], reverse=True)
    lines.sort(key=order, reverse=descending)
    if len(lines) > LINES_SHOWN:
        rest = lines[LINES_SHOWN - 1 :]
        label = f"{len(rest)} more sources and campaigns (in the CSV)"
        lines[LINES_SHOWN - 1 :] = [{"source": label, "campaign": "", **add_up(rest)}]
    return lines


def by_page(merged: dict[tuple, dict[str, int]]) -> list[dict]:
    """One line per page, with its article's title and language, the most visited first."""
    groups: dict[str, list[dict[str, int]]] = {}
    for (_day, page, *_source), counts in merged.items():
        groups.setdefault(page, []).append(counts)
    lines = []
    for page, rows in groups.items():
        article = articles.by_path(page)
        title = article["title"] if article else page
        lines.append({"page": page, "title": title, "language": languages.of_path(page), **add_up(rows)})
    return sorted(lines, key=lambda line: (-line["visitors"], -line["page_views"], line["page"]))


def chart(merged: dict[tuple, dict[str, int]], first: date, last: date) -> dict:
    """Visitors, calls and requests per day (a few days to a bar over long periods), shaped for inline SVG."""
    days = (last - first).days + 1
    span = math.ceil(days / CHART_BARS_MAX)
    bars = math.ceil(days / span)
    sums = {name: [0] * bars for name in CHARTED}
    for key, counts in merged.items():
        if key[2] != visits.BOTS:
            index = (date.fromisoformat(key[0]) - first).days // span
            for name in sums:
                sums[name][index] += counts[name]
    width = 300 / bars
    series = {}
    for name, values in sums.items():
        peak = max([*values, 1])
        drawn = []
        for i, value in enumerate(values):
            start = first + timedelta(days=i * span)
            end = min(start + timedelta(days=span - 1), last)
            label = f"{start:%a %-d %b}" if span == 1 else f"{start:%-d %b}–{end:%-d %b}"
            height = round(value / peak * 74, 1)
            drawn.append({"x": round(i * width, 2), "y": 90 - height, "height": height, "count": value, "label": label})
        series[name] = {"bars": drawn, "peak": peak, "total": sum(values)}
    per = "a day" if span == 1 else f"per {span} days"
    return {"series": series, "width": round(max(width - 2, 0.5), 2), "per": per, "first": first, "last": last}


def quick_periods(today: date) -> list[tuple[str, str, str]]:
    """Today, the last 7 and the last 30 days: (label, from, to)."""
    return [
        (label, (today - timedelta(days=n - 1)).isoformat(), today.isoformat())
        for label, n in (("Today", 1), ("Last 7 days", 7), ("Last 30 days", 30))
    ]


@bp.get("/analytics")
def analytics():
    """Which sources and campaigns bring visitors, calls, requests and bookings, over a period (default 30 days)."""
    visits.flush(current_app)  # this process's latest visits; the other workers' arrive within seconds
    today = datetime.now(clinic_zone()).date()
    first, last = period(request.args, today, 30)
    sort = request.args.get("sort", "visitors")
    sort = sort if sort in SORTS else "visitors"
    descending = request.args.get("order", "desc") != "asc"
    language = page_language(request.args)
    merged = counts_by_row(first, last, language)
    people = {key: counts for key, counts in merged.items() if key[2] != visits.BOTS}
    bots = add_up(counts for key, counts in merged.items() if key[2] == visits.BOTS)
    funnel = add_up(people.values())
    share = bots["page_views"] / (bots["page_views"] + funnel["page_views"]) if bots["page_views"] else 0
    return render_template(
        "admin/analytics.html",
        first=first,
        last=last,
        range={"from": first.isoformat(), "to": last.isoformat(), **({"language": language} if language else {})},
        language=language,
        periods=quick_periods(today),
        funnel=funnel,
        lines=by_source(people, sort, descending),
        pages=by_page(people),
        sort=sort,
        descending=descending,
        chart=chart(merged, first, last),
        bots=bots["page_views"],
        bot_calls=bots["calls"],
        bots_share=round(100 * share),
        analytics_on=current_app.config["ANALYTICS"],
    )


@bp.get("/analytics.csv")
def analytics_csv():
    """The period's counts, one row per day, page, source, medium and campaign (every day stored if no dates)."""
    visits.flush(current_app)
    zone = clinic_zone()
    first, last = period(request.args, datetime.now(zone).date(), None)
    buffer = io.StringIO()
    writer = csv.writer(buffer)  # excel dialect, as the leads CSV
    writer.writerow(CSV_COLUMNS)
    for key, counts in sorted(counts_by_row(first, last, page_language(request.args)).items()):
        writer.writerow([csv_cell(value) for value in (*key, *(counts[name] for name in CSV_COLUMNS[5:]))])
    name = f"analytics-{datetime.now(zone):%Y-%m-%d}.csv"
    return Response(
        "\ufeff" + buffer.getvalue(),
        mimetype="text/csv",
        headers={"Content-Disposition": f'attachment; filename="{name}"'},
    )
