"""Admin sessions: the idle and the absolute limit, the list of open sessions, and "Sign out everywhere"."""

from datetime import UTC, datetime, timedelta

import pytest
from conftest import OWNER_PASSWORD, csrf_token, rows, sign_in

import config
from admin.devices import browser_name
from app import create_app

IPHONE = (
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 "
    "(KHTML, like Gecko) Version/17.4 Mobile/15E148 Safari/604.1"
)
WINDOWS_CHROME = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 Safari/537.36"
)


def ago(**delta) -> str:
    return (datetime.now(UTC) - timedelta(**delta)).isoformat(timespec="seconds")


def create_admin(app, name: str, password: str = OWNER_PASSWORD) -> None:
    result = app.test_cli_runner().invoke(args=["create-admin", name], input=password + "\n")
    assert result.exit_code == 0, result.output


def signed_in_browser(app, user_agent: str, name: str = "owner", password: str = OWNER_PASSWORD):
    """A test client with its own User-Agent, signed in."""
    client = app.test_client()
    client.environ_base["HTTP_USER_AGENT"] = user_agent
    assert sign_in(client, name, password).status_code == 303
    return client


def test_the_defaults_are_30_idle_minutes_and_12_hours_in_all():
    settings = config.from_env({})
    assert settings["ADMIN_IDLE_MINUTES"] == 30
    assert settings["ADMIN_SESSION_HOURS"] == 12
    changed = config.from_env({"ADMIN_IDLE_MINUTES": "10", "ADMIN_SESSION_HOURS": "8"})
    assert (changed["ADMIN_IDLE_MINUTES"], changed["ADMIN_SESSION_HOURS"]) == (10, 8)


def test_a_session_unused_for_30_minutes_ends(app, owner):
    rows(app, "UPDATE admin_sessions SET last_seen_at = ?", [ago(minutes=29)])
    assert owner.get("/admin").status_code == 200
    rows(app, "UPDATE admin_sessions SET last_seen_at = ?", [ago(minutes=31)])
    response = owner.get("/admin")
    assert response.status_code == 302
    assert "Your session has ended" in owner.get(response.location).get_data(as_text=True)


def test_a_session_in_constant_use_still_ends_after_ADMIN_SESSION_HOURS(settings):
    app = create_app(settings | {"ADMIN_SESSION_HOURS": 2})
    create_admin(app, "owner")
    client = app.test_client()
    assert sign_in(client).status_code == 303
    # Used a minute ago, started just under the limit: still open.
    rows(app, "UPDATE admin_sessions SET created_at = ?, last_seen_at = ?", [ago(hours=1, minutes=59), ago(minutes=1)])
    assert client.get("/admin").status_code == 200
    rows(app, "UPDATE admin_sessions SET created_at = ?", [ago(hours=2, minutes=1)])
    response = client.get("/admin/status")
    assert response.status_code == 302
    assert response.location == "/admin/login?next=/admin/status"
    assert "Your session has ended" in client.get(response.location).get_data(as_text=True)
    # Signing in again starts a new 2 hours, and the expired session is gone from the table.
    assert sign_in(client).status_code == 303
    assert client.get("/admin").status_code == 200
    assert len(rows(app, "SELECT * FROM admin_sessions")) == 1


def test_the_status_page_lists_open_sessions_by_browser_name(app):
    create_admin(app, "owner")
    phone = signed_in_browser(app, IPHONE)
    desktop = signed_in_browser(app, WINDOWS_CHROME)
    ended = signed_in_browser(app, "Mozilla/5.0 (X11; Linux x86_64; rv:125.0) Gecko/20100101 Firefox/125.0")
    rows(app, "UPDATE admin_sessions SET last_seen_at = ? WHERE browser = 'Firefox on Linux'", [ago(hours=1)])
    page = phone.get("/admin/status").get_data(as_text=True)
    assert "Where you are signed in" in page
    assert "<strong>Safari on iPhone</strong> (this browser)" in page
    assert "<strong>Chrome on Windows</strong>" in page
    assert "Chrome on Windows</strong> (this browser)" not in page
    assert "Firefox on Linux" not in page  # idle for an hour: that session has ended
    assert "AppleWebKit" not in page  # a short name, never the raw header
    assert "last seen just now" in page
    assert desktop.get("/admin/status").status_code == 200
    assert ended.get("/admin").status_code == 302


def test_sign_out_everywhere_ends_every_session_of_the_account(app):
    create_admin(app, "owner")
    create_admin(app, "deskperson", "front desk secret")
    phone = signed_in_browser(app, IPHONE)
    desktop = signed_in_browser(app, WINDOWS_CHROME)
    desk = signed_in_browser(app, WINDOWS_CHROME, "deskperson", "front desk secret")
    page = desktop.get("/admin/status").get_data(as_text=True)
    response = desktop.post("/admin/sessions/end-all", data={"csrf_token": csrf_token(page)})
    assert response.status_code == 303
    assert response.location == "/admin/login"
    assert "You are signed out everywhere: 2 sessions ended." in desktop.get("/admin/login").get_data(as_text=True)
    assert desktop.get("/admin").status_code == 302
    assert phone.get("/admin").status_code == 302
    assert desk.get("/admin").status_code == 200  # another account's session is its own
    [line] = rows(app, "SELECT * FROM audit_log WHERE action = 'signed out everywhere'")
    assert line["actor"] == "owner"
    assert sign_in(phone).status_code == 303


def test_sign_out_everywhere_needs_a_signed_in_post_with_its_token(app, owner):
    assert owner.get("/admin/sessions/end-all").status_code == 405
    assert owner.post("/admin/sessions/end-all").status_code == 400
    assert owner.get("/admin").status_code == 200
    stranger = app.test_client()
    response = stranger.post("/admin/sessions/end-all")
    assert response.status_code in (400, 303)
    assert owner.get("/admin").status_code == 200


@pytest.mark.parametrize(
    "user_agent, name",
    [
        (IPHONE, "Safari on iPhone"),
        (WINDOWS_CHROME, "Chrome on Windows"),
        (WINDOWS_CHROME + " Edg/124.0.2478.51", "Edge on Windows"),
        (
            "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) "
            "Version/17.4 Safari/605.1.15",
            "Safari on Mac",
        ),
        (
            "Mozilla/5.0 (Linux; Android 14; SM-S918B) AppleWebKit/537.36 (KHTML, like Gecko) "
            "SamsungBrowser/24.0 Chrome/117.0.0.0 Mobile Safari/537.36",
            "Samsung Internet on Android",
        ),
        (
            "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) "
            "CriOS/124.0.6367.88 Mobile/15E148 Safari/604.1",
            "Chrome on iPhone",
        ),
        ("Mozilla/5.0 (iPad; CPU OS 17_4 like Mac OS X) Gecko/20100101 Firefox/125.0 FxiOS/125.0", "Firefox on iPad"),
        ("curl/8.5.0", "curl"),
        ("", "An unknown browser"),
    ],
)
def test_browser_names_are_short_and_plain(user_agent, name):
    assert browser_name(user_agent) == name
