"""The landing page, the thank-you and privacy pages, and the error pages."""

import re

ARTICLE_PARTS = [
    "Acupuncture and immune system modulation",
    "The human immune system serves as a vigilant defender",
    "Understanding Acupuncture and Immune System Modulation",
    "1. Balancing Immune Responses",
    "2. Regulating Inflammation",
    "3. Stress Reduction and Immune Function",
    "4. Autoimmune Disorders",
    "5. Enhancing Vaccine Response",
    "is a testament to the nuanced and holistic approach",
    "visit the Acupuncture Halls clinic in San Juan Capistrano, CA",
]


def test_landing_renders_the_whole_article(client):
    html = client.get("/").get_data(as_text=True)
    for part in ARTICLE_PARTS:
        assert part in html
    assert "Photo credit" not in html
    assert "<h1>Acupuncture and immune system modulation</h1>" in html
    assert len(re.findall(r"<h3>\d\. ", html)) == 5


def test_header_has_click_to_call_and_a_jump_to_the_form(client):
    html = client.get("/").get_data(as_text=True)
    assert '<a class="call" href="tel:+19495106333"><span class="call-label">Call Now: </span>949-510-6333</a>' in html
    assert html.index('href="#book"') < html.index("Understanding Acupuncture")
    assert html.index('id="book"') > html.index("fill out this form")
    assert "not medical advice" in html


def test_form_fields_carry_the_right_keyboards_and_limits(client):
    html = client.get("/").get_data(as_text=True)
    assert re.search(r'<input[^>]*autocomplete="name"[^>]*name="name"[^>]*required', html)
    assert re.search(r'<input[^>]*autocomplete="tel"[^>]*inputmode="tel"[^>]*type="tel"', html)
    assert re.search(r'<input[^>]*autocomplete="email"[^>]*type="email"', html)
    assert re.search(r'<textarea[^>]*maxlength="2000"', html)


def test_clinic_details_come_from_configuration(settings):
    from app import create_app

    settings.update(CLINIC_NAME="Harbor Needles", CLINIC_PHONE="+17145550100", CLINIC_PHONE_DISPLAY="714-555-0100")
    html = create_app(settings).test_client().get("/").get_data(as_text=True)
    assert "Harbor Needles" in html
    assert 'href="tel:+17145550100"><span class="call-label">Call Now: </span>714-555-0100</a>' in html


def test_no_request_leaves_the_site(client):
    html = client.get("/").get_data(as_text=True)
    html = re.sub(r'<link rel="(canonical|alternate)"[^>]*>', "", html)  # they name pages, load nothing
    assert not re.search(r'(src|href)="(https?:)?//', html)


def test_privacy_page_answers_the_visitors_questions(client):
    html = client.get("/privacy").get_data(as_text=True)
    for words in ["What we collect", "Why", "Who sees it", "How long we keep it", "deletion", "365 days"]:
        assert words in html


def test_unknown_page_gets_the_sites_own_404(client):
    response = client.get("/no-such-page")
    assert response.status_code == 404
    html = response.get_data(as_text=True)
    assert "We could not find that page" in html
    assert "Call 949-510-6333" in html


def test_wrong_method_gets_a_friendly_405(client):
    response = client.delete("/thanks")
    assert response.status_code == 405
    assert "tel:+19495106333" in response.get_data(as_text=True)


def test_stylesheet_url_carries_a_content_hash(client):
    html = client.get("/").get_data(as_text=True)
    assert re.search(r'href="/static/site.css\?v=[0-9a-f]{12}"', html)


def test_health_check(client):
    assert client.get("/healthz").get_json() == {"database": "ok", "emails_waiting": 0, "emails_failed": 0}
