"""A lead's page: every field, status and notes, spam, delete, the delivery log and sending again."""

import re
from pathlib import Path

from conftest import csrf_token, drain, post_lead, rows

import outbox.sender


def post(client, url: str, data: dict | None = None, form_on: str | None = None):
    """Send a form from the page at `form_on` (default: `url`) with its CSRF token."""
    token = csrf_token(client.get(form_on or url).get_data(as_text=True))
    return client.post(url, data={**(data or {}), "csrf_token": token})


def test_lead_page_shows_every_field_and_the_source(owner):
    post_lead(
        owner,
        "/?utm_source=facebook&utm_medium=social&utm_campaign=winter",
        preferred_time="evening",
        message="Line one\nLine two",
    )
    html = owner.get("/admin/leads/1").get_data(as_text=True)
    for text in [
        "Jane Doe",
        "+19495106333",
        "jane@example.com",
        "evening",
        "Line one\nLine two",
        "facebook / social / winter",
        'href="tel:+19495106333"',
        'href="mailto:jane@example.com"',
        "Notifications",
    ]:
        assert text in html, text
    assert re.search(r"\d{1,2}:\d\d (AM|PM) P[SD]T", html)


def test_missing_lead_is_a_404_page(owner):
    response = owner.get("/admin/leads/999")
    assert response.status_code == 404
    assert "could not find" in response.get_data(as_text=True)


def test_change_status_with_a_note(app, owner):
    post_lead(owner)
    response = post(owner, "/admin/leads/1", {"status": "contacted", "note": "Called, booked a call back Friday."})
    assert response.status_code == 303
    assert response.location == "/admin/leads/1"
    html = owner.get("/admin/leads/1").get_data(as_text=True)
    assert "Saved: marked contacted, note added." in html
    assert "Called, booked a call back Friday." in html
    assert re.search(r"owner · <time[^>]*>[^<]*P[SD]T</time>", html)
    [lead] = rows(app, "SELECT status FROM leads")
    assert lead["status"] == "contacted"
    [note] = rows(app, "SELECT * FROM notes")
    assert note["author"] == "owner" and note["lead_id"] == 1
    actions = [(r["action"], r["detail"]) for r in rows(app, "SELECT * FROM audit_log WHERE lead_id = 1")]
    assert ("status changed", "new → contacted") in actions
    assert ("note added", "") in actions
    assert "(Contacted)" not in html
    assert 'status=contacted"' in owner.get("/admin").get_data(as_text=True)


def test_notes_are_appended(app, owner):
    post_lead(owner)
    for text in ["First call: no answer", "Second call: booked"]:
        post(owner, "/admin/leads/1", {"status": "new", "note": text})
    html = owner.get("/admin/leads/1").get_data(as_text=True)
    assert html.index("First call: no answer") < html.index("Second call: booked")
    assert len(rows(app, "SELECT * FROM notes")) == 2


def test_bad_status_or_long_note_is_a_field_message(app, owner):
    post_lead(owner)
    response = post(owner, "/admin/leads/1", {"status": "deleted"})
    assert response.status_code == 422
    assert "Not a valid choice" in response.get_data(as_text=True)
    response = post(owner, "/admin/leads/1", {"status": "new", "note": "x" * 2001})
    assert response.status_code == 422
    assert "Please keep a note under 2,000 characters." in response.get_data(as_text=True)
    assert rows(app, "SELECT status FROM leads") == [{"status": "new"}]


def test_mark_as_spam_and_back(app, owner):
    post_lead(owner)
    response = post(owner, "/admin/leads/1/spam", {"spam": "1"}, form_on="/admin/leads/1")
    assert response.status_code == 303
    assert rows(app, "SELECT status, is_spam FROM leads") == [{"status": "spam", "is_spam": 1}]
    assert "Jane Doe" not in owner.get("/admin").get_data(as_text=True)
    assert "Jane Doe" in owner.get("/admin?status=spam").get_data(as_text=True)
    assert "Not spam" in owner.get("/admin/leads/1").get_data(as_text=True)
    post(owner, "/admin/leads/1/spam", {"spam": "0"}, form_on="/admin/leads/1")
    assert rows(app, "SELECT status, is_spam FROM leads") == [{"status": "new", "is_spam": 0}]


def test_delete_asks_first_then_removes_the_lead_and_its_emails(app, owner):
    post_lead(owner)
    post_lead(owner, name="Someone Else")
    post(owner, "/admin/leads/1", {"status": "contacted", "note": "asked to be forgotten"})
    drain(app)  # no MAIL_SERVER: written to data/mail
    files = list((Path(app.config["DATA_DIR"]) / "mail").glob("*.eml"))
    assert len(files) == 2
    confirm = owner.get("/admin/leads/1/delete")
    assert "cannot be undone" in confirm.get_data(as_text=True)
    assert len(rows(app, "SELECT * FROM leads")) == 2
    response = post(owner, "/admin/leads/1/delete", form_on="/admin/leads/1/delete")
    assert response.status_code == 303
    assert response.location == "/admin"
    assert "Request #1 and its emails are deleted." in owner.get("/admin").get_data(as_text=True)
    assert [r["id"] for r in rows(app, "SELECT id FROM leads")] == [2]
    assert [r["lead_id"] for r in rows(app, "SELECT lead_id FROM outbox")] == [2]
    assert len(rows(app, "SELECT * FROM email_attempts")) == 1
    assert rows(app, "SELECT * FROM notes") == []
    assert len(list((Path(app.config["DATA_DIR"]) / "mail").glob("*.eml"))) == 1
    assert owner.get("/admin/leads/1").status_code == 404
    assert rows(app, "SELECT action FROM audit_log WHERE lead_id = 1 AND action = 'deleted lead'")


def test_delivery_log_and_send_again(mail_settings, smtp, app, owner):
    post_lead(owner)
    smtp.reply = "550 5.1.1 mailbox unavailable"
    drain(app)
    assert smtp.envelopes == []
    html = owner.get("/admin/leads/1").get_data(as_text=True)
    assert "failed: 550 5.1.1 mailbox unavailable" in html
    assert "Emails are failing" in owner.get("/admin").get_data(as_text=True)
    status_page = owner.get("/admin/status").get_data(as_text=True)
    assert "550 5.1.1 mailbox unavailable" in status_page
    smtp.reply = None
    [email] = rows(app, "SELECT id FROM outbox")
    response = post(owner, f"/admin/emails/{email['id']}/resend", form_on="/admin/leads/1")
    assert response.status_code == 303
    assert response.location == "/admin/leads/1"
    assert outbox.sender.EMAIL.wake.is_set()
    assert drain(app) == 1
    [msg] = smtp.wait_for(1)
    assert msg["Subject"] == "New appointment request: Jane Doe"
    html = owner.get("/admin/leads/1").get_data(as_text=True)
    assert "delivered" in html
    assert [r["status"] for r in rows(app, "SELECT status FROM outbox ORDER BY id")] == ["resent", "sent"]
    assert "Emails are failing" not in owner.get("/admin").get_data(as_text=True)
    # A delivered email can be sent again too: a fresh copy with its own Message-ID.
    post(owner, "/admin/emails/2/resend", form_on="/admin/leads/1")
    assert drain(app) == 1
    first, second = smtp.wait_for(2)
    assert first["Message-ID"] != second["Message-ID"]


def test_status_page_without_a_mail_server(app, owner):
    html = owner.get("/admin/status").get_data(as_text=True)
    assert "Not configured." in html
    assert "never" in html
    assert "Send a test email" in html


def test_test_email_goes_through_the_outbox(mail_settings, smtp, app, owner):
    response = post(owner, "/admin/status/test-email", form_on="/admin/status")
    assert response.status_code == 303
    assert "A test email is on its way to owner@clinic.example" in owner.get("/admin/status").get_data(as_text=True)
    assert drain(app) == 1
    [msg] = smtp.wait_for(1)
    assert msg["Subject"] == "Test email from the clinic website"
    assert msg["To"] == "owner@clinic.example"
    assert "sent by owner" in msg.get_body(("plain",)).get_content()
    html = owner.get("/admin/status").get_data(as_text=True)
    assert "127.0.0.1:" in html
    assert "Last delivered</dt><dd>never" not in html
    assert "test email queued" in html


def test_audit_log_on_the_status_page(app, owner):
    post_lead(owner)
    post(owner, "/admin/leads/1", {"status": "booked"})
    owner.get("/admin/leads.csv")
    html = owner.get("/admin/status").get_data(as_text=True)
    for action in ["signed in", "status changed #1, new → booked", "exported leads", "account created"]:
        assert action in html, action
