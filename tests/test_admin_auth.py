"""Admin accounts, sign-in and sign-out, the lock-out, and the guard over every /admin URL."""

import logging
import re
from datetime import UTC, datetime, timedelta

import pytest
from conftest import OWNER_PASSWORD, csrf_token, form_fields, post_lead, rows, sign_in, valid_lead

from app import create_app

GENERIC = "That username and password do not match. Please try again."


def create_admin(app, name: str, password: str = OWNER_PASSWORD):
    return app.test_cli_runner().invoke(args=["create-admin", name], input=password + "\n")


def session_cookie(client) -> str:
    return client.get_cookie("session").value


def set_cookies(response) -> dict[str, str]:
    """Each Set-Cookie header of a response, by cookie name."""
    return {header.split("=")[0]: header for header in response.headers.getlist("Set-Cookie")}


def test_start_up_says_how_to_create_an_owner(settings, caplog):
    with caplog.at_level(logging.WARNING):
        app = create_app(settings)
    assert "flask --app app create-admin USERNAME" in caplog.text
    caplog.clear()
    result = create_admin(app, "owner")
    assert result.exit_code == 0, result.output
    with caplog.at_level(logging.WARNING):
        create_app(settings)
    assert "create-admin" not in caplog.text


def test_create_admin_stores_only_a_scrypt_hash(app):
    result = create_admin(app, "Owner")
    assert result.exit_code == 0
    assert "Account 'owner' created" in result.output
    assert OWNER_PASSWORD not in result.output
    [account] = rows(app, "SELECT * FROM accounts")
    assert account["username"] == "owner"
    assert account["password_hash"].startswith("scrypt:")
    assert OWNER_PASSWORD not in account["password_hash"]


def test_create_admin_refuses_a_password_under_12_characters_and_a_bad_name(app):
    result = create_admin(app, "owner", "eleven char")
    assert result.exit_code != 0
    assert "at least 12 characters" in result.output
    assert create_admin(app, "bad name!").exit_code != 0
    assert rows(app, "SELECT * FROM accounts") == []
    assert create_admin(app, "owner", "twelve chars").exit_code == 0
    assert sign_in(app.test_client(), "owner", "twelve chars").status_code == 303


def test_there_is_no_default_account(client):
    for name, password in [("admin", "admin"), ("admin", "password"), ("owner", "")]:
        response = sign_in(client, name, password)
        assert response.status_code in (401, 422)
    assert client.get("/admin").status_code == 302


def test_sign_in_opens_the_inbox_and_sets_safe_cookie_flags(app, client):
    create_admin(app, "owner")
    response = sign_in(client)
    assert response.status_code == 303
    assert response.location == "/admin"
    cookie = set_cookies(response)["session"]
    assert "HttpOnly" in cookie
    assert "SameSite=Lax" in cookie
    assert "Secure" not in cookie
    page = client.get("/admin")
    assert page.status_code == 200
    assert "Appointment requests" in page.get_data(as_text=True)
    [line] = rows(app, "SELECT * FROM audit_log WHERE action = 'signed in'")
    assert line["actor"] == "owner"


def test_cookie_is_secure_over_https(settings):
    settings["HTTPS"] = True
    app = create_app(settings)
    create_admin(app, "owner")
    client = app.test_client()
    page = client.get("https://clinic.example/admin/login")
    assert "Secure" in page.headers["Set-Cookie"]
    data = {"username": "owner", "password": OWNER_PASSWORD, "csrf_token": csrf_token(page.get_data(as_text=True))}
    # Over HTTPS, Flask-WTF also wants a same-origin Referer, as a browser sends.
    referer = {"Referer": "https://clinic.example/admin/login"}
    response = client.post("https://clinic.example/admin/login", data=data, headers=referer)
    assert response.status_code == 303
    cookies = set_cookies(response)
    for name in ("__Host-session", "admin_device"):
        assert "Secure" in cookies[name], name
        assert "HttpOnly" in cookies[name], name


@pytest.mark.parametrize("name, password", [("owner", "wrong password!"), ("nobody", OWNER_PASSWORD)])
def test_a_wrong_sign_in_gets_one_generic_message(app, client, name, password):
    create_admin(app, "owner")
    response = sign_in(client, name, password)
    assert response.status_code == 401
    assert GENERIC in response.get_data(as_text=True)
    assert client.get("/admin").status_code == 302
    [line] = rows(app, "SELECT * FROM audit_log WHERE action = 'sign-in failed'")
    assert line["actor"] == ("owner" if name == "owner" else "(unknown name)")


def test_sign_in_renews_the_session(app, client):
    create_admin(app, "owner")
    with client.session_transaction() as s:
        s["admin_sid"] = "planted-by-an-attacker"
        s["other"] = "kept from before"
    sign_in(client)
    with client.session_transaction() as s:
        assert s["admin_sid"] != "planted-by-an-attacker"
        assert "other" not in s


def test_sign_out_ends_the_session_on_the_server(app, owner):
    copied = session_cookie(owner)
    page = owner.get("/admin").get_data(as_text=True)
    response = owner.post("/admin/logout", data={"csrf_token": csrf_token(page)})
    assert response.status_code == 303
    assert response.location == "/admin/login"
    assert owner.get("/admin").status_code == 302
    thief = app.test_client()
    thief.set_cookie("session", copied)
    response = thief.get("/admin")
    assert response.status_code == 302
    assert response.location.startswith("/admin/login")
    assert rows(app, "SELECT * FROM admin_sessions") == []


def test_sign_out_is_a_post_only(owner):
    assert owner.get("/admin/logout").status_code == 405
    assert owner.get("/admin").status_code == 200


def test_a_password_reset_signs_out_every_session(app, owner):
    copied = session_cookie(owner)
    result = create_admin(app, "owner", "a brand new passphrase")
    assert "sessions are signed out" in result.output
    assert owner.get("/admin").status_code == 302
    thief = app.test_client()
    thief.set_cookie("session", copied)
    assert thief.get("/admin").status_code == 302
    assert sign_in(app.test_client(), "owner", OWNER_PASSWORD).status_code == 401
    assert sign_in(app.test_client(), "owner", "a brand new passphrase").status_code == 303


def test_an_idle_session_expires(app, owner):
    assert owner.get("/admin").status_code == 200
    idle = app.config["ADMIN_IDLE_MINUTES"] + 1
    then = (datetime.now(UTC) - timedelta(minutes=idle)).isoformat(timespec="seconds")
    rows(app, "UPDATE admin_sessions SET last_seen_at = ?", [then])
    response = owner.get("/admin/leads/1")
    assert response.status_code == 302
    assert response.location == "/admin/login?next=/admin/leads/1"
    assert "Your session has ended" in owner.get(response.location).get_data(as_text=True)


def test_repeated_failures_lock_the_account_and_say_so(app, client):
    create_admin(app, "owner")
    for _ in range(app.config["LOGIN_MAX_FAILURES"]):
        assert sign_in(client, "owner", "guess " * 3).status_code == 401
    response = sign_in(client, "owner", OWNER_PASSWORD)
    assert response.status_code == 429
    assert "Too many failed sign-ins" in response.get_data(as_text=True)
    assert "try again in 15 minutes" in response.get_data(as_text=True)
    # Another process (a second gunicorn worker) sees the same lock: it lives in SQLite.
    other_worker = create_app(app.config | {"OUTBOX_WORKER": False}).test_client()
    assert sign_in(other_worker, "owner", OWNER_PASSWORD).status_code == 429
    # Once the failures are older than the lock period, the right password works again.
    then = (datetime.now(UTC) - timedelta(minutes=16)).isoformat(timespec="seconds")
    rows(app, "UPDATE login_failures SET at = ?", [then])
    assert sign_in(client, "owner", OWNER_PASSWORD).status_code == 303


def test_repeated_failures_from_one_address_lock_every_account(settings):
    # The per-network limit on attempts (LOGIN_RATE_LIMIT) would step in first: raised, to see this one.
    app = create_app(settings | {"LOGIN_RATE_LIMIT": "1000 per minute"})
    client = app.test_client()
    create_admin(app, "owner")
    for i in range(app.config["LOGIN_MAX_FAILURES"] * 4):
        sign_in(client, f"guess{i}", "guess " * 3)
    response = sign_in(client, "owner", OWNER_PASSWORD)
    assert response.status_code == 429
    assert "from this address" in response.get_data(as_text=True)
    elsewhere = app.test_client()
    page = elsewhere.get("/admin/login", environ_base={"REMOTE_ADDR": "127.0.0.9"}).get_data(as_text=True)
    response = elsewhere.post(
        "/admin/login",
        data={"username": "owner", "password": OWNER_PASSWORD, "csrf_token": csrf_token(page)},
        environ_base={"REMOTE_ADDR": "127.0.0.9"},
    )
    assert response.status_code == 303


ATTACKS = [
    "//evil.example",
    "https:evil.example",
    "https://evil.example/admin",
    "/\\evil.example",
    "/%2F%2Fevil.example",
    "%2F%2Fevil.example",
    "\t/admin/leads/1",
    "/admin/\t",
    "javascript:alert(1)",
    "/admin\r\nSet-Cookie: x=1",
    "/admin%0d%0aSet-Cookie:x=1",
    "/admin/%5C%5Cevil.example",
    "/thanks",
    "/admin/login",
    "",
]


@pytest.mark.parametrize("target", ATTACKS)
def test_next_only_leads_inside_the_admin(app, client, target):
    create_admin(app, "owner")
    response = sign_in(client, query="?" + "&".join([f"next={quote(target)}"]))
    assert response.status_code == 303
    assert response.location == "/admin"


def test_next_leads_back_to_the_page_asked_for(app, client):
    create_admin(app, "owner")
    post_lead(client)
    first = client.get("/admin/leads/1?tab=notes")
    assert first.status_code == 302
    login_url = first.location
    assert login_url == "/admin/login?next=/admin/leads/1?tab%3Dnotes"
    response = sign_in(client, query=login_url.removeprefix("/admin/login"))
    assert response.location == "/admin/leads/1?tab=notes"
    assert client.get(response.location).status_code == 200


def quote(text: str) -> str:
    from urllib.parse import quote as url_quote

    return url_quote(text, safe="")


def sample_url(rule) -> str:
    return re.sub(r"<(?:\w+:)?(\w+)>", "1", rule.rule)


def test_every_admin_url_refuses_an_anonymous_visitor(settings):
    # Without CSRF, so the refusal seen is the sign-in guard's and nothing else's.
    app = create_app(settings | {"WTF_CSRF_ENABLED": False})
    client = app.test_client()
    post_lead(client)
    before = rows(app, "SELECT * FROM leads")
    checked = 0
    for rule in app.url_map.iter_rules():
        if not rule.rule.startswith("/admin") or rule.endpoint == "admin.login":
            continue
        for method in sorted(rule.methods - {"HEAD", "OPTIONS"}):
            response = client.open(sample_url(rule), method=method, data={"status": "booked", "note": "x", "spam": "1"})
            where = f"{method} {rule.rule}"
            if rule.endpoint in ("admin.export_csv", "admin.analytics_csv"):
                assert response.status_code == 401, where
                assert "Please sign in" in response.get_data(as_text=True)
            else:
                assert response.status_code in (302, 303), where
                assert response.location.startswith("/admin/login"), where
            assert response.headers["Cache-Control"] == "no-store", where
            checked += 1
    assert checked >= 10
    assert rows(app, "SELECT * FROM leads") == before
    assert rows(app, "SELECT * FROM notes") == []


def test_admin_pages_are_never_cached(owner):
    for url in ["/admin", "/admin/login", "/admin/status", "/admin/leads.csv"]:
        assert owner.get(url).headers["Cache-Control"] == "no-store", url


def test_a_state_change_without_the_csrf_token_is_refused(app, owner):
    post_lead(owner)
    response = owner.post("/admin/leads/1", data={"status": "booked", "note": "no token"})
    assert response.status_code == 400
    assert rows(app, "SELECT status FROM leads") == [{"status": "new"}]


def test_the_admin_idle_limit_leaves_visitors_sessions_alone(settings, monkeypatch):
    # Flask refuses any session cookie older than PERMANENT_SESSION_LIFETIME, the lead form's too.
    from itsdangerous import TimestampSigner

    app = create_app(settings | {"ADMIN_IDLE_MINUTES": 1})
    visitor = app.test_client()
    day_ago = int(datetime.now(UTC).timestamp()) - 24 * 3600
    with monkeypatch.context() as clock:
        clock.setattr(TimestampSigner, "get_timestamp", lambda self: day_ago)  # the page was opened yesterday
        page = visitor.get("/")
    sent = visitor.post("/contact", data={**form_fields(page.get_data(as_text=True)), **valid_lead()})
    assert sent.status_code == 303
    assert rows(app, "SELECT name FROM leads") == [{"name": "Jane Doe"}]


def test_create_admin_on_a_terminal_asks_twice_without_echo(settings):
    import os
    import pty
    import select
    import sys
    import warnings
    from pathlib import Path

    create_app(settings)
    env = {**os.environ, "DATA_DIR": settings["DATA_DIR"], "SECRET_KEY": "x", "OUTBOX_WORKER": "false"}
    flask = str(Path(sys.executable).with_name("flask"))
    # A child on a pseudo-terminal of its own, which is its controlling terminal, as in a real shell.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # Python 3.12+ warns on fork with threads
        pid, leader = pty.fork()
    if pid == 0:
        try:
            os.chdir(Path(__file__).resolve().parent.parent)
            os.execve(flask, [flask, "--app", "app", "create-admin", "deskperson"], env)
        finally:
            os._exit(127)
    seen = b""

    def read_until(text: bytes) -> None:
        nonlocal seen
        while text not in seen:
            ready, _, _ = select.select([leader], [], [], 20)
            assert ready, seen
            seen += os.read(leader, 1024)

    try:
        read_until(b"Password: ")
        os.write(leader, b"front desk secret\n")
        read_until(b"Repeat for confirmation: ")
        os.write(leader, b"front desk secret\n")
        read_until(b"created")
    finally:
        _, status = os.waitpid(pid, 0)
        os.close(leader)
    assert os.waitstatus_to_exitcode(status) == 0
    assert b"front desk secret" not in seen  # typed, but never echoed
    client = create_app(settings).test_client()
    assert sign_in(client, "deskperson", "front desk secret").status_code == 303


def test_passwords_never_reach_the_log(app, client, caplog):
    with caplog.at_level(logging.DEBUG):
        create_admin(app, "owner")
        sign_in(client, "owner", "wrong but secret words")
        sign_in(client, "owner", OWNER_PASSWORD)
    assert "wrong but secret words" not in caplog.text
    assert OWNER_PASSWORD not in caplog.text
    assert "failed admin sign-in" in caplog.text
