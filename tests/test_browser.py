"""The visitor's experience in Debian's chromium, on a phone and on a desktop, against the real gunicorn."""

import gzip
import json
import struct
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from conftest import DEVICES, OWNER_PASSWORD
from playwright.sync_api import expect

pytestmark = pytest.mark.e2e

ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"
SITE_URL = "https://clinic.example"
FORM_FIELDS = ["name", "phone", "email", "preferred_time", "message"]


def snap(page, name: str) -> None:
    """Keep a full-page screenshot under test-artifacts/ for a person to look at."""
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=ARTIFACTS / f"{name}-{page.device}.png", full_page=True)


def console_errors(page) -> list[str]:
    """Collect what the browser reports as errors: script errors, CSP refusals, failed loads."""
    errors = []
    page.on("console", lambda message: message.type == "error" and errors.append(message.text))
    page.on("pageerror", lambda error: errors.append(str(error)))
    return errors


def focused(page) -> dict:
    """What has the keyboard focus, and whether a person can see it."""
    return page.evaluate(
        """() => {
            const e = document.activeElement, style = getComputedStyle(e);
            return {id: e.id, tag: e.tagName.toLowerCase(), text: (e.innerText || '').trim().slice(0, 60),
                    visible: e.matches(':focus-visible') && style.outlineStyle !== 'none'
                             && parseFloat(style.outlineWidth) >= 2};
        }"""
    )


def assert_message_beside(page, field_id: str, message: str) -> None:
    """The message sits right under its field, inside the field's box, and the field points to it."""
    field = page.locator(f"#{field_id}")
    error = page.locator(f"#{field_id}-error")
    expect(error).to_have_text(message)
    expect(field).to_have_attribute("aria-invalid", "true")
    assert f"{field_id}-error" in field.get_attribute("aria-describedby").split()
    gap = error.evaluate(
        """(e, id) => { const f = document.getElementById(id);
            const gap = e.getBoundingClientRect().top - f.getBoundingClientRect().bottom;
            return e.parentElement === f.parentElement ? gap : null; }""",
        field_id,
    )
    assert gap is not None and 0 <= gap < 24, f"the message for {field_id} is {gap} px away from it"


def fill_valid(page) -> None:
    page.get_by_label("Your name").fill("Jane Doe")
    page.get_by_label("Phone").fill("949 510 6333")
    page.get_by_label("Email").fill("jane@example.com")


def test_reader_reads_the_article_and_taps_call(page, live_server):
    errors = console_errors(page)
    page.goto(live_server.url + "/")
    expect(page.get_by_role("heading", level=1)).to_have_text("Acupuncture and immune system modulation")
    expect(page.get_by_role("heading", level=3)).to_have_count(5)
    width = page.evaluate("[document.documentElement.scrollWidth, innerWidth]")
    assert width[0] <= width[1], "the page scrolls sideways"
    assert page.evaluate("parseFloat(getComputedStyle(document.body).fontSize)") >= 16
    snap(page, "landing")

    page.get_by_text("visit the Acupuncture Halls clinic").scroll_into_view_if_needed()
    call = page.get_by_role("link", name="Call Now: 949-510-6333")
    box = call.bounding_box()
    viewport = page.viewport_size
    assert 0 <= box["y"] and box["y"] + box["height"] <= viewport["height"], "the call button scrolled away"
    assert box["height"] >= 44 and box["width"] >= 44
    snap(page, "article-end")
    with page.context.expect_event("request", lambda r: r.url.startswith("tel:")) as dialled:
        call.tap() if page.device == "phone" else call.click()
    assert dialled.value.url == "tel:+19495106333"
    assert errors == []


def test_keyboard_only_visitor_sends_the_form(page, live_server, smtp):
    errors = console_errors(page)
    page.goto(live_server.url + "/")
    page.keyboard.press("Tab")
    stop = focused(page)
    assert (stop["text"], stop["visible"]) == ("Skip to content", True)
    assert page.locator(".skip").bounding_box()["x"] >= 0, "the skip link stays off screen when focused"
    page.keyboard.press("Enter")
    assert focused(page)["id"] == "main"

    stops = []
    while len(stops) < 30 and (not stops or stops[-1]["id"] != "name"):
        page.keyboard.press("Tab")
        stops.append(focused(page))
    assert stops[-1]["id"] == "name", f"Tab never reached the form: {stops}"
    assert all(stop["visible"] for stop in stops), f"focus not visible on {[s for s in stops if not s['visible']]}"
    assert stops[0]["text"] == "Request an appointment"

    typed = {"name": "Jane Doe", "phone": "949 510 6333", "email": "jane@example.com", "preferred_time": None}
    typed["message"] = "Typed with the keyboard only."
    labels = {"name": "Your name", "phone": "Phone", "email": "Email", "preferred_time": "Best time to call"}
    labels["message"] = "How can we help? (optional)"
    for i, field_id in enumerate(FORM_FIELDS):
        if i:
            page.keyboard.press("Tab")
        stop = focused(page)
        assert stop["id"] == field_id and stop["visible"], stop
        expect(page.get_by_label(labels[field_id], exact=True)).to_be_focused()
        if typed[field_id]:
            page.keyboard.type(typed[field_id])
        else:
            page.keyboard.press("ArrowDown")
    expect(page.get_by_label("Best time to call")).to_have_value("morning")
    page.keyboard.press("Tab")
    assert focused(page)["text"] == "Send request"
    snap(page, "keyboard-filled")
    page.keyboard.press("Enter")

    page.wait_for_url("**/thanks")
    expect(page.get_by_role("heading", level=1)).to_have_text("Thank you, Jane Doe!")
    [message] = smtp.wait_for(1)
    body = message.get_body(("plain",)).get_content()
    for words in ["Jane Doe", "+19495106333", "jane@example.com", "morning", "Typed with the keyboard only."]:
        assert words in body
    assert errors == []


def test_invalid_form_shows_each_message_beside_its_field(page, live_server, smtp):
    errors = console_errors(page)
    page.goto(live_server.url + "/")
    posts = []
    page.on("request", lambda r: r.method == "POST" and posts.append(r.url))

    # Checked in the page first: nothing is sent, each message is beside its field.
    page.get_by_role("button", name="Send request").click()
    assert_message_beside(page, "name", "Please tell us your name.")
    assert_message_beside(page, "phone", "Please give a phone number or an email address so we can reach you.")
    expect(page.locator("#name")).to_be_focused()
    expect(page.get_by_role("alert")).to_contain_text("Please check the fields marked below")
    assert posts == []
    snap(page, "invalid-in-page")
    page.get_by_label("Your name").fill("Jane Doe")
    expect(page.locator("#name-error")).to_have_count(0)

    # What only the server can judge comes back the same way, focus on the first problem.
    page.get_by_label("Phone").fill("12345")
    page.get_by_label("Email").fill("jane@")
    page.get_by_role("button", name="Send request").click()
    page.wait_for_url("**/contact")
    assert_message_beside(page, "phone", "Please enter a phone number we can call, like 949-510-6333.")
    assert_message_beside(page, "email", "Please enter an email address like name@example.com.")
    expect(page.locator("#phone")).to_be_focused()
    expect(page.get_by_label("Your name")).to_have_value("Jane Doe")
    expect(page.get_by_role("alert")).to_contain_text("Please enter a phone number we can call")
    snap(page, "invalid-from-server")

    page.get_by_label("Phone").fill("949 510 6333")
    page.get_by_label("Email").fill("jane@example.com")
    page.get_by_role("button", name="Send request").click()
    page.wait_for_url("**/thanks")
    assert len(smtp.wait_for(1)) == 1
    assert [e for e in errors if "status of 422" not in e] == []  # the refused form itself is a 422


def test_form_works_with_javascript_off(browser, live_server, smtp):
    context = browser.new_context(**DEVICES["phone"], java_script_enabled=False)
    page = context.new_page()
    page.device = "phone-nojs"
    page.goto(live_server.url + "/")
    expect(page.get_by_text("The human immune system serves as a vigilant defender")).to_be_visible()

    page.get_by_role("button", name="Send request").click()
    page.wait_for_url("**/contact")
    assert_message_beside(page, "name", "Please tell us your name.")
    assert_message_beside(page, "phone", "Please give a phone number or an email address so we can reach you.")
    expect(page.locator("#name")).to_be_focused()
    expect(page.get_by_role("alert")).to_contain_text("Please tell us your name.")
    snap(page, "invalid-without-js")

    fill_valid(page)
    page.get_by_role("button", name="Send request").click()
    page.wait_for_url("**/thanks")
    expect(page.get_by_role("heading", level=1)).to_have_text("Thank you, Jane Doe!")
    assert len(smtp.wait_for(1)) == 1
    context.close()


def test_a_second_send_while_the_first_is_on_its_way_sends_nothing(page, live_server, smtp):
    page.goto(live_server.url + "/")
    fill_valid(page)
    posts = []
    page.on("request", lambda r: r.method == "POST" and posts.append(r.url))
    network = page.context.new_cdp_session(page)
    network.send("Network.enable")
    network.send(
        "Network.emulateNetworkConditions",
        {"offline": False, "latency": 800, "downloadThroughput": -1, "uploadThroughput": -1},
    )
    page.get_by_label("Email").focus()
    page.keyboard.press("Enter")
    page.wait_for_timeout(100)
    page.keyboard.press("Enter")  # an impatient second try while the slow network carries the first
    page.wait_for_url("**/thanks")
    assert len(posts) == 1
    assert len(smtp.wait_for(1)) == 1
    page.go_back()  # the form is ready to use again (Playwright turns off the back/forward cache)
    button = page.get_by_role("button", name="Send request")
    expect(button).to_be_enabled()
    expect(button).not_to_have_attribute("aria-disabled", "true")


def test_first_view_is_small_fast_and_from_this_site_only(page, live_server):
    finished = []
    page.context.on("requestfinished", lambda request: finished.append(request))
    page.goto(live_server.url + "/", wait_until="networkidle")
    rows = []
    for request in finished:
        response = request.response()
        sizes = request.sizes()
        body = response.body()
        encoding = response.header_value("content-encoding")
        if response.header_value("content-type").startswith("text/html") and not encoding:
            # gunicorn does not compress pages (a proxy in front would): count what gzip would send.
            size = len(gzip.compress(body, 6))
        else:
            size = sizes["responseBodySize"]
        rows.append(
            {"url": request.url, "type": request.resource_type, "body": size, "headers": sizes["responseHeadersSize"]}
        )
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / f"first-view-{page.device}.json").write_text(json.dumps(rows, indent=2))

    assert all(row["url"].startswith(live_server.url + "/") for row in rows), rows
    assert len(rows) <= 4, rows
    total = sum(row["body"] + row["headers"] for row in rows)
    assert total < 20_000, f"{total} bytes: {rows}"
    first_paint = sum(row["body"] + row["headers"] for row in rows if row["type"] in ("document", "stylesheet"))
    assert first_paint <= 14_000, f"HTML and CSS take {first_paint} bytes, more than the first round trip"
    blocking = page.evaluate(
        """() => [...document.scripts].filter(s => s.type !== 'application/ld+json'
                  && !(s.src && (s.defer || s.async || s.type === 'module'))).map(s => s.outerHTML)"""
    )
    assert blocking == []


def test_found_and_shared(browser, serve):
    server = serve({"SITE_URL": SITE_URL})
    page = browser.new_page()
    page.goto(server.url + "/?utm_source=newsletter")
    head = page.evaluate(
        """() => Object.fromEntries([...document.querySelectorAll('meta[name], meta[property], link[rel]')]
                  .map(e => [e.getAttribute('name') || e.getAttribute('property') || e.rel,
                             e.content || e.getAttribute('href')]))"""
    )
    assert page.title() == "Acupuncture and immune system modulation | Acupuncture Halls, San Juan Capistrano, CA"
    assert 50 <= len(head["description"]) <= 160 and "immune" in head["description"]
    assert head["canonical"] == SITE_URL + "/"
    assert head["og:url"] == SITE_URL + "/"
    assert head["og:title"] == page.title() and head["og:description"] == head["description"]
    assert head["twitter:card"] == "summary_large_image"
    assert "robots" not in head

    image = page.request.get(head["og:image"].replace(SITE_URL, server.url))
    assert image.status == 200 and image.headers["content-type"] == "image/png"
    assert len(image.body()) < 100_000
    assert struct.unpack(">II", image.body()[16:24]) == (1200, 630) == (int(head["og:image:width"]), 630)
    icon = page.request.get(server.url + head["icon"])
    assert icon.status == 200 and icon.headers["content-type"].startswith("image/svg+xml")
    touch = page.request.get(server.url + head["apple-touch-icon"])
    assert touch.status == 200 and struct.unpack(">II", touch.body()[16:24]) == (180, 180)

    graph = json.loads(page.locator('script[type="application/ld+json"]').text_content())["@graph"]
    clinic = next(thing for thing in graph if thing["@type"] == "MedicalClinic")
    assert clinic["name"] == "Acupuncture Halls" and clinic["telephone"] == "+19495106333"
    assert clinic["url"] == SITE_URL + "/"
    assert clinic["address"]["addressLocality"] == "San Juan Capistrano" and clinic["address"]["addressRegion"] == "CA"
    article = next(thing for thing in graph if thing["@type"] == "Article")
    assert article["headline"] == page.get_by_role("heading", level=1).text_content()
    assert article["publisher"] == {"@id": clinic["@id"]}

    robots = page.request.get(server.url + "/robots.txt")
    assert robots.headers["content-type"].startswith("text/plain")
    assert "Disallow: /admin" in robots.text() and f"Sitemap: {SITE_URL}/sitemap.xml" in robots.text()
    sitemap = ET.fromstring(page.request.get(server.url + "/sitemap.xml").body())
    assert [loc.text for loc in sitemap.iter("{http://www.sitemaps.org/schemas/sitemap/0.9}loc")] == [
        SITE_URL + "/",
        SITE_URL + "/es/",
        SITE_URL + "/privacy",
        SITE_URL + "/es/privacy",
    ]
    page.goto(server.url + "/no-such-page")
    expect(page.locator('meta[name="robots"]')).to_have_attribute("content", "noindex")
    expect(page.locator('link[rel="canonical"]')).to_have_count(0)
    page.goto(server.url + "/thanks")  # indexable: without a request of the visitor's it claims none
    expect(page.locator('meta[name="robots"]')).to_have_count(0)
    expect(page.locator('link[rel="canonical"]')).to_have_attribute("href", SITE_URL + "/thanks")
    page.close()


def test_print_dark_mode_and_reduced_motion(browser, serve):
    server = serve()
    page = browser.new_page()
    page.goto(server.url + "/")
    page.emulate_media(media="print")
    expect(page.locator("header.top")).to_be_hidden()
    expect(page.locator("#book")).to_be_hidden()
    expect(page.get_by_role("heading", level=1)).to_be_visible()
    page.emulate_media(media="screen", color_scheme="dark")
    assert page.evaluate("getComputedStyle(document.body).backgroundColor") == "rgb(18, 25, 23)"
    page.emulate_media(color_scheme="light")
    assert page.evaluate("getComputedStyle(document.body).backgroundColor") == "rgb(251, 250, 247)"
    assert page.evaluate("getComputedStyle(document.documentElement).scrollBehavior") == "smooth"
    page.emulate_media(reduced_motion="reduce")
    assert page.evaluate("getComputedStyle(document.documentElement).scrollBehavior") == "auto"
    page.close()


def test_a_spanish_visitor_reads_writes_and_is_thanked_in_spanish(browser, live_server, smtp):
    from test_admin_live import create_admin

    context = browser.new_context(**DEVICES["phone"], locale="es-MX")
    page = context.new_page()
    page.device = "phone-es"
    errors = console_errors(page)
    page.goto(live_server.url + "/es/?utm_source=radio")
    expect(page.locator("html")).to_have_attribute("lang", "es")
    expect(page.get_by_role("heading", level=1)).to_have_text("Acupuntura y modulación del sistema inmunitario")
    expect(page.get_by_role("heading", level=3)).to_have_count(5)
    expect(page.get_by_role("link", name="English")).to_have_attribute("href", "/?utm_source=radio")
    width = page.evaluate("[document.documentElement.scrollWidth, innerWidth]")
    assert width[0] <= width[1], "the page scrolls sideways"
    page.get_by_text("visite la clínica Acupuncture Halls en San Juan Capistrano").scroll_into_view_if_needed()
    snap(page, "spanish-landing")

    # Checked in the page first, in Spanish; then what only the server judges, in Spanish too.
    page.get_by_role("button", name="Enviar solicitud").click()
    assert_message_beside(page, "name", "Por favor, díganos su nombre.")
    expect(page.get_by_role("alert")).to_contain_text("Por favor, revise los campos marcados abajo:")
    page.get_by_label("Su nombre").fill("María López")
    page.get_by_label("Teléfono").fill("12345")
    page.get_by_role("button", name="Enviar solicitud").click()
    page.wait_for_url("**/es/contact")
    assert_message_beside(page, "phone", "Escriba un número de teléfono al que podamos llamar, como 949-510-6333.")
    expect(page.locator("html")).to_have_attribute("lang", "es")
    snap(page, "spanish-invalid-from-server")

    page.get_by_label("Teléfono").fill("949 510 6333")
    page.get_by_label("¿En qué podemos ayudarle? (opcional)").fill("Tengo resfriados todo el invierno.")
    page.get_by_role("button", name="Enviar solicitud").click()
    page.wait_for_url("**/es/thanks")
    expect(page.get_by_role("heading", level=1)).to_have_text("¡Gracias, María López!")
    expect(page.locator("main")).to_contain_text("en un plazo de un día laborable")
    snap(page, "spanish-thanks")
    assert [e for e in errors if "status of 422" not in e] == []

    [message] = smtp.wait_for(1)
    assert message["Subject"] == "New appointment request (Spanish page): María López"
    body = message.get_body(("plain",)).get_content()
    assert body.splitlines()[0] == "New appointment request from the website, sent from a Spanish page"

    create_admin(live_server.log_path.parent, "owner")
    owner = browser.new_context(**DEVICES["desktop"]).new_page()
    owner.goto(live_server.url + "/admin/login")
    owner.get_by_label("Username").fill("owner")
    owner.get_by_label("Password").fill(OWNER_PASSWORD)
    owner.get_by_role("button", name="Sign in").click()
    owner.wait_for_url("**/admin")
    expect(owner.locator("html")).to_have_attribute("lang", "en")  # the owner's admin stays English
    expect(owner.locator("li", has_text="María López").locator(".page-language")).to_have_text("Spanish page")
    owner.context.close()
    context.close()
