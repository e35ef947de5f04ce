"""The site in Spanish: pages chosen by the address, every visitor's word translated, the owner told in English."""

import csv
import io
import json
import re
from html.parser import HTMLParser
from pathlib import Path

import pytest
from babel.messages.mofile import read_mo
from babel.messages.pofile import read_po
from conftest import add_lead, drain, form_fields, post_lead, rows, valid_lead
from jinja2 import Environment, nodes

import articles
from app import create_app

ROOT = Path(__file__).resolve().parent.parent
SEED_ES = "acupuntura-y-modulacion-del-sistema-inmunitario"
SEED_EN = "acupuncture-and-immune-system-modulation"


def post_lead_es(client, path: str = "/es/", **overrides):
    """Open a Spanish page like a visitor, then send its form (to /es/contact) with `overrides`."""
    page = client.get(path).get_data(as_text=True)
    action = re.search(r'<form method="post" action="([^"]+)"', page)[1]
    return client.post(action, data={**form_fields(page), **valid_lead(**overrides)})


def head_links(html: str) -> dict:
    """The page's language, its hreflang alternates and its header's language switch."""
    return {
        "lang": re.search(r'<html lang="([^"]+)">', html)[1],
        "alternates": dict(re.findall(r'<link rel="alternate" hreflang="([^"]+)" href="([^"]+)">', html)),
        "switch": re.findall(
            r'<a class="lang-switch" href="([^"]+)" hreflang="([^"]+)" lang="[^"]+">([^<]+)</a>', html
        ),
    }


def test_the_spanish_home_is_the_seed_in_spanish_with_alternates_both_ways(client):
    spanish = client.get("/es/?utm_source=fb&utm_campaign=otoño")
    assert spanish.status_code == 200
    html = spanish.get_data(as_text=True)
    both = {"en": "https://clinic.example/", "es": "https://clinic.example/es/", "x-default": "https://clinic.example/"}
    assert head_links(html) == {
        "lang": "es",
        "alternates": both,
        "switch": [("/?utm_source=fb&amp;utm_campaign=oto%C3%B1o", "en", "English")],  # the visit's tags go along
    }
    assert "<title>Acupuntura y modulación del sistema inmunitario | Acupuncture Halls, San Juan Capistrano, CA" in html
    assert '<link rel="canonical" href="https://clinic.example/es/">' in html
    assert "Solicite una cita" in html and "Enviar solicitud" in html and "Su nombre" in html
    assert "visite la clínica Acupuncture Halls en San Juan Capistrano, CA" in html  # name and town unchanged
    assert 'href="tel:+19495106333">949-510-6333</a>' in html
    ld = json.loads(re.search(r'<script type="application/ld\+json">(.*?)</script>', html, re.S)[1])
    assert [thing["inLanguage"] for thing in ld["@graph"] if thing["@type"] == "Article"] == ["es"]
    english = client.get("/?utm_medium=cpc").get_data(as_text=True)
    assert head_links(english) == {
        "lang": "en",
        "alternates": both,
        "switch": [("/es/?utm_medium=cpc", "es", "Español")],
    }
    assert "Request an appointment" in english and "Solicite" not in english


def test_the_address_alone_chooses_the_language(client):
    asked_in_spanish = client.get("/", headers={"Accept-Language": "es-MX,es;q=0.9"})
    assert asked_in_spanish.status_code == 200  # never redirected, never guessed
    assert '<html lang="en">' in asked_in_spanish.get_data(as_text=True)
    asked_in_english = client.get("/es/", headers={"Accept-Language": "en-US"})
    assert '<html lang="es">' in asked_in_english.get_data(as_text=True)
    moved = client.get(f"/es/articles/{SEED_ES}?utm_source=x")  # the Spanish home's own address leads to /es/
    assert (moved.status_code, moved.headers["Location"]) == (301, "/es/?utm_source=x")
    for path in (f"/es/articles/{SEED_EN}", f"/articles/{SEED_ES}"):  # an article is only at its language's address
        assert client.get(path).status_code == 404, path


def test_the_privacy_page_in_spanish(client):
    html = client.get("/es/privacy?utm_source=fb").get_data(as_text=True)
    assert head_links(html) == {
        "lang": "es",
        "alternates": {
            "en": "https://clinic.example/privacy",
            "es": "https://clinic.example/es/privacy",
            "x-default": "https://clinic.example/privacy",
        },
        "switch": [("/privacy?utm_source=fb", "en", "English")],
    }
    for words in (
        "<title>Privacidad | Acupuncture Halls</title>",
        "Qué recogemos",
        "Borramos las solicitudes 365 días",
    ):
        assert words in html
    assert 'Llámenos al <a href="tel:+19495106333">949-510-6333</a>' in html
    assert '<a href="/es/privacy">Privacidad</a>' in html  # the footer stays in Spanish


def test_a_spanish_visitor_is_told_what_to_fix_in_spanish_then_thanked_in_spanish(app, client):
    refused = post_lead_es(client, name="", phone="", email="")
    assert refused.status_code == 422
    html = refused.get_data(as_text=True)
    assert '<html lang="es">' in html
    assert "Por favor, díganos su nombre." in html
    assert "Indique un número de teléfono o una dirección de correo electrónico" in html
    assert "Por favor, revise los campos marcados abajo:" in html
    bad_choice = post_lead_es(client, preferred_time="midnight")  # WTForms' own message, from its catalog
    assert '<p class="error" id="preferred_time-error">Opción inválida.</p>' in bad_choice.get_data(as_text=True)
    bad_email = post_lead_es(client, email="not-an-address", phone="")
    assert "Escriba una dirección de correo electrónico como nombre@ejemplo.com." in bad_email.get_data(as_text=True)
    sent = post_lead_es(client, name="María López")
    assert (sent.status_code, sent.headers["Location"]) == (303, "/es/thanks")
    thanks = client.get("/es/thanks").get_data(as_text=True)
    assert "¡Gracias, María López!" in thanks
    assert "se pondrá en contacto con usted en un plazo de un día laborable" in thanks
    assert rows(app, "SELECT name, language, landing_page FROM leads") == [
        {"name": "María López", "language": "es", "landing_page": "/es/"}
    ]


def test_an_english_lead_and_an_old_one_are_english(app, client):
    post_lead(client)
    add_lead(app)  # stored without a language, as every lead before the column was
    assert [row["language"] for row in rows(app, "SELECT language FROM leads")] == ["en", "en"]


@pytest.mark.parametrize("code", [404, 413, 429, 500])
def test_error_pages_under_es_speak_spanish(settings, code):
    settings.update(CONTACT_RATE_LIMIT="1 per minute", MAX_CONTENT_LENGTH=1000)
    app = create_app(settings)

    @app.get("/es/probe-crash")
    def probe_crash():
        raise RuntimeError("boom")

    client = app.test_client()
    if code == 404:
        response = client.get("/es/no-such-page")
    elif code == 413:
        response = client.post("/es/contact", data={"message": "x" * 5000})
    elif code == 429:
        post_lead_es(client)
        response = post_lead_es(client)
    else:
        response = client.get("/es/probe-crash")
    assert response.status_code == code
    html = response.get_data(as_text=True)
    title = {
        404: "No encontramos esa página",
        413: "Eso era demasiado para enviar",
        429: "Demasiados intentos en poco tiempo",
        500: "Lo sentimos, algo salió mal por nuestra parte",
    }[code]
    assert f"<h1>{title}</h1>" in html and '<html lang="es">' in html
    assert "Siempre puede comunicarse con nosotros por teléfono:" in html and "Llame al 949-510-6333" in html


def test_the_confirmation_is_in_spanish_and_the_clinic_is_told_in_english(mail_settings, smtp):
    mail_settings.update(AUTOREPLY=True, BOOKING_URL="https://booking.example/clinic")
    app = create_app(mail_settings)
    client = app.test_client()
    assert post_lead_es(client, name="María López", email="maria@example.com").status_code == 303
    assert drain(app) == 2
    [clinic] = [m for m in smtp.messages if m["To"] == "owner@clinic.example"]
    [visitor] = [m for m in smtp.messages if m["To"] == "maria@example.com"]
    assert clinic["Subject"] == "New appointment request (Spanish page): María López"
    clinic_text = clinic.get_body(("plain",)).get_content()
    assert clinic_text.splitlines()[0] == "New appointment request from the website, sent from a Spanish page"
    assert "Name:            María López" in clinic_text
    assert visitor["Subject"] == "Hemos recibido su solicitud: Acupuncture Halls"
    text = visitor.get_body(("plain",)).get_content()
    html = visitor.get_body(("html",)).get_content()
    assert "Gracias por su solicitud de cita a Acupuncture Halls." in text
    assert "en un plazo de un día laborable" in text and "949-510-6333" in text
    assert re.search(r"Reserve en línea ahora: https://clinic\.example/book/\S+", text)
    assert '<html lang="es">' in html and ">Reserve en línea</a>" in html
    # The same server then confirms an English page's request in English, each with the link to its own lead.
    assert post_lead(client, name="Ann English", email="ann@example.com").status_code == 303
    assert drain(app) == 2
    [english] = [m for m in smtp.messages if m["To"] == "ann@example.com"]
    english_text = english.get_body(("plain",)).get_content()
    assert "Thank you for your appointment request to Acupuncture Halls." in english_text
    links = [re.search(r"https://clinic\.example/book/\S+", t)[0] for t in (text, english_text)]
    booked = [client.get(link.removeprefix("https://clinic.example")).status_code for link in links]
    assert links[0] != links[1] and booked == [303, 303]


def test_the_owner_sees_the_spanish_page_in_the_inbox_the_lead_the_csv_and_analytics(app, owner):
    post_lead_es(owner, name="María López")
    post_lead(owner, name="Ann English")
    add_lead(app, name="Old Lead")
    inbox = owner.get("/admin").get_data(as_text=True)
    assert inbox.count('<strong class="page-language">Spanish page</strong>') == 1
    assert '<html lang="en">' in inbox and "Español" not in inbox  # the owner's admin stays English
    [lead] = rows(app, "SELECT id FROM leads WHERE name = 'María López'")
    page = owner.get(f"/admin/leads/{lead['id']}").get_data(as_text=True)
    assert '<dd class="page-language">Spanish page</dd>' in page
    exported = owner.get("/admin/leads.csv").get_data(as_text=True)
    table = list(csv.reader(io.StringIO(exported.lstrip("\ufeff"))))
    assert table[0][-1] == "language"
    assert sorted(line[-1] for line in table[1:]) == ["en", "en", "es"]
    spanish_only = owner.get("/admin/analytics?language=es").get_data(as_text=True)
    english_only = owner.get("/admin/analytics?language=en").get_data(as_text=True)
    pages = re.compile(r'<table class="pages">.*?</table>', re.S)
    assert "/es/" in pages.search(spanish_only)[0] and "<td>Spanish page</td>" in pages.search(spanish_only)[0]
    assert "<td>English page</td>" not in pages.search(spanish_only)[0]
    assert "<td>Spanish page</td>" not in pages.search(english_only)[0]


def article_file(**meta) -> str:
    lines = [f"{key}: {value}" for key, value in meta.items() if value is not None]
    return "---\n" + "\n".join(lines) + "\n---\n\nTexto del artículo.\n"


SPANISH = {"title": "Sueño", "description": "Dormir mejor.", "slug": "sueno", "published": "2026-12-01", "lang": "es"}


@pytest.mark.parametrize(
    "files, problem",
    [
        (
            {"sueno.md": {**SPANISH, "translation_of": "no-such-article"}},
            "translation_of 'no-such-article': no English",
        ),
        ({"sueno.md": {**SPANISH, "translation_of": SEED_EN}}, f"{SEED_EN!r} already has a translation in 'es'"),
        ({"sueno.md": {**SPANISH, "lang": "fr"}}, "lang 'fr': unknown language (known: en, es)"),
        ({"sueno.md": {**SPANISH, "lang": "en", "translation_of": SEED_EN}}, "translation_of needs a `lang:`"),
    ],
)
def test_a_broken_translation_stops_start_up_naming_the_file(settings, tmp_path, files, problem):
    content = tmp_path / "content"
    content.mkdir()
    for seed in (ROOT / "content").glob("*.md"):
        (content / seed.name).write_text(seed.read_text())
    for name, meta in files.items():
        (content / name).write_text(article_file(**meta))
    with pytest.raises(articles.ContentError) as stopped:
        create_app({**settings, "CONTENT_DIR": str(content)})
    assert str(stopped.value).startswith(f"{content / 'sueno.md'}: ")
    assert problem in str(stopped.value)


def test_a_second_article_translated_gets_its_own_address_and_both_alternates(settings, tmp_path):
    content = tmp_path / "content"
    content.mkdir()
    for seed in [*(ROOT / "content").glob("*.md"), *(ROOT / "tests" / "content").glob("*.md")]:
        (content / seed.name).write_text(seed.read_text())
    (content / "sueno.md").write_text(article_file(**SPANISH, translation_of="acupuncture-for-sleep"))
    client = create_app({**settings, "CONTENT_DIR": str(content)}).test_client()
    html = client.get("/es/articles/sueno").get_data(as_text=True)
    assert head_links(html)["alternates"] == {
        "en": "https://clinic.example/articles/acupuncture-for-sleep",
        "es": "https://clinic.example/es/articles/sueno",
        "x-default": "https://clinic.example/articles/acupuncture-for-sleep",
    }
    more = re.search(r'<nav class="more-articles".*?</nav>', html, re.S)[0]  # the Spanish page offers Spanish articles
    assert "/es/" in more and "acupuncture-for-sleep" not in more
    english = client.get("/articles/acupuncture-for-sleep").get_data(as_text=True)
    assert head_links(english)["switch"] == [("/es/articles/sueno", "es", "Español")]
    sitemap = client.get("/sitemap.xml").get_data(as_text=True)
    entry = re.search(r"<url><loc>https://clinic.example/es/articles/sueno</loc>.*?</url>", sitemap, re.S)[0]
    assert 'hreflang="en" href="https://clinic.example/articles/acupuncture-for-sleep"' in entry
    assert 'hreflang="x-default" href="https://clinic.example/articles/acupuncture-for-sleep"' in entry


# Every visitor-facing template: its words must go through gettext, or a Spanish page would show English.
PUBLIC_TEMPLATES = [
    "base.html",
    "landing.html",
    "_form.html",
    "thanks.html",
    "privacy.html",
    "errors/error.html",
    "email/confirmation.html",
    "email/confirmation.txt",
]
GETTEXT = {"_", "gettext", "ngettext"}
READ_ATTRIBUTES = {"alt", "title", "aria-label", "placeholder", "value"}  # the head's texts are blocks using _()
CODE_STARTS = {"variable_begin", "block_begin", "comment_begin"}
MACHINE_WORDS = {"article", "noindex"}  # the og:type and robots blocks: read by crawlers, not people


class Readable(HTMLParser):
    """The words of a page that a reader sees: its text and the attributes read aloud or shown."""

    def __init__(self):
        super().__init__()
        self.words: list[str] = []

    def handle_starttag(self, tag, attrs):
        for name, value in attrs:
            if name in READ_ATTRIBUTES and value:
                self.handle_data(value)

    def handle_data(self, data):
        words = data.replace("\x00", " ").split()
        self.words += [word for word in words if re.search("[A-Za-z]{2}", word) and word not in MACHINE_WORDS]


def untranslated(source: str, env: Environment) -> list[str]:
    """English words a reader would see that are outside gettext: in the template's text or its string constants."""
    reader = Readable()
    # The template's own text, with a mark where each expression, tag or comment stands.
    reader.feed(
        "".join(
            value if kind == "data" else "\x00" for _, kind, value in env.lex(source) if kind in {"data", *CODE_STARTS}
        )
    )
    found = reader.words
    tree = env.parse(source)
    inside_gettext = {
        id(arg)
        for call in tree.find_all(nodes.Call)
        if getattr(call.node, "name", None) in GETTEXT
        for arg in call.args
    }
    for const in tree.find_all(nodes.Const):
        if isinstance(const.value, str) and " " in const.value.strip() and id(const) not in inside_gettext:
            found.append(const.value)
    return found


@pytest.mark.parametrize("name", PUBLIC_TEMPLATES)
def test_every_visitor_facing_string_in_a_template_is_marked_for_translation(app, name):
    source = (ROOT / "templates" / name).read_text()
    assert untranslated(source, app.jinja_env) == []


def test_the_check_finds_an_unmarked_string(app):
    assert untranslated("<p>Call us now</p>", app.jinja_env) == ["Call", "us", "now"]
    assert untranslated('<img alt="Our clinic">', app.jinja_env) == ["Our", "clinic"]
    assert untranslated("{{ field(f, hint='Phone or email') }}", app.jinja_env) == ["Phone or email"]
    assert untranslated("<p>{{ _('Call us now') }}</p>", app.jinja_env) == []


def as_key(text: str | list | tuple) -> str | tuple:
    """A message's text, or its plural forms as a tuple."""
    return text if isinstance(text, str) else tuple(text)


def test_the_compiled_catalog_matches_its_source():
    """translations/es/LC_MESSAGES/messages.mo is committed: it must say what messages.po says (pybabel compile)."""
    folder = ROOT / "translations" / "es" / "LC_MESSAGES"
    with open(folder / "messages.po", "rb") as po, open(folder / "messages.mo", "rb") as mo:
        source, compiled = read_po(po), read_mo(mo)
    expected = {as_key(message.id): as_key(message.string) for message in source if message.id and message.string}
    got = {as_key(message.id): as_key(message.string) for message in compiled if message.id}
    assert got == expected
    untranslated_messages = [message.id for message in source if message.id and not message.string]
    assert untranslated_messages == []
