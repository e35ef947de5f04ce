"""The admin inbox: order, status filter and counts, search, pages, charts, banner, escaping."""

import re
import sqlite3
from datetime import UTC, datetime, timedelta

import pytest
from conftest import add_lead, post_lead


def add_leads(app, *leads: dict) -> None:
    """Store leads, each `minutes_ago` old (default: in list order, the last one newest)."""
    now = datetime.now(UTC)
    for i, lead in enumerate(leads):
        add_lead(app, now - timedelta(minutes=lead.pop("minutes_ago", len(leads) - i)), **lead)


def names(html: str) -> list[str]:
    return re.findall(r'class="lead-name" href="/admin/leads/\d+">([^<]*)</a>', html)


def page(client, url: str) -> str:
    response = client.get(url)
    assert response.status_code == 200, url
    return response.get_data(as_text=True)


def test_inbox_shows_newest_first_with_spam_hidden(app, owner):
    add_leads(
        app,
        {"name": "Oldest", "minutes_ago": 300},
        {"name": "Spammer", "is_spam": 1, "minutes_ago": 100},
        {"name": "Newest", "minutes_ago": 5},
        {"name": "Middle", "minutes_ago": 130},
    )
    html = page(owner, "/admin")
    assert names(html) == ["Newest", "Middle", "Oldest"]
    assert "5 minutes ago" in html
    assert "2 hours ago" in html
    assert names(page(owner, "/admin?status=spam")) == ["Spammer"]


def test_status_filter_with_counts(app, owner):
    add_leads(
        app,
        {"name": "Ann", "status": "contacted"},
        {"name": "Ben", "status": "booked"},
        {"name": "Cat"},
        {"name": "Dan", "status": "contacted"},
        {"name": "Eve", "status": "not_interested"},
        {"name": "Fay", "is_spam": 1},
    )
    html = page(owner, "/admin")
    tabs = dict(re.findall(r'status=(\w+)"[^>]*>[^<]*<span class="count">(\d+)</span>', html))
    assert tabs == {"new": "1", "contacted": "2", "booked": "1", "not_interested": "1", "spam": "1"}
    assert re.search(r'All <span class="count">5</span>', html)
    assert names(page(owner, "/admin?status=contacted")) == ["Dan", "Ann"]
    assert names(page(owner, "/admin?status=not_interested")) == ["Eve"]
    assert names(page(owner, "/admin?status=nonsense")) == ["Eve", "Dan", "Cat", "Ben", "Ann"]


def test_new_leads_stand_out(app, owner):
    add_leads(app, {"name": "Fresh"}, {"name": "Called", "status": "contacted"})
    html = page(owner, "/admin")
    assert re.search(r'class="lead-row is-new">\s*<div class="lead-head">\s*<a class="lead-name"[^>]*>Fresh', html)
    assert re.search(r'class="lead-row">\s*<div class="lead-head">\s*<a class="lead-name"[^>]*>Called', html)


def test_rows_have_call_and_mail_links_source_and_message_start(owner):
    post_lead(owner, "/?utm_source=newsletter", message="word " * 60)
    html = page(owner, "/admin")
    assert 'href="tel:+19495106333"' in html
    assert 'href="mailto:jane@example.com"' in html
    assert "from newsletter" in html
    preview = re.search(r'<p class="preview">([^<]*)</p>', html).group(1)
    assert preview.startswith("word word") and preview.endswith("...") and len(preview) <= 145
    assert "PST" in html or "PDT" in html


@pytest.mark.parametrize(
    "query, expected",
    [
        ("jane", ["Jane Roe"]),
        ("ROE", ["Jane Roe"]),
        ("bob@", ["Bob Smith"]),
        ("949-510", ["Jane Roe"]),
        ("5106333", ["Jane Roe"]),
        ("shoulder", ["Bob Smith"]),
        ("100%", ["Per Cent"]),
        ("%", ["Per Cent"]),
        ("_", ["Under Score"]),
        ('"', ["Quote Mark"]),
        ("AND", []),
        ("pain AND", []),
        ("*", ["Star Man"]),
        ("\\", []),
        ("'; DROP TABLE leads; --", []),
        ("nobody here", []),
    ],
)
def test_search_takes_every_character_literally(app, owner, query, expected):
    add_leads(
        app,
        {"name": "Jane Roe", "phone": "+19495106333", "email": "jane@example.com"},
        {"name": "Bob Smith", "email": "bob@example.com", "message": "My shoulder hurts"},
        {"name": "Per Cent", "message": "I am 100% sure"},
        {"name": "Under Score", "email": "under_score@example.com"},
        {"name": "Quote Mark", "message": 'She said "hello"'},
        {"name": "Star Man", "message": "5* service"},
    )
    response = owner.get("/admin", query_string={"q": query})
    assert response.status_code == 200
    assert sorted(names(response.get_data(as_text=True))) == sorted(expected)


def test_search_survives_odd_input(owner):
    for query in ["\x00", "a" * 5000, "%%%%", "\ud800".encode("utf-8", "surrogatepass").decode("latin-1"), "😀"]:
        assert owner.get("/admin", query_string={"q": query}).status_code == 200
    for args in ["page=abc", "page=-5", "page=99999999999999999999", "from=2026-13-45", "to=yesterday", "status[]=x"]:
        assert owner.get("/admin?" + args).status_code == 200


def test_date_range_filter(app, owner):
    add_leads(app, {"name": "Recent", "minutes_ago": 10}, {"name": "Long ago", "minutes_ago": 60 * 24 * 40})
    today = datetime.now(UTC).date()
    html = page(owner, f"/admin?from={today - timedelta(days=3)}&to={today + timedelta(days=1)}")
    assert names(html) == ["Recent"]


def test_pages_of_25(app, owner):
    add_leads(app, *({"name": f"Lead {i:02d}"} for i in range(30)))
    first = page(owner, "/admin")
    assert len(names(first)) == 25
    assert names(first)[0] == "Lead 29"
    assert "Page 1 of 2" in first
    second = page(owner, "/admin?page=2")
    assert names(second) == [f"Lead {i:02d}" for i in range(4, -1, -1)]
    assert names(page(owner, "/admin?page=50")) == names(second)


def test_dashboard_draws_leads_per_day_and_by_source_as_inline_svg(app, owner):
    add_leads(
        app,
        {"name": "A", "utm_source": "facebook", "minutes_ago": 60 * 24 * 2},
        {"name": "B", "utm_source": "facebook"},
        {"name": "C", "utm_source": "newsletter"},
        {"name": "D"},
        {"name": "Too old", "utm_source": "radio", "minutes_ago": 60 * 24 * 45},
        {"name": "Spam", "utm_source": "bots", "is_spam": 1},
    )
    html = page(owner, "/admin")
    assert html.count("<svg") == 2
    assert len(re.findall(r"<rect x=\"\d+\" y=\"[\d.]+\" width=\"8\"", html)) == 30
    assert "Requests per day, last 30 days: 4" in html
    assert re.search(r"<title>facebook: 2</title>", html)
    assert re.search(r"<title>newsletter: 1</title>", html)
    assert re.search(r"<title>\(direct\): 1</title>", html)
    charts = html[html.index('<section class="charts"') : html.index("</section>")]
    assert "radio" not in charts and "bots" not in charts
    assert "<script" not in html
    assert not re.search(r'src="(https?:)?//', html)
    assert all(href.startswith("/") for href in re.findall(r'<link rel="(?:stylesheet|icon)" href="([^"]*)"', html))


def test_banner_when_emails_are_failing(app, owner):
    post_lead(owner)
    assert "Emails are failing" not in page(owner, "/admin")
    conn = sqlite3.connect(app.config["DATABASE"])
    conn.execute("UPDATE outbox SET status = 'failed', last_error = '550 mailbox unavailable'")
    conn.commit()
    conn.close()
    html = page(owner, "/admin")
    assert "Emails are failing" in html
    assert '<span class="badge email-failed">email failed</span>' in html
    assert 'href="/admin/status"' in html


HOSTILE = {
    "name": '<script>alert("name")</script>',
    "message": "javascript:alert(1) <img src=x onerror=alert(2)> </textarea><b>bold</b>",
    "email": "jane@example.com",
}


def test_html_and_script_in_a_lead_are_shown_inert(app, owner):
    client = owner
    post_lead(client, '/?utm_source=<svg onload=alert(3)>&utm_campaign="><script>x</script>', **HOSTILE)
    add_leads(app, {"name": "Link", "message": "javascript:alert(4)", "referrer": "javascript:alert(5)"})
    client.post(
        "/admin/leads/1",
        data={"status": "contacted", "note": "<script>alert(6)</script>", "csrf_token": csrf(client, "/admin/leads/1")},
    )
    for url in [
        "/admin",
        "/admin/leads/1",
        "/admin/leads/2",
        "/admin/status",
        "/admin?q=<script>",
        "/admin/leads/1/delete",
    ]:
        html = page(client, url)
        assert "<script>alert" not in html, url
        assert "<img src=x" not in html and "<svg onload" not in html and "<b>bold" not in html, url
        assert not re.search(r"""href=["']?\s*javascript:""", html, re.I), url
        assert "<script>x</script>" not in html
    lead = page(client, "/admin/leads/1")
    assert "&lt;script&gt;alert(&#34;name&#34;)&lt;/script&gt;" in lead
    assert "&lt;img src=x onerror=alert(2)&gt;" in lead
    assert "&lt;script&gt;alert(6)&lt;/script&gt;" in lead
    assert "javascript:alert(5)" in page(client, "/admin/leads/2")


def csrf(client, url: str) -> str:
    from conftest import csrf_token

    return csrf_token(client.get(url).get_data(as_text=True))
