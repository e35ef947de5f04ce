"""The benchmark's yardstick: a bare WSGI app answering every request with the bytes in $BASELINE_BODY."""

import os

with open(os.environ["BASELINE_BODY"], "rb") as f:
    BODY = f.read()
HEADERS = [("Content-Type", "text/html; charset=utf-8"), ("Content-Length", str(len(BODY)))]


def app(environ, start_response):
    """Return the same page to everyone."""
    start_response("200 OK", HEADERS)
    return [BODY]
