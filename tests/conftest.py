"""Shared fixtures: an app on a temporary database, a real SMTP server, form helpers."""

import re
import socket
import threading
import time
from email import message_from_bytes, policy

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import Envelope

from app import create_app


def free_port() -> int:
    """A TCP port on loopback that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Inbox:
    """An aiosmtpd handler that keeps every message it accepts (or refuses with `reply`)."""

    def __init__(self):
        self.envelopes: list[Envelope] = []
        self.reply: str | None = None
        self.arrived = threading.Event()

    async def handle_DATA(self, server, session, envelope):
        if self.reply:
            return self.reply
        self.envelopes.append(envelope)
        self.arrived.set()
        return "250 Message accepted for delivery"

    @property
    def messages(self):
        return [message_from_bytes(e.content, policy=policy.default) for e in self.envelopes]

    def wait_for(self, count: int, timeout: float = 10) -> list:
        """Wait until `count` messages have arrived; return them all."""
        deadline = time.monotonic() + timeout
        while len(self.envelopes) < count and time.monotonic() < deadline:
            time.sleep(0.02)
        return self.messages


@pytest.fixture
def smtp():
    """A real SMTP server on a loopback port, recording what it receives."""
    inbox = Inbox()
    controller = Controller(inbox, hostname="127.0.0.1", port=free_port())
    controller.start()
    inbox.port = controller.port
    yield inbox
    controller.stop()


@pytest.fixture
def settings(tmp_path):
    """Overrides for a test app: its own data folder, no background sender, no wait."""
    return {
        "DATA_DIR": str(tmp_path),
        "SECRET_KEY": "test-secret",
        "OUTBOX_WORKER": False,
        "SPAM_MIN_SECONDS": 0,
        "CONTACT_RATE_LIMIT": "1000 per minute",
        "SITE_URL": "https://clinic.example",
        "CLINIC_EMAIL": "owner@clinic.example",
    }


@pytest.fixture
def app(settings):
    return create_app(settings)


@pytest.fixture
def client(app):
    return app.test_client()


def form_fields(html: str) -> dict:
    """The hidden inputs of the lead form on a page, by name."""
    return dict(re.findall(r'<input id="\w+" name="(\w+)" type="hidden" value="([^"]*)"', html))


def valid_lead(**overrides) -> dict:
    """A visitor's answers that pass every check."""
    data = {
        "name": "Jane Doe",
        "phone": "(949) 510 6333",
        "email": "jane@example.com",
        "preferred_time": "morning",
        "message": "My immune system needs help.",
        "website": "",
    }
    data.update(overrides)
    return data


def post_lead(client, path: str = "/", **overrides):
    """Open the page at `path` like a visitor, then send the form with `overrides`."""
    page = client.get(path)
    return client.post("/contact", data={**form_fields(page.get_data(as_text=True)), **valid_lead(**overrides)})
