"""How the site is served: security and cache headers, static files, error pages, proxies, limits, logs."""

import contextlib
import gzip
import os
import re
import socket
import sqlite3
import time
import urllib.parse
import urllib.request
from http.cookiejar import CookieJar
from pathlib import Path

import pytest
from conftest import csrf_token, form_fields, post_lead, valid_lead
from flask import abort, flash, render_template, request

import articles
import form_pages
import languages
from app import create_app
from forms import LeadForm, visit_fields

PAGES = ["/", "/thanks", "/privacy", "/no-such-page", "/healthz", "/admin/login"]


def csp_directives(response) -> dict[str, str]:
    policy = response.headers["Content-Security-Policy"]
    return {part.split()[0]: " ".join(part.split()[1:]) for part in policy.split(";") if part.strip()}


@pytest.mark.parametrize("path", PAGES)
def test_every_response_carries_the_security_headers(client, path):
    response = client.get(path)
    directives = csp_directives(response)
    assert directives["default-src"] == "'self'"
    assert directives["frame-ancestors"] == "'none'"
    assert directives["form-action"] == "'self'"
    assert directives["base-uri"] == "'none'"
    assert directives["object-src"] == "'none'"
    policy = response.headers["Content-Security-Policy"]
    assert "unsafe" not in policy and "http" not in policy and "*" not in policy
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert response.headers["Referrer-Policy"] == "strict-origin-when-cross-origin"
    assert "camera=()" in response.headers["Permissions-Policy"]
    assert "Strict-Transport-Security" not in response.headers  # plain HTTP: HSTS would be ignored anyway


def test_static_files_carry_the_security_headers_too(client):
    response = client.get("/static/site.css")
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert "default-src 'self'" in response.headers["Content-Security-Policy"]


@pytest.mark.parametrize("path", ["/", "/privacy", "/thanks", "/no-such-page"])
def test_pages_have_no_inline_script_or_style_the_policy_would_block(client, path):
    html = client.get(path).get_data(as_text=True)
    assert not re.search(r"<style|\sstyle=|\son[a-z]+=|javascript:", html, re.I)
    for attributes in re.findall(r"<script([^>]*)>", html):
        assert "src=" in attributes or 'type="application/ld+json"' in attributes


def test_over_https_hsts_and_a_host_only_secure_session_cookie(settings):
    settings["HTTPS"] = True
    client = create_app(settings).test_client()
    https = "https://clinic.example"
    response = client.get("/", base_url=https)
    max_age = int(re.search(r"max-age=(\d+)", response.headers["Strict-Transport-Security"])[1])
    assert max_age >= 365 * 24 * 3600
    cookie = response.headers["Set-Cookie"]
    assert cookie.startswith("__Host-session=")
    assert "; Secure" in cookie and "; HttpOnly" in cookie and "; Path=/" in cookie
    assert "Domain=" not in cookie
    data = {**form_fields(response.get_data(as_text=True)), **valid_lead()}
    assert client.post("/contact", data=data, base_url=https).status_code == 303  # the cookie came back


def test_pages_with_a_form_token_are_private(client):
    response = client.get("/")
    assert "form_token" in response.get_data(as_text=True)
    assert response.headers["Cache-Control"] == "private, no-cache"


def test_form_shown_again_with_what_the_visitor_typed_is_never_stored(client):
    response = client.post("/contact", data={**valid_lead(email="not-an-email", phone="")})
    assert response.status_code in (400, 422)
    assert "not-an-email" in response.get_data(as_text=True)
    assert response.headers["Cache-Control"] == "no-store"


def session_contents(app, client) -> dict:
    """What the visitor's session cookie holds (signed, not encrypted: anyone at the computer can read it)."""
    cookie = client.get_cookie(app.config["SESSION_COOKIE_NAME"])
    return app.session_interface.get_signing_serializer(app).loads(cookie.value) if cookie else {}


def test_thank_you_page_shows_the_name_once_and_is_never_stored(app, client):
    post_lead(client)
    assert session_contents(app, client)["thanks_name"] == "Jane Doe"
    response = client.get("/thanks")
    assert "Thank you, Jane Doe!" in response.get_data(as_text=True)
    assert response.headers["Cache-Control"] == "no-store"
    # The next person at a shared computer finds the name neither on the page nor in the cookie.
    assert "thanks_name" not in session_contents(app, client)
    again = client.get("/thanks")
    assert "Jane Doe" not in again.get_data(as_text=True)
    assert again.headers["Cache-Control"] == "no-store"


def test_admin_pages_are_never_stored(client):
    assert client.get("/admin/login").headers["Cache-Control"] == "no-store"
    assert client.get("/admin").headers["Cache-Control"] == "no-store"  # the redirect to sign in, too


def test_admin_pages_and_export_are_never_stored_when_signed_in(owner):
    post_lead(owner)
    for path in ["/admin", "/admin/leads/1", "/admin/leads.csv"]:
        response = owner.get(path)
        assert response.status_code == 200, path
        assert response.headers["Cache-Control"] == "no-store", path


def hashed_css_url(client) -> str:
    return re.search(r'href="(/static/site\.css\?v=[0-9a-f]{12})"', client.get("/").get_data(as_text=True))[1]


def test_stylesheet_is_cached_for_a_year_under_its_hashed_url(app, client):
    response = client.get(hashed_css_url(client))
    assert response.status_code == 200
    cache = response.headers["Cache-Control"]
    assert "public" in cache and "immutable" in cache
    assert int(re.search(r"max-age=(\d+)", cache)[1]) >= 365 * 24 * 3600


def test_stylesheet_without_its_hash_is_checked_every_time(client):
    assert client.get("/static/site.css").headers["Cache-Control"] == "no-cache"
    assert client.get("/static/site.css?v=000000000000").headers["Cache-Control"] == "no-cache"


def test_stylesheet_is_gzipped_for_browsers_that_accept_it(app, client):
    with open(f"{app.static_folder}/site.css", "rb") as f:
        original = f.read()
    zipped = client.get(hashed_css_url(client), headers={"Accept-Encoding": "gzip, deflate, br"})
    assert zipped.headers["Content-Encoding"] == "gzip"
    assert "Accept-Encoding" in zipped.headers["Vary"]
    assert len(zipped.data) < len(original)
    assert gzip.decompress(zipped.data) == original
    plain = client.get(hashed_css_url(client))
    assert "Content-Encoding" not in plain.headers
    assert plain.data == original


def test_stylesheet_revalidates_with_its_etag(client):
    first = client.get("/static/site.css")
    again = client.get("/static/site.css", headers={"If-None-Match": first.headers["ETag"]})
    assert again.status_code == 304


def test_changed_stylesheet_is_served_fresh_without_a_restart(settings, tmp_path):
    app = create_app(settings)
    app.static_folder = str(tmp_path / "static")
    (tmp_path / "static").mkdir()
    (tmp_path / "static" / "a.css").write_text("body { color: red }\n" * 50)
    client = app.test_client()
    assert b"red" in client.get("/static/a.css").data
    (tmp_path / "static" / "a.css").write_text("body { color: blue }\n" * 60)
    assert b"blue" in client.get("/static/a.css").data


def test_missing_or_escaping_static_paths_get_404(client):
    assert client.get("/static/nope.css").status_code == 404
    assert client.get("/static/../app.py").status_code == 404
    assert client.get("/static/%2e%2e/app.py").status_code == 404


@pytest.mark.parametrize("home", ["/", "/es/"])
@pytest.mark.parametrize(
    "query,referrer",
    [("", None), ("?utm_source=fb&utm_medium=cpc&utm_campaign=a%22%3Cb%3E", 'https://news.example/?q=<x>&y="1"')],
)
def test_cached_landing_page_is_exactly_the_full_render(app, home, query, referrer):
    """The per-process copy of the landing page (English and Spanish) must match a fresh render byte for byte, twice."""
    headers = {"Referer": referrer} if referrer else {}
    for _ in range(2):
        with app.test_request_context(home + query, headers=headers):
            article = articles.by_path(home)
            context = {"article": article, "alternates": article["versions"]}
            values = visit_fields(request.args, request.referrer)
            fast = form_pages.render_form_page("landing.html", LeadForm, values, **context)
            full = render_template("landing.html", form=form_pages.new_form(LeadForm, values), **context)
            assert fast == full
            assert values["form_token"] in fast
    assert set(app.extensions["form_pages"]) == {(languages.of_path(home), home)}


def test_each_visitor_gets_their_own_tokens(app):
    first = form_fields(app.test_client().get("/").get_data(as_text=True))
    second = form_fields(app.test_client().get("/?utm_source=google").get_data(as_text=True))
    assert first["csrf_token"] != second["csrf_token"]
    assert first["form_token"] != second["form_token"]
    assert (first["utm_source"], second["utm_source"]) == ("", "google")


def test_flashed_message_shows_on_the_landing_page(app):
    @app.get("/probe-flash")
    def probe_flash():
        flash("Your session ended.", "info")
        return "ok"

    client = app.test_client()
    client.get("/probe-flash")
    html = client.get("/").get_data(as_text=True)
    assert "Your session ended." in html
    assert "Your session ended." not in client.get("/").get_data(as_text=True)


@pytest.mark.parametrize("code", [400, 403, 404, 405, 413, 429, 500, 503])
def test_every_error_page_has_the_sites_look_and_phone(app, code):
    from app import ERRORS

    @app.get("/probe-error")
    def probe_error():
        abort(code)

    response = app.test_client().get("/probe-error")
    assert response.status_code == code
    html = response.get_data(as_text=True)
    assert str(ERRORS[code][0]) in html
    assert 'href="tel:+19495106333"' in html
    assert "site.css" in html
    assert response.headers["Content-Security-Policy"]


def test_a_crash_is_a_500_page_with_the_phone_and_is_logged(app, caplog):
    @app.get("/probe-crash")
    def probe_crash():
        raise RuntimeError("boom")

    response = app.test_client().get("/probe-crash")
    assert response.status_code == 500
    assert "tel:+19495106333" in response.get_data(as_text=True)
    assert "RuntimeError: boom" in caplog.text


def test_ten_megabyte_post_is_refused_with_413(client):
    response = client.post("/contact", data={"message": "x" * 10_000_000})
    assert response.status_code == 413
    assert "too much" in response.get_data(as_text=True)


def test_spoofed_forwarded_for_does_not_escape_the_limit(settings):
    settings["CONTACT_RATE_LIMIT"] = "2 per minute"
    client = create_app(settings).test_client()
    statuses = []
    for n in range(4):
        page = client.get("/")
        data = {**form_fields(page.get_data(as_text=True)), **valid_lead()}
        statuses.append(client.post("/contact", data=data, headers={"X-Forwarded-For": f"203.0.113.{n}"}).status_code)
    assert statuses == [303, 303, 429, 429]


def test_behind_a_trusted_proxy_each_visitor_has_their_own_limit(settings):
    settings.update(CONTACT_RATE_LIMIT="2 per minute", TRUSTED_PROXIES=1)
    client = create_app(settings).test_client()

    def send(address: str) -> int:
        data = {**form_fields(client.get("/").get_data(as_text=True)), **valid_lead()}
        return client.post("/contact", data=data, headers={"X-Forwarded-For": address}).status_code

    assert [send("203.0.113.7") for _ in range(3)] == [303, 303, 429]
    assert send("198.51.100.9") == 303
    # A visitor who adds their own X-Forwarded-For still counts as the address the proxy saw.
    assert send("198.51.100.9, 203.0.113.8") == 303
    assert send("10.0.0.1, 203.0.113.8") == 303
    assert send("10.0.0.2, 203.0.113.8") == 429


def test_an_ipv6_client_is_limited_by_its_64_network(settings):
    settings["CONTACT_RATE_LIMIT"] = "2 per minute"
    client = create_app(settings).test_client()

    def send(address: str) -> int:
        data = {**form_fields(client.get("/").get_data(as_text=True)), **valid_lead()}
        return client.post("/contact", data=data, environ_base={"REMOTE_ADDR": address}).status_code

    # One household's /64 holds more addresses than could ever be counted one by one.
    assert [send(a) for a in ["2001:db8:0:1::1", "2001:db8:0:1::2", "2001:db8:0:1:ffff:ffff:ffff:3"]] == [303, 303, 429]
    assert send("2001:db8:0:2::1") == 303  # the next /64 is someone else
    assert [send(a) for a in ["198.51.100.1", "198.51.100.2", "198.51.100.2"]] == [303, 303, 303]  # IPv4 as is
    assert [send("::ffff:198.51.100.1"), send("::ffff:198.51.100.1")] == [303, 429]  # IPv4 in IPv6 clothing


@pytest.mark.parametrize(
    "peer, key",
    [
        ("203.0.113.9", "203.0.113.9"),
        ("2001:db8:aa:bb:cc:dd:ee:ff", "2001:db8:aa:bb::/64"),
        ("::1", "::/64"),
        ("::ffff:203.0.113.9", "203.0.113.9"),
    ],
)
def test_client_address_keys_ipv6_by_its_64(app, peer, key):
    from extensions import client_address

    with app.test_request_context("/", environ_base={"REMOTE_ADDR": peer}):
        assert client_address() == key


def test_rate_limit_counters_live_in_a_file_shared_by_workers(app):
    assert app.config["RATELIMIT_STORAGE_URI"].startswith("sqlite:///")
    client = app.test_client()
    post_lead(client)
    path = app.config["RATELIMIT_STORAGE_URI"].removeprefix("sqlite://")
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT sum(count) FROM hits").fetchone()[0] >= 1


def test_broken_rate_limit_store_does_not_turn_a_lead_away(settings, tmp_path):
    settings["RATELIMIT_STORAGE_URI"] = f"sqlite://{tmp_path}/limits.db"
    app = create_app(settings)
    (tmp_path / "limits.db").unlink()
    (tmp_path / "limits.db").mkdir()  # the counters can no longer be opened
    assert post_lead(app.test_client()).status_code == 303


def test_each_request_is_logged_in_one_line_without_query_or_secrets(client, caplog):
    caplog.set_level("INFO", logger="clinic.request")
    page = client.get("/?utm_source=fb&secret=abc")
    fields = form_fields(page.get_data(as_text=True))
    client.post("/contact", data={**fields, **valid_lead(message="My knee hurts since March.")})
    lines = [r.getMessage() for r in caplog.records if r.name == "clinic.request"]
    assert re.fullmatch(r"GET / 200 \d+B [\d.]+ms 127\.0\.0\.0/24", lines[0])
    assert re.fullmatch(r"POST /contact 303 \d+B [\d.]+ms 127\.0\.0\.0/24", lines[1])
    assert "secret=abc" not in caplog.text
    assert "knee" not in caplog.text
    assert fields["csrf_token"] not in caplog.text
    assert fields["form_token"] not in caplog.text


def test_a_path_with_control_characters_cannot_forge_a_log_line(app, caplog):
    import logging

    caplog.set_level("INFO")
    app.test_client().get("/x%0a2026-11-29 INFO clinic: lead 7 stored%0d%1b[2J%e2%80%a8")
    logging.getLogger("another.library").warning("from %s", "a\nb")
    messages = [record.getMessage() for record in caplog.records]
    assert any(m.startswith("GET /x\\n2026-11-29 INFO clinic: lead 7 stored\\r\\x1b[2J") for m in messages)
    assert "from a\\nb" in messages  # every logger, not only the site's
    assert not any(re.search("[\x00-\x1f\x7f-\x9f]", m) for m in messages)


# Against the real gunicorn


def fresh_visit(url: str):
    """One visitor: their own cookies, the landing page, and the form fields on it."""
    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(CookieJar()))
    fields = form_fields(opener.open(url + "/").read().decode())
    return opener, fields


def post(opener, url: str, fields: dict) -> int:
    data = urllib.parse.urlencode(fields).encode()
    try:
        with opener.open(urllib.request.Request(url + "/contact", data=data), timeout=10) as response:
            return response.status if not response.url.endswith("/thanks") else 303
    except urllib.error.HTTPError as error:
        return error.code


@pytest.mark.slow
def test_rate_limit_holds_across_gunicorn_workers(serve):
    """Two workers, each with its own memory, still allow only the configured number of posts."""
    server = serve({"CONTACT_RATE_LIMIT": "3 per minute"}, workers=2)
    statuses = []
    for n in range(10):
        opener, fields = fresh_visit(server.url)
        statuses.append(post(opener, server.url, {**fields, **valid_lead(name=f"Visitor {n}")}))
    assert statuses == [303] * 3 + [429] * 7


@pytest.mark.slow
def test_ten_megabyte_post_to_gunicorn_gets_413_before_the_body_is_sent(serve):
    server = serve()
    size = 10 * 1024 * 1024
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        head = (
            f"POST /contact HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/x-www-form-urlencoded\r\n"
            f"Content-Length: {size}\r\n\r\n"
        )
        sock.sendall(head.encode() + b"message=" + b"x" * 1000)  # the rest is never sent
        reply = b""
        while b"</html>" not in reply:
            chunk = sock.recv(65536)
            if not chunk:
                break
            reply += chunk
    assert reply.startswith(b"HTTP/1.1 413 ")
    assert b"That was too much to send" in reply
    assert b"tel:+19495106333" in reply


@pytest.mark.slow
def test_gunicorn_logs_hold_no_message_password_or_token(serve, smtp):
    secret = "Hunter2-mail-password"
    server = serve({"MAIL_SERVER": "127.0.0.1", "MAIL_PORT": str(smtp.port), "MAIL_PASSWORD": secret})
    opener, fields = fresh_visit(server.url)
    message = "Private: my shoulder has hurt since the accident in May."
    assert post(opener, server.url, {**fields, **valid_lead(message=message)}) == 303
    smtp.wait_for(1)
    login = opener.open(server.url + "/admin/login").read().decode()
    token = re.search(r'name="csrf_token" type="hidden" value="([^"]+)"', login)[1]
    password = "Owner-passw0rd-typed-wrong"
    data = urllib.parse.urlencode({"username": "owner", "password": password, "csrf_token": token}).encode()
    try:
        opener.open(server.url + "/admin/login", data=data)
    except urllib.error.HTTPError:
        pass
    deadline = time.monotonic() + 5
    while "email 1 for lead 1 sent" not in server.output() and time.monotonic() < deadline:
        time.sleep(0.1)
    log = server.output()
    assert re.search(r"POST /contact 303 \d+B", log)
    assert re.search(r"POST /admin/login \d{3} ", log)
    assert "email 1 for lead 1 sent" in log
    for leaked in [message, "shoulder", secret, password, fields["csrf_token"], fields["form_token"], token]:
        assert leaked not in log
    for cookie in opener.handlers:
        jar = getattr(cookie, "cookiejar", None)
        for c in jar or []:
            assert c.value not in log


@pytest.mark.slow
def test_gunicorn_log_has_one_line_per_request_whatever_the_path(serve):
    server = serve()
    forged = "2026-11-29 09:00:00,000 INFO clinic: lead 1 stored"
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        path = "/x%0a" + urllib.parse.quote(forged) + "%0d%1b[2J"
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".encode())
        assert sock.recv(100).startswith(b"HTTP/1.1 404 ")
    expected = "GET /x\\n" + forged + "\\r\\x1b[2J 404 "
    deadline = time.monotonic() + 10
    while expected not in server.output() and time.monotonic() < deadline:
        time.sleep(0.05)
    log = server.output()
    assert expected in log
    assert not any(line.startswith(forged) for line in log.splitlines())
    assert "\x1b" not in log and "\r" not in log


def database_connections(pid: int, database: str) -> int:
    """How many descriptors process `pid` holds open on the file `database` (one per SQLite connection)."""
    found = 0
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(OSError):  # a descriptor closed as we look
            found += os.readlink(fd) == database
    return found


def test_each_gunicorn_worker_opens_its_threads_connections_before_any_visitor(serve):
    server = serve(threads=8)  # answered one /healthz, nothing more
    gunicorn = server.process.pid
    database = os.path.realpath(Path(server.data_dir) / "leads.db")
    deadline = time.monotonic() + 15
    while True:
        workers = [int(pid) for pid in Path(f"/proc/{gunicorn}/task/{gunicorn}/children").read_text().split()]
        held = [database_connections(pid, database) for pid in workers]
        # Eight pool threads each, besides the two senders': without the warm-up, a thread and its
        # connection would only come with a request that finds the others busy.
        if len(held) == 2 and min(held) >= 8 + 2 or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert len(held) == 2 and min(held) >= 8 + 2, held
    assert urllib.request.urlopen(server.url + "/", timeout=10).status == 200


def test_rate_counter_windows_restart_and_ended_ones_are_dropped(tmp_path):
    import ratelimit

    conn = ratelimit.open_store(str(tmp_path / "limits.db"))
    assert [ratelimit.count_hit(conn, "a", 60, 1, now) for now in (100, 110, 159)] == [1, 2, 3]
    assert ratelimit.hits_in_window(conn, "a", 159) == 3
    assert ratelimit.count_hit(conn, "a", 60, 1, 160) == 1  # the window ended at 160: a new one starts
    assert ratelimit.window_end(conn, "a") == 220
    ratelimit.count_hit(conn, "b", 60, 1, 200)
    assert ratelimit.forget_ended(conn, 230) == 1  # "a" ended at 220, "b" runs to 260
    assert ratelimit.hits_in_window(conn, "b", 230) == 1
    conn.close()


def test_first_visit_without_a_cookie_gets_a_working_form(app):
    app.test_client().get("/")  # the process's first visit builds the cached page
    visitor = app.test_client()
    page = visitor.get("/?utm_source=newsletter", headers={"Referer": "https://news.example/a"})
    assert page.status_code == 200
    cookie = page.headers["Set-Cookie"]
    assert cookie.startswith("session=") and "HttpOnly" in cookie and "SameSite=Lax" in cookie and "Path=/" in cookie
    assert page.headers["Cache-Control"] == "private, no-cache"
    assert "default-src 'self'" in page.headers["Content-Security-Policy"]
    fields = form_fields(page.get_data(as_text=True))
    assert (fields["utm_source"], fields["referrer"]) == ("newsletter", "https://news.example/a")
    sent = visitor.post("/contact", data={**fields, **valid_lead()})
    assert sent.status_code == 303
    conn = sqlite3.connect(app.config["DATABASE"])
    assert conn.execute("SELECT utm_source, referrer FROM leads").fetchall() == [
        ("newsletter", "https://news.example/a")
    ]


def test_first_visit_page_matches_the_full_render(app):
    full = app.test_client().get("/").get_data(as_text=True)  # built through Flask
    fast = app.test_client().get("/").get_data(as_text=True)
    assert without_tokens(fast) == without_tokens(full)
    assert app.test_client().head("/").get_data() == b""


def test_first_visit_over_https_gets_the_host_prefixed_secure_cookie(settings):
    settings["HTTPS"] = True
    app = create_app(settings)
    app.test_client().get("/", base_url="https://localhost")
    cookie = app.test_client().get("/", base_url="https://localhost").headers["Set-Cookie"]
    assert cookie.startswith("__Host-session=") and "Secure" in cookie


def without_tokens(html: str) -> str:
    return re.sub(r'(name="(csrf_token|form_token)" type="hidden" value=")[^"]*', r"\1", html)


def visible_answer(app, response) -> dict:
    """What a browser gets from a first visit, with the per-visit tokens masked."""
    [cookie] = response.headers.getlist("Set-Cookie")
    name, _, value_and_attributes = cookie.partition("=")
    value, *attributes = value_and_attributes.split("; ")
    session = app.session_interface.get_signing_serializer(app).loads(value)
    return {
        "status": response.status,
        "headers": sorted((k, v) for k, v in response.headers.items() if k not in ("Set-Cookie", "Content-Length")),
        "cookie": (name, sorted(attributes), sorted(session)),
        "body": without_tokens(response.get_data(as_text=True)),
    }


FIRST_VISITS = [
    ("GET", "/", {}),
    (
        "GET",
        "/?utm_source=fb&utm_medium=cpc&utm_campaign=a%22%3Cb%3E&utm_source=second&other=1",
        {"Referer": 'https://news.example/?q=<x>&y="1"', "Cookie": "analytics=1"},
    ),
    ("GET", "/?utm_campaign=caf%C3%A9+%E2%9C%93&utm_medium=%ZZ", {"Referer": "https://news.example/café"}),
    ("HEAD", "/", {}),
    (
        "GET",
        "/es/?utm_source=fb&utm_medium=cpc&utm_campaign=a%22%3Cb%3E&utm_source=second&other=1",
        {"Referer": 'https://news.example/?q=<x>&y="1"'},
    ),
    ("GET", "/es/?utm_campaign=caf%C3%A9+%E2%9C%93&utm_medium=%ZZ", {}),
    ("HEAD", "/es/", {}),
]


@pytest.mark.parametrize("https", [False, True], ids=["http", "https"])
@pytest.mark.parametrize("method, path, headers", FIRST_VISITS)
def test_first_visit_fast_path_answers_exactly_as_flask_does(settings, https, method, path, headers):
    site = {"HTTPS": True, "SITE_URL": "https://clinic.example"} if https else {"SITE_URL": "http://localhost"}
    base_url = "https://clinic.example" if https else "http://localhost"
    fast = create_app({**settings, **site})
    flask_only = create_app({**settings, **site, "FIRST_VISIT_FAST_PATH": False})
    answers = []
    for app in (fast, flask_only):
        dispatched = []
        app.before_request(lambda dispatched=dispatched: dispatched.append(request.path))
        app.test_client().get(path.split("?")[0], base_url=base_url)  # the process's first visit caches the page
        dispatched.clear()
        response = app.test_client().open(path, method=method, headers=headers, base_url=base_url)
        assert len(response.get_data()) == (int(response.headers["Content-Length"]) if method == "GET" else 0)
        answers.append((visible_answer(app, response), dispatched))
    (fast_answer, fast_dispatched), (flask_answer, flask_dispatched) = answers
    assert (fast_dispatched, flask_dispatched) == ([], [path.split("?")[0]])  # each took the path it should
    assert fast_answer == flask_answer
    if method == "GET":
        assert f'<html lang="{languages.of_path(path)}">' in fast_answer["body"]
    assert fast_answer["cookie"][0] == ("__Host-session" if https else "session")


def test_a_failing_fast_path_leaves_first_visits_to_flask(app, monkeypatch, caplog):
    app.test_client().get("/")

    def broken(*args, **kwargs):
        raise RuntimeError("a library changed under the fast path")

    monkeypatch.setattr(form_pages, "visit_fields", broken)  # only the fast path calls it through form_pages
    for n in range(2):
        visitor = app.test_client()
        page = visitor.get(f"/?utm_source=visit{n}")
        assert page.status_code == 200
        fields = form_fields(page.get_data(as_text=True))
        assert fields["utm_source"] == f"visit{n}"
        assert visitor.post("/contact", data={**fields, **valid_lead()}).status_code == 303
    assert caplog.text.count("the first-visit fast path failed") == 1
    assert "RuntimeError: a library changed under the fast path" in caplog.text


def test_a_trusted_proxy_passes_on_the_scheme_but_not_the_host(settings):
    settings.update(HTTPS=True, TRUSTED_PROXIES=1)
    app = create_app(settings)
    client = app.test_client()
    proxy = {"X-Forwarded-Proto": "https", "X-Forwarded-For": "203.0.113.7"}
    page = client.get("/admin/login", headers=proxy)
    data = {"username": "owner", "password": "wrong password!", "csrf_token": csrf_token(page.get_data(as_text=True))}
    # X-Forwarded-Proto is believed: the request counts as HTTPS, so flask-wtf wants a same-origin Referer.
    assert client.post("/admin/login", data=data, headers=proxy).status_code == 400
    referer = {**proxy, "Referer": "https://localhost/admin/login"}
    assert client.post("/admin/login", data=data, headers=referer).status_code == 401
    # X-Forwarded-Host is not: a made-up host cannot become the one the Referer is checked against.
    forged = {**proxy, "X-Forwarded-Host": "attacker.example", "Referer": "https://attacker.example/admin/login"}
    assert client.post("/admin/login", data=data, headers=forged).status_code == 400
