"""Calls in Debian's chromium against the real gunicorn: a tap on the header's phone button, seen by the owner."""

import csv
import io
import re
import time

import pytest
from conftest import DEVICES, OWNER_PASSWORD, LiveServer

from app import create_app

pytestmark = pytest.mark.e2e

# A phone's own browser. Left alone, Playwright's chromium says HeadlessChrome, which the site counts as a bot.
PHONE = "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0 Mobile"


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """The site under gunicorn with two workers, and its owner's account."""
    data_dir = tmp_path_factory.mktemp("calls-site")
    env = {"DATA_DIR": str(data_dir), "SECRET_KEY": "calls-test", "ENV_FILE": ""}
    owner = create_app({"DATA_DIR": str(data_dir), "SECRET_KEY": "calls-test"})
    result = owner.test_cli_runner().invoke(args=["create-admin", "owner"], input=OWNER_PASSWORD + "\n")
    assert result.exit_code == 0, result.output
    server = LiveServer(env, workers=2)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def owner(browser, site):
    """A desktop tab signed in to the admin."""
    context = browser.new_context(**DEVICES["desktop"])
    tab = context.new_page()
    tab.goto(site.url + "/admin/login")
    tab.get_by_label("Username").fill("owner")
    tab.get_by_label("Password").fill(OWNER_PASSWORD)
    tab.get_by_role("button", name="Sign in").click()
    tab.wait_for_url("**/admin")
    yield tab
    context.close()


def tap_the_call_button(browser, site, path: str, **context_options) -> None:
    """A new visitor on a phone opens `path` and taps the header's phone button; the beacon is answered 204."""
    context = browser.new_context(**DEVICES["phone"], **context_options)
    tab = context.new_page()
    tab.goto(site.url + path)
    button = tab.get_by_role("link", name="Call Now: 949-510-6333")
    with tab.expect_response(lambda r: r.url == site.url + "/calls") as beacon:
        with context.expect_event("request", lambda r: r.url.startswith("tel:")) as dialled:
            button.tap()
    assert dialled.value.url == "tel:+19495106333"  # the call itself goes ahead
    assert beacon.value.status == 204
    context.close()


def analytics(owner, site, source: str) -> dict[str, str]:
    """The analytics page's line of `source` by column, waiting until both workers' counts are written."""
    deadline = time.monotonic() + 30  # each worker writes its counts every 5 seconds (a busy machine: longer)
    while True:
        owner.goto(site.url + "/admin/analytics")
        heads = [th.inner_text().split("\n")[0].strip() for th in owner.locator("table.sources thead th").all()]
        for row in owner.locator("table.sources tbody tr").all():
            line = dict(zip(heads, [cell.inner_text() for cell in row.locator("th, td").all()], strict=False))
            if line["Source"].split()[0] != source or len(line) < len(heads):  # not it, or "No visits" yet
                continue
            if line["Calls"] != "0" and line["Views"] != "0":  # the view and the call may be two workers' counts
                return line
        if time.monotonic() > deadline:
            return {}
        time.sleep(0.5)


def exported(owner, site, source: str) -> list[dict]:
    """The CSV's rows of `source`."""
    response = owner.request.get(site.url + "/admin/analytics.csv")
    return [row for row in csv.DictReader(io.StringIO(response.text().lstrip("\ufeff"))) if row["source"] == source]


def test_a_call_from_an_ads_landing_shows_under_that_ad(browser, site, owner):
    tap_the_call_button(browser, site, "/?utm_source=facebook&utm_medium=cpc&utm_campaign=spring", user_agent=PHONE)
    line = analytics(owner, site, "facebook")
    assert re.sub(r"\s+", " ", line.get("Source", "")) == "facebook spring"
    assert (line["Visitors"], line["Views"], line["Calls"], line["Requests"]) == ("1", "1", "1", "0")
    [row] = exported(owner, site, "facebook")
    assert (row["page"], row["medium"], row["campaign"]) == ("/", "cpc", "spring")
    assert (row["page_views"], row["visitors"], row["calls"], row["booking_clicks"]) == ("1", "1", "1", "0")


def test_with_global_privacy_control_the_call_counts_and_the_visitor_does_not(browser, site, owner):
    tap_the_call_button(browser, site, "/?utm_source=newsletter", user_agent=PHONE, extra_http_headers={"Sec-GPC": "1"})
    line = analytics(owner, site, "newsletter")
    assert (line.get("Visitors"), line.get("Views"), line.get("Calls")) == ("0", "1", "1")
    [row] = exported(owner, site, "newsletter")
    assert (row["page_views"], row["visitors"], row["calls"]) == ("1", "0", "1")


def test_a_headless_browsers_tap_counts_as_a_bot(browser, site, owner):
    tap_the_call_button(browser, site, "/?utm_source=robots-ad")  # Playwright's own user agent: HeadlessChrome
    deadline = time.monotonic() + 30
    while not (bots := [row for row in exported(owner, site, "bots") if row["calls"] != "0"]):
        assert time.monotonic() < deadline, "the headless tap was not counted as a bot's"
        time.sleep(0.5)
    assert [(row["page"], row["calls"]) for row in bots] == [("/", "1")]
    assert exported(owner, site, "robots-ad") == []
    owner.goto(site.url + "/admin/analytics")
    assert "1 tap on the phone number" in owner.locator(".small", has_text="Bots and tools").inner_text()
