"""axe-core finds nothing to fix on any page a visitor or the owner can reach, light or dark, phone or desktop."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import DEVICES, LiveServer, missing, two_articles
from playwright.sync_api import expect

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parent.parent
AXE = ROOT / "node_modules" / "axe-core" / "axe.min.js"
PASSWORD = "a long and careful passphrase"
VARIANTS = {
    "phone": DEVICES["phone"],
    "phone-dark": {**DEVICES["phone"], "color_scheme": "dark"},
    "desktop": DEVICES["desktop"],
}


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """One server for the module, with an owner account made by `flask create-admin`."""
    data = tmp_path_factory.mktemp("a11y")
    env = {
        "DATA_DIR": str(data),
        "CONTENT_DIR": two_articles(data / "content"),  # a second article, at /articles/acupuncture-for-sleep
        "SECRET_KEY": "a11y",
        "SPAM_MIN_SECONDS": "0",
        "CONTACT_RATE_LIMIT": "1000 per minute",
        "LOGIN_RATE_LIMIT": "1000 per minute",  # every page and device signs in from this one address
    }
    server = LiveServer(env)
    flask = Path(sys.executable).with_name("flask")
    made = subprocess.run(
        [str(flask), "--app", "app", "create-admin", "owner"],
        input=PASSWORD + "\n",
        cwd=ROOT,
        env={**os.environ, **env, "OUTBOX_WORKER": "false"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert made.returncode == 0, made.stdout + made.stderr
    yield server
    server.stop()


@pytest.fixture
def axe_page(browser, request):
    """A tab that carries axe-core into every page it opens (an init script, which the CSP does not block)."""
    if not AXE.exists():
        missing(f"{AXE} not found: run `npm ci` (or `make test`, which does)")
    context = browser.new_context(**VARIANTS[request.param])
    context.set_default_timeout(10_000)
    context.add_init_script(path=str(AXE))
    page = context.new_page()
    yield page
    context.close()


def violations(page) -> list[str]:
    """axe's violations on the page as it stands, one readable line each."""
    found = page.evaluate(
        """() => axe.run(document, {resultTypes: ['violations'], rules: {'target-size': {enabled: true}}})
                  .then(r => r.violations)"""
    )
    return [f"{v['id']} ({v['impact']}): {v['help']} at {[n['target'] for n in v['nodes']][:5]}" for v in found]


def send_lead(page, url: str) -> None:
    page.goto(url + "/")
    page.get_by_label("Your name").fill("Jane Doe")
    page.get_by_label("Phone").fill("949 510 6333")
    page.get_by_role("button", name="Send request").click()
    page.wait_for_url("**/thanks")


def sign_in(page, url: str, username: str = "owner", password: str = PASSWORD) -> None:
    page.goto(url + "/admin/login")
    page.get_by_label("Username").fill(username)
    page.get_by_label("Password").fill(password)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_load_state()


def open_landing(page, url):
    page.goto(url + "/")


def open_article(page, url):
    page.goto(url + "/articles/acupuncture-for-sleep")
    expect(page.get_by_role("heading", name="More from the clinic")).to_be_visible()


def open_form_checked_in_page(page, url):
    page.goto(url + "/")
    page.get_by_role("button", name="Send request").click()
    expect(page.locator("#name-error")).to_be_visible()


def open_form_refused_by_server(page, url):
    page.goto(url + "/")
    page.get_by_label("Your name").fill("Jane Doe")
    page.get_by_label("Phone").fill("12345")
    page.get_by_label("Email").fill("jane@")
    page.get_by_role("button", name="Send request").click()
    page.wait_for_url("**/contact")


def open_thanks(page, url):
    page.goto(url + "/thanks")


def open_thanks_after_sending(page, url):
    send_lead(page, url)


def open_privacy(page, url):
    page.goto(url + "/privacy")


def open_404(page, url):
    assert page.goto(url + "/no-such-page").status == 404


def open_es_landing(page, url):
    page.goto(url + "/es/")
    expect(page.locator("html")).to_have_attribute("lang", "es")


def open_es_form_checked_in_page(page, url):
    page.goto(url + "/es/")
    page.get_by_role("button", name="Enviar solicitud").click()
    expect(page.locator("#name-error")).to_have_text("Por favor, díganos su nombre.")


def open_es_form_refused_by_server(page, url):
    page.goto(url + "/es/")
    page.get_by_label("Su nombre").fill("María López")
    page.get_by_label("Teléfono").fill("12345")
    page.get_by_role("button", name="Enviar solicitud").click()
    page.wait_for_url("**/es/contact")


def open_es_thanks_after_sending(page, url):
    page.goto(url + "/es/")
    page.get_by_label("Su nombre").fill("María López")
    page.get_by_label("Teléfono").fill("949 510 6333")
    page.get_by_role("button", name="Enviar solicitud").click()
    page.wait_for_url("**/es/thanks")


def open_es_privacy(page, url):
    page.goto(url + "/es/privacy")


def open_es_404(page, url):
    assert page.goto(url + "/es/no-such-page").status == 404


POST_HERE = """() => { const form = document.createElement('form');
                        form.method = 'post'; document.body.append(form); form.submit(); }"""


def open_405(page, url):
    page.goto(url + "/privacy")
    with page.expect_navigation() as landed:
        page.evaluate(POST_HERE)
    assert landed.value.status == 405


def open_admin_login(page, url):
    page.goto(url + "/admin/login")


def open_admin_login_refused(page, url):
    sign_in(page, url, username="nobody", password="not the password")  # the owner must not get locked out
    expect(page.get_by_role("alert")).to_be_visible()


def open_admin_inbox(page, url):
    send_lead(page, url)
    sign_in(page, url)
    expect(page.get_by_role("link", name="Jane Doe").first).to_be_visible()


def open_admin_lead(page, url):
    open_admin_inbox(page, url)
    page.get_by_role("link", name="Jane Doe").first.click()
    page.wait_for_url("**/admin/leads/*")


def open_admin_status(page, url):
    sign_in(page, url)
    page.goto(url + "/admin/status")


def open_admin_analytics(page, url):
    page.goto(url + "/?utm_source=facebook&utm_medium=cpc&utm_campaign=spring")  # a bot's visit (headless)
    page.get_by_label("Your name").fill("Jane Doe")
    page.get_by_label("Phone").fill("949 510 6333")
    page.get_by_role("button", name="Send request").click()
    page.wait_for_url("**/thanks")
    sign_in(page, url)
    page.goto(url + "/admin/analytics")
    expect(page.get_by_role("rowheader", name="facebook")).to_be_visible()


def open_admin_help(page, url):
    sign_in(page, url)
    page.get_by_role("link", name="Help").click()
    page.wait_for_url("**/admin/help")
    pictures = page.locator(".guide img").all()
    assert len(pictures) >= 4
    for picture in pictures:  # each loads (they load lazily, as they come into view)
        picture.scroll_into_view_if_needed()
        expect(picture).to_have_js_property("complete", True)
        assert picture.evaluate("image => image.naturalWidth") > 0


PUBLIC = [
    open_landing,
    open_article,
    open_form_checked_in_page,
    open_form_refused_by_server,
    open_thanks,
    open_thanks_after_sending,
    open_privacy,
    open_404,
    open_405,
    open_es_landing,
    open_es_form_checked_in_page,
    open_es_form_refused_by_server,
    open_es_thanks_after_sending,
    open_es_privacy,
    open_es_404,
]
ADMIN = [
    open_admin_login,
    open_admin_login_refused,
    open_admin_inbox,
    open_admin_lead,
    open_admin_status,
    open_admin_analytics,
    open_admin_help,
]
ALL_PAGES = PUBLIC + ADMIN


@pytest.mark.parametrize("axe_page", list(VARIANTS), indirect=True)
@pytest.mark.parametrize("visit", ALL_PAGES, ids=lambda visit: visit.__name__.removeprefix("open_"))
def test_no_axe_violations(axe_page, visit, site):
    visit(axe_page, site.url)
    assert violations(axe_page) == []


@pytest.mark.parametrize("axe_page", ["phone"], indirect=True)
@pytest.mark.parametrize("visit", ALL_PAGES, ids=lambda visit: visit.__name__.removeprefix("open_"))
def test_touch_targets_are_at_least_44px_on_a_phone(axe_page, visit, site):
    visit(axe_page, site.url)
    small = axe_page.evaluate(
        """() => [...document.querySelectorAll('a[href], button, input:not([type=hidden]), select, textarea, summary')]
            .filter(e => e.getClientRects().length && !e.closest('[aria-hidden=true]'))
            // A link inside a sentence is exempt (WCAG 2.5.5); everything standing on its own is measured.
            .filter(e => !(getComputedStyle(e).display === 'inline'
                           && e.parentElement.textContent.trim() !== e.textContent.trim()))
            .map(e => ({what: e.outerHTML.slice(0, 90), size: e.getBoundingClientRect()}))
            .filter(t => t.size.width < 44 || t.size.height < 44)
            .map(t => `${t.what} is ${Math.round(t.size.width)}x${Math.round(t.size.height)}`)"""
    )
    assert small == []
