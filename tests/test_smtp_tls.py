"""SMTP encryption: the certificate is verified, and a password never crosses an unencrypted connection."""

import gc
import ssl
import time
from datetime import UTC, datetime, timedelta

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult
from conftest import Inbox, drain, free_port, post_lead, rows

import config
import outbox.email
from app import create_app


class Mailbox(Inbox):
    """An Inbox that also records each login and whether it came over TLS."""

    def __init__(self):
        super().__init__()
        self.logins: list[tuple[bytes, bytes, bool]] = []

    def authenticate(self, server, session, envelope, mechanism, auth_data):
        encrypted = session.ssl is not None or server.transport.get_extra_info("ssl_object") is not None
        self.logins.append((auth_data.login, auth_data.password, encrypted))
        return AuthResult(success=auth_data.password == b"mail-password")


def tls_server(certificate: dict, implicit: bool = False, **options):
    """A loopback SMTP server with the certificate: STARTTLS offered and required, or TLS from the start."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(certificate["cert"], certificate["key"])
    mailbox = Mailbox()
    # aiosmtpd counts only STARTTLS as TLS for AUTH; with implicit TLS the whole connection is encrypted.
    tls = (
        {"ssl_context": context, "auth_require_tls": False}
        if implicit
        else {"tls_context": context, "require_starttls": True}
    )
    controller = Controller(
        mailbox, hostname="127.0.0.1", port=free_port(), authenticator=mailbox.authenticate, **tls, **options
    )
    controller.start()
    mailbox.port = controller.port
    return controller, mailbox


def wait_until(condition, timeout: float = 20):
    """Poll `condition` until it returns something true; return that."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = condition()
        if found:
            return found
        time.sleep(0.1)
    raise AssertionError("condition not met in time")


def test_starttls_refused_until_ssl_cert_file_names_the_ca(certificate, settings, owner, serve, monkeypatch):
    monkeypatch.delenv("SSL_CERT_FILE", raising=False)
    controller, mailbox = tls_server(certificate)
    app = create_app(settings)  # the same data folder as the signed-in owner's
    assert post_lead(app.test_client()).status_code == 303
    mail = {
        "DATA_DIR": settings["DATA_DIR"],
        "MAIL_SERVER": "127.0.0.1",
        "MAIL_PORT": str(mailbox.port),
        "MAIL_USE_TLS": "true",
        "MAIL_USERNAME": "clinic",
        "MAIL_PASSWORD": "mail-password",
        "OUTBOX_POLL_SECONDS": "0.5",
    }
    try:
        server = serve(mail, workers=1)
        [attempt] = wait_until(lambda: rows(app, "SELECT * FROM email_attempts"))
        server.stop()
        assert not attempt["ok"]
        assert "certificate is not trusted" in attempt["error"] and "self-signed" in attempt["error"]
        assert mailbox.logins == [] and mailbox.envelopes == []
        page = owner.get("/admin/leads/1").get_data(as_text=True)
        assert "failed: the mail server&#39;s certificate is not trusted" in page

        serve({**mail, "SSL_CERT_FILE": certificate["cert"]}, workers=1)
        [message] = mailbox.wait_for(1, timeout=20)
    finally:
        controller.stop()
    assert message["Subject"] == "New appointment request: Jane Doe"
    assert mailbox.logins == [(b"clinic", b"mail-password", True)]
    assert "delivered" in owner.get("/admin/leads/1").get_data(as_text=True)


# aiosmtpd leaves the server side of the handshake the site refused (untrusted certificate) unclosed; its
# ResourceWarning is the test server's, and it is collected here rather than in whichever test runs next.
@pytest.mark.filterwarnings("ignore::ResourceWarning", "ignore::pytest.PytestUnraisableExceptionWarning")
def test_implicit_tls_on_port_465_style_verifies_too(certificate, settings, monkeypatch):
    controller, mailbox = tls_server(certificate, implicit=True)
    settings.update(MAIL_SERVER="127.0.0.1", MAIL_PORT=mailbox.port, MAIL_USE_SSL=True, MAIL_TIMEOUT=5)
    settings.update(MAIL_USERNAME="clinic", MAIL_PASSWORD="mail-password")
    app = create_app(settings)
    post_lead(app.test_client())
    try:
        monkeypatch.delenv("SSL_CERT_FILE", raising=False)
        assert drain(app) == 0
        assert "certificate is not trusted" in rows(app, "SELECT last_error FROM outbox")[0]["last_error"]
        # OpenSSL reads SSL_CERT_FILE whenever a default context is made, so setting it here is enough.
        monkeypatch.setenv("SSL_CERT_FILE", certificate["cert"])
        assert drain(app, now=datetime.now(UTC) + timedelta(minutes=1)) == 1
    finally:
        controller.stop()
        gc.collect()
    assert mailbox.logins == [(b"clinic", b"mail-password", True)]


def test_a_password_is_never_sent_without_encryption(settings, smtp, owner):
    settings.update(MAIL_SERVER="127.0.0.1", MAIL_PORT=smtp.port, MAIL_USERNAME="clinic", MAIL_PASSWORD="pw")
    app = create_app(settings)
    post_lead(app.test_client())
    assert drain(app) == 0
    assert smtp.envelopes == []
    [row] = rows(app, "SELECT * FROM outbox")
    assert row["status"] == "pending"
    assert "password was not sent" in row["last_error"] and "MAIL_USE_TLS" in row["last_error"]
    assert "password was not sent" in owner.get("/admin/status").get_data(as_text=True)
    assert "password was not sent" in owner.get("/admin/leads/1").get_data(as_text=True)


def test_a_server_without_starttls_gets_no_email_when_tls_is_required(settings, smtp):
    settings.update(MAIL_SERVER="127.0.0.1", MAIL_PORT=smtp.port, MAIL_USE_TLS=True)
    app = create_app(settings)
    post_lead(app.test_client())
    assert drain(app) == 0
    assert smtp.envelopes == []
    assert "STARTTLS" in rows(app, "SELECT last_error FROM outbox")[0]["last_error"]


@pytest.mark.parametrize(
    "env,tls,ssl_",
    [
        ({"MAIL_PORT": "587"}, True, False),
        ({"MAIL_PORT": "465"}, False, True),
        ({"MAIL_PORT": "25"}, False, False),
        ({"MAIL_PORT": "587", "MAIL_USE_TLS": "false"}, False, False),
        ({"MAIL_PORT": "2525", "MAIL_USE_TLS": "true"}, True, False),
    ],
)
def test_the_port_implies_the_encryption_unless_set(tmp_path, env, tls, ssl_):
    settings = config.finish(config.from_env({"DATA_DIR": str(tmp_path), **env}))
    assert (settings["MAIL_USE_TLS"], settings["MAIL_USE_SSL"]) == (tls, ssl_)


def test_smtp_connect_returns_a_logged_in_connection(certificate, monkeypatch):
    controller, mailbox = tls_server(certificate)
    monkeypatch.setenv("SSL_CERT_FILE", certificate["cert"])
    settings = {
        "MAIL_SERVER": "127.0.0.1",
        "MAIL_PORT": mailbox.port,
        "MAIL_USE_TLS": True,
        "MAIL_USE_SSL": False,
        "MAIL_USERNAME": "clinic",
        "MAIL_PASSWORD": "mail-password",
        "MAIL_TIMEOUT": 5,
    }
    try:
        connection = outbox.email.smtp_connect(settings)
        assert connection.noop()[0] == 250
        connection.quit()
    finally:
        controller.stop()
    assert mailbox.logins == [(b"clinic", b"mail-password", True)]


def test_ssl_cert_file_naming_no_file_stops_start_up(tmp_path):
    env = {"DATA_DIR": str(tmp_path), "SSL_CERT_FILE": str(tmp_path / "missing-ca.pem")}
    with pytest.raises(config.ConfigError, match="SSL_CERT_FILE"):
        config.finish(config.from_env(env))
