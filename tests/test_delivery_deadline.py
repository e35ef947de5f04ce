"""A receiver that trickles its answer cannot hold the alert and webhook sender past one deadline per delivery."""

import socket
import threading

import pytest
from conftest import drain, post_lead, rows

import outbox.addresses
import outbox.sender
from app import create_app

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


class Trickler:
    """An HTTP server on loopback that reads a request, then sends its answer one header every 0.3 s (6 s in all)."""

    def __init__(self):
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self.requests = 0
        self.finished = threading.Event()  # a whole answer went out
        self.thread = threading.Thread(target=self.serve, daemon=True)
        self.thread.start()

    def serve(self) -> None:
        while True:
            try:
                conn, _ = self.server.accept()
            except OSError:
                return
            with conn:
                conn.recv(65536)
                self.requests += 1
                try:
                    conn.sendall(b"HTTP/1.1 200 OK\r\n")
                    for i in range(20):
                        threading.Event().wait(0.3)
                        conn.sendall(f"X-Slow-{i}: 1\r\n".encode())
                    conn.sendall(b"Content-Length: 0\r\n\r\n")
                    self.finished.set()
                except OSError:
                    pass  # the sender hung up: what a deadline does

    def stop(self) -> None:
        self.server.close()


@pytest.fixture
def trickler():
    found = Trickler()
    yield found
    found.stop()


@pytest.mark.parametrize("channel", ["webhook", "alert"])
def test_a_trickled_answer_ends_at_the_deadline_and_the_row_waits_for_a_retry(settings, trickler, channel):
    url = f"http://127.0.0.1:{trickler.port}/hook"
    where = (
        {"WEBHOOK_URL": url, "WEBHOOK_SECRET": SECRET}
        if channel == "webhook"
        else {"ALERT_URLS": f"json://127.0.0.1:{trickler.port}/hook"}
    )
    # The deadline is below OUTBOX_STALE_SECONDS: 1 s here, so no other worker could take the row meanwhile.
    app = create_app({**settings, **where, "OUTBOX_STALE_SECONDS": 2})
    assert outbox.addresses.delivery_seconds(app.config) == 1
    post_lead(app.test_client())
    assert drain(app, None, outbox.sender.ALERTS_AND_WEBHOOKS) == 0
    assert trickler.requests == 1 and not trickler.finished.is_set()  # the sender left before the answer ended
    [row] = rows(app, "SELECT status, attempts, last_error FROM outbox WHERE channel = ?", [channel])
    assert row == {"status": "pending", "attempts": 1, "last_error": "no complete answer within 1 s"}
