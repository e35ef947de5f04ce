"""Speed to lead: one reminder when a request is still new after some working hours."""

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from conftest import add_lead, rows
from conftest import drain as drain_outbox

import db
import db.leads
import db.outbox
import outbox.reminders
import outbox.rows

LA = ZoneInfo("America/Los_Angeles")


def at(*args) -> datetime:
    """A moment given in the clinic's local time."""
    return datetime(*args, tzinfo=LA)


def drain(app, now: datetime) -> int:
    return drain_outbox(app, now.astimezone(UTC))


def reminder_rows(app) -> list[dict]:
    return rows(app, "SELECT * FROM outbox WHERE kind = 'reminder'")


@pytest.mark.parametrize(
    "start, end, hours",
    [
        (at(2026, 11, 23, 9), at(2026, 11, 23, 13), 4),  # Monday morning
        (at(2026, 11, 23, 7), at(2026, 11, 23, 10), 1),  # before opening counts nothing
        (at(2026, 11, 20, 16), at(2026, 11, 23, 12), 4),  # Friday 4 pm to Monday noon: 1 + 3
        (at(2026, 11, 21, 10), at(2026, 11, 22, 20), 0),  # the weekend
        (at(2026, 11, 23, 18), at(2026, 11, 24, 8), 0),  # overnight
        (at(2026, 11, 23, 12), at(2026, 11, 25, 12), 16),  # two working days
    ],
)
def test_working_hours_between_two_moments(app, start, end, hours):
    assert outbox.reminders.working_seconds(start, end, app.config) == hours * 3600


def test_working_hours_across_a_clock_change(settings):
    from app import create_app

    app = create_app(settings | {"CLINIC_DAYS": "Mon-Sun", "CLINIC_HOURS": "00:00-24:00"})
    # Clocks went back an hour early on Sunday 1 Nov 2026: that day had 25 hours.
    assert outbox.reminders.working_seconds(at(2026, 10, 31, 12), at(2026, 11, 2, 12), app.config) == 49 * 3600


def test_one_reminder_for_a_lead_still_new(mail_settings, smtp, app):
    lead_id = add_lead(app, at(2026, 11, 23, 9, 30), phone="+19495106333")
    drain(app, at(2026, 11, 23, 13, 0))  # 3.5 working hours: not yet
    assert reminder_rows(app) == []
    assert drain(app, at(2026, 11, 23, 13, 31)) == 1
    [msg] = smtp.wait_for(1)
    assert msg["Subject"] == f"Still waiting for a call back: request #{lead_id}"
    assert msg["To"] == "owner@clinic.example"
    text = msg.get_body(("plain",)).get_content()
    assert "Jane Doe is still waiting for a call back" in text
    assert "+19495106333" in text
    assert f"https://clinic.example/admin/leads/{lead_id}" in text
    assert "4.0 working hours" in text
    for later in [at(2026, 11, 23, 16), at(2026, 11, 24, 12), at(2026, 11, 30, 9, 30)]:
        drain(app, later)
    assert len(reminder_rows(app)) == 1
    assert len(smtp.envelopes) == 1


def test_no_reminder_once_contacted_or_for_spam(app):
    contacted = add_lead(app, at(2026, 11, 23, 9), name="Called Already")
    add_lead(app, at(2026, 11, 23, 9, 1), name="Bot", is_spam=1)
    database = db.connect(app.config["DATABASE"])
    db.leads.set_status(database, contacted, "contacted", db.utcnow())
    database.close()
    drain(app, at(2026, 11, 24, 17))
    assert reminder_rows(app) == []


def test_weekend_lead_is_reminded_on_monday(app):
    add_lead(app, at(2026, 11, 21, 11))  # Saturday
    drain(app, at(2026, 11, 23, 12, 59))
    assert reminder_rows(app) == []
    drain(app, at(2026, 11, 23, 13, 0))
    assert len(reminder_rows(app)) == 1


def test_reminders_can_be_turned_off(settings):
    from app import create_app

    app = create_app(settings | {"REMINDER_AFTER_HOURS": 0})
    add_lead(app, at(2026, 11, 23, 9))
    drain(app, at(2026, 11, 26, 9))
    assert reminder_rows(app) == []


def test_reminder_without_details_keeps_the_lead_out_of_the_email(app):
    app.config["NOTIFY_DETAILS"] = False
    add_lead(app, at(2026, 11, 23, 9), name="Secret Name", phone="+19495106333")
    drain(app, at(2026, 11, 23, 17))
    [row] = reminder_rows(app)
    assert "Secret Name" not in row["body_text"] + row["body_html"] + row["subject"]
    assert "+19495106333" not in row["body_text"]


def test_lead_page_shows_the_reminder(app, owner):
    add_lead(app, datetime.now(UTC) - timedelta(days=3))
    drain(app, datetime.now(UTC))
    html = owner.get("/admin/leads/1").get_data(as_text=True)
    assert "Reminder sent" in html
    assert "<strong>Reminder</strong>" in html


def test_two_senders_racing_queue_one_reminder(app):
    """Two worker processes that both found the lead due: only the first one's reminder is queued."""
    lead_id = add_lead(app, at(2026, 11, 23, 9))
    first, second = db.connect(app.config["DATABASE"]), db.connect(app.config["DATABASE"])
    with app.app_context():
        email = outbox.rows.reminder_email(db.leads.get_lead(first, lead_id), 4.0, app.config)
    assert db.outbox.queue_reminder(first, lead_id, email, db.utcnow()) is True
    assert db.outbox.queue_reminder(second, lead_id, email, db.utcnow()) is False
    first.close()
    second.close()
    assert len(reminder_rows(app)) == 1
