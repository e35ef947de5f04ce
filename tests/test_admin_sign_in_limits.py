"""What guessing costs: failures counted atomically, known browsers not locked out by strangers (until
"Sign out everywhere" or a new password), attempts limited per network, and only a couple of password checks at once."""

import contextlib
import re
import threading
import urllib.error
import urllib.parse
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from conftest import OWNER_PASSWORD, csrf_token, rows, sign_in
from itsdangerous import URLSafeTimedSerializer
from test_admin_live import create_admin as create_admin_on
from werkzeug.security import generate_password_hash

import db
import db.migrations
from admin import auth
from admin.devices import DEVICE_COOKIE
from app import create_app

ROOT = Path(__file__).resolve().parent.parent
NO_MATCH = "That username and password do not match"
PAUSED = "so sign-in is paused"
STRANGER_PAUSED = "Too many failed sign-ins for this account"
NEW_PASSWORD = "a brand new passphrase"
BUSY = "Many sign-ins are being checked right now"


@pytest.fixture
def app(settings):
    """The site with the per-network attempt limit out of the way, so the failure limits are what is seen."""
    app = create_app(settings | {"LOGIN_RATE_LIMIT": "1000 per minute"})
    for name, password in [("owner", OWNER_PASSWORD), ("deskperson", "front desk secret")]:
        result = app.test_cli_runner().invoke(args=["create-admin", name], input=password + "\n")
        assert result.exit_code == 0, result.output
    return app


def known_browser(app, name: str = "owner", password: str = OWNER_PASSWORD):
    """A browser that signed in once (so it holds a device cookie) and signed out again."""
    client = app.test_client()
    sign_in_and_out(client, name, password)
    return client


def sign_in_and_out(client, name: str = "owner", password: str = OWNER_PASSWORD) -> None:
    assert sign_in(client, name, password).status_code == 303
    assert client.get_cookie(DEVICE_COOKIE, path="/admin/login") is not None
    page = client.get("/admin").get_data(as_text=True)
    assert client.post("/admin/logout", data={"csrf_token": csrf_token(page)}).status_code == 303


def fail(client, times: int, name: str = "owner") -> list[int]:
    return [sign_in(client, name, "not the password").status_code for _ in range(times)]


def test_a_stranger_cannot_lock_the_owner_out_of_a_known_browser(app):
    most = app.config["LOGIN_MAX_FAILURES"]
    owners_phone = known_browser(app)
    attacker = app.test_client()
    assert fail(attacker, most + 2) == [401] * most + [429, 429]
    # A browser that never signed in is paused, even with the right password...
    fresh = sign_in(app.test_client())
    assert fresh.status_code == 429
    assert "Too many failed sign-ins for this account" in fresh.get_data(as_text=True)
    # ...but the owner's own browser is not.
    assert sign_in(owners_phone).status_code == 303
    assert owners_phone.get("/admin").status_code == 200
    # And its success does not reopen the account for strangers.
    assert sign_in(app.test_client()).status_code == 429


def assert_paused_like_a_stranger(client, password: str = OWNER_PASSWORD) -> None:
    paused = sign_in(client, "owner", password)
    assert paused.status_code == 429
    assert STRANGER_PAUSED in paused.get_data(as_text=True)


def let_the_pause_pass(app) -> None:
    """LOGIN_LOCK_MINUTES go by: the failures that paused sign-in no longer count."""
    long_ago = datetime.now(UTC) - timedelta(minutes=app.config["LOGIN_LOCK_MINUTES"] + 1)
    rows(app, "UPDATE login_failures SET at = ?", [long_ago.isoformat(timespec="seconds")])


def test_sign_out_everywhere_makes_every_known_browser_a_stranger_until_it_signs_in_again(app):
    most = app.config["LOGIN_MAX_FAILURES"]
    stolen_phone = known_browser(app)
    laptop = app.test_client()
    assert sign_in(laptop).status_code == 303
    page = laptop.get("/admin/status").get_data(as_text=True)
    assert laptop.post("/admin/sessions/end-all", data={"csrf_token": csrf_token(page)}).status_code == 303
    attacker = app.test_client()
    assert fail(attacker, most) == [401] * most
    # The phone's device cookie no longer counts, and neither does the one the laptop had when it clicked.
    assert_paused_like_a_stranger(stolen_phone)
    assert_paused_like_a_stranger(laptop)
    # Once the pause is over, the laptop signs in and so is known again; the phone, which did not, is not.
    let_the_pause_pass(app)
    sign_in_and_out(laptop)
    assert fail(attacker, most) == [401] * most
    assert sign_in(laptop).status_code == 303
    assert_paused_like_a_stranger(stolen_phone)


def test_a_new_password_from_the_command_line_makes_every_known_browser_a_stranger_until_it_signs_in_again(app):
    most = app.config["LOGIN_MAX_FAILURES"]
    stolen_phone, owners_phone = known_browser(app), known_browser(app)
    data_dir = Path(app.config["DATABASE"]).parent
    assert "Password of 'owner' changed" in create_admin_on(data_dir, "owner", NEW_PASSWORD)
    attacker = app.test_client()
    assert fail(attacker, most) == [401] * most
    assert_paused_like_a_stranger(stolen_phone, NEW_PASSWORD)
    assert_paused_like_a_stranger(owners_phone, NEW_PASSWORD)
    let_the_pause_pass(app)
    sign_in_and_out(owners_phone, password=NEW_PASSWORD)
    assert fail(attacker, most) == [401] * most
    assert sign_in(owners_phone, password=NEW_PASSWORD).status_code == 303
    assert_paused_like_a_stranger(stolen_phone, NEW_PASSWORD)


def test_device_cookies_from_before_the_upgrade_count_no_more_and_browsers_are_known_again_after_signing_in(settings):
    old = db.connect(str(Path(settings["DATA_DIR"]) / "leads.db"))
    db.migrations.clinic.apply(old, stop_before=db.migrations.m011_account_device_generation.__name__)
    now = datetime.now(UTC).isoformat(timespec="seconds")
    account = {"username": "owner", "password_hash": generate_password_hash(OWNER_PASSWORD)}
    old.table("accounts").insert({**account, "created_at": now, "updated_at": now})
    old.close()
    app = create_app(settings | {"LOGIN_RATE_LIMIT": "1000 per minute"})  # the upgrade
    owners_phone = app.test_client()
    # The cookie the site gave before the upgrade: signed with the same key, naming the account.
    issued = URLSafeTimedSerializer(settings["SECRET_KEY"], salt="admin-device").dumps(
        {"account": "owner", "device": "a phone"}
    )
    owners_phone.set_cookie(DEVICE_COOKIE, issued, path="/admin/login")
    most = app.config["LOGIN_MAX_FAILURES"]
    attacker = app.test_client()
    assert fail(attacker, most) == [401] * most
    assert_paused_like_a_stranger(owners_phone)
    let_the_pause_pass(app)
    sign_in_and_out(owners_phone)
    assert fail(attacker, most) == [401] * most
    assert sign_in(owners_phone).status_code == 303


def test_a_known_browser_has_its_own_smaller_limit(app):
    most = app.config["LOGIN_MAX_FAILURES"]
    own = auth.DEVICE_MAX_FAILURES
    assert own < most
    owners_laptop = known_browser(app)
    assert fail(owners_laptop, own) == [401] * own
    paused = sign_in(owners_laptop)
    assert paused.status_code == 429
    assert "Too many failed sign-ins in this browser" in paused.get_data(as_text=True)
    # Its failures are its own: the account is not paused for other browsers.
    assert sign_in(app.test_client()).status_code == 303


def test_a_device_cookie_counts_only_for_its_account_and_only_when_genuine(app):
    owners_phone = known_browser(app)
    attacker = app.test_client()
    fail(attacker, app.config["LOGIN_MAX_FAILURES"], name="deskperson")
    # The owner's device cookie does not vouch for another account.
    assert sign_in(owners_phone, "deskperson", "front desk secret").status_code == 429
    # A cookie that was not signed by this site is ignored: the browser is a stranger.
    fail(attacker, app.config["LOGIN_MAX_FAILURES"])
    genuine = owners_phone.get_cookie(DEVICE_COOKIE, path="/admin/login").value
    forger = app.test_client()
    forger.set_cookie(DEVICE_COOKIE, genuine[:-3] + "AAA", path="/admin/login")
    assert sign_in(forger).status_code == 429
    assert sign_in(owners_phone).status_code == 303


def test_sign_in_attempts_are_limited_per_client_network(settings):
    app = create_app(settings)  # the default LOGIN_RATE_LIMIT, 10 per minute
    result = app.test_cli_runner().invoke(args=["create-admin", "owner"], input=OWNER_PASSWORD + "\n")
    assert result.exit_code == 0
    owners_phone = known_browser(app)
    crowd = app.test_client()
    crowd.environ_base["REMOTE_ADDR"] = "127.0.0.7"
    page = crowd.get("/admin/login").get_data(as_text=True)
    data = {"password": "a guess at it", "csrf_token": csrf_token(page)}
    answers = [crowd.post("/admin/login", data={**data, "username": f"name{i}"}).status_code for i in range(11)]
    assert answers == [401] * 10 + [429]
    limited = crowd.post("/admin/login", data={**data, "username": "owner", "password": OWNER_PASSWORD})
    assert limited.status_code == 429
    assert "Too many tries in a short time" in limited.get_data(as_text=True)
    # Another network is not held back, and neither is a browser that signed in before.
    elsewhere = app.test_client()
    elsewhere.environ_base["REMOTE_ADDR"] = "127.0.0.9"
    assert sign_in(elsewhere).status_code == 303
    assert sign_in(owners_phone).status_code == 303


@contextlib.contextmanager
def taken(semaphore: threading.BoundedSemaphore, count: int):
    """Hold `count` turns of a semaphore, as that many sign-ins in this process would."""
    held = [semaphore.acquire(blocking=False) for _ in range(count)]
    try:
        assert all(held)
        yield
    finally:
        for _ in held:
            semaphore.release()


def assert_refused_as_busy(app, response) -> None:
    assert response.status_code == 503
    assert response.headers["Retry-After"] == "5"
    assert BUSY in response.get_data(as_text=True)
    assert rows(app, "SELECT * FROM login_failures") == []  # a password never checked is not a failure


def test_a_sign_in_that_gets_no_turn_to_check_its_password_is_refused_and_not_counted(app, monkeypatch):
    monkeypatch.setattr(auth, "HASH_WAIT_SECONDS", 0.1)
    client = app.test_client()
    with taken(auth.HASH_SLOTS, auth.HASH_SLOTS_MAX):  # two checks running: it waits, then gives up
        assert_refused_as_busy(app, sign_in(client, "owner", "not the password"))
    assert sign_in(client).status_code == 303


def test_when_the_line_is_full_strangers_are_refused_at_once_but_a_known_browser_waits(app):
    owners_phone = known_browser(app)
    with taken(auth.HASH_CALLERS, 2 * auth.HASH_SLOTS_MAX):  # two checks running and two waiting
        assert_refused_as_busy(app, sign_in(app.test_client()))
        assert sign_in(owners_phone).status_code == 303


@pytest.mark.slow
def test_parallel_wrong_passwords_cost_at_most_LOGIN_MAX_FAILURES_checks(serve):
    server = serve({"LOGIN_RATE_LIMIT": "1000 per minute"}, workers=2, threads=8)
    data_dir = server.log_path.parent
    assert "created" in create_admin_on(data_dir, "owner")
    with urllib.request.urlopen(server.url + "/admin/login") as response:
        cookie = response.headers["Set-Cookie"].split(";")[0]
        token = csrf_token(response.read().decode())
    body = urllib.parse.urlencode({"username": "owner", "password": "a wrong guess", "csrf_token": token}).encode()
    start = threading.Barrier(30)

    def guess(_) -> tuple[int, str]:
        request = urllib.request.Request(server.url + "/admin/login", data=body, headers={"Cookie": cookie})
        start.wait()
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return response.status, response.read().decode()
        except urllib.error.HTTPError as error:
            return error.code, error.read().decode()

    with ThreadPoolExecutor(30) as pool:
        answers = list(pool.map(guess, range(30)))
    statuses = [status for status, _ in answers]
    checked, busy = statuses.count(401), statuses.count(503)
    assert checked <= 5, statuses
    # A pause needs five recorded attempts, each of which was checked (401) or found no free turn (503).
    assert checked + busy >= 5, statuses
    assert statuses.count(429) == 30 - checked - busy, statuses
    for status, page in answers:
        assert {401: NO_MATCH, 429: PAUSED, 503: BUSY}[status] in page
    # Only the checked passwords count as failures, and each is in the activity log.
    assert rows_at(data_dir, "SELECT count(*) FROM login_failures WHERE key = 'account:owner'") == checked
    assert rows_at(data_dir, "SELECT count(*) FROM audit_log WHERE action = 'sign-in failed'") == checked


def rows_at(data_dir: Path, sql: str) -> int:
    import sqlite3

    conn = sqlite3.connect(data_dir / "leads.db")
    try:
        return conn.execute(sql).fetchone()[0]
    finally:
        conn.close()


def test_the_paused_message_names_the_minutes_left(app):
    client = app.test_client()
    fail(client, app.config["LOGIN_MAX_FAILURES"])
    page = sign_in(client).get_data(as_text=True)
    assert re.search(r"Please try again in 1[45] minutes\.", page)
