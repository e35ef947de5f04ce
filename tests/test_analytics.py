"""Cookieless analytics: visits counted per day, page and source; joined to requests; the admin page and CSV."""

import csv
import http.client
import io
import re
import time
import uuid
from pathlib import Path

import pytest
from conftest import OWNER_PASSWORD, post_lead, rows, sign_in

import visits
from app import create_app

FIREFOX = "Mozilla/5.0 (X11; Linux x86_64; rv:140.0) Gecko/20100101 Firefox/140.0"
CHROME = "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0 Mobile"
LIGHTHOUSE = (
    "Mozilla/5.0 (Linux; Android 11; moto g power (2022)) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/131.0.0.0 Mobile Safari/537.36 Chrome-Lighthouse"
)
DAY = 86400


def visit(app, path: str = "/", address: str = "127.0.0.2", agent: str = FIREFOX, method: str = "GET", **headers):
    """One request from a new browser (no cookies) at `address`; the response."""
    client = app.test_client()
    environ = {"REMOTE_ADDR": address}
    return client.open(path, method=method, headers={"User-Agent": agent, **headers}, environ_base=environ)


def counted(app) -> dict[tuple, tuple[int, int]]:
    """Stored counts, this process's included: {(page, source, medium, campaign): (views, visitors)}."""
    visits.flush(app)
    found = rows(app, "SELECT * FROM visit_counts")
    return {(r["page"], r["source"], r["medium"], r["campaign"]): (r["page_views"], r["visitors"]) for r in found}


def csv_rows(response) -> list[dict]:
    return list(csv.DictReader(io.StringIO(response.get_data().decode("utf-8-sig"))))


def test_visits_land_in_the_row_of_their_page_and_source(app):
    visit(app, "/")  # the first visit of a process builds the cached page; the next ones take the fast path
    visit(app, "/?utm_source=Facebook&utm_medium=cpc&utm_campaign=spring-back", address="127.0.0.3")
    visit(app, "/?utm_source=facebook&utm_medium=cpc&utm_campaign=spring-back", address="127.0.0.4", agent=CHROME)
    visit(app, "/", address="127.0.0.5", Referer="https://www.google.co.uk/")
    visit(app, "/privacy", address="127.0.0.6", Referer="https://www.bing.com/search?q=acupuncture")
    visit(app, "/", address="127.0.0.7", Referer="https://l.facebook.com/l.php?u=x")
    visit(app, "/", address="127.0.0.8", Referer="https://t.co/abc")
    visit(app, "/", address="127.0.0.9", Referer="https://blog.example.org/best-clinics")
    visit(app, "/privacy", address="127.0.0.3", Referer="http://localhost/")  # from our own page
    visit(app, "/thanks", address="127.0.0.10")
    visit(app, "/no-such-page", address="127.0.0.11")  # a 404 is not a page view
    visit(app, "/robots.txt", address="127.0.0.12")  # nor is what is not a page
    assert counted(app) == {
        ("/", "direct", "", ""): (1, 1),
        ("/", "facebook", "cpc", "spring-back"): (2, 2),  # two addresses, and tags in any case
        ("/", "google", "search", ""): (1, 1),
        ("/privacy", "bing", "search", ""): (1, 1),
        ("/", "facebook", "social", ""): (1, 1),
        ("/", "x", "social", ""): (1, 1),
        ("/", "blog.example.org", "referral", ""): (1, 1),
        ("/privacy", "internal", "", ""): (1, 0),  # 127.0.0.3 was counted on its first page today
        ("/thanks", "direct", "", ""): (1, 1),
    }


@pytest.mark.parametrize(
    "referrer, source, medium",
    [
        ("https://www.google.com/", "google", "search"),
        ("https://news.google.de/articles/x", "google", "search"),
        ("https://duckduckgo.com/", "duckduckgo", "search"),
        ("https://search.brave.com/search?q=x", "brave", "search"),
        ("https://m.facebook.com/", "facebook", "social"),
        ("https://l.instagram.com/?u=x", "instagram", "social"),
        ("https://www.linkedin.com/feed/", "linkedin", "social"),
        ("https://lnkd.in/abc", "linkedin", "social"),
        ("https://x.com/clinic/status/1", "x", "social"),
        ("https://twitter.com/", "x", "social"),
        ("https://www.example.org/page", "example.org", "referral"),
        ("not a url", "direct", ""),
    ],
)
def test_referring_sites_have_their_usual_names(referrer, source, medium):
    assert visits.source_of({}, referrer, {"clinic.example"}) == (source, medium, "")


def test_the_same_visitor_counts_once_a_day_and_again_the_next_day(app, monkeypatch):
    for _ in range(3):
        visit(app, "/")
    visit(app, "/privacy")
    visit(app, "/", agent=CHROME)  # same address, another browser: another visitor
    visit(app, "/", address="127.0.0.3")  # same browser, another address: another visitor
    assert counted(app) == {("/", "direct", "", ""): (5, 3), ("/privacy", "direct", "", ""): (1, 0)}
    tomorrow = time.time() + DAY
    monkeypatch.setattr(visits, "clock", lambda: tomorrow)
    visit(app, "/")
    visit(app, "/")
    found = {(r["day"], r["page"]): (r["page_views"], r["visitors"]) for r in rows_after_flush(app)}
    days = sorted({day for day, _ in found})
    assert len(days) == 2
    assert found[(days[0], "/")] == (5, 3)
    assert found[(days[1], "/")] == (2, 1)


def rows_after_flush(app) -> list[dict]:
    visits.flush(app)
    return rows(app, "SELECT * FROM visit_counts")


def test_bots_head_and_lighthouse_are_not_visitors_but_bots(app):
    visit(app, "/")
    for agent in [
        "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)",
        "Mozilla/5.0 (compatible; bingbot/2.0; +http://www.bing.com/bingbot.htm)",
        "facebookexternalhit/1.1 (+http://www.facebook.com/externalhit_uatext.php)",
        LIGHTHOUSE,
        "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) HeadlessChrome/131.0 Safari/537.36",
        "curl/8.5.0",
        "",
    ]:
        visit(app, "/?utm_source=facebook", address="127.0.0.3", agent=agent)
    visit(app, "/privacy", address="127.0.0.3", agent="Googlebot/2.1 (+http://www.google.com/bot.html)")
    assert visit(app, "/", address="127.0.0.4", method="HEAD").status_code == 200
    visit(app, "/", address="127.0.0.5", agent=FIREFOX, method="HEAD")
    assert counted(app) == {
        ("/", "direct", "", ""): (1, 1),
        ("/", "bots", "", ""): (7, 0),
        ("/privacy", "bots", "", ""): (1, 0),
    }


def test_global_privacy_control_and_do_not_track_count_as_page_views_only(app):
    visit(app, "/", address="127.0.0.3", **{"Sec-GPC": "1"})
    visit(app, "/", address="127.0.0.4", DNT="1")
    visit(app, "/", address="127.0.0.5", DNT="0")
    assert counted(app) == {("/", "direct", "", ""): (3, 1)}


def test_with_analytics_off_nothing_is_counted(settings):
    app = create_app({**settings, "ANALYTICS": False})
    visit(app, "/")
    visit(app, "/privacy")
    assert rows(app, "SELECT * FROM visit_counts") == []


@pytest.fixture
def owner_app(app):
    result = app.test_cli_runner().invoke(args=["create-admin", "owner"], input=OWNER_PASSWORD + "\n")
    assert result.exit_code == 0, result.output
    return app


def signed_in(app):
    client = app.test_client()
    client.environ_base["REMOTE_ADDR"] = "127.0.0.99"
    assert sign_in(client).status_code == 303
    return client


def test_a_lead_from_a_campaign_is_a_request_of_that_campaign_and_booked_when_marked(owner_app):
    app = owner_app
    visitor = app.test_client()
    visitor.environ_base.update(REMOTE_ADDR="127.0.0.3", HTTP_USER_AGENT=FIREFOX)
    assert post_lead(visitor, "/?utm_source=facebook&utm_medium=cpc&utm_campaign=spring").status_code == 303
    visit(app, "/?utm_source=facebook&utm_medium=cpc&utm_campaign=spring", address="127.0.0.4")
    visit(app, "/", address="127.0.0.5")
    spam = app.test_client()  # a visitor all the same, whose request is spam
    spam.environ_base.update(REMOTE_ADDR="127.0.0.6", HTTP_USER_AGENT=CHROME)
    post_lead(spam, "/?utm_source=facebook&utm_medium=cpc&utm_campaign=spring", website="http://spam.example")

    owner = signed_in(app)
    page = owner.get("/admin/analytics").get_data(as_text=True)
    line = re.search(r"<tr><th scope=\"row\">facebook <span class=\"campaign\">spring</span></th>(.*?)</tr>", page)[1]
    assert re.findall(r"<td>([^<]*)</td>", line) == ["3", "3", "0", "1", "0", "0", "33.3 %"]
    funnel = dict(re.findall(r"<dt>([^<]+)</dt><dd>([^<]+)</dd>", page))
    assert funnel == {
        "Visitors": "4",
        "Page views": "4",
        "Calls": "0",
        "Requests": "1",  # the spam is not a request
        "Booked": "0",
        "Book online clicks": "0",
        "Visitors who sent a request": "25.0 %",
    }

    lead_id = rows(app, "SELECT id FROM leads WHERE is_spam = 0")[0]["id"]
    form = owner.get(f"/admin/leads/{lead_id}").get_data(as_text=True)
    token = re.search(r'name="csrf_token"[^>]*value="([^"]+)"', form)[1]
    assert owner.post(f"/admin/leads/{lead_id}", data={"status": "booked", "csrf_token": token}).status_code == 303
    page = owner.get("/admin/analytics?from=2000-01-01").get_data(as_text=True)
    line = re.search(r"<tr><th scope=\"row\">facebook <span class=\"campaign\">spring</span></th>(.*?)</tr>", page)[1]
    assert re.findall(r"<td>([^<]*)</td>", line) == ["3", "3", "0", "1", "1", "0", "33.3 %"]
    exported = [r for r in csv_rows(owner.get("/admin/analytics.csv")) if r["source"] == "facebook"]
    assert exported == [
        {
            "day": exported[0]["day"],
            "page": "/",
            "source": "facebook",
            "medium": "cpc",
            "campaign": "spring",
            "page_views": "3",
            "visitors": "3",
            "requests": "1",
            "booked": "1",
            "calls": "0",
            "booking_clicks": "0",
        }
    ]


def test_the_analytics_page_and_csv_need_a_signed_in_owner_and_are_never_stored(owner_app):
    anonymous = owner_app.test_client()
    page = anonymous.get("/admin/analytics")
    assert page.status_code == 302 and page.location.startswith("/admin/login")
    data = anonymous.get("/admin/analytics.csv?from=2026-01-01&to=2026-12-31")
    assert data.status_code == 401 and "day,page" not in data.get_data(as_text=True)
    owner = signed_in(owner_app)
    for url in ["/admin/analytics", "/admin/analytics?from=2026-11-01&to=2026-11-30", "/admin/analytics.csv"]:
        response = owner.get(url)
        assert response.status_code == 200, url
        assert response.headers["Cache-Control"] == "no-store", url
    assert 'href="/admin/analytics"' in owner.get("/admin").get_data(as_text=True)


def test_the_csv_has_the_columns_and_days_asked_for_and_is_formula_safe(owner_app, monkeypatch):
    app = owner_app
    yesterday = time.time() - DAY
    monkeypatch.setattr(visits, "clock", lambda: yesterday)
    visit(app, "/privacy", address="127.0.0.5")
    monkeypatch.undo()
    visit(app, "/?utm_source=%3DHYPERLINK(%22http://evil.example%22)&utm_campaign=%2Bcmd|calc", address="127.0.0.3")
    visit(app, "/?utm_source=@sum&utm_medium=-1", address="127.0.0.4")
    owner = signed_in(app)
    response = owner.get("/admin/analytics.csv")
    assert response.headers["Content-Type"].startswith("text/csv")
    assert response.headers["Content-Disposition"].startswith("attachment")
    text = response.get_data().decode("utf-8-sig")
    header = "day,page,source,medium,campaign,page_views,visitors,requests,booked,calls,booking_clicks"
    assert text.splitlines()[0] == header
    found = csv_rows(response)
    sources = {r["source"]: r for r in found}
    assert sources['\'=hyperlink("http://evil.example")']["campaign"] == "'+cmd|calc"
    assert sources["'@sum"]["medium"] == "'-1"
    assert all(not cell.startswith(("=", "+", "-", "@")) for r in found for cell in r.values())
    days = sorted({r["day"] for r in found})
    assert len(days) == 2
    only_first = csv_rows(owner.get(f"/admin/analytics.csv?from={days[0]}&to={days[0]}"))
    shown = [(r["day"], r["page"], r["page_views"], r["visitors"]) for r in only_first]
    assert shown == [(days[0], "/privacy", "1", "1")]
    page = owner.get(f"/admin/analytics?from={days[1]}&to=not-a-date").get_data(as_text=True)
    assert "Visitors per day: 2" in page


def test_the_privacy_page_says_what_is_counted_and_that_nothing_identifies_a_visitor(client):
    response = client.get("/privacy")
    page = response.get_data(as_text=True)
    assert "What we count when you visit" in page
    assert "cannot be traced back to you" in page
    assert "Nothing is stored on your device for this: no cookie." in page
    assert "When you tap our phone number, the page tells our server only that a call was started from it" in page
    assert "Global Privacy Control or Do Not Track" in page
    assert "Set-Cookie" not in response.headers


def test_a_days_salt_and_visitors_are_wiped_after_it():
    table = visits.VisitorTable(regions=2, slots=64)
    assert table.add(740000, "127.0.0.2", FIREFOX) is True
    assert table.add(740000, "127.0.0.2", FIREFOX) is False
    assert any(table.memory[:])
    table.forget_before(740001)
    assert not any(table.memory[:])  # no salt and no hash left in memory
    assert table.add(740001, "127.0.0.2", FIREFOX) is True


def in_child(work) -> int:
    """Run `work` in a forked process, as a gunicorn worker is forked; its result (0-255) once it has exited."""
    import os

    pid = os.fork()
    if pid == 0:
        os._exit(work())
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])


def test_workers_share_the_days_visitors_and_a_new_worker_takes_over_a_dead_ones():
    table = visits.VisitorTable(regions=2, slots=64)  # made before the fork, as gunicorn's master does
    day = 740000
    assert table.add(day, "127.0.0.2", FIREFOX) is True  # this process takes a region
    assert in_child(lambda: table.add(day, "127.0.0.2", FIREFOX)) == 0  # seen by the other worker
    assert in_child(lambda: table.add(day, "127.0.0.3", FIREFOX)) == 1  # new: the child's region
    assert table.add(day, "127.0.0.3", FIREFOX) is False  # the child that died counted it
    # Both regions are taken, one by a dead worker: its successor takes it over, visitors and all.
    assert in_child(lambda: table.add(day, "127.0.0.3", FIREFOX) * 10 + table.add(day, "127.0.0.4", FIREFOX)) == 1
    assert table.add(day, "127.0.0.4", FIREFOX) is False


def get(port: int, path: str, address: str, agent: str, **headers) -> int:
    """A GET on a new connection from `address`, as a new browser would send it; the status."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10, source_address=(address, 0))
    try:
        conn.request("GET", path, headers={"User-Agent": agent, **headers})
        response = conn.getresponse()
        response.read()
        return response.status
    finally:
        conn.close()


def stored_counts(data_dir: Path) -> dict[tuple, tuple[int, int]]:
    import sqlite3

    conn = sqlite3.connect(data_dir / "leads.db")
    try:
        found = conn.execute("SELECT page, source, campaign, page_views, visitors FROM visit_counts").fetchall()
    finally:
        conn.close()
    return {(page, source, campaign): (views, people) for page, source, campaign, views, people in found}


def test_a_day_under_gunicorn_survives_a_restart_and_leaves_no_address_or_agent_on_disk(serve, tmp_path):
    data_dir = tmp_path / "site-data"
    data_dir.mkdir()
    tag = uuid.uuid4().hex[:10]
    people = {f"127.0.0.{n}": f"Mozilla/5.0 (TestPhone {tag}-{n}) Firefox/140.0" for n in (21, 22, 23)}
    server = serve({"DATA_DIR": str(data_dir)}, workers=2)
    for address, agent in people.items():
        for _ in range(8):  # each on a new connection, so both workers see every visitor
            assert get(server.port, "/?utm_source=news&utm_campaign=fall", address, agent) == 200
        assert get(server.port, "/privacy", address, agent) == 200
    assert get(server.port, "/", "127.0.0.24", f"Googlebot/2.1 ({tag})") == 200
    server.stop()  # gunicorn's worker_exit: each worker writes what it counted
    before = stored_counts(data_dir)
    assert before == {
        ("/", "news", "fall"): (24, 3),
        ("/privacy", "direct", ""): (3, 0),
        ("/", "bots", ""): (1, 0),
    }

    again = serve({"DATA_DIR": str(data_dir)}, workers=2)
    assert get(again.port, "/privacy", "127.0.0.21", people["127.0.0.21"]) == 200
    again.stop()
    after = stored_counts(data_dir)
    assert after[("/", "news", "fall")] == (24, 3)
    assert after[("/privacy", "direct", "")][0] == 4

    secrets = [s.encode() for s in [*people, "127.0.0.24", *people.values(), tag]]
    files = [p for p in data_dir.rglob("*") if p.is_file() and p.name != "gunicorn.log"]  # the test's copy of stderr
    assert any(p.name == "leads.db" for p in files)
    for path in files:
        content = path.read_bytes()
        for secret in secrets:
            assert secret not in content, f"{secret!r} in {path.name}"


def test_the_table_sorts_by_any_column(owner_app):
    app = owner_app
    for n, source in enumerate(["bing", "bing", "bing", "adwords", "adwords", "zeta"]):
        visit(app, f"/?utm_source={source}", address=f"127.0.0.{n + 3}")
    owner = signed_in(app)

    def order(query: str) -> list[str]:
        page = owner.get("/admin/analytics" + query).get_data(as_text=True)
        return re.findall(r'<th scope="row">([^<]+)</th>', page)

    assert order("") == ["bing", "adwords", "zeta"]  # most visitors first
    assert order("?sort=visitors&order=asc") == ["zeta", "adwords", "bing"]
    assert order("?sort=source&order=asc") == ["adwords", "bing", "zeta"]
    assert order("?sort=nonsense") == ["bing", "adwords", "zeta"]
    page = owner.get("/admin/analytics?sort=source&order=asc").get_data(as_text=True)
    assert 'href="/admin/analytics?sort=source&amp;order=desc' in page  # its heading now sorts the other way
