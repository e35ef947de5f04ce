"""The appointment form: validation, storage, double submits, CSRF, spam and limits."""

import sqlite3

import pytest
from conftest import form_fields, post_lead, rows, valid_lead

import db
from app import create_app


def stored_leads(app) -> list[dict]:
    return rows(app, "SELECT * FROM leads ORDER BY id")


def queued_emails(app) -> list[dict]:
    return rows(app, "SELECT * FROM outbox ORDER BY id")


def test_valid_request_is_stored_and_thanked_by_name(app, client):
    response = post_lead(client)
    assert response.status_code == 303
    assert response.headers["Location"].endswith("/thanks")
    [lead] = stored_leads(app)
    assert lead["name"] == "Jane Doe"
    assert lead["phone"] == "+19495106333"
    assert lead["email"] == "jane@example.com"
    assert lead["status"] == "new"
    assert lead["is_spam"] == 0
    assert lead["created_at"].endswith("+00:00")
    assert len(queued_emails(app)) == 1
    thanks = client.get("/thanks").get_data(as_text=True)
    assert "Thank you, Jane Doe!" in thanks
    assert "within one working day" in thanks
    assert 'href="tel:+19495106333"' in thanks


def test_thanks_without_a_request_claims_none(client):
    html = client.get("/thanks").get_data(as_text=True)
    assert "We have your request" not in html
    assert "If you have sent us a request" in html
    assert 'href="/#book"' in html


def test_reloading_thanks_sends_nothing_again(app, client):
    post_lead(client)
    client.get("/thanks")
    client.get("/thanks")
    assert len(stored_leads(app)) == 1


def test_double_submit_makes_one_lead_and_one_email(app, client):
    fields = form_fields(client.get("/").get_data(as_text=True))
    first = client.post("/contact", data={**fields, **valid_lead()})
    second = client.post("/contact", data={**fields, **valid_lead()})
    assert first.status_code == second.status_code == 303
    assert len(stored_leads(app)) == 1
    assert len(queued_emails(app)) == 1


def test_where_the_visitor_came_from_is_kept(app, client):
    client.get("/", headers={"Referer": "https://news.example/immune"})
    post_lead(client, "/?utm_source=facebook&utm_medium=cpc&utm_campaign=winter")
    [lead] = stored_leads(app)
    assert (lead["utm_source"], lead["utm_medium"], lead["utm_campaign"]) == ("facebook", "cpc", "winter")
    assert lead["user_agent"]


def test_referring_page_is_kept(app, client):
    page = client.get("/", headers={"Referer": "https://news.example/immune"})
    client.post("/contact", data={**form_fields(page.get_data(as_text=True)), **valid_lead()})
    assert stored_leads(app)[0]["referrer"] == "https://news.example/immune"


@pytest.mark.parametrize(
    "overrides,field,message",
    [
        ({"name": ""}, "name", "Please tell us your name."),
        ({"name": "x" * 101}, "name", "under 100 characters"),
        ({"name": "Jane\r\nBcc: x@example.com"}, "name", "Please write your name on one line."),
        ({"name": "Jane\nDoe"}, "name", "Please write your name on one line."),
        ({"name": "Jane\rDoe"}, "name", "Please write your name on one line."),
        ({"name": "Jane\u2028Doe"}, "name", "Please write your name on one line."),
        ({"phone": "", "email": ""}, "phone", "Please give a phone number or an email address"),
        ({"phone": "12"}, "phone", "Please enter a phone number we can call"),
        ({"email": "jane@"}, "email", "Please enter an email address like name@example.com."),
        ({"message": "x" * 2001}, "message", "under 2,000 characters"),
        ({"preferred_time": "midnight"}, "preferred_time", "Not a valid choice"),
    ],
)
def test_invalid_request_shows_the_message_at_the_field(app, client, overrides, field, message):
    response = post_lead(client, **overrides)
    assert response.status_code == 422
    assert queued_emails(app) == []
    html = response.get_data(as_text=True)
    assert f'<p class="error" id="{field}-error">' in html
    assert message in html
    assert f'aria-describedby="{field}-error"' in html or f"{field}-hint {field}-error" in html
    assert stored_leads(app) == []


def test_invalid_request_keeps_what_the_visitor_typed(client):
    html = post_lead(client, phone="12", message="Back pain & <stress>").get_data(as_text=True)
    assert 'value="Jane Doe"' in html
    assert 'value="jane@example.com"' in html
    assert "Back pain &amp; &lt;stress&gt;" in html


def test_email_alone_is_enough(app, client):
    assert post_lead(client, phone="").status_code == 303
    assert stored_leads(app)[0]["phone"] == ""


def test_non_ascii_mailbox_is_refused_kindly(app, client):
    response = post_lead(client, email="zoë@example.com")
    assert response.status_code == 422
    assert "plain letters" in response.get_data(as_text=True)
    assert stored_leads(app) == []


def test_international_domain_is_stored_in_ascii(app, client):
    assert post_lead(client, email="jane@bücher.example").status_code == 303
    assert stored_leads(app)[0]["email"] == "jane@xn--bcher-kva.example"


def test_missing_csrf_token_re_renders_with_input_and_a_fresh_token(app, client):
    fields = form_fields(client.get("/").get_data(as_text=True))
    fields.pop("csrf_token")
    response = client.post("/contact", data={**fields, **valid_lead()})
    assert response.status_code == 400
    html = response.get_data(as_text=True)
    assert "press Send again" in html
    assert 'value="Jane Doe"' in html
    fresh = form_fields(html)
    assert fresh["csrf_token"]
    assert client.post("/contact", data={**fresh, **valid_lead()}).status_code == 303
    assert len(stored_leads(app)) == 1


def test_session_lost_while_reading_still_sends_after_one_retry(app):
    reader = app.test_client()
    fields = form_fields(reader.get("/").get_data(as_text=True))
    stranger = app.test_client()  # no session cookie: the browser was closed and reopened
    response = stranger.post("/contact", data={**fields, **valid_lead()})
    assert response.status_code == 400
    retry = stranger.post("/contact", data={**form_fields(response.get_data(as_text=True)), **valid_lead()})
    assert retry.status_code == 303
    assert len(stored_leads(app)) == 1


def test_other_forms_without_csrf_get_a_friendly_400(app):
    from flask_wtf.csrf import CSRFError

    @app.post("/probe")
    def probe():
        raise CSRFError("The CSRF token is missing.")

    response = app.test_client().post("/probe")
    assert response.status_code == 400
    assert "tel:+19495106333" in response.get_data(as_text=True)


def test_honeypot_is_stored_as_spam_without_email(app, client):
    response = post_lead(client, website="http://spam.example")
    assert response.status_code == 303
    [lead] = stored_leads(app)
    assert lead["is_spam"] == 1
    assert "honeypot" in lead["spam_reason"]
    assert queued_emails(app) == []


def test_too_fast_is_stored_as_spam_without_email(settings):
    settings["SPAM_MIN_SECONDS"] = 30
    app = create_app(settings)
    response = post_lead(app.test_client())
    assert response.status_code == 303
    [lead] = stored_leads(app)
    assert lead["is_spam"] == 1
    assert "after the form was shown" in lead["spam_reason"]
    assert queued_emails(app) == []


def test_forged_form_token_is_spam(app, client):
    fields = form_fields(client.get("/").get_data(as_text=True))
    fields["form_token"] = "made-up"
    assert client.post("/contact", data={**fields, **valid_lead()}).status_code == 303
    assert stored_leads(app)[0]["is_spam"] == 1


def test_rate_limit_answers_429_with_the_phone(settings):
    settings["CONTACT_RATE_LIMIT"] = "2 per minute"
    client = create_app(settings).test_client()
    assert post_lead(client).status_code == 303
    assert post_lead(client).status_code == 303
    response = post_lead(client)
    assert response.status_code == 429
    assert "949-510-6333" in response.get_data(as_text=True)


def test_oversized_body_is_refused_with_413(client):
    response = client.post("/contact", data={"message": "x" * 200_000})
    assert response.status_code == 413
    assert "too much" in response.get_data(as_text=True)


def test_unwritable_database_gets_a_503_asking_to_call(app, client, monkeypatch):
    import db.leads

    def broken(*args, **kwargs):
        raise sqlite3.OperationalError("attempt to write a readonly database")

    monkeypatch.setattr(db.leads, "add_lead", broken)
    response = post_lead(client)
    assert response.status_code == 503
    assert "Please call us" in response.get_data(as_text=True)


def test_get_contact_leads_to_the_form(client):
    response = client.get("/contact")
    assert response.status_code == 302
    assert response.headers["Location"].endswith("/#book")


def test_a_post_on_a_connection_a_past_fault_left_read_only_is_stored_on_a_new_one(app, client):
    path = app.config["DATABASE"]
    # As a worker thread keeps a connection it opened while the file was read-only, after the file is writable again.
    stale = db.Database(sqlite3.connect(f"file:{path}?mode=ro", uri=True, check_same_thread=False))
    db._thread.kept = (path, db.file_identity(path), stale)
    assert post_lead(client, name="After the fault").status_code == 303
    assert [lead["name"] for lead in rows(app, "SELECT name FROM leads")] == ["After the fault"]
