"""The weekly report: its numbers match the analytics page, one email a week from one process, `flask report`."""

import re
import sqlite3
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from conftest import add_lead, drain, rows, sign_in

import db
import db.visits
import visits
import weekly_report
from app import create_app

# The clinic is in Los Angeles (UTC-8 in November): week 2026-W48 is Mon 23 to Sun 29 November there.
MONDAY_8AM = datetime(2026, 11, 30, 16, 0, tzinfo=UTC)  # the report of W48 is due
PRIVATE = {"name": "Jane Doe", "email": "jane@example.com", "phone": "+19495550100", "message": "My knee hurts"}


def seed(app) -> None:
    """Two weeks of visits, calls and requests, and some outside them."""
    counts = [
        ("2026-11-18", "/", "facebook", "cpc", "spring", 4, 4, 0, 0),  # W47
        ("2026-11-23", "/", "facebook", "cpc", "spring", 10, 8, 3, 1),  # W48 from here
        ("2026-11-25", "/", "google", "search", "", 5, 4, 1, 0),
        ("2026-11-29", "/", "bots", "", "", 7, 0, 2, 0),  # bots are in no number
        ("2026-11-30", "/", "facebook", "cpc", "spring", 50, 50, 9, 0),  # W49
    ]
    database = db.connect(app.config["DATABASE"])
    db.visits.add_visit_counts(database, counts, 1000, visits.OTHER, visits.BOUNDED)
    database.close()
    spring = {"utm_source": "facebook", "utm_medium": "cpc", "utm_campaign": "spring", **PRIVATE}
    add_lead(app, datetime(2026, 11, 17, 18, tzinfo=UTC), **spring)  # W47, still new
    add_lead(app, datetime(2026, 11, 19, 18, tzinfo=UTC), status="contacted", **PRIVATE)  # W47, direct
    add_lead(app, datetime(2026, 11, 24, 18, tzinfo=UTC), status="booked", **spring)
    add_lead(app, datetime(2026, 11, 26, 18, tzinfo=UTC), referrer="https://www.google.com/", **PRIVATE)
    add_lead(app, datetime(2026, 11, 30, 7, 30, tzinfo=UTC), **spring)  # 23:30 on Sunday 29 in Los Angeles: W48
    add_lead(app, datetime(2026, 11, 25, 18, tzinfo=UTC), status="spam", is_spam=1, **spring)


@pytest.fixture
def reporting(mail_settings):
    mail_settings.update(HOUSEKEEPING_POLL_SECONDS=0.2, REMINDER_AFTER_HOURS=0)  # only the report is mailed
    app = create_app(mail_settings)
    seed(app)
    return app


def test_the_reports_numbers_are_the_analytics_pages_for_the_same_week(reporting, smtp):
    app = reporting
    with app.app_context():
        report = weekly_report.build(weekly_report.parse_week("2026-W48"), MONDAY_8AM)
    totals = {item["label"]: (item["count"], item["before"], item["change"]) for item in report["totals"]}
    assert totals == {
        "Visitors": (12, 4, "up 200 %"),
        "Calls": (4, 0, "new"),
        "Requests": (3, 2, "up 50 %"),
        "Booked": (1, 0, "new"),
    }
    app.test_cli_runner().invoke(args=["create-admin", "owner"], input="correct horse battery staple\n")
    owner = app.test_client()
    assert sign_in(owner).status_code == 303
    page = owner.get(report["analytics"].removeprefix(app.config["SITE_URL"])).get_data(as_text=True)
    funnel = dict(re.findall(r"<dt>([^<]+)</dt><dd>([^<]+)</dd>", page))
    assert {label: str(count) for label, (count, _, _) in totals.items()} == {label: funnel[label] for label in totals}
    assert [(s["source"], s["campaign"], s["requests"], s["calls"]) for s in report["sources"]] == [
        ("facebook", "spring", 2, 3),
        ("google", "", 1, 1),
    ]
    assert report["waiting_count"] == 3  # still new: one of W47, two of W48; spam, booked and contacted are not
    assert [lead["link"] for lead in report["waiting"]] == [
        f"https://clinic.example/admin/leads/{lead_id}" for lead_id in (1, 4, 5)
    ]


def test_once_a_week_at_the_hour_one_email_whatever_the_workers_and_restarts(reporting, smtp):
    app = reporting
    assert not weekly_report.run_due(app, MONDAY_8AM - timedelta(hours=1), "a")  # a new site: the next one is due
    assert rows(app, "SELECT due_at FROM housekeeping WHERE job = 'weekly-report'") == [
        {"due_at": db.iso_utc(MONDAY_8AM)}
    ]
    assert not weekly_report.run_due(app, MONDAY_8AM - timedelta(seconds=1), "a")
    won = []
    workers = [
        threading.Thread(target=lambda who=who: won.append(weekly_report.run_due(app, MONDAY_8AM, who)))
        for who in ("worker-1", "worker-2")
    ]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    assert sorted(won) == [False, True]
    assert not weekly_report.run_due(app, MONDAY_8AM + timedelta(minutes=5), "after-a-restart")
    assert drain(app) == 1
    [mail] = smtp.messages
    assert mail["To"] == "owner@clinic.example"
    assert mail["Subject"] == "Your website last week: 12 visitors, 4 calls, 3 requests (2026-W48)"
    text = mail.get_body(("plain",)).get_content()
    assert "Visitors: 12 (up 200 %; the week before: 4)" in text
    assert "- facebook (spring): 2 requests, 3 calls, 8 visitors" in text
    assert "https://clinic.example/admin/leads/5" in text
    assert "https://clinic.example/admin/analytics?from=2026-11-23&to=2026-11-29" in text
    assert "Health: emails working; no backup yet." in text
    for secret in PRIVATE.values():
        assert secret not in mail.as_string()

    assert weekly_report.run_due(app, MONDAY_8AM + timedelta(days=7), "a")  # the next Monday
    assert weekly_report.run_due(app, MONDAY_8AM + timedelta(days=28, hours=3), "a")  # weeks missed: one, once
    assert not weekly_report.run_due(app, MONDAY_8AM + timedelta(days=28, hours=4), "a")
    assert drain(app, now=MONDAY_8AM + timedelta(days=29)) == 2
    assert [m["Subject"][-9:-1] for m in smtp.messages] == ["2026-W48", "2026-W49", "2026-W52"]


def test_the_day_and_hour_are_the_clinics(settings):
    app = create_app({**settings, "WEEKLY_REPORT_DAY": "Friday", "WEEKLY_REPORT_HOUR": 17})
    due = weekly_report.next_due(MONDAY_8AM, app.config)
    assert due.isoformat() == "2026-12-04T17:00:00-08:00"
    assert weekly_report.next_due(due, app.config).isoformat() == "2026-12-11T17:00:00-08:00"


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"WEEKLY_REPORT_DAY": "Someday"}, "WEEKLY_REPORT_DAY='Someday': expected a day like Mon or Friday"),
        ({"WEEKLY_REPORT_HOUR": "24"}, "WEEKLY_REPORT_HOUR=24: expected an hour from 0 to 23"),
        ({"WEEKLY_REPORT": "maybe"}, "WEEKLY_REPORT='maybe': expected one of 1/true/yes or 0/false/no"),
    ],
)
def test_a_bad_setting_stops_start_up_with_its_reason(settings, overrides, message):
    import config

    with pytest.raises(config.ConfigError, match=re.escape(message)):
        config.finish({**config.from_env({"ENV_FILE": "", **overrides}), "DATA_DIR": settings["DATA_DIR"]})


def test_weekly_report_false_sends_none(settings):
    app = create_app({**settings, "WEEKLY_REPORT": False})
    assert weekly_report.start(app) is None


def flask(data_dir: Path, *args: str) -> subprocess.CompletedProcess:
    """`flask --app app ARGS` as the owner would run it on the server."""
    env = {"ENV_FILE": "", "DATA_DIR": str(data_dir), "SECRET_KEY": "x", "SITE_URL": "https://clinic.example"}
    root = Path(__file__).resolve().parent.parent
    command = [str(Path(sys.executable).with_name("flask")), "--app", "app", *args]
    return subprocess.run(command, cwd=root, env={"PATH": "/usr/bin:/bin", **env}, capture_output=True, text=True)


def test_flask_report_prints_a_week_and_sends_it_on_request(reporting):
    data_dir = Path(reporting.config["DATA_DIR"])
    shown = flask(data_dir, "report", "--week", "2026-W48")
    assert shown.returncode == 0, shown.stderr
    assert "Mon 23 Nov to Sun 29 Nov 2026 (2026-W48)" in shown.stdout and "Calls: 4 (new" in shown.stdout
    assert rows(reporting, "SELECT id FROM outbox WHERE kind = 'weekly_report'") == []
    refused = flask(data_dir, "report", "--week", "48")
    assert refused.returncode == 2 and "expected a week like 2026-W48" in refused.stderr
    for week in ("2026-W54", "9999-W52", "0001-W01"):  # no such week, or one whose neighbours are out of range
        result = reporting.test_cli_runner().invoke(args=["report", "--week", week])
        assert result.exit_code == 2 and "expected a week like 2026-W48" in result.output, (week, result.output)
    sent = flask(data_dir, "report", "--week", "2026-W47", "--send")
    assert sent.returncode == 0, sent.stderr
    assert "Queued for frontdesk@acupuncturehalls.example" in sent.stdout  # the command's own settings
    [row] = rows(reporting, "SELECT to_addr, subject FROM outbox WHERE kind = 'weekly_report'")
    assert row["subject"].endswith("(2026-W47)") and row["to_addr"] == "frontdesk@acupuncturehalls.example"
    last = flask(data_dir, "report")
    assert last.returncode == 0 and "The week on the analytics page:" in last.stdout


def test_under_gunicorn_two_workers_send_one_report_and_a_restart_none_again(serve, smtp, tmp_path):
    data_dir = tmp_path / "weekly"
    data_dir.mkdir()
    env = {
        "DATA_DIR": str(data_dir),
        "MAIL_SERVER": "127.0.0.1",
        "MAIL_PORT": str(smtp.port),
        "HOUSEKEEPING_POLL_SECONDS": "0.2",
        "OUTBOX_POLL_SECONDS": "0.2",
    }
    server = serve(env, workers=2)  # a new site: the first report is next week's
    time.sleep(1.5)
    server.stop()
    assert smtp.envelopes == []

    def make_due() -> None:  # as if the server had been down at the hour
        with sqlite3.connect(data_dir / "leads.db") as conn:
            conn.execute("UPDATE housekeeping SET due_at = '2026-01-05T16:00:00+00:00' WHERE job = 'weekly-report'")
        conn.close()

    make_due()
    server = serve(env, workers=2)
    assert len(smtp.wait_for(1)) == 1
    time.sleep(1.5)  # both workers have checked several times since
    server.stop()
    server = serve(env, workers=2)  # a restart after it was sent: none again
    time.sleep(1.5)
    server.stop()
    assert len(smtp.envelopes) == 1
    make_due()
    server = serve(env, workers=2)
    assert len(smtp.wait_for(2)) == 2
    server.stop()
    assert [m["Subject"].startswith("Your website last week: 0 visitors") for m in smtp.messages] == [True, True]
