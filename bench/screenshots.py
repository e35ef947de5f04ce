"""Pictures of the real pages for the owner's guide and the README, taken in Debian's Chromium.

    make screenshots

The site runs under gunicorn as `make run` serves it, on a database of made-up requests (a month of
them, with statuses and visits; the newest sent through the form, with a note and delivered emails),
mailing a loopback SMTP server. Playwright drives /usr/bin/chromium, as
tests/test_browser.py does, on a phone (375x812) and a desktop (1280x800), and writes docs/images/*.png.
"""

import os
import random
import sqlite3
import subprocess
import sys
import tempfile
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

from aiosmtpd.controller import Controller
from aiosmtpd.handlers import Sink
from playwright.sync_api import sync_playwright

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from conftest import CHROMIUM, CHROMIUM_ARGS, DEVICES  # noqa: E402  (the browser tests' phone and desktop)
from run import Server, free_port  # noqa: E402

import db  # noqa: E402

IMAGES = ROOT / "docs" / "images"
LIMIT_BYTES = 150_000
FLASK = str(Path(sys.executable).with_name("flask"))
PASSWORD = "screenshots password"
ZONE = ZoneInfo("America/Los_Angeles")  # the clinic's default time zone

PEOPLE = [
    (
        "Maria Lopez",
        "maria.lopez@example.com",
        "+19495550142",
        "Migraines for years, worse in the morning. Do you take insurance?",
    ),
    ("James Carter", "", "+17145550187", "Lower back pain after a fall. Can I come in this week?"),
    ("Emma Nguyen", "emma.nguyen@example.com", "+16575550123", "Trying to conceive; my doctor suggested acupuncture."),
    ("Daniel Kim", "daniel.kim@example.com", "", "Trouble sleeping since last spring. What does a session cost?"),
    ("Sophia Reyes", "sophia.reyes@example.com", "+19495550166", "Neck and shoulder pain from desk work."),
    ("Liam Walker", "liam.walker@example.com", "+13105550119", "Seasonal allergies. Is the first visit longer?"),
    ("Olivia Turner", "olivia.t@example.com", "+17605550190", "Anxiety and stress. Please call me back."),
    ("Noah Patel", "noah.patel@example.com", "+18585550171", "Knee pain when running."),
    ("Ava Morris", "ava.morris@example.com", "+16195550134", "Hot flashes at night."),
    ("Ethan Brooks", "ethan.brooks@example.com", "+19515550158", "Sciatica down my left leg."),
    ("Chloe Rivera", "chloe.rivera@example.com", "+19495550177", "Digestive trouble for a few months."),
    ("Lucas Green", "", "+17145550103", "Headaches at work, afternoons are best."),
]
SOURCES = [("google", "cpc", "spring"), ("facebook", "social", "immune"), ("", "", ""), ("newsletter", "email", "")]
NOTES = ["Called, left a voicemail.", "Booked for Tuesday 10:00.", "Asked about insurance; sent the price list."]


def made_up_database(path: Path, now: datetime) -> None:
    """A month of made-up requests and visits, written as the site stores them."""
    db.migrate(str(path))
    rnd = random.Random(6)
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("BEGIN")
    for n in range(60):
        created = now - timedelta(days=2 + rnd.random() * 28)
        name, email, phone, message = PEOPLE[(n + 3) % len(PEOPLE)]
        source, medium, campaign = rnd.choice(SOURCES)
        status = rnd.choices(["contacted", "booked", "not_interested", "spam"], [40, 35, 15, 10])[0]
        stamp = created.isoformat(timespec="seconds")
        conn.execute(
            """INSERT INTO leads (form_id, created_at, updated_at, name, email, phone, preferred_time, message, status,
            is_spam, utm_source, utm_medium, utm_campaign, referrer, landing_page, user_agent)
            VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, '/', 'Mozilla/5.0 (iPhone) Safari/604.1')""",
            [f"made-up-{n}", stamp, stamp, name, email, phone, "morning", message, status, int(status == "spam")]
            + [source, medium, campaign, "https://www.google.com/" if source == "google" else ""],
        )
    for day in range(31):
        date = (now - timedelta(days=day)).astimezone(ZONE).date().isoformat()
        for source, medium, campaign in SOURCES:
            visitors = rnd.randint(4, 30) if source else rnd.randint(2, 12)
            conn.execute(
                "INSERT INTO visit_counts (day, page, source, medium, campaign, page_views, visitors, calls)"
                " VALUES (?, '/', ?, ?, ?, ?, ?, ?)",
                [date, source or "direct", medium, campaign, visitors + rnd.randint(0, visitors), visitors]
                + [rnd.randint(0, visitors // 8)],
            )
    conn.execute("COMMIT")
    conn.close()


def post_request(page, url: str, person: tuple, query: str) -> None:
    """Send the appointment form as a visitor would."""
    name, email, phone, message = person
    page.goto(url + "/" + query)
    page.fill("#name", name)
    if phone:
        page.fill("#phone", phone)
    if email:
        page.fill("#email", email)
    page.fill("#message", message)
    page.click("form[action$='/contact'] button[type=submit]")
    page.wait_for_url("**/thanks")


def sign_in(page, url: str) -> None:
    page.goto(url + "/admin/login")
    page.fill("#username", "owner")
    page.fill("#password", PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_url(url + "/admin")


def shoot(page, name: str, start: str | None = None, height: int | None = None) -> None:
    """Save what the page shows (from the element `start` at the top; its first `height` pixels) as a PNG."""
    path = IMAGES / f"{name}.png"
    if start:
        # Instantly (the site scrolls smoothly), and below the sticky header.
        page.evaluate(
            """selector => window.scrollTo({behavior: "instant", top: document.querySelector(selector)
                .getBoundingClientRect().top + window.scrollY - document.querySelector("header").offsetHeight - 16})""",
            start,
        )
    clip = {"x": 0, "y": 0, "width": page.viewport_size["width"], "height": height} if height else None
    page.screenshot(path=str(path), clip=clip, animations="disabled", caret="hide")
    size = path.stat().st_size
    print(f"{path.relative_to(ROOT)}: {size:,} bytes")
    if size > LIMIT_BYTES:
        raise SystemExit(f"{path} is over {LIMIT_BYTES:,} bytes")


def main() -> None:
    IMAGES.mkdir(exist_ok=True)
    now = datetime.now(UTC)
    data = Path(tempfile.mkdtemp(prefix="clinic-screenshots-"))
    made_up_database(data / "leads.db", now)
    smtp = Controller(Sink(), hostname="localhost", port=free_port())
    smtp.start()
    env = {
        "ENV_FILE": "",
        "DATA_DIR": str(data),
        "MAIL_SERVER": "localhost",
        "MAIL_PORT": str(smtp.port),
        "CLINIC_EMAIL": "frontdesk@acupuncturehalls.example",
        "HOUSEKEEPING_POLL_SECONDS": "1",  # the day's backup at once, for the status page
        "AUTOREPLY": "true",
        "SPAM_MIN_SECONDS": "0",
        "CONTACT_RATE_LIMIT": "1000 per minute",
        "LOGIN_RATE_LIMIT": "1000 per minute",
    }
    owner = [FLASK, "--app", "app", "create-admin", "owner"]
    subprocess.run(
        owner,
        input=f"{PASSWORD}\n" * 2,
        text=True,
        env={**os.environ, **env},
        cwd=ROOT,
        check=True,
        capture_output=True,
    )
    server = Server("app:create_app()", env)
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            take(browser, server.url)
            browser.close()
    finally:
        server.stop()
        smtp.stop()


def take(browser, url: str) -> None:
    """Post today's requests, work one of them, and photograph each page on a phone and a desktop."""
    phone = browser.new_context(**DEVICES["phone"])
    visitor = phone.new_page()
    visitor.goto(url + "/")
    shoot(visitor, "landing-phone", height=600)
    queries = [
        "?utm_source=google&utm_medium=cpc&utm_campaign=spring",
        "",
        "?utm_source=facebook&utm_medium=social&utm_campaign=immune",
    ]
    for person, query in zip(PEOPLE[:3], queries, strict=True):
        post_request(visitor, url, person, query)
    phone.close()

    for device in DEVICES:
        context = browser.new_context(**DEVICES[device])
        page = context.new_page()
        sign_in(page, url)
        if device == "phone":
            newest = page.locator("a.lead-name").nth(2)  # the first of today's three
            newest.click()
            page.select_option("#status", "contacted")
            page.fill("#note", NOTES[0])
            page.click("form.book button[type=submit]")
            page.wait_for_selector(".notes")
        page.goto(url + "/admin")
        shoot(page, f"inbox-{device}")
        page.locator("a.lead-name").nth(2).click()
        lead_page = page.url
        for _ in range(50):  # until the email, the alert and the confirmation are delivered
            if not page.locator(".badge.email-pending, .badge.email-sending").count():
                break
            page.wait_for_timeout(200)
            page.goto(lead_page)
        if device == "phone":
            shoot(page, "lead-phone")
        shoot(page, f"lead-notes-{device}", start="#work-title")
        page.goto(url + "/admin/analytics?from=" + (datetime.now(ZONE) - timedelta(days=29)).date().isoformat())
        if device == "phone":
            shoot(page, "analytics-phone", start="#sources-title", height=480)
        else:
            shoot(page, "analytics-desktop")
        page.goto(url + "/admin/status")
        for _ in range(50):  # until the day's backup is made
            if "none yet: the server makes one" not in page.content():
                break
            page.wait_for_timeout(200)
            page.goto(url + "/admin/status")
        if device == "phone":
            shoot(page, "status-phone")
        else:
            shoot(page, "status-channels-desktop", start="#channels")
        context.close()


if __name__ == "__main__":
    main()
