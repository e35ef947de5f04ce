"""Speed to lead: alerts through Apprise, the visitor's confirmation, the booking link, signed webhooks out."""

import json
import logging
import os
import re
import ssl
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
from datetime import UTC, datetime, timedelta
from http.cookiejar import CookieJar
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from conftest import OWNER_PASSWORD, csrf_token, drain, free_port, post_lead, rows, sign_in
from standardwebhooks import Webhook

import config
import db
import db.migrations
import outbox.addresses
import outbox.rows
import outbox.sender
from app import create_app

ROOT = Path(__file__).resolve().parent.parent
SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
UTM = "/?utm_source=google&utm_medium=cpc&utm_campaign=spring"


class Receiver:
    """An HTTP server on loopback that records every request and answers from a script, then 200."""

    def __init__(self, answers=(), certificate: dict | None = None):
        self.requests: list[dict] = []
        self.answers = list(answers)
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", 0))).decode()
                receiver.requests.append(
                    {"path": self.path, "headers": {k.lower(): v for k, v in self.headers.items()}, "body": body}
                )
                code = receiver.answers.pop(0) if receiver.answers else 200
                self.send_response(code)
                if 300 <= code < 400:
                    self.send_header("Location", f"http://127.0.0.1:{self.server.server_port}/elsewhere")
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        if certificate:  # HTTPS with a certificate no system trusts
            context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            context.load_cert_chain(certificate["cert"], certificate["key"])
            self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
        self.port = self.server.server_port
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def url(self, scheme: str = "http", path: str = "/hook") -> str:
        return f"{scheme}://127.0.0.1:{self.port}{path}"

    def wait_for(self, count: int, timeout: float = 15) -> list[dict]:
        deadline = time.monotonic() + timeout
        while len(self.requests) < count and time.monotonic() < deadline:
            time.sleep(0.02)
        return self.requests

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver():
    """Start receivers: receiver(answers=[500]) answers 500 once, then 200."""
    started = []

    def start(answers=(), certificate: dict | None = None) -> Receiver:
        started.append(Receiver(answers, certificate))
        return started[-1]

    yield start
    for one in started:
        one.stop()


def send_channels(app, now: datetime | None = None) -> int:
    """One pass of the alert and webhook sender, as its thread would run it."""
    return drain(app, now, outbox.sender.ALERTS_AND_WEBHOOKS)


def later(seconds: float) -> datetime:
    return datetime.now(UTC) + timedelta(seconds=seconds)


def signed_in(app):
    """A test client of `app`, signed in as an owner made with `flask create-admin owner`."""
    result = app.test_cli_runner().invoke(args=["create-admin", "owner"], input=OWNER_PASSWORD + "\n")
    assert result.exit_code == 0
    client = app.test_client()
    assert sign_in(client).status_code == 303
    return client


def verified(secret: str, request: dict) -> dict:
    """The event, once standardwebhooks has checked its signature (raises if it does not match)."""
    return Webhook(secret).verify(request["body"], request["headers"])


# Alerts


def test_alert_reaches_the_receiver_once_per_lead_without_health_details(settings, receiver):
    phone = receiver()
    app = create_app({**settings, "ALERT_URLS": phone.url("json")})
    client = app.test_client()
    post_lead(client, name="Jane Doe", phone="(949) 510 6333", message="My immune system needs help.")
    post_lead(client, name="Ann Lee", phone="(949) 510 7777", message="Back pain")
    assert send_channels(app) == 2
    assert send_channels(app, later(3600)) == 0
    alerts = [json.loads(r["body"]) for r in phone.requests]
    assert [a["message"] for a in alerts] == [
        "New appointment request #1 — open it: https://clinic.example/admin/leads/1",
        "New appointment request #2 — open it: https://clinic.example/admin/leads/2",
    ]
    for text in ("Jane", "Ann", "6333", "7777", "immune", "Back"):
        assert text not in json.dumps(alerts)


def test_alert_details_add_name_and_phone_but_never_the_message(settings, receiver):
    phone = receiver()
    app = create_app({**settings, "ALERT_URLS": phone.url("json"), "ALERT_DETAILS": True})
    post_lead(app.test_client(), message="My immune system needs help.")
    send_channels(app)
    [alert] = [json.loads(r["body"]) for r in phone.requests]
    assert "Jane Doe" in alert["message"] and "+19495106333" in alert["message"]
    assert "immune" not in json.dumps(alert)


def test_alert_answered_500_is_sent_again_then_never_more(settings, receiver):
    phone = receiver(answers=[500])
    app = create_app({**settings, "ALERT_URLS": phone.url("json")})
    post_lead(app.test_client())
    assert send_channels(app) == 0
    [row] = rows(app, "SELECT * FROM outbox WHERE channel = 'alert'")
    assert row["status"] == "pending" and "500" in row["last_error"]
    assert send_channels(app, later(5)) == 1
    assert send_channels(app, later(3600)) == 0
    assert len(phone.requests) == 2
    attempts = rows(app, "SELECT ok FROM email_attempts WHERE outbox_id = ?", [row["id"]])
    assert [a["ok"] for a in attempts] == [0, 1]


def test_every_alert_address_gets_its_own_alert(settings, receiver):
    one, two = receiver(), receiver()
    app = create_app({**settings, "ALERT_URLS": f"{one.url('json')}  {two.url('json')}"})
    post_lead(app.test_client())
    send_channels(app)
    assert (len(one.requests), len(two.requests)) == (1, 1)


def test_spam_sends_no_alert_webhook_or_confirmation(mail_settings, receiver, smtp):
    phone, hook = receiver(), receiver()
    app = create_app(
        {
            **mail_settings,
            "ALERT_URLS": phone.url("json"),
            "WEBHOOK_URL": hook.url(),
            "WEBHOOK_SECRET": SECRET,
            "AUTOREPLY": True,
        }
    )
    post_lead(app.test_client(), website="http://spam.example")  # the honeypot
    assert (send_channels(app), drain(app)) == (0, 0)
    assert (phone.requests, hook.requests, smtp.envelopes) == ([], [], [])
    assert rows(app, "SELECT status FROM leads") == [{"status": "spam"}]


def test_mail_server_down_holds_back_no_alert_and_a_dead_alert_no_email(settings, receiver, smtp):
    phone = receiver()
    closed = free_port()
    down_mail = create_app(
        {
            **settings,
            "MAIL_SERVER": "127.0.0.1",
            "MAIL_PORT": closed,
            "MAIL_TIMEOUT": 2,
            "ALERT_URLS": phone.url("json"),
        }
    )
    post_lead(down_mail.test_client())
    assert drain(down_mail) == 0
    assert send_channels(down_mail) == 1
    assert rows(down_mail, "SELECT channel, status FROM outbox ORDER BY id") == [
        {"channel": "email", "status": "pending"},
        {"channel": "alert", "status": "sent"},
    ]

    settings["DATA_DIR"] = settings["DATA_DIR"] + "/second"
    dead_alert = create_app(
        {**settings, "MAIL_SERVER": "127.0.0.1", "MAIL_PORT": smtp.port, "ALERT_URLS": f"json://127.0.0.1:{closed}/x"}
    )
    post_lead(dead_alert.test_client())
    assert send_channels(dead_alert) == 0
    assert drain(dead_alert) == 1
    assert len(smtp.envelopes) == 1


# The visitor's confirmation and the booking link


@pytest.fixture
def confirming(mail_settings):
    mail_settings.update(AUTOREPLY=True, BOOKING_URL="https://booking.example/clinic?location=1&utm_source=site")
    return mail_settings


def confirmations(smtp) -> list:
    return [m for m in smtp.messages if m["To"] != "owner@clinic.example"]


def test_confirmation_reaches_the_visitor_with_phone_and_booking_link_and_none_of_their_words(confirming, smtp):
    app = create_app(confirming)
    client = app.test_client()
    post_lead(client, UTM, name="Jane Doe", email="Jane@Example.com", message="My immune system")
    assert drain(app) == 2
    [mail] = confirmations(smtp)
    assert mail["To"] == "jane@example.com"
    assert mail["Reply-To"] == "owner@clinic.example"
    text = mail.get_body(("plain",)).get_content()
    html = mail.get_body(("html",)).get_content()
    [link] = re.findall(r"https://clinic\.example/book/\S+", text)  # the site's own link, not the visit's tags
    assert link in html and "Book online" in html and "spring" not in mail.as_string()
    booking = "https://booking.example/clinic?location=1&utm_source=site&utm_medium=cpc&utm_campaign=spring"
    assert client.get(link.removeprefix("https://clinic.example")).headers["Location"] == booking
    assert "949-510-6333" in text and "within one working day" in text
    for words in ("Jane", "immune"):
        assert words not in mail.as_string()


def test_confirmation_goes_once_a_day_to_an_address_and_never_without_one(confirming, smtp):
    app = create_app(confirming)
    client = app.test_client()
    post_lead(client, email="jane@example.com")
    post_lead(client, email="JANE@example.com")
    post_lead(client, email="", phone="(949) 510 6333")
    assert drain(app) == 4  # three to the clinic, one to Jane
    assert [m["To"] for m in confirmations(smtp)] == ["jane@example.com"]
    database = db.connect(app.config["DATABASE"])
    tomorrow = (datetime.now(UTC) + timedelta(days=1, minutes=1)).isoformat(timespec="seconds")
    with app.test_request_context():
        lead = {"id": 4, "email": "jane@example.com", "utm_source": "", "is_spam": 0}
        assert outbox.rows.confirmation_rows(database, lead, app.config, tomorrow)
    database.close()


WORDS = "Your-card-was-charged-499-USD-call-1-800-555-0100-to-cancel"
BOOKING = "https://booking.example/clinic?location=1"


def test_the_confirmation_links_to_the_site_which_sends_the_visitor_on_with_the_leads_tags(confirming, smtp):
    app = create_app({**confirming, "BOOKING_URL": BOOKING})
    client = app.test_client()
    post_lead(client, f"/?utm_source=google&utm_medium=cpc&utm_campaign={WORDS}", email="victim@example.com")
    assert drain(app) == 2
    [mail] = confirmations(smtp)
    assert WORDS not in mail.as_string() and "card" not in mail.as_string()
    text = mail.get_body(("plain",)).get_content()
    [link] = re.findall(r"https://clinic\.example/book/\S+", text)
    assert link in mail.get_body(("html",)).get_content()
    booked = client.get(link.removeprefix("https://clinic.example"))
    assert booked.status_code == 303
    # The stored tags, as the booking link always took them (the visitor's own browser, to the clinic's booking page).
    assert booked.headers["Location"] == f"{BOOKING}&utm_source=google&utm_medium=cpc&utm_campaign={WORDS}"
    assert booked.headers["Cache-Control"] == "no-store"
    for bad in (link.rsplit("/", 1)[1][:-2] + "xx", "1", "MQ.forged"):
        missing = client.get(f"/book/{bad}")
        assert missing.status_code == 404 and "949-510-6333" in missing.get_data(as_text=True)


def test_one_confirmation_a_day_per_mailbox_whatever_its_spelling(confirming, smtp):
    app = create_app({**confirming, "BOOKING_URL": BOOKING})
    client = app.test_client()
    for address in ("victim@gmail.com", "victim+a@gmail.com", "v.ictim@gmail.com", "Vic.tim+b@googlemail.com"):
        post_lead(client, email=address)
    post_lead(client, email="jane@example.com")
    post_lead(client, email="jane+news@example.com")
    post_lead(client, email="ja.ne@example.com")  # another mailbox outside Gmail
    drain(app)
    assert [m["To"] for m in confirmations(smtp)] == ["victim@gmail.com", "jane@example.com", "ja.ne@example.com"]


def test_a_confirmation_queued_before_the_upgrade_still_counts_for_its_mailbox(confirming, smtp, tmp_path):
    path = str(tmp_path / "leads.db")
    earlier = db.connect(path)
    db.migrations.clinic.ensure_migrations_table(earlier)
    for migration in db.migrations.clinic.pending(earlier):  # the schema as it was before the mailbox column
        if migration.name == "m017_confirmation_mailbox":
            break
        with earlier.atomic():
            migration.fn(earlier)
            earlier["_sqlite_migrations"].insert({"migration_set": "clinic", "name": migration.name, "applied_at": "x"})
    now = db.utcnow()
    confirmation = {"kind": "autoreply", "message_id": "<m@x>", "to_addr": "Vic.Tim+old@gmail.com", "subject": "s"}
    confirmation.update(body_text="b", status="sent", attempts=1, next_attempt_at=now, created_at=now, updated_at=now)
    earlier["outbox"].insert(confirmation)
    earlier.conn.commit()
    earlier.close()

    app = create_app({**confirming, "DATABASE": path})
    post_lead(app.test_client(), email="victim@gmail.com")
    post_lead(app.test_client(), email="someone@gmail.com")
    drain(app)
    assert [m["To"] for m in confirmations(smtp)] == ["someone@gmail.com"]


def test_past_autoreply_max_per_hour_confirmations_are_skipped_counted_and_logged_once(confirming, smtp, caplog):
    app = create_app({**confirming, "AUTOREPLY_MAX_PER_HOUR": 2})
    client = app.test_client()
    with caplog.at_level(logging.WARNING, logger="clinic.confirmation"):
        for i in range(5):
            assert post_lead(client, email=f"visitor{i}@example.com").status_code == 303
    drain(app)
    assert [m["To"] for m in confirmations(smtp)] == ["visitor0@example.com", "visitor1@example.com"]
    assert sum(m["To"] == "owner@clinic.example" for m in smtp.messages) == 5  # the clinic hears of every one
    assert len([r for r in caplog.records if "AUTOREPLY_MAX_PER_HOUR" in r.getMessage()]) == 1
    runner = app.test_cli_runner()
    runner.invoke(args=["create-admin", "owner"], input="correct horse battery staple\n")
    sign_in(client)
    status = client.get("/admin/status").get_data(as_text=True)
    assert "on, at most 2 an hour" in status and "3 skipped in the last 30 days" in status


def test_confirmation_is_off_by_default(mail_settings, smtp):
    app = create_app(mail_settings)
    post_lead(app.test_client())
    drain(app)
    assert [m["To"] for m in smtp.messages] == ["owner@clinic.example"]


def test_thanks_shows_the_booking_button_with_the_visits_campaign(settings):
    app = create_app({**settings, "BOOKING_URL": "https://booking.example/book?utm_campaign=own"})
    client = app.test_client()
    html = client.get(post_lead(client, UTM).headers["Location"]).get_data(as_text=True)
    [link] = re.findall(r'<a class="button" href="(/book/[^"]+)">Book online</a>', html)  # counted on its way
    booked = client.get(link)
    assert (
        booked.headers["Location"] == "https://booking.example/book?utm_campaign=own&utm_source=google&utm_medium=cpc"
    )
    again = client.get("/thanks").get_data(as_text=True)  # the request left the session with the name
    assert '<a class="button" href="/book">Book online</a>' in again
    assert client.get("/book").headers["Location"] == "https://booking.example/book?utm_campaign=own"


def test_thanks_has_no_booking_button_without_booking_url(settings):
    client = create_app(settings).test_client()
    html = client.get(post_lead(client, UTM).headers["Location"]).get_data(as_text=True)
    assert "Book online" not in html and "Thank you, Jane Doe!" in html


def test_a_campaign_tag_that_is_not_one_stays_off_the_link(settings):
    app = create_app({**settings, "BOOKING_URL": "https://booking.example/book"})
    client = app.test_client()
    html = client.get(post_lead(client, "/?utm_source=Call+555+now&utm_medium=cpc").headers["Location"]).get_data(
        as_text=True
    )
    [link] = re.findall(r'<a class="button" href="(/book/[^"]+)">Book online</a>', html)
    assert client.get(link).headers["Location"] == "https://booking.example/book?utm_medium=cpc"


# Webhooks


@pytest.fixture
def hook(settings, receiver):
    """A webhook receiver, set as WEBHOOK_URL; ask for it before `app` or `owner`."""
    found = receiver()
    settings.update(WEBHOOK_URL=found.url(), WEBHOOK_SECRET=SECRET)
    return found


def test_webhook_secret_command_prints_a_secret_the_site_and_the_library_accept(settings, receiver):
    env = {**os.environ, "DATA_DIR": settings["DATA_DIR"], "SECRET_KEY": "x"}
    flask = str(Path(sys.executable).with_name("flask"))
    result = subprocess.run(
        [flask, "--app", "app", "webhook-secret"], cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    secret = result.stdout.strip()
    assert re.fullmatch(r"whsec_[A-Za-z0-9+/]{43}=", secret)
    site = receiver()
    app = create_app({**settings, "WEBHOOK_URL": site.url(), "WEBHOOK_SECRET": secret})
    post_lead(app.test_client(), UTM)
    send_channels(app)
    event = verified(secret, site.requests[0])
    assert event["type"] == "lead.created"


def test_lead_created_carries_the_lead_signed_per_standard_webhooks(hook, app, client):
    post_lead(client, UTM, message="Back pain")
    assert send_channels(app) == 1
    [request] = hook.requests
    event = verified(SECRET, request)
    assert set(request["headers"]) >= {"webhook-id", "webhook-timestamp", "webhook-signature"}
    assert request["headers"]["webhook-signature"].startswith("v1,")
    assert event["type"] == "lead.created"
    assert set(event) == {"type", "timestamp", "data"}
    assert set(event["data"]) == {
        "id",
        "name",
        "email",
        "phone",
        "message",
        "status",
        "utm_source",
        "utm_medium",
        "utm_campaign",
        "referrer",
        "created_at",
        "admin_url",
        "landing_page",  # the article the request was sent from (issue 12)
    }
    data = event["data"]
    assert (data["id"], data["name"], data["phone"], data["message"], data["status"]) == (
        1,
        "Jane Doe",
        "+19495106333",
        "Back pain",
        "new",
    )
    assert (data["utm_source"], data["utm_campaign"]) == ("google", "spring")
    assert data["admin_url"] == "https://clinic.example/admin/leads/1"
    with pytest.raises(Exception, match="signature"):
        Webhook("whsec_" + "A" * 43 + "=").verify(request["body"], request["headers"])


def test_status_change_and_note_send_lead_updated(hook, app, owner):
    post_lead(owner)
    send_channels(app)
    page = owner.get("/admin/leads/1").get_data(as_text=True)
    saved = owner.post("/admin/leads/1", data={"csrf_token": csrf_token(page), "status": "contacted", "note": "Called"})
    assert saved.status_code == 303
    assert send_channels(app) == 1
    event = verified(SECRET, hook.requests[-1])
    assert (event["type"], event["data"]["status"]) == ("lead.updated", "contacted")
    owner.post("/admin/leads/1/spam", data={"csrf_token": csrf_token(page), "spam": "1"})
    assert send_channels(app) == 0  # never for spam
    assert len(hook.requests) == 2


def test_webhook_answered_503_is_sent_again_under_one_id_then_never_again(settings, receiver, app, client):
    site = receiver(answers=[503])
    app = create_app({**settings, "WEBHOOK_URL": site.url(), "WEBHOOK_SECRET": SECRET})
    post_lead(app.test_client())
    assert send_channels(app) == 0
    assert send_channels(app, later(5)) == 1
    assert send_channels(app, later(3600)) == 0
    first, second = site.requests
    assert first["headers"]["webhook-id"] == second["headers"]["webhook-id"]
    assert verified(SECRET, first) == verified(SECRET, second)


@pytest.mark.parametrize("answer, reason", [(400, "answered 400"), (410, "answered 410"), (302, "not followed")])
def test_webhook_refused_or_redirected_fails_for_good(settings, receiver, answer, reason):
    site = receiver(answers=[answer])
    app = create_app({**settings, "WEBHOOK_URL": site.url(), "WEBHOOK_SECRET": SECRET})
    post_lead(app.test_client())
    assert send_channels(app) == 0
    assert send_channels(app, later(3600)) == 0
    assert [r["path"] for r in site.requests] == ["/hook"]  # the redirect's /elsewhere is never asked
    [row] = rows(app, "SELECT status, last_error FROM outbox WHERE channel = 'webhook'")
    assert row["status"] == "failed" and reason in row["last_error"]


def test_webhook_receiver_down_is_retried(settings):
    app = create_app({**settings, "WEBHOOK_URL": f"http://127.0.0.1:{free_port()}/hook", "WEBHOOK_SECRET": SECRET})
    post_lead(app.test_client())
    assert send_channels(app) == 0
    [row] = rows(app, "SELECT status, last_error FROM outbox WHERE channel = 'webhook'")
    assert row["status"] == "pending" and "could not connect" in row["last_error"]


def test_webhook_over_https_verifies_the_receivers_certificate(settings, receiver, certificate, monkeypatch):
    site = receiver(certificate=certificate)
    app = create_app({**settings, "WEBHOOK_URL": site.url("https"), "WEBHOOK_SECRET": SECRET})
    post_lead(app.test_client())
    monkeypatch.delenv("SSL_CERT_FILE", raising=False)
    assert send_channels(app) == 0
    [row] = rows(app, "SELECT status, last_error FROM outbox WHERE channel = 'webhook'")
    assert row["status"] == "pending" and "CERTIFICATE_VERIFY_FAILED" in row["last_error"]
    assert site.requests == []
    monkeypatch.setenv("SSL_CERT_FILE", certificate["cert"])  # the receiver's CA is trusted from now on
    assert send_channels(app, later(3600)) == 1
    [delivered] = site.requests
    assert json.loads(delivered["body"])["type"] == "lead.created" and delivered["headers"]["webhook-signature"]


@pytest.mark.parametrize(
    "name, value",
    [("WEBHOOK_SECRET", "not-a-secret"), ("WEBHOOK_URL", "ftp://x.example"), ("BOOKING_URL", "javascript:alert(1)")],
)
def test_bad_channel_settings_stop_start_up(name, value):
    with pytest.raises(config.ConfigError, match=name):
        config.finish_channels(
            {"ALERT_URLS": "", "BOOKING_URL": None, "WEBHOOK_URL": None, "WEBHOOK_SECRET": None, name: value}
        )


# The owner sees every channel


def test_status_page_lists_each_channel_masked_with_its_last_failure_and_a_test(settings, receiver, client):
    phone, site = receiver(answers=[500]), receiver()
    alert_url = f"json://owner:s3cretpass@127.0.0.1:{phone.port}/alerts"
    settings.update(ALERT_URLS=alert_url, WEBHOOK_URL=site.url("http", "/hook/t0ken"), WEBHOOK_SECRET=SECRET)
    app = create_app(settings)
    owner = signed_in(app)
    post_lead(owner)
    send_channels(app)
    html = owner.get("/admin/status").get_data(as_text=True)
    assert f"json://owner:****@127.0.0.1:{phone.port}/alerts" in html
    assert f"Webhook to http://127.0.0.1:{site.port}/…" in html
    assert "s3cretpass" not in html and "t0ken" not in html
    assert "error=500" in html
    assert "Phone alerts are failing" in owner.get("/admin").get_data(as_text=True)
    key = outbox.addresses.target_key(alert_url)
    queued = owner.post(f"/admin/status/test/{key}", data={"csrf_token": csrf_token(html)})
    assert queued.status_code == 303
    send_channels(app, later(5))
    assert any("Test alert from the clinic website" in r["body"] for r in phone.requests)
    html = owner.get("/admin/status").get_data(as_text=True)
    assert "Last success: never" not in html.split("Phone alert to")[1].split("</li>")[0]
    owner.post(
        f"/admin/status/test/{outbox.addresses.target_key(site.url('http', '/hook/t0ken'))}",
        data={"csrf_token": csrf_token(html)},
    )
    send_channels(app, later(10))
    assert verified(SECRET, site.requests[-1])["type"] == "webhook.test"
    assert owner.post("/admin/status/test/nosuchkey", data={"csrf_token": csrf_token(html)}).status_code == 404


def test_status_page_masks_ntfy_topics_as_apprise_masks_tokens(settings, client):
    # Apprise masks a Telegram bot's token, a Discord or Slack webhook's and Twilio's; an ntfy topic it shows
    # in full, though anyone who knows the topic can read the alerts.
    settings.update(
        ALERT_URLS="ntfys://clinic-phone-m4v8r1zp https://ntfy.sh/clinic-desk-q7w2e9 "
        "ntfy://user:s3cretpass@ntfy.clinic.example/clinic-alerts-7f3k9q2x "
        "tgram://123456789:AAbbCCddEEff/987654321 discord://4174216298/JHMHI8qBe7bk2ZwO5U711o "
        "slack://T1JJ3T3L2/A1BRTD4JD/TIiajkdnlazkcOXrIdevi7FQ"
    )
    html = signed_in(create_app(settings)).get("/admin/status").get_data(as_text=True)
    for topic in ("clinic-phone-m4v8r1zp", "clinic-desk-q7w2e9", "clinic-alerts-7f3k9q2x"):
        assert topic not in html
    assert "Phone alert to ntfys://c...p<" in html
    assert "Phone alert to ntfys://c...9<" in html
    assert "Phone alert to ntfy://user:****@ntfy.clinic.example/c...x<" in html
    assert "Phone alert to tgram://1...f/987654321/<" in html
    assert "Phone alert to discord://4...8/J...o/<" in html
    assert "Phone alert to slack://T...2/A...D/T...Q//<" in html
    for secret in ("s3cretpass", "AAbbCCddEEff", "JHMHI8qBe7bk2ZwO5U711o", "TIiajkdnlazkcOXrIdevi7FQ"):
        assert secret not in html


def test_a_failing_ntfy_alert_keeps_its_topic_off_the_status_and_lead_pages(settings, receiver):
    own_server = receiver(answers=[500])
    settings.update(ALERT_URLS=f"ntfy://127.0.0.1:{own_server.port}/clinic-alerts-7f3k9q2x")
    app = create_app(settings)
    owner = signed_in(app)
    post_lead(owner)
    send_channels(app)
    assert json.loads(own_server.requests[0]["body"])["topic"] == "clinic-alerts-7f3k9q2x"  # sent to the real topic
    html = owner.get("/admin/status").get_data(as_text=True)
    assert f"Phone alert to ntfy://127.0.0.1:{own_server.port}/c...x:" in html  # the alert waiting for a retry
    assert "topic &#39;c...x&#39;" in html and "error=500" in html  # and why, as Apprise said it
    [lead_id] = [row["id"] for row in rows(app, "SELECT id FROM leads")]
    lead_page = owner.get(f"/admin/leads/{lead_id}").get_data(as_text=True)
    assert f"to ntfy://127.0.0.1:{own_server.port}/c...x:" in lead_page
    for page in (html, lead_page):
        assert "clinic-alerts-7f3k9q2x" not in page


def test_ntfy_topics_stored_in_full_before_the_upgrade_are_masked_by_it(settings):
    old = db.connect(str(Path(settings["DATA_DIR"]) / "leads.db"))
    db.migrations.clinic.apply(old, stop_before=db.migrations.m012_mask_stored_ntfy_topics.__name__)
    now = db.utcnow()
    lead = {"form_id": "f1", "created_at": now, "updated_at": now, "name": "Old", "status": "new"}
    lead_id = old.table("leads").insert(lead).last_pk
    own_server, cloud = "ntfy://127.0.0.1:8080/clinic-alerts-7f3k9q2x", "ntfys://clinic-phone-m4v8r1zp"
    error = "Failed to send ntfy notification to topic 'clinic-alerts-7f3k9q2x': Internal server error., error=500."
    alert = {"lead_id": lead_id, "kind": "alert", "channel": "alert", "subject": "New appointment request #1"}
    alert.update(body_text="-", attempts=1, created_at=now, updated_at=now)
    failed = {**alert, "message_id": "a1", "to_addr": own_server, "status": "failed", "last_error": error}
    failed_id = old.table("outbox").insert(failed).last_pk
    old.table("email_attempts").insert({"outbox_id": failed_id, "at": now, "ok": 0, "error": error})
    old.table("outbox").insert({**alert, "message_id": "a2", "to_addr": cloud, "status": "sent", "sent_at": now})
    old.table("audit_log").insert({"at": now, "actor": "owner", "action": "test alert queued", "detail": cloud})
    old.close()
    app = create_app(settings)  # the upgrade
    owner = signed_in(app)
    status_page = owner.get("/admin/status").get_data(as_text=True)
    lead_page = owner.get(f"/admin/leads/{lead_id}").get_data(as_text=True)
    assert "Phone alert to ntfy://127.0.0.1:8080/c...x:" in status_page
    assert "topic &#39;c...x&#39;: Internal server error., error=500." in status_page
    assert "test alert queued, ntfys://c...p" in status_page
    assert "to ntfy://127.0.0.1:8080/c...x:" in lead_page and "to ntfys://c...p:" in lead_page
    for page in (status_page, lead_page):
        assert "clinic-alerts-7f3k9q2x" not in page and "clinic-phone-m4v8r1zp" not in page


def test_check_reports_a_webhook_without_secret_or_unreachable_and_an_unknown_alert_url(settings):
    settings.update(WEBHOOK_URL=f"http://127.0.0.1:{free_port()}/hook", ALERT_URLS="nosuchservice://x")
    app = create_app(settings)
    output = app.test_cli_runner().invoke(args=["check"]).output
    assert "WEBHOOK_URL is set without WEBHOOK_SECRET" in output
    assert "cannot be reached" in output
    assert "ALERT_URLS: nosuchservice://" in output


# Through the real gunicorn


class KeepRedirects(urllib.request.HTTPRedirectHandler):
    """Follow no redirect: a 3xx is raised as an HTTPError with its Location."""

    def redirect_request(self, *args):
        return None


def test_a_lead_over_http_reaches_every_channel(serve, smtp, receiver):
    phone, site = receiver(), receiver()
    server = serve(
        {
            "MAIL_SERVER": "127.0.0.1",
            "MAIL_PORT": str(smtp.port),
            "ALERT_URLS": phone.url("json"),
            "ALERT_DETAILS": "true",
            "WEBHOOK_URL": site.url(),
            "WEBHOOK_SECRET": SECRET,
            "AUTOREPLY": "true",
            "BOOKING_URL": "https://booking.example/book",
            "CONTACT_RATE_LIMIT": "1000 per minute",
        }
    )
    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(CookieJar()))
    page = opener.open(server.url + UTM).read().decode()
    fields = dict(re.findall(r'<input id="\w+" name="(\w+)" type="hidden" value="([^"]*)"', page))
    fields.update(name="Jane Doe", phone="949 510 6333", email="jane@example.com", message="Hello")
    response = opener.open(server.url + "/contact", data=urllib.parse.urlencode(fields).encode())
    [link] = re.findall(r'<a class="button" href="(/book/[^"]+)">Book online</a>', response.read().decode())
    no_redirect = urllib.request.build_opener(KeepRedirects)  # the 303 itself, not the booking site
    with pytest.raises(urllib.error.HTTPError) as booked:
        no_redirect.open(server.url + link)
    assert (
        booked.value.headers["Location"]
        == "https://booking.example/book?utm_source=google&utm_medium=cpc&utm_campaign=spring"
    )
    booked.value.close()
    assert len(phone.wait_for(1)) == 1 and len(site.wait_for(1)) == 1
    assert "Jane Doe" in json.loads(phone.requests[0]["body"])["message"]
    assert verified(SECRET, site.requests[0])["data"]["email"] == "jane@example.com"
    mails = smtp.wait_for(2)
    assert sorted(m["To"] for m in mails) == ["frontdesk@acupuncturehalls.example", "jane@example.com"]
    time.sleep(1)  # a second delivery would have come by now
    assert (len(phone.requests), len(site.requests), len(smtp.envelopes)) == (1, 1, 2)


def test_privacy_page_says_what_alerts_and_webhooks_carry(settings):
    plain = create_app(settings).test_client().get("/privacy").get_data(as_text=True)
    assert "messaging service" not in plain and "booking and contact tools" not in plain
    settings.update(ALERT_URLS="ntfys://topic", ALERT_DETAILS=True, WEBHOOK_URL="https://hooks.example/x")
    html = create_app(settings).test_client().get("/privacy").get_data(as_text=True)
    assert "only your name and phone number" in html and "booking and contact tools" in html


def test_a_failed_webhook_sent_again_keeps_its_webhook_id(settings, receiver):
    site = receiver(answers=[400])
    app = create_app({**settings, "WEBHOOK_URL": site.url(), "WEBHOOK_SECRET": SECRET})
    client = signed_in(app)
    post_lead(client)
    send_channels(app)
    [row] = rows(app, "SELECT id FROM outbox WHERE channel = 'webhook'")
    html = client.get("/admin/leads/1").get_data(as_text=True)
    assert "Webhook lead.created" in html and "answered 400" in html
    client.post(f"/admin/emails/{row['id']}/resend", data={"csrf_token": csrf_token(html)})
    assert send_channels(app) == 1
    first, second = site.requests
    assert first["headers"]["webhook-id"] == second["headers"]["webhook-id"]


def test_outbox_send_command_delivers_due_alerts_too(settings, receiver):
    phone = receiver()
    app = create_app({**settings, "ALERT_URLS": phone.url("json")})
    post_lead(app.test_client())
    result = app.test_cli_runner().invoke(args=["outbox", "send", "--to-files"])
    assert "1 alert(s) and webhook event(s) delivered" in result.output and "1 email(s) sent" in result.output
    assert len(phone.requests) == 1


def test_lead_event_carries_the_landing_page_when_leads_have_one(settings):
    app = create_app({**settings, "WEBHOOK_URL": "https://hooks.example/x", "WEBHOOK_SECRET": SECRET})
    lead = {"id": 3, "name": "Jane Doe", "status": "new", "created_at": "2026-11-29T10:00:00+00:00"}
    [row] = outbox.rows.lead_event("lead.created", {**lead, "landing_page": "/articles/migraine"}, app.config, "now")
    assert json.loads(row["body_text"])["data"]["landing_page"] == "/articles/migraine"
    [row] = outbox.rows.lead_event("lead.created", lead, app.config, "now")
    assert "landing_page" not in json.loads(row["body_text"])["data"]
