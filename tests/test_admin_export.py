"""The CSV export and the purge of old leads."""

import csv
import io
import os
import re
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

from conftest import add_lead, post_lead, rows

import db
import db.leads
import db.outbox
import outbox.email


def test_csv_is_excel_ready_and_defuses_formulas(app, owner):
    created = datetime(2026, 11, 3, 17, 5, tzinfo=UTC)
    add_lead(
        app,
        created,
        name='=HYPERLINK("http://evil.example","click")',
        phone="+19495106333",
        email="@evil.example",
        preferred_time="-2+3",
        message='Line one, with "quotes"\r\nline two',
        utm_source="\tsheet",
        utm_medium="\rsneaky",
        utm_campaign="naïve café",
        referrer="https://example.com/a?b=1",
        landing_page="/",
    )
    response = owner.get("/admin/leads.csv")
    assert response.status_code == 200
    assert response.mimetype == "text/csv"
    today = datetime.now(ZoneInfo(app.config["CLINIC_TIMEZONE"])).date()
    assert response.headers["Content-Disposition"] == f'attachment; filename="leads-{today}.csv"'
    assert response.headers["Cache-Control"] == "no-store"
    body = response.get_data()
    assert body.startswith(b"\xef\xbb\xbf")
    expected = (
        "\ufeffid,received,status,name,phone,email,best time,message,"
        "utm_source,utm_medium,utm_campaign,referring page,landing page,language\r\n"
        '1,2026-11-03 09:05,New,"\'=HYPERLINK(""http://evil.example"",""click"")",\'+19495106333,'
        '\'@evil.example,\'-2+3,"Line one, with ""quotes""\r\nline two",\'\tsheet,"\'\rsneaky",naïve café,'
        "https://example.com/a?b=1,/,en\r\n"
    )
    assert body.decode("utf-8") == expected
    [parsed] = list(csv.DictReader(io.StringIO(body.decode("utf-8-sig"), newline="")))
    assert parsed["name"].startswith("'=")
    assert parsed["message"] == 'Line one, with "quotes"\r\nline two'


def test_csv_exports_what_the_filter_shows(app, owner):
    add_lead(app, name="Ann Booked")
    add_lead(app, name="Bob New")
    add_lead(app, name="Cy Spam", is_spam=1)
    db_conn = db.connect(app.config["DATABASE"])
    db.leads.set_status(db_conn, 1, "booked", db.utcnow())
    db_conn.close()

    def names(url: str) -> list[str]:
        text = owner.get(url).get_data().decode("utf-8-sig")
        return sorted(row["name"] for row in csv.DictReader(io.StringIO(text, newline="")))

    assert names("/admin/leads.csv") == ["Ann Booked", "Bob New"]
    assert names("/admin/leads.csv?status=booked") == ["Ann Booked"]
    assert names("/admin/leads.csv?status=spam") == ["Cy Spam"]
    assert names("/admin/leads.csv?q=bob") == ["Bob New"]
    assert names("/admin/leads.csv?q=%25") == []
    html = owner.get("/admin?status=booked&q=ann").get_data(as_text=True)
    link = re.search(r'href="(/admin/leads\.csv[^"]*)"', html).group(1).replace("&amp;", "&")
    assert names(link) == ["Ann Booked"]


def test_csv_export_of_a_month(app, owner):
    add_lead(app, datetime(2026, 10, 31, 12, tzinfo=UTC), name="October")
    add_lead(app, datetime(2026, 11, 15, 12, tzinfo=UTC), name="November")
    add_lead(app, datetime(2026, 12, 1, 12, tzinfo=UTC), name="December")
    text = owner.get("/admin/leads.csv?from=2026-11-01&to=2026-11-30").get_data().decode("utf-8-sig")
    assert [row["name"] for row in csv.DictReader(io.StringIO(text, newline=""))] == ["November"]


def test_csv_export_is_audited(app, owner):
    owner.get("/admin/leads.csv?status=new&q=secret")
    [line] = rows(app, "SELECT * FROM audit_log WHERE action = 'exported leads'")
    assert line["actor"] == "owner"
    assert line["detail"] == "status=new, with a search"


def test_csv_needs_sign_in(app, client):
    add_lead(app, name="Private Person")
    response = client.get("/admin/leads.csv")
    assert response.status_code == 401
    assert b"Private Person" not in response.get_data()


def test_purge_deletes_old_leads_with_their_emails(app, client):
    now = datetime.now(UTC)
    post_lead(client, name="Recent")
    old = add_lead(app, now - timedelta(days=400), name="Old")
    add_lead(app, now - timedelta(days=366), name="Older than a year")
    database = db.connect(app.config["DATABASE"])
    db.leads.add_note(database, old, "owner", "called", db.utcnow())
    row = {"lead_id": old, "kind": "lead", "message_id": "<x@y>", "to_addr": "a@b", "subject": "s", "body_text": "b"}
    db.outbox.enqueue(database, row, db.utcnow())
    database.execute("UPDATE outbox SET status = 'sent'")  # delivered (as the .eml below): nothing waits
    database.conn.commit()
    database.close()
    mail = Path(app.config["DATA_DIR"]) / "mail"
    mail.mkdir()
    outbox.email.eml_path("<x@y>", app.config).write_text("the old lead's email")
    (mail / "unrelated.eml").write_text("not a purged lead's email, however old")
    year_ago = (now - timedelta(days=370)).timestamp()
    os.utime(mail / "unrelated.eml", (year_ago, year_ago))
    result = app.test_cli_runner().invoke(args=["purge-leads", "--older-than", "365"])
    assert result.exit_code == 0
    assert [p.name for p in mail.iterdir()] == ["unrelated.eml"]
    assert "Deleted 2 lead(s) received more than 365 days ago" in result.output
    assert [r["name"] for r in rows(app, "SELECT name FROM leads")] == ["Recent"]
    assert [r["lead_id"] for r in rows(app, "SELECT lead_id FROM outbox")] == [1]
    assert rows(app, "SELECT * FROM notes") == []
    assert rows(app, "SELECT detail FROM audit_log WHERE action = 'purged leads'") == [
        {"detail": "2 older than 365 days"}
    ]
    again = app.test_cli_runner().invoke(args=["purge-leads", "--older-than", "365"])
    assert "Deleted 0 lead(s)" in again.output


def test_purge_with_retention_off_deletes_nothing_unless_told(settings, client):
    from app import create_app

    settings["LEAD_RETENTION_DAYS"] = 0
    app = create_app(settings)
    add_lead(app, datetime.now(UTC) - timedelta(days=4000), name="Ancient")
    result = app.test_cli_runner().invoke(args=["purge-leads"])
    assert result.exit_code != 0 and "LEAD_RETENTION_DAYS is 0" in result.output
    assert [r["name"] for r in rows(app, "SELECT name FROM leads")] == ["Ancient"]


def test_purge_refuses_nonsense(app):
    for days in ["0", "-3", "soon"]:
        result = app.test_cli_runner().invoke(args=["purge-leads", "--older-than", days])
        assert result.exit_code != 0


def test_privacy_page_states_the_retention_period(settings):
    from app import create_app

    settings["LEAD_RETENTION_DAYS"] = 180
    page = create_app(settings).test_client().get("/privacy").get_data(as_text=True)
    assert "180 days" in page


def test_this_month_link_exports_the_month(app, owner):
    html = owner.get("/admin").get_data(as_text=True)
    month = re.search(r'href="([^"]*)"[^>]*>This month</a>', html).group(1).replace("&amp;", "&")
    # Leads placed by the link's own dates, so the test holds in a month's first minutes too.
    first_day = date.fromisoformat(re.search(r"from=([\d-]+)", month)[1])
    assert first_day.day == 1
    month_starts = datetime.combine(first_day, datetime.min.time(), ZoneInfo(app.config["CLINIC_TIMEZONE"]))
    add_lead(app, month_starts, name="First thing")
    add_lead(app, month_starts - timedelta(seconds=1), name="Last month")
    page = owner.get(month).get_data(as_text=True)
    assert "First thing" in page and "Last month" not in page
    csv_link = re.search(r'href="(/admin/leads\.csv[^"]*)"', page).group(1).replace("&amp;", "&")
    text = owner.get(csv_link).get_data().decode("utf-8-sig")
    assert [row["name"] for row in csv.DictReader(io.StringIO(text, newline=""))] == ["First thing"]


def test_received_is_the_clinic_time_on_both_sides_of_each_clock_change(app, owner):
    zone = ZoneInfo(app.config["CLINIC_TIMEZONE"])
    moments = [
        datetime(2019, 6, 1, 12, 0, tzinfo=UTC),
        datetime(2026, 3, 8, 9, 59, tzinfo=UTC),  # 01:59 PST, then the clocks jump to 03:00
        datetime(2026, 3, 8, 10, 0, tzinfo=UTC),
        datetime(2026, 11, 1, 8, 59, tzinfo=UTC),  # 01:59 PDT, then 01:00 again
        datetime(2026, 11, 1, 9, 0, tzinfo=UTC),
        datetime.now(UTC) - timedelta(minutes=1),
    ]
    for moment in moments:
        add_lead(app, moment, name=f"At {moment:%Y-%m-%d %H:%M}")
    table = list(csv.reader(io.StringIO(owner.get("/admin/leads.csv").get_data(as_text=True).lstrip("\ufeff"))))
    received = {row[3]: row[1] for row in table[1:]}
    assert received == {f"At {m:%Y-%m-%d %H:%M}": f"{m.astimezone(zone):%Y-%m-%d %H:%M}" for m in moments}
    assert (
        received["At 2026-03-08 10:00"] == "2026-03-08 03:00" and received["At 2026-11-01 09:00"] == "2026-11-01 01:00"
    )
