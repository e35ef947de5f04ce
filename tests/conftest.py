"""Shared fixtures and helpers: an app on a temporary database, a real SMTP server, gunicorn, leads, forms."""

import os
import re
import secrets
import socket
import sqlite3
import subprocess
import threading
import time
from datetime import UTC, datetime
from email import message_from_bytes, policy

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import Envelope

from app import create_app

# A developer's own .env must not reach the tests: not this process, its gunicorn servers nor its `flask` commands.
os.environ["ENV_FILE"] = ""
os.environ["FLASK_SKIP_DOTENV"] = "1"


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
        self.peers: list = []  # the client end of the connection each message came over

    async def handle_DATA(self, server, session, envelope):
        if self.reply:
            return self.reply
        self.envelopes.append(envelope)
        self.peers.append(session.peer)
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
        "HTTPS": False,  # the test client speaks plain http; tests of HTTPS turn it on
        "CLINIC_EMAIL": "owner@clinic.example",
    }


@pytest.fixture
def mail_settings(settings, smtp):
    """Mail to the test SMTP server; ask for it before `app` so the app is built with it."""
    settings.update(MAIL_SERVER="127.0.0.1", MAIL_PORT=smtp.port, MAIL_TIMEOUT=2)
    return settings


def two_articles(folder) -> str:
    """A content folder at `folder` with the site's articles and a second one from tests/content; its path."""
    import shutil
    from pathlib import Path

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    root = Path(__file__).resolve().parent.parent
    for article in [*(root / "content").glob("*.md"), *(root / "tests" / "content").glob("*.md")]:
        shutil.copy(article, folder)
    return str(folder)


@pytest.fixture
def app(settings):
    return create_app(settings)


@pytest.fixture
def client(app):
    return app.test_client()


def rows(app, sql: str, params=()) -> list[dict]:
    """Rows the site stored, read with a connection of the test's own."""
    conn = sqlite3.connect(app.config["DATABASE"])
    conn.row_factory = sqlite3.Row
    found = [dict(r) for r in conn.execute(sql, params)]
    conn.commit()
    conn.close()
    return found


def add_lead(app, created: datetime | None = None, status: str | None = None, **fields) -> int:
    """Store a lead straight in the site's database, received at `created` (default: now); return its id."""
    import db
    import db.leads

    lead = {"form_id": secrets.token_hex(8), "name": "Jane Doe", "phone": "", "email": "", "message": "", "is_spam": 0}
    stamp = (created or datetime.now(UTC)).astimezone(UTC).isoformat(timespec="seconds")
    database = db.connect(app.config["DATABASE"])
    try:
        with db.write(database):
            lead_id, _ = db.leads.add_lead(database, {**lead, **fields}, stamp)
        if status:
            db.leads.set_status(database, lead_id, status, stamp)
    finally:
        database.close()
    return lead_id


def drain(app, now=None, sender=None) -> int:
    """Run one round of the email sender (or of `sender`, e.g. ALERTS_AND_WEBHOOKS) as its thread would."""
    import db
    import outbox.sender

    sender = sender or outbox.sender.EMAIL
    with app.app_context():
        database = db.connect(app.config["DATABASE"])
        try:
            for job in sender.jobs:
                job(database, app.config, now or datetime.now(UTC))
            return outbox.sender.drain(database, app.config, sender.channels, now=now)
        finally:
            database.close()


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


class LiveServer:
    """The site under the real gunicorn, in a subprocess, configured by environment."""

    def __init__(self, env: dict, workers: int = 2, threads: int = 4):
        import os
        import subprocess
        import sys
        from pathlib import Path

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        root = Path(__file__).resolve().parent.parent
        full_env = {**os.environ, "PORT": str(self.port), "WEB_CONCURRENCY": str(workers), "WEB_THREADS": str(threads)}
        full_env.update({k: str(v) for k, v in env.items()})
        self.data_dir = str(env["DATA_DIR"])
        self.log_path = Path(env["DATA_DIR"]) / "gunicorn.log"
        self.log = open(self.log_path, "wb")
        gunicorn = Path(sys.executable).with_name("gunicorn")
        self.process = subprocess.Popen(
            [str(gunicorn), "-c", "gunicorn.conf.py", "app:create_app()"],
            cwd=root,
            env=full_env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.wait_until_up()

    def wait_until_up(self, timeout: float = 20) -> None:
        import urllib.request

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"gunicorn exited:\n{self.output()}")
            try:
                with urllib.request.urlopen(self.url + "/healthz", timeout=1) as r:
                    if r.status == 200:
                        return
            except OSError:
                time.sleep(0.1)
        raise RuntimeError(f"gunicorn did not answer in {timeout} s:\n{self.output()}")

    def output(self) -> str:
        self.log.flush()
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        import os
        import signal

        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(15)
            except Exception:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        self.log.close()


@pytest.fixture
def serve(tmp_path):
    """Start gunicorn with the given environment: serve({"MAIL_SERVER": ...}, workers=2)."""
    servers = []

    def start(env: dict | None = None, workers: int = 2, threads: int = 4) -> LiveServer:
        base = {"DATA_DIR": str(tmp_path / f"site{len(servers)}"), "SECRET_KEY": "live-test", "SPAM_MIN_SECONDS": "0"}
        (tmp_path / f"site{len(servers)}").mkdir()
        server = LiveServer({**base, **(env or {})}, workers=workers, threads=threads)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


@pytest.fixture
def live_server(serve, smtp):
    """The site under gunicorn (2 workers), mailing the loopback SMTP server."""
    return serve({"MAIL_SERVER": "127.0.0.1", "MAIL_PORT": str(smtp.port), "CONTACT_RATE_LIMIT": "1000 per minute"})


OWNER_PASSWORD = "correct horse battery staple"


def csrf_token(html: str) -> str:
    """The CSRF token in a page's first form."""
    return re.search(r'name="csrf_token"[^>]*value="([^"]+)"', html).group(1)


def sign_in(client, username: str = "owner", password: str = OWNER_PASSWORD, query: str = ""):
    """Open the sign-in page like a person and send the form; return the response."""
    page = client.get("/admin/login" + query)
    data = {"username": username, "password": password, "csrf_token": csrf_token(page.get_data(as_text=True))}
    return client.post("/admin/login" + query, data=data)


@pytest.fixture
def owner(app, client):
    """The test client, signed in as an owner made with `flask create-admin owner`."""
    result = app.test_cli_runner().invoke(args=["create-admin", "owner"], input=OWNER_PASSWORD + "\n")
    assert result.exit_code == 0, result.output
    assert sign_in(client).status_code == 303
    return client


CHROMIUM = "/usr/bin/chromium"
# No sandbox (containers, root), and nothing that would reach the internet on its own.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
DEVICES = {
    "phone": {
        "viewport": {"width": 375, "height": 812},
        "device_scale_factor": 2,
        "is_mobile": True,
        "has_touch": True,
    },
    "desktop": {"viewport": {"width": 1280, "height": 800}},
}


def missing(what: str) -> None:
    """Skip a test that needs `what`; under CI (CI=true) fail instead, because there it must run."""
    import os

    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(f"{what} (CI must run the browser tests)", pytrace=False)
    pytest.skip(what)


@pytest.fixture(scope="session")
def browser():
    """Debian's chromium under Playwright (it never downloads a browser of its own)."""
    import os

    if not os.access(CHROMIUM, os.X_OK):
        missing(f"{CHROMIUM} not found: install it with `sudo apt-get install chromium`")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture(params=list(DEVICES))
def page(request, browser):
    """A fresh tab on a 375x812 touch phone, then on a desktop; `page.device` says which."""
    context = browser.new_context(**DEVICES[request.param])
    context.set_default_timeout(10_000)
    tab = context.new_page()
    tab.device = request.param
    yield tab
    context.close()


@pytest.fixture(scope="session")
def certificate(tmp_path_factory) -> dict:
    """A self-signed certificate for 127.0.0.1 that no system trusts, made with the openssl CLI."""
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"]
        + ["-keyout", str(key), "-out", str(cert), "-days", "2", "-subj", "/CN=127.0.0.1"]
        + ["-addext", "subjectAltName=IP:127.0.0.1"],
        check=True,
        capture_output=True,
    )
    return {"cert": str(cert), "key": str(key)}
