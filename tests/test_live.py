"""The site under the real gunicorn: a request sent over HTTP reaches the clinic's mailbox."""

import re
import urllib.parse
import urllib.request
from http.cookiejar import CookieJar


def test_request_over_http_is_stored_and_mailed(live_server, smtp):
    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(CookieJar()))
    page = opener.open(live_server.url + "/").read().decode()
    fields = dict(re.findall(r'<input id="\w+" name="(\w+)" type="hidden" value="([^"]*)"', page))
    fields.update(name="Jane Doe", phone="949 510 6333", email="jane@example.com", message="Hello")
    response = opener.open(live_server.url + "/contact", data=urllib.parse.urlencode(fields).encode())
    assert response.url.endswith("/thanks")
    assert "Thank you, Jane Doe!" in response.read().decode()
    [msg] = smtp.wait_for(1)
    assert msg["Subject"] == "New appointment request: Jane Doe"
