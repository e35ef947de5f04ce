"""Which processes send email: gunicorn's workers and `make dev`, never a `flask` command run by hand or from cron."""

import asyncio
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

from aiosmtpd.controller import Controller
from conftest import Inbox, free_port, post_lead, rows

import outbox.sender
from app import create_app, start_background, stop_background

ROOT = Path(__file__).resolve().parent.parent
MAIL_SETTINGS = ("MAIL_SERVER", "MAIL_PORT", "MAIL_USE_TLS", "MAIL_USE_SSL", "MAIL_USERNAME", "MAIL_PASSWORD")


def command_env(data_dir: str, **extra) -> dict:
    """The environment of a `flask` command run by hand or from cron: no mail settings."""
    env = {k: v for k, v in os.environ.items() if k not in MAIL_SETTINGS}
    return {**env, "DATA_DIR": data_dir, "SECRET_KEY": "live-test", "OUTBOX_POLL_SECONDS": "0.2", **extra}


def run_flask(data_dir: str, *args: str, stdin: str = "") -> None:
    """Run `flask --app app ARGS` as the owner would from a shell or cron, and check it succeeded."""
    flask = Path(sys.executable).with_name("flask")
    done = subprocess.run(
        [str(flask), "--app", "app", *args],
        input=stdin,
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=command_env(data_dir),
        timeout=60,
    )
    assert done.returncode == 0, done.stderr


def emails(app) -> list[dict]:
    return rows(app, "SELECT id, status FROM outbox ORDER BY id")


def mail_files(data_dir: str) -> list[Path]:
    return list((Path(data_dir) / "mail").glob("*.eml"))


def test_a_flask_command_leaves_waiting_email_to_the_server(settings, serve, smtp):
    app = create_app(settings)
    post_lead(app.test_client())
    data_dir = settings["DATA_DIR"]

    # `flask shell` stays up three seconds, much longer than the sender would need to take the email.
    run_flask(data_dir, "shell", stdin="import time; time.sleep(3)\n")
    run_flask(data_dir, "purge-leads", "--older-than", "365")  # as cron runs it
    assert [e["status"] for e in emails(app)] == ["pending"]
    assert mail_files(data_dir) == []

    serve({"DATA_DIR": data_dir, "MAIL_SERVER": "127.0.0.1", "MAIL_PORT": str(smtp.port)}, workers=1)
    [message] = smtp.wait_for(1, timeout=20)
    assert message["Subject"] == "New appointment request: Jane Doe"
    assert mail_files(data_dir) == []


class Gate(Inbox):
    """An SMTP handler that holds each message until the test releases it."""

    def __init__(self):
        super().__init__()
        self.entered = threading.Event()
        self.release = threading.Event()

    async def handle_DATA(self, server, session, envelope):
        self.entered.set()
        await asyncio.get_running_loop().run_in_executor(None, self.release.wait, 20)
        return await super().handle_DATA(server, session, envelope)


def test_a_worker_that_shuts_down_finishes_its_email_and_sends_no_more(settings, serve):
    app = create_app(settings)
    for i in range(3):
        post_lead(app.test_client(), name=f"Visitor {i}")
    gate = Gate()
    controller = Controller(gate, hostname="127.0.0.1", port=free_port())
    controller.start()
    try:
        env = {"DATA_DIR": settings["DATA_DIR"], "MAIL_SERVER": "127.0.0.1", "MAIL_PORT": str(controller.port)}
        server = serve(env, workers=1)
        assert gate.entered.wait(20)  # the first email is on the wire
        # A visitor's request still arriving keeps the worker in its graceful shutdown for seconds:
        # its sender must not take the next email in that time.
        slow = socket.create_connection(("127.0.0.1", server.port))
        slow.sendall(b"POST /contact HTTP/1.1\r\nHost: clinic\r\nContent-Length: 500\r\n\r\nname=")
        time.sleep(1)  # the request is in a worker thread, waiting for the rest of its body
        os.killpg(server.process.pid, signal.SIGTERM)
        time.sleep(1)
        assert server.process.poll() is None  # still finishing the slow request
        gate.release.set()  # the first email goes through; the worker is still up
        server.process.wait(30)
        slow.close()
    finally:
        gate.release.set()
        controller.stop()
    assert len(gate.envelopes) == 1
    assert [e["status"] for e in emails(app)] == ["sent", "pending", "pending"]


def test_a_stopping_worker_ends_its_sender_after_the_current_email(settings):
    gate = Gate()
    controller = Controller(gate, hostname="127.0.0.1", port=free_port())
    controller.start()
    settings.update(MAIL_SERVER="127.0.0.1", MAIL_PORT=controller.port, OUTBOX_WORKER=True)
    app = create_app(settings)
    for i in range(3):
        post_lead(app.test_client(), name=f"Visitor {i}")
    outbox.sender.EMAIL.wake.clear()
    start_background(app)
    try:
        assert gate.entered.wait(10)  # the first email is on the wire
        stopper = threading.Thread(target=stop_background, args=(app,))
        stopper.start()
        deadline = time.monotonic() + 10
        while not outbox.sender.EMAIL.wake.is_set() and time.monotonic() < deadline:  # set just after the stop request
            time.sleep(0.01)
        gate.release.set()
        stopper.join(10)
        assert not [t for t in threading.enumerate() if t.name == "outbox-sender"]
    finally:
        gate.release.set()
        controller.stop()
    assert len(gate.envelopes) == 1
    assert [e["status"] for e in emails(app)] == ["sent", "pending", "pending"]


def test_make_dev_sends_email(settings, smtp):
    app = create_app(settings)
    post_lead(app.test_client())
    port = free_port()
    env = command_env(settings["DATA_DIR"], MAIL_SERVER="127.0.0.1", MAIL_PORT=str(smtp.port))
    flask = Path(sys.executable).with_name("flask")
    log = open(Path(settings["DATA_DIR"]) / "dev.log", "wb")
    # What `make dev` runs.
    dev = subprocess.Popen(
        [str(flask), "--app", "app:create_dev_app()", "run", "--debug", "--port", str(port)],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        [message] = smtp.wait_for(1, timeout=30)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as response:
            assert response.status == 200
    finally:
        os.killpg(dev.pid, signal.SIGTERM)
        dev.wait(15)
        log.close()
    assert message["Subject"] == "New appointment request: Jane Doe"
    assert [e["status"] for e in emails(app)] == ["sent"]
