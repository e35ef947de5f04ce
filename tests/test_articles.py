"""Articles as Markdown: the seed unchanged at /, more articles as landing pages, attribution, clear errors."""

import gzip
import json
import os
import re
import signal
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import pytest
from conftest import (
    OWNER_PASSWORD,
    add_lead,
    drain,
    form_fields,
    free_port,
    post_lead,
    rows,
    sign_in,
    two_articles,
    valid_lead,
)

import articles
from app import create_app

ROOT = Path(__file__).resolve().parent.parent
SEED = ROOT / "content" / "acupuncture-and-immune-system-modulation.md"
SLEEP = "/articles/acupuncture-for-sleep"


class Outline(HTMLParser):
    """What a reader sees of a page's article (blocks and links) and what its head tells search engines."""

    def __init__(self):
        super().__init__()
        self.blocks, self.links, self.head = [], [], {}
        self.in_article = False
        self.block = self.link = self.title = None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "article":
            self.in_article = True
        elif tag == "title":
            self.title = []
        elif tag == "meta" and (attrs.get("name") == "description" or attrs.get("property", "").startswith("og:")):
            self.head[attrs.get("name") or attrs["property"]] = attrs["content"]
        elif tag == "link" and attrs.get("rel") == "canonical":
            self.head["canonical"] = attrs["href"]
        elif self.in_article and tag in ("h1", "h2", "h3", "h4", "p", "li"):
            self.block = [tag, ""]
        elif self.in_article and tag == "a":
            self.link = ["", attrs.get("href")]

    def handle_endtag(self, tag):
        if tag == "article":
            self.in_article = False
        elif tag == "title":
            self.head["title"] = "".join(self.title)
            self.title = None
        elif self.block and tag == self.block[0]:
            self.blocks.append(self.block)
            self.block = None
        elif self.link and tag == "a":
            self.links.append(self.link)
            self.link = None

    def handle_data(self, data):
        if self.title is not None:
            self.title.append(data)
        if self.block:
            self.block[1] += data
        if self.link:
            self.link[0] += data


def outline(html: str) -> dict:
    """The page's head, the article's blocks as [tag, text] and its links as [text, href]."""
    parser = Outline()
    parser.feed(html)
    return {"head": parser.head, "blocks": parser.blocks, "links": parser.links}


def json_ld(html: str) -> dict:
    """The page's JSON-LD things by @type."""
    data = json.loads(re.search(r'<script type="application/ld\+json">(.*?)</script>', html, re.S)[1])
    return {thing["@type"]: thing for thing in data["@graph"]}


@pytest.fixture
def content(tmp_path) -> Path:
    """A content folder with the real seed and a second article (tests/content/acupuncture-for-sleep.md)."""
    return Path(two_articles(tmp_path / "content"))


@pytest.fixture
def site(settings, content):
    """The site serving the test content folder."""
    return create_app({**settings, "CONTENT_DIR": str(content)})


def test_the_seed_at_home_reads_as_before_the_change(client):
    """Title, headings, words, the form link and the tel: link, as the page showed them before Markdown."""
    before = json.loads((ROOT / "tests" / "seed_page_before.json").read_text())
    now = outline(client.get("/").get_data(as_text=True))
    assert now == before
    assert [text for tag, text in now["blocks"] if tag == "h3"] == [
        "1. Balancing Immune Responses",
        "2. Regulating Inflammation",
        "3. Stress Reduction and Immune Function",
        "4. Autoimmune Disorders",
        "5. Enhancing Vaccine Response",
    ]
    assert ["fill out this form", "#book"] in now["links"]
    assert ["949-510-6333", "tel:+19495106333"] in now["links"]


def test_the_seed_takes_the_clinic_from_the_settings(settings):
    settings.update(CLINIC_NAME="Harbor *Needles*", CLINIC_TOWN="Dana Point, CA", CLINIC_PHONE="+17145550100")
    settings.update(CLINIC_PHONE_DISPLAY="714-555-0100")
    page = outline(create_app(settings).test_client().get("/").get_data(as_text=True))
    last = page["blocks"][-1][1]
    assert "visit the Harbor *Needles* clinic in Dana Point, CA." in last  # Markdown in a setting stays text
    assert ["714-555-0100", "tel:+17145550100"] in page["links"]
    assert page["head"]["description"].endswith("Book a visit at Harbor *Needles* in Dana Point, CA.")


def test_a_second_article_is_a_landing_page_of_its_own(site):
    client = site.test_client()
    response = client.get(SLEEP)
    assert response.status_code == 200
    html = response.get_data(as_text=True)
    page = outline(html)
    assert page["head"]["title"] == "Acupuncture for better sleep | Acupuncture Halls, San Juan Capistrano, CA"
    assert page["head"]["description"] == (
        "How acupuncture may help you fall asleep and sleep through. Book a visit at Acupuncture Halls."
    )
    assert page["head"]["canonical"] == page["head"]["og:url"] == "https://clinic.example" + SLEEP
    assert page["head"]["og:title"] == page["head"]["title"]
    assert ["h2", "How acupuncture may help"] in page["blocks"]
    assert ["fill out this form", "#book"] in page["links"] and ["949-510-6333", "tel:+19495106333"] in page["links"]
    article = json_ld(html)["Article"]
    assert article["headline"] == "Acupuncture for better sleep"
    assert article["description"] == page["head"]["description"]
    assert (article["datePublished"], article["dateModified"]) == ("2026-12-01", "2026-12-08")
    assert article["mainEntityOfPage"] == "https://clinic.example" + SLEEP
    assert 'id="book"' in html and 'action="/contact"' in html  # the same call to action and form
    # Each page lists the other under "More from the clinic".
    more = html.split('id="more-title"', 1)[1]
    assert '<a href="/">Acupuncture and immune system modulation</a>' in more
    home = client.get("/").get_data(as_text=True)
    assert f'<a href="{SLEEP}">Acupuncture for better sleep</a>' in home.split('id="more-title"', 1)[1]
    assert json_ld(home)["Article"]["headline"] == "Acupuncture and immune system modulation"


def test_the_sitemap_lists_every_article_with_its_last_change(site):
    sitemap = site.test_client().get("/sitemap.xml").get_data(as_text=True)
    entries = dict(re.findall(r"<loc>([^<]+)</loc><lastmod>([^<]+)</lastmod>", sitemap))
    assert entries == {
        "https://clinic.example/": "2026-11-24",
        "https://clinic.example/es/": "2026-11-24",
        "https://clinic.example" + SLEEP: "2026-12-08",
    }


def test_the_home_articles_own_address_leads_home_and_an_unknown_slug_gets_the_404_page(site):
    client = site.test_client()
    moved = client.get("/articles/acupuncture-and-immune-system-modulation?utm_source=fb")
    assert (moved.status_code, moved.headers["Location"]) == (301, "/?utm_source=fb")
    for path in ("/articles/unknown", "/articles/", "/articles/Acupuncture-For-Sleep", SLEEP + "/"):
        response = client.get(path)
        assert response.status_code == 404, path
        assert "We could not find that page" in response.get_data(as_text=True)


def test_the_first_visit_fast_path_and_the_page_cache_serve_every_article(site):
    """An article's first visit is answered below Flask's dispatch, with the same page Flask renders."""
    dispatched = []
    site.before_request(lambda: dispatched.append(__import__("flask").request.path))
    full = site.test_client().get(SLEEP).get_data(as_text=True)  # the process's first visit caches the page
    assert ("en", SLEEP) in site.extensions["form_pages"]
    visitor = site.test_client()
    fast = visitor.get(SLEEP + "?utm_source=newsletter")
    assert dispatched == [SLEEP]  # the second visit never reached Flask
    masked = re.compile(r'(name="(csrf_token|form_token|utm_source)" type="hidden" value="|href="/es/)[^"]*')
    assert masked.sub(r"\1", fast.get_data(as_text=True)) == masked.sub(r"\1", full)
    assert 'href="/es/?utm_source=newsletter" hreflang="es"' in fast.get_data(as_text=True)  # the language switch
    fields = form_fields(fast.get_data(as_text=True))
    assert (fields["utm_source"], fields["landing_page"]) == ("newsletter", SLEEP)
    assert visitor.post("/contact", data={**fields, **valid_lead()}).status_code == 303
    assert rows(site, "SELECT utm_source, landing_page FROM leads") == [
        {"utm_source": "newsletter", "landing_page": SLEEP}
    ]


def test_a_lead_from_the_second_article_names_it_in_the_inbox_the_csv_and_the_email(settings, smtp, content):
    settings.update(CONTENT_DIR=str(content), MAIL_SERVER="127.0.0.1", MAIL_PORT=smtp.port, MAIL_TIMEOUT=2)
    app = create_app(settings)
    client = app.test_client()
    result = app.test_cli_runner().invoke(args=["create-admin", "owner"], input=OWNER_PASSWORD + "\n")
    assert result.exit_code == 0
    assert post_lead(client, SLEEP, name="Sleepy Sam").status_code == 303
    assert post_lead(client, "/", name="Home Hannah").status_code == 303
    stored = {r["name"]: r["landing_page"] for r in rows(app, "SELECT name, landing_page FROM leads")}
    assert stored == {"Sleepy Sam": SLEEP, "Home Hannah": "/"}

    drain(app)
    [to_sam] = [m for m in smtp.wait_for(2) if "Sleepy Sam" in m["Subject"]]
    text = to_sam.get_body(("plain",)).get_content()
    assert f"Article:         Acupuncture for better sleep (https://clinic.example{SLEEP})" in text
    assert "Acupuncture for better sleep" in to_sam.get_body(("html",)).get_content()

    assert sign_in(client).status_code == 303
    inbox = client.get("/admin").get_data(as_text=True)
    assert re.search(r"Sleepy Sam.*?on <span class=\"landing-page\">Acupuncture for better sleep</span>", inbox, re.S)
    filtered = client.get("/admin?article=acupuncture-for-sleep").get_data(as_text=True)
    assert "Sleepy Sam" in filtered and "Home Hannah" not in filtered
    assert "1 request (spam hidden) sent from “Acupuncture for better sleep”" in filtered
    home_only = client.get("/admin?article=acupuncture-and-immune-system-modulation").get_data(as_text=True)
    assert "Home Hannah" in home_only and "Sleepy Sam" not in home_only
    assert "Sleepy Sam" in client.get("/admin?article=no-such-article").get_data(as_text=True)  # ignored
    csv_text = client.get("/admin/leads.csv?article=acupuncture-for-sleep").get_data(as_text=True)
    header, line = csv_text.strip().splitlines()
    assert header.endswith(",landing page,language") and line.endswith(f",{SLEEP},en") and "Sleepy Sam" in line
    lead_id = rows(app, "SELECT id FROM leads WHERE name = 'Sleepy Sam'")[0]["id"]
    detail = client.get(f"/admin/leads/{lead_id}").get_data(as_text=True)
    assert f'<dt>Sent from</dt><dd>Acupuncture for better sleep (<a href="{SLEEP}">{SLEEP}</a>)</dd>' in detail


def test_only_a_real_article_page_is_believed(site):
    """The hidden field comes from the visitor: a made-up page is not stored, the Referer is a fallback."""
    client = site.test_client()
    fields = form_fields(client.get(SLEEP).get_data(as_text=True))
    sent = [
        ({"landing_page": "/admin<script>"}, {}),
        ({"landing_page": "/articles/unknown"}, {"Referer": "https://evil.example/nonsense"}),
        ({"landing_page": ""}, {"Referer": "https://clinic.example" + SLEEP + "?utm_source=x"}),
        ({"landing_page": "/"}, {"Referer": "https://clinic.example" + SLEEP}),
        ({"landing_page": "/x"}, {"Referer": "http://[::1"}),
    ]
    for n, (field, headers) in enumerate(sent):
        data = {**fields, **valid_lead(name=f"Visitor {n}"), **field, "form_token": ""}
        assert client.post("/contact", data=data, headers=headers).status_code == 303
    stored = [r["landing_page"] for r in rows(site, "SELECT landing_page FROM leads ORDER BY id")]
    assert stored == [None, None, SLEEP, "/", None]


def test_a_refused_form_is_shown_again_on_the_article_it_was_sent_from(site):
    client = site.test_client()
    fields = form_fields(client.get(SLEEP).get_data(as_text=True))
    response = client.post("/contact", data={**fields, **valid_lead(name="")})
    assert response.status_code == 422
    html = response.get_data(as_text=True)
    assert "<h1>Acupuncture for better sleep</h1>" in html and "Please tell us your name." in html
    assert form_fields(html)["landing_page"] == SLEEP


def test_an_articles_image_is_its_sharing_image(settings, content):
    sleep = content / "acupuncture-for-sleep.md"
    sleep.write_text(sleep.read_text().replace("updated: 2026-12-08\n", "updated: 2026-12-08\nimage: favicon.svg\n", 1))
    client = create_app({**settings, "CONTENT_DIR": str(content)}).test_client()
    html = client.get(SLEEP).get_data(as_text=True)
    [shared] = re.findall(r'<meta property="og:image" content="([^"]+)"', html)
    assert re.fullmatch(r"https://clinic\.example/static/favicon\.svg\?v=\w+", shared)
    assert json_ld(html)["Article"]["image"] == shared
    home = client.get("/").get_data(as_text=True)  # an article without `image` keeps the site's picture
    assert "/static/og.png?v=" in re.findall(r'<meta property="og:image" content="([^"]+)"', home)[0]


def test_html_in_markdown_is_shown_as_text(settings, content):
    (content / "acupuncture-for-sleep.md").write_text(
        (content / "acupuncture-for-sleep.md").read_text()
        + '\n<script>alert("block")</script>\n\nInline <img src=x onerror=alert(1)> and <b>bold</b>.\n'
        + "\n[click](javascript:alert(1))\n"
    )
    html = create_app({**settings, "CONTENT_DIR": str(content)}).test_client().get(SLEEP).get_data(as_text=True)
    assert "&lt;script&gt;alert(&quot;block&quot;)&lt;/script&gt;" in html
    assert "Inline &lt;img src=x onerror=alert(1)&gt; and &lt;b&gt;bold&lt;/b&gt;." in html
    assert "<script>alert" not in html and "<img src" not in html and "<b>" not in html
    assert "<p>[click](javascript:alert(1))</p>" in html  # not a link


def article_file(text: str = "Text.", **keys) -> str:
    """A Markdown file with valid front matter but for `keys` (None leaves a key out)."""
    meta = {"title": "t", "description": "d", "slug": "x", "published": "2026-12-01", **keys}
    return "---\n" + "".join(f"{k}: {v}\n" for k, v in meta.items() if v is not None) + "---\n" + text + "\n"


BROKEN = {
    "front matter that is not YAML": ("---\ntitle: [oops\nslug: x\n---\nText.\n", "not valid YAML at line 2"),
    "no front matter": ("Just text.\n", "no front matter"),
    "no title": (article_file(title=None), "missing title"),
    "no slug": (article_file(slug=None), "missing slug"),
    "a misspelt key": (article_file(publised="2026-12-01"), "unknown front matter key 'publised'"),
    "a bad date": (article_file(published="soon"), "published: 'soon' is not a date"),
    "a bad slug": (article_file(slug="Not A Slug"), "slug 'Not A Slug': use lowercase"),
    "a second # title": (article_file("# Big"), "a '# ' heading"),
    "a missing image": (article_file(image="nope.png"), "image 'nope.png': no such file"),
    "an unknown placeholder": (article_file("{{ clinic.fax }}"), "unknown placeholder {{ clinic.fax }}"),
    "the seed's slug again": (
        article_file(slug="acupuncture-and-immune-system-modulation"),
        "slug 'acupuncture-and-immune-system-modulation' is also the slug of",
    ),
    "a second home": (article_file(home="true"), "`home: true` is also set in"),
}


@pytest.mark.parametrize("case", list(BROKEN))
def test_broken_content_stops_start_up_naming_the_file(settings, content, case):
    text, problem = BROKEN[case]
    broken = content / "broken.md"
    broken.write_text(text)
    with pytest.raises(articles.ContentError) as stopped:
        create_app({**settings, "CONTENT_DIR": str(content)})
    message = str(stopped.value)
    assert message.startswith(str(broken) + ": ") or (case == "a second home" and str(broken) in message)
    assert problem in message


def test_no_home_article_stops_start_up(settings, content):
    for seed in (ROOT / "content").glob("*.md"):  # the seed and its translation
        (content / seed.name).unlink()
    with pytest.raises(articles.ContentError, match=r"content: no article has `home: true`"):
        create_app({**settings, "CONTENT_DIR": str(content)})


def flask_command(args: list[str], env: dict) -> subprocess.CompletedProcess:
    """Run `flask --app app ARGS` as the owner would, in a subprocess."""
    flask = Path(sys.executable).with_name("flask")
    return subprocess.run(
        [str(flask), "--app", "app", *args],
        cwd=ROOT,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_the_articles_command_lists_them_and_names_a_broken_file(tmp_path, content):
    env = {"DATA_DIR": str(tmp_path / "data"), "SECRET_KEY": "test", "SITE_URL": "https://clinic.example"}
    listed = flask_command(["articles"], {**env, "CONTENT_DIR": str(content)})
    assert listed.returncode == 0, listed.stderr
    lines = listed.stdout.splitlines()
    assert lines[0].split("\t") == [
        "acupuncture-and-immune-system-modulation",
        "en",
        "Acupuncture and immune system modulation",
        "https://clinic.example/",
        "2026-11-24",
        "translations: es: acupuntura-y-modulacion-del-sistema-inmunitario",
    ]
    assert lines[1].split("\t") == [
        "acupuncture-for-sleep",
        "en",
        "Acupuncture for better sleep",
        "https://clinic.example" + SLEEP,
        "2026-12-01",
        "no translation",
    ]
    assert lines[2].split("\t") == [
        "acupuntura-y-modulacion-del-sistema-inmunitario",
        "es",
        "Acupuntura y modulación del sistema inmunitario",
        "https://clinic.example/es/",
        "2026-11-24",
        "translations: en: acupuncture-and-immune-system-modulation",
    ]
    (content / "broken.md").write_text(article_file(title=None))
    for command in ("articles", "check"):  # every command loads the site first, `check` included
        stopped = flask_command([command], {**env, "CONTENT_DIR": str(content)})
        assert stopped.returncode != 0
        assert stopped.stderr.strip().splitlines()[-1] == f"{content / 'broken.md'}: missing title"
        assert "Traceback" not in stopped.stderr


def test_existing_leads_came_from_home(settings):
    """The migration gives every lead stored before articles existed the home page."""
    import db.migrations

    old = db.connect(str(Path(settings["DATA_DIR"]) / "leads.db"))
    db.migrations.clinic.apply(old, stop_before="m008_lead_landing_page")  # the database as it was before articles
    old.table("leads").insert({"form_id": "f1", "created_at": "x", "updated_at": "x", "name": "Old", "status": "new"})
    old.close()
    app = create_app(settings)
    assert rows(app, "SELECT name, landing_page FROM leads") == [{"name": "Old", "landing_page": "/"}]
    add_lead(app, name="New", landing_page=SLEEP)
    assert rows(app, "SELECT landing_page FROM leads WHERE name = 'New'") == [{"landing_page": SLEEP}]


def test_every_article_page_is_small_and_keeps_the_strict_csp(site):
    """Within the first TCP window once compressed (14 KB, headers included), with no inline script or style."""
    client = site.test_client()
    for article in site.extensions["articles"]:
        response = client.get(article["path"])
        html = response.get_data(as_text=True)
        headers = sum(len(name) + len(value) + 4 for name, value in response.headers.items())
        assert len(gzip.compress(response.get_data())) + headers < 14 * 1024, article["path"]
        assert "<style" not in html and " style=" not in html
        scripts = re.findall(r"<script([^>]*)>", html)
        assert all(" src=" in attrs or attrs == ' type="application/ld+json"' for attrs in scripts)
        assert response.headers["Content-Security-Policy"].startswith("default-src 'self'")


def test_broken_content_stops_gunicorn_with_the_message(tmp_path, content):
    """The master reads the articles before it starts workers, so it stops instead of restarting them."""
    (content / "broken.md").write_text(article_file(slug=None))
    env = {**os.environ, "DATA_DIR": str(tmp_path / "data"), "SECRET_KEY": "test", "CONTENT_DIR": str(content)}
    env.update(PORT=str(free_port()), WEB_CONCURRENCY="1")
    gunicorn = Path(sys.executable).with_name("gunicorn")
    command = [str(gunicorn), "-c", "gunicorn.conf.py", "app:create_app()"]
    server = subprocess.Popen(command, cwd=ROOT, env=env, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        _, stderr = server.communicate(timeout=30)
    finally:
        if server.poll() is None:  # it started after all: stop it and its workers
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()
    assert server.returncode != 0
    assert f"{content / 'broken.md'}: missing slug" in stderr
    assert "Booting worker" not in stderr
