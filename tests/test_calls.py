"""Calls (a tap on a tel: link, sent by the site's script to POST /calls) and clicks on Book online, counted on the
row of the page view or request they came from."""

import re

import pytest
from conftest import post_lead, rows
from test_analytics import CHROME, FIREFOX, counted, visit

import outbox.rows
from app import create_app

AD = "/?utm_source=facebook&utm_medium=cpc&utm_campaign=spring"
SAME_ORIGIN = {"Sec-Fetch-Site": "same-origin"}


def call(app, page="/", query="", referrer="", address="127.0.0.2", agent=FIREFOX, headers=SAME_ORIGIN, body=None):
    """The beacon the site's script sends when a tel: link is tapped on `page`; the response."""
    client = app.test_client()
    data = body if body is not None else {"page": page, "query": query, "referrer": referrer}
    return client.post(
        "/calls", data=data, headers={"User-Agent": agent, **headers}, environ_base={"REMOTE_ADDR": address}
    )


def calls_counted(app) -> dict[tuple, int]:
    """{(page, source, medium, campaign): calls} of every stored row with a call."""
    counted(app)  # writes this process's queue
    found = rows(app, "SELECT * FROM visit_counts WHERE calls > 0")
    return {(r["page"], r["source"], r["medium"], r["campaign"]): r["calls"] for r in found}


def test_a_call_counts_on_the_row_of_the_page_view_it_came_from(app):
    visit(app, "/")
    visit(app, AD, address="127.0.0.3")
    response = call(app, "/", query="utm_source=facebook&utm_medium=cpc&utm_campaign=spring", address="127.0.0.3")
    assert response.status_code == 204 and response.data == b""
    call(app, "/privacy", referrer="https://www.google.com/")
    call(app, "/thanks", referrer="https://clinic.example/")
    call(app, "/es/privacy", referrer="https://clinic.example/es/")  # a Spanish page: its own row
    call(app, "/no-such-page")  # a 404's phone button: no page view to join, one row for every error page
    assert calls_counted(app) == {
        ("/", "facebook", "cpc", "spring"): 1,
        ("/privacy", "google", "search", ""): 1,
        ("/thanks", "internal", "", ""): 1,
        ("/es/privacy", "internal", "", ""): 1,
        ("(error page)", "direct", "", ""): 1,
    }
    assert counted(app)[("/", "facebook", "cpc", "spring")] == (1, 1)  # a call adds no view and no visitor
    stored = rows(app, "SELECT page_views, visitors, calls FROM visit_counts WHERE source = 'facebook'")
    assert stored == [{"page_views": 1, "visitors": 1, "calls": 1}]


def test_calls_from_bots_count_as_bots_and_gpc_changes_nothing(app):
    headless = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) HeadlessChrome/131.0"
    call(app, "/", query="utm_source=facebook", agent=headless)
    call(app, "/", query="utm_source=facebook", agent="")
    call(app, "/", query="utm_source=facebook", agent=CHROME, headers={**SAME_ORIGIN, "Sec-GPC": "1"})
    assert calls_counted(app) == {("/", "bots", "", ""): 2, ("/", "facebook", "", ""): 1}


@pytest.mark.parametrize(
    "headers, status",
    [
        ({"Sec-Fetch-Site": "same-origin"}, 204),
        ({"Sec-Fetch-Site": "cross-site"}, 403),  # another site's page making its visitors' browsers post
        ({"Sec-Fetch-Site": "same-site"}, 403),
        ({"Sec-Fetch-Site": "none"}, 403),
        ({"Origin": "http://localhost"}, 204),  # a browser without Sec-Fetch-*: its Origin must be this host
        ({"Origin": "https://evil.example"}, 403),
        ({"Origin": "null"}, 403),
        ({"Origin": "http://[bad"}, 403),
        ({}, 403),  # no browser at all
    ],
)
def test_only_the_sites_own_pages_can_count_a_call(app, headers, status):
    assert call(app, headers=headers).status_code == status
    assert sum(calls_counted(app).values()) == (status == 204)


def test_calls_are_rate_limited_per_client_network_like_the_form(settings):
    app = create_app({**settings, "CONTACT_RATE_LIMIT": "2 per minute"})
    assert [call(app, address="127.0.0.5").status_code for _ in range(3)] == [204, 204, 429]
    assert call(app, address="127.0.0.6").status_code == 204
    assert call(app, address="2001:db8:1:2::1").status_code == 204
    assert call(app, address="2001:db8:1:2::99").status_code == 204
    assert call(app, address="2001:db8:1:2:aaaa::7").status_code == 429  # the same /64
    assert sum(calls_counted(app).values()) == 5


def test_a_beacon_too_big_or_odd_is_refused_or_counted_on_no_page_of_its_choosing(app):
    assert call(app, body={"page": "/", "referrer": "x" * 5000}).status_code == 413
    assert call(app, body=b"\xff\xfe page=%ZZ&&=").status_code == 204
    assert call(app, page="/" + "<script>" * 20).status_code == 204
    assert calls_counted(app) == {("(error page)", "direct", "", ""): 2}
    assert app.test_client().get("/calls").status_code == 404  # only the beacon's POST


def test_with_analytics_off_a_call_is_answered_and_not_counted(settings):
    app = create_app({**settings, "ANALYTICS": False})
    assert call(app).status_code == 204
    assert rows(app, "SELECT * FROM visit_counts") == []


def test_every_public_page_loads_the_script_and_the_admin_does_not(app):
    for path in ["/", "/privacy", "/thanks", "/no-such-page"]:
        page = app.test_client().get(path).get_data(as_text=True)
        assert '<script src="/static/site.js?v=' in page, path
    page = app.test_client().get("/admin/login").get_data(as_text=True)
    assert "site.js" not in page


def booking_clicks(app) -> dict[tuple, int]:
    """{(page, source, medium, campaign): booking clicks} of every stored row with one."""
    counted(app)
    found = rows(app, "SELECT * FROM visit_counts WHERE booking_clicks > 0")
    return {(r["page"], r["source"], r["medium"], r["campaign"]): r["booking_clicks"] for r in found}


def test_book_online_clicks_count_on_the_row_of_their_request(settings):
    app = create_app({**settings, "BOOKING_URL": "https://booking.example/clinic"})
    visitor = app.test_client()  # the visitor's browser, cookies and all
    visitor.environ_base["HTTP_USER_AGENT"] = FIREFOX
    thanks = visitor.get(post_lead(visitor, AD).headers["Location"]).get_data(as_text=True)
    [button] = re.findall(r'<a class="button" href="(/book/[^"]+)">Book online</a>', thanks)
    booked = visitor.get(button)
    assert booked.status_code == 303 and booked.headers["Location"].startswith("https://booking.example/clinic?")
    lead_id = rows(app, "SELECT id FROM leads")[0]["id"]
    emailed = f"/book/{outbox.rows.booking_token(lead_id, app.config['SECRET_KEY'])}"  # the confirmation's button
    assert app.test_client().get(emailed, headers={"User-Agent": CHROME}).status_code == 303
    assert visitor.get("/book").status_code == 303  # /thanks again, its request gone from the session
    assert app.test_client().get(emailed, headers={"User-Agent": "Mozilla/5.0 (compatible; bingbot/2.0)"}).status_code
    assert app.test_client().get("/book/MQ.forged").status_code == 404
    assert booking_clicks(app) == {
        ("/", "facebook", "cpc", "spring"): 2,
        ("/thanks", "direct", "", ""): 1,
        ("/", "bots", "", ""): 1,
    }


def test_without_a_booking_url_there_is_nothing_to_click(app):
    assert app.test_client().get("/book").status_code == 404
    assert booking_clicks(app) == {}


def test_calls_fall_under_the_daily_row_limit_like_the_visits(settings):
    app = create_app({**settings, "ANALYTICS_MAX_ROWS_PER_DAY": 1})
    visit(app, "/?utm_source=first")
    call(app, query="utm_source=first")
    call(app, query="utm_source=second")  # a second source that day: past the limit
    assert calls_counted(app) == {("/", "first", "", ""): 1, ("/", "other", "", ""): 1}
