"""The owner's day under the real gunicorn (two workers): create the account, sign in, work a lead, export."""

import os
import re
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from http.cookiejar import CookieJar
from pathlib import Path

from conftest import OWNER_PASSWORD

ROOT = Path(__file__).resolve().parent.parent


def browser():
    """A cookie-keeping client that follows redirects, like a phone's browser."""
    jar = CookieJar()
    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar))
    opener.jar = jar
    return opener


def send_form(opener, url: str, page: str, **fields):
    token = re.search(r'name="csrf_token"[^>]*value="([^"]+)"', page).group(1)
    data = urllib.parse.urlencode({**fields, "csrf_token": token}).encode()
    return opener.open(url, data=data)


def create_admin(data_dir: Path, name: str, password: str = OWNER_PASSWORD) -> str:
    """Run the real `flask --app app create-admin NAME` for the site in `data_dir`; its output."""
    flask = Path(sys.executable).with_name("flask")
    env = {**os.environ, "DATA_DIR": str(data_dir), "SECRET_KEY": "live-test"}
    done = subprocess.run(
        [str(flask), "--app", "app", "create-admin", name],
        input=password + "\n",
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_owner_signs_in_works_a_lead_exports_and_signs_out(live_server, smtp):
    data_dir = live_server.log_path.parent
    assert "created" in create_admin(data_dir, "owner")
    base = live_server.url

    visitor = browser()
    landing = visitor.open(base + "/?utm_source=article").read().decode()
    fields = dict(re.findall(r'<input id="\w+" name="(\w+)" type="hidden" value="([^"]*)"', landing))
    fields.update(name="Maria Lopez", phone="949 510 6333", email="maria@example.com", message="Colds all winter")
    visitor.open(base + "/contact", data=urllib.parse.urlencode(fields).encode())
    smtp.wait_for(1)

    phone = browser()
    login = phone.open(base + "/admin")
    assert login.url == base + "/admin/login?next=/admin"
    inbox = send_form(phone, login.url, login.read().decode(), username="owner", password=OWNER_PASSWORD)
    assert inbox.url == base + "/admin"
    assert inbox.headers["Cache-Control"] == "no-store"
    html = inbox.read().decode()
    assert "Maria Lopez" in html
    assert 'href="tel:+19495106333"' in html
    assert "<svg" in html and "article: 1" in html
    lead_url = base + re.search(r'href="(/admin/leads/\d+)"', html).group(1)

    # The SMTP server has the email; the sender records the delivery a moment after.
    deadline = time.monotonic() + 10
    lead_page = phone.open(lead_url).read().decode()
    while "delivered" not in lead_page and time.monotonic() < deadline:
        time.sleep(0.1)
        lead_page = phone.open(lead_url).read().decode()
    assert "delivered" in lead_page
    saved = send_form(phone, lead_url, lead_page, status="contacted", note="Called, booked Tuesday 3 pm")
    page = saved.read().decode()
    assert saved.url == lead_url
    assert "Called, booked Tuesday 3 pm" in page
    assert "Saved: marked contacted, note added." in page

    export = phone.open(base + "/admin/leads.csv?status=contacted")
    assert export.headers["Content-Disposition"].startswith('attachment; filename="leads-')
    body = export.read()
    assert body.startswith(b"\xef\xbb\xbf")
    assert b"Maria Lopez" in body and b"Contacted" in body

    copied = [c for c in phone.jar if c.name == "session"][0].value
    page = phone.open(base + "/admin").read().decode()
    out = send_form(phone, base + "/admin/logout", page)
    assert out.url == base + "/admin/login"
    # Each request may land on either worker: the session is gone for both.
    for _ in range(4):
        thief = urllib.request.Request(base + "/admin", headers={"Cookie": f"session={copied}"})
        assert urllib.request.urlopen(thief).url.startswith(base + "/admin/login")
        try:
            urllib.request.urlopen(
                urllib.request.Request(base + "/admin/leads.csv", headers={"Cookie": f"session={copied}"})
            )
        except urllib.error.HTTPError as refused:
            assert refused.code == 401
        else:
            raise AssertionError("the CSV opened after sign-out")


def test_lock_out_holds_across_workers(live_server):
    create_admin(live_server.log_path.parent, "owner")
    base = live_server.url
    codes = []
    for _ in range(6):
        client = browser()  # a fresh connection each time, so the workers share the attempts
        page = client.open(base + "/admin/login").read().decode()
        try:
            send_form(client, base + "/admin/login", page, username="owner", password="not the password")
        except urllib.error.HTTPError as error:
            codes.append(error.code)
            text = error.read().decode()
    assert codes == [401] * 5 + [429]
    assert "Too many failed sign-ins" in text
