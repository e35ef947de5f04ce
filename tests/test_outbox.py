"""The clinic's notification email, delivered from the outbox to a real SMTP server."""

import socket
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from conftest import add_lead, drain, free_port, post_lead, rows

import db
import db.outbox
from app import create_app, start_background, stop_background
from forms import MESSAGE_MAX
from outbox.rows import lead_email
from outbox.sender import EMAIL, backoff


def outbox(app) -> list[dict]:
    return rows(app, "SELECT * FROM outbox ORDER BY id")


def attempts(app) -> list[dict]:
    return rows(app, "SELECT * FROM email_attempts ORDER BY id")


@pytest.fixture
def mail_app(settings, smtp):
    settings.update(MAIL_SERVER="127.0.0.1", MAIL_PORT=smtp.port, MAIL_TIMEOUT=2)
    return create_app(settings)


def test_lead_email_reaches_the_clinic_with_every_field(mail_app, smtp):
    post_lead(mail_app.test_client(), "/?utm_source=facebook&utm_campaign=winter")
    assert drain(mail_app) == 1
    [envelope] = smtp.envelopes
    assert envelope.rcpt_tos == ["owner@clinic.example"]
    [msg] = smtp.messages
    assert msg["Subject"] == "New appointment request: Jane Doe"
    assert msg["To"] == "owner@clinic.example"
    assert msg["Reply-To"] == "jane@example.com"
    text = msg.get_body(("plain",)).get_content()
    for words in [
        "Jane Doe",
        "+19495106333",
        "jane@example.com",
        "morning",
        "My immune system needs help.",
        "facebook",
        "winter",
        "https://clinic.example/admin/leads/1",
    ]:
        assert words in text
    assert "PST" in text or "PDT" in text
    html = msg.get_body(("html",)).get_content()
    assert 'href="https://clinic.example/admin/leads/1"' in html
    assert outbox(mail_app)[0]["status"] == "sent"


def test_no_reply_to_without_a_visitor_address(mail_app, smtp):
    post_lead(mail_app.test_client(), email="")
    drain(mail_app)
    [msg] = smtp.messages
    assert msg["Reply-To"] is None


def test_html_in_a_lead_is_inert_in_the_html_email(mail_app, smtp):
    post_lead(mail_app.test_client(), name="<script>alert(1)</script>", message='<img src=x onerror="x()">')
    drain(mail_app)
    html = smtp.messages[0].get_body(("html",)).get_content()
    assert "<script>" not in html and "<img" not in html
    assert "&lt;script&gt;" in html


@pytest.mark.parametrize("sep", ["\x0b", "\x0c", "\x1c", "\x85", "\u2028", "\u2029"])
def test_control_characters_cannot_inject_headers(mail_app, smtp, sep):
    name = f"Eve{sep}Bcc: victim@example.com"
    # The form refuses a line break in the name; the email builder must hold even when handed one.
    client = mail_app.test_client()
    assert post_lead(client, name=name).status_code == 422
    now = db.utcnow()
    lead_id = add_lead(mail_app, name="Eve")  # the email's lead must exist (foreign key)
    lead = {"id": lead_id, "name": name, "email": f"eve@example.com{sep}Bcc: x@example.com", "created_at": now}
    with mail_app.test_request_context():
        row = lead_email(lead, mail_app.config)
        with db.connect(mail_app.config["DATABASE"]) as database:
            db.outbox.enqueue(database, row, now)
    drain(mail_app)
    [envelope] = smtp.envelopes
    assert envelope.rcpt_tos == ["owner@clinic.example"]
    head = envelope.content.split(b"\r\n\r\n")[0]
    assert b"\r\nBcc:" not in head
    assert smtp.messages[0]["Subject"] == "New appointment request: Eve Bcc: victim@example.com"


def test_privacy_mode_sends_no_field_data(settings, smtp):
    settings.update(MAIL_SERVER="127.0.0.1", MAIL_PORT=smtp.port, NOTIFY_DETAILS=False)
    app = create_app(settings)
    post_lead(app.test_client())
    drain(app)
    [msg] = smtp.messages
    assert msg["Subject"] == "New request #1"
    assert msg["Reply-To"] is None
    raw = smtp.envelopes[0].content.decode()
    for private in ["Jane", "Doe", "9495106333", "jane@example.com", "immune"]:
        assert private not in raw
    assert "https://clinic.example/admin/leads/1" in msg.get_body(("plain",)).get_content()


def outage_lines(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "clinic.outbox" and r.levelname != "INFO"]


def test_smtp_outage_costs_one_attempt_and_one_log_line_per_pass(settings, smtp, caplog):
    settings.update(MAIL_SERVER="127.0.0.1", MAIL_PORT=free_port(), MAIL_TIMEOUT=2)  # nothing listens there
    app = create_app(settings)
    client = app.test_client()
    for i in range(5):
        assert post_lead(client, name=f"Visitor {i}").status_code == 303
    with caplog.at_level("INFO", logger="clinic.outbox"):
        assert drain(app) == 0
    assert len(attempts(app)) == 1
    [line] = outage_lines(caplog)
    assert "5 email(s) wait" in line and "Connection refused" in line
    waiting = outbox(app)
    assert {row["status"] for row in waiting} == {"pending"}
    assert len({row["next_attempt_at"] for row in waiting}) == 1  # backed off together
    assert all("Connection refused" in row["last_error"] for row in waiting)
    retry_at, tried_at = (datetime.fromisoformat(waiting[0][k]) for k in ("next_attempt_at", "updated_at"))
    assert retry_at - tried_at <= timedelta(seconds=5)

    # The next pass, when they fall due: again one attempt and one line, and a longer wait.
    caplog.clear()
    with caplog.at_level("INFO", logger="clinic.outbox"):
        assert drain(app, now=datetime.now(UTC) + timedelta(seconds=5)) == 0
    assert len(attempts(app)) == 2
    assert len(outage_lines(caplog)) == 1
    assert outbox(app)[0]["next_attempt_at"] > waiting[0]["next_attempt_at"]

    # The server comes up on the configured port; the next due pass delivers all five on one connection.
    app.config["MAIL_PORT"] = smtp.port
    assert drain(app, now=datetime.now(UTC) + timedelta(minutes=2)) == 5
    assert len(smtp.envelopes) == 5 and len(set(smtp.peers)) == 1
    assert [a["ok"] for a in attempts(app)] == [0, 0, 1, 1, 1, 1, 1]


def test_an_outage_opens_one_connection_per_pass(settings):
    hangs_up = socket.socket()  # accepts a connection and closes it before any greeting
    hangs_up.bind(("127.0.0.1", 0))
    hangs_up.listen()
    hangs_up.settimeout(0.2)
    accepted = []

    def answer() -> None:
        while hangs_up.fileno() != -1:
            try:
                conn, _ = hangs_up.accept()
            except OSError:
                continue
            accepted.append(1)
            conn.close()

    listener = threading.Thread(target=answer, daemon=True)
    listener.start()
    settings.update(MAIL_SERVER="127.0.0.1", MAIL_PORT=hangs_up.getsockname()[1], MAIL_TIMEOUT=2)
    app = create_app(settings)
    for i in range(4):
        post_lead(app.test_client(), name=f"Visitor {i}")
    drain(app)
    drain(app, now=datetime.now(UTC) + timedelta(seconds=5))
    hangs_up.close()
    listener.join()
    assert len(accepted) == 2
    assert {row["status"] for row in outbox(app)} == {"pending"}
    assert "closed" in outbox(app)[0]["last_error"]


def test_backoff_grows_and_is_capped_at_a_minute():
    waits = [backoff(n).total_seconds() for n in range(1, 10)]
    assert waits[0] <= 5
    assert waits == sorted(waits)
    assert max(waits) == 60


def test_temporary_refusal_is_retried(mail_app, smtp):
    smtp.reply = "451 Try again later"
    post_lead(mail_app.test_client())
    drain(mail_app)
    [row] = outbox(mail_app)
    assert row["status"] == "pending"
    assert row["last_error"].startswith("451")
    smtp.reply = None
    drain(mail_app, now=datetime.now(UTC) + timedelta(minutes=1))
    assert outbox(mail_app)[0]["status"] == "sent"
    assert len(smtp.envelopes) == 1


def test_permanent_refusal_marks_the_email_failed(mail_app, smtp):
    smtp.reply = "550 Mailbox unavailable"
    post_lead(mail_app.test_client())
    drain(mail_app)
    [row] = outbox(mail_app)
    assert row["status"] == "failed"
    assert row["last_error"].startswith("550")
    assert drain(mail_app, now=datetime.now(UTC) + timedelta(hours=1)) == 0


def test_a_server_that_never_answers_does_not_hang_the_sender(settings):
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen()
    settings.update(MAIL_SERVER="127.0.0.1", MAIL_PORT=silent.getsockname()[1], MAIL_TIMEOUT=0.5)
    app = create_app(settings)
    post_lead(app.test_client())
    started = datetime.now()
    drain(app)
    assert datetime.now() - started < timedelta(seconds=5)
    [row] = outbox(app)
    assert row["status"] == "pending"
    assert "timed out" in row["last_error"]
    silent.close()


def test_without_a_mail_server_emails_become_files(app, caplog):
    post_lead(app.test_client())
    with caplog.at_level("INFO", logger="clinic.outbox"):
        assert drain(app) == 1
    files = list((app.config["DATA_DIR"] and __import__("pathlib").Path(app.config["DATA_DIR"]) / "mail").glob("*.eml"))
    assert len(files) == 1
    assert b"New appointment request: Jane Doe" in files[0].read_bytes()
    assert str(files[0]) in caplog.text


def test_two_senders_never_send_one_email_twice(mail_app, smtp):
    client = mail_app.test_client()
    for i in range(20):
        post_lead(client, name=f"Visitor {i}")
    threads = [threading.Thread(target=drain, args=(mail_app,)) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    subjects = [m["Subject"] for m in smtp.messages]
    assert len(subjects) == 20
    assert len(set(subjects)) == 20


def test_one_connection_carries_every_due_email(mail_app, smtp):
    client = mail_app.test_client()
    for i in range(5):
        post_lead(client, name=f"Visitor {i}")
    assert drain(mail_app) == 5
    assert len(smtp.envelopes) == 5
    assert len(set(smtp.peers)) == 1


def test_an_email_claimed_by_a_dead_sender_is_sent_later(mail_app, smtp):
    post_lead(mail_app.test_client())
    now = datetime.now(UTC)
    with db.connect(mail_app.config["DATABASE"]) as database:
        claimed = db.outbox.claim_due_rows(database, now.isoformat(), (now - timedelta(minutes=2)).isoformat())
    assert len(claimed) == 1  # ...and the process holding it dies here
    assert drain(mail_app) == 0
    assert drain(mail_app, now=now + timedelta(minutes=3)) == 1
    assert len(smtp.envelopes) == 1


def test_background_sender_delivers_without_anyone_waiting(settings, smtp):
    settings.update(MAIL_SERVER="127.0.0.1", MAIL_PORT=smtp.port, OUTBOX_WORKER=True)
    app = create_app(settings)
    start_background(app)
    try:
        assert post_lead(app.test_client()).status_code == 303
        assert smtp.arrived.wait(10)
        assert smtp.messages[0]["Subject"] == "New appointment request: Jane Doe"
    finally:
        stop_background(app)
        EMAIL.wake.set()


def test_outbox_send_command_drains_once(mail_app, smtp):
    post_lead(mail_app.test_client())
    result = mail_app.test_cli_runner().invoke(args=["outbox", "send"])
    assert "1 email(s) sent" in result.output
    assert len(smtp.envelopes) == 1


def test_outbox_send_without_a_mail_server_refuses_to_write_files(app):
    post_lead(app.test_client())
    result = app.test_cli_runner().invoke(args=["outbox", "send"])
    assert result.exit_code == 1
    assert "MAIL_SERVER is not set" in result.output and "--to-files" in result.output
    assert outbox(app)[0]["status"] == "pending"
    assert not (Path(app.config["DATA_DIR"]) / "mail").exists()

    result = app.test_cli_runner().invoke(args=["outbox", "send", "--to-files"])
    assert "1 email(s) sent" in result.output
    assert len(list((Path(app.config["DATA_DIR"]) / "mail").glob("*.eml"))) == 1


def test_the_longest_message_and_name_arrive_whole_with_no_line_over_998(mail_app, smtp):
    words = "Ünïcødé 漢字 😀 acupuncture, l'énergie qi — "
    message = (words * 100)[:MESSAGE_MAX]  # one line, as a textarea sends it
    name = ("José Núñez 漢字 " * 10)[:100].strip()
    assert post_lead(mail_app.test_client(), name=name, message=message).status_code == 303
    assert drain(mail_app) == 1
    # The loopback server refuses lines over 998 octets ("500 Line too long"); check ourselves too.
    raw = smtp.envelopes[0].content
    assert max(len(line) for line in raw.split(b"\r\n")) <= 998
    assert b"\n" not in raw.replace(b"\r\n", b"") and b"\r" not in raw.replace(b"\r\n", b"")
    msg = smtp.messages[0]
    assert msg["Subject"] == f"New appointment request: {name}"
    assert message in msg.get_body(("plain",)).get_content()
    assert message.replace("'", "&#39;") in msg.get_body(("html",)).get_content()
    assert outbox(mail_app)[0]["status"] == "sent"


def test_referring_page_is_plain_text_origin_and_path_as_the_browser_said(mail_app, smtp):
    referrer = "https://user:secret@news.example:8443/health/immune?token=abc#top"
    post_lead(mail_app.test_client(), referrer=referrer)
    post_lead(mail_app.test_client(), name="Other", referrer="javascript:alert(1)//https://x.example/")
    drain(mail_app)
    first, second = smtp.messages
    text, html = first.get_body(("plain",)).get_content(), first.get_body(("html",)).get_content()
    assert "https://news.example:8443/health/immune (as reported by the visitor's browser)" in text
    assert "https://news.example:8443/health/immune" in html and "as reported by the visitor" in html
    for leaked in ["secret", "token", "abc", "#top"]:
        assert leaked not in text and leaked not in html
    assert 'href="https://news' not in html
    assert "(not a web address)" in second.get_body(("plain",)).get_content()
    assert "javascript" not in second.get_body(("html",)).get_content()


@pytest.mark.parametrize("referrer", ["http://[broken", "https://news.example:port/x", "//news.example/x"])
def test_a_referring_page_that_is_no_web_address_still_sends_the_email(mail_app, smtp, referrer):
    assert post_lead(mail_app.test_client(), referrer=referrer).status_code == 303
    assert drain(mail_app) == 1
    assert "(not a web address)" in smtp.messages[0].get_body(("plain",)).get_content()
