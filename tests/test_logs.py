"""What the site's own log keeps of a visitor: the address cut to its /24 or /48, no user agent."""

import logging

import pytest
from conftest import post_lead

AGENT = "Mozilla/5.0 (unique-agent-4d2e) Firefox/140.0"


@pytest.mark.parametrize(
    "address, shown",
    [
        ("198.51.100.77", "198.51.100.0/24"),
        ("2001:db8:abcd:12::7", "2001:db8:abcd::/48"),
        ("::ffff:198.51.100.77", "198.51.100.0/24"),
    ],
)
def test_request_lines_show_the_visitors_network_not_their_address_or_browser(app, caplog, address, shown):
    with caplog.at_level(logging.INFO):
        for path in ("/", "/", "/privacy"):  # Flask's answer, the first-visit fast path, another page
            client = app.test_client()
            client.environ_base.update(REMOTE_ADDR=address, HTTP_USER_AGENT=AGENT)
            client.get(path)
        post_lead(client)  # GET / with a session (Flask's path), then POST /contact
    lines = [record.getMessage() for record in caplog.records]
    assert sum(line.endswith(f" {shown}") for line in lines) == 5
    assert not [line for line in lines if address in line or "unique-agent" in line]


def test_the_privacy_page_says_what_the_server_logs_keep_and_for_how_long(client):
    html = client.get("/privacy").get_data(as_text=True)
    assert "What our server's logs keep" in html
    assert "with its last part removed" in html and "deleted after 14 days" in html
