"""Faults under load against the real gunicorn: SMTP down, a worker killed, an unwritable database, slow clients."""

import asyncio
import http.client
import os
import re
import signal
import socket
import sqlite3
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import urlencode

import pytest
from aiosmtpd.controller import Controller
from conftest import Inbox, form_fields, free_port, valid_lead

pytestmark = pytest.mark.slow

LOAD = {"CONTACT_RATE_LIMIT": "100000 per minute", "MAIL_TIMEOUT": "2", "OUTBOX_POLL_SECONDS": "1"}


def visit_and_send(port: int, name: str, timeout: float = 30) -> int | None:
    """One visitor opens the page and sends the form; the status of the POST, or None if the connection broke."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", "/")
        page = conn.getresponse()
        html = page.read().decode()
        cookie = page.getheader("Set-Cookie").split(";")[0]
        body = urlencode({**form_fields(html), **valid_lead(name=name)})
        headers = {"Content-Type": "application/x-www-form-urlencoded", "Cookie": cookie}
        conn.request("POST", "/contact", body, headers)
        response = conn.getresponse()
        response.read()
        return response.status
    except (OSError, http.client.HTTPException):
        return None
    finally:
        conn.close()


def send_load(port: int, count: int, clients: int, during=None) -> dict[str, int | None]:
    """`count` visitors from `clients` concurrent clients; `during(done)` runs once a third have answered."""
    names = [f"Visitor {n:03d}" for n in range(count)]
    results: dict[str, int | None] = {}
    third = threading.Event()

    def one(name: str) -> None:
        results[name] = visit_and_send(port, name)
        if len(results) >= count // 3:
            third.set()

    with ThreadPoolExecutor(clients) as pool:
        futures = [pool.submit(one, name) for name in names]
        if during:
            third.wait(60)
            during()
        for future in futures:
            future.result()
    return results


def read_rows(server, sql: str) -> list[dict]:
    conn = sqlite3.connect(f"file:{data_dir(server) / 'leads.db'}?mode=ro", uri=True)
    conn.row_factory = sqlite3.Row
    try:
        return [dict(row) for row in conn.execute(sql)]
    finally:
        conn.close()


def data_dir(server) -> Path:
    return server.log_path.parent


def start_smtp(port: int, inbox: Inbox) -> Controller:
    controller = Controller(inbox, hostname="127.0.0.1", port=port, server_hostname="smtp.test")
    controller.start()
    return controller


def subjects(inbox: Inbox) -> list[str]:
    return [str(msg["Subject"]).removeprefix("New appointment request: ") for msg in inbox.messages]


def test_requests_sent_while_smtp_is_down_are_all_mailed_once_when_it_comes_up(serve):
    port = free_port()
    server = serve({**LOAD, "MAIL_SERVER": "127.0.0.1", "MAIL_PORT": str(port)}, workers=2)
    results = send_load(server.port, 300, clients=20)
    assert list(results.values()) == [303] * 300
    leads = read_rows(server, "SELECT name FROM leads WHERE is_spam = 0")
    assert sorted(lead["name"] for lead in leads) == sorted(results)
    waiting = read_rows(server, "SELECT status, last_error FROM outbox")
    assert len(waiting) == 300 and all(row["status"] != "sent" for row in waiting)
    assert any(row["last_error"] for row in waiting)

    inbox = Inbox()
    controller = start_smtp(port, inbox)
    try:
        inbox.wait_for(300, timeout=90)  # aiosmtpd slows down over a few hundred connections
        # Once every row is marked sent no sender can claim one again, so any duplicate has arrived by then.
        deadline = time.monotonic() + 30
        while read_rows(server, "SELECT id FROM outbox WHERE status != 'sent'") and time.monotonic() < deadline:
            time.sleep(0.1)
        assert {row["status"] for row in read_rows(server, "SELECT status FROM outbox")} == {"sent"}
        assert sorted(subjects(inbox)) == sorted(results)
        assert len({msg["Message-ID"] for msg in inbox.messages}) == 300
    finally:
        controller.stop()


class SlowInbox(Inbox):
    """An SMTP server that takes a moment over each message, so some are mid-send when a worker dies."""

    async def handle_DATA(self, server, session, envelope):
        await asyncio.sleep(0.01)
        return await super().handle_DATA(server, session, envelope)


def worker_pids(server) -> list[int]:
    master = server.process.pid
    return [int(pid) for pid in Path(f"/proc/{master}/task/{master}/children").read_text().split()]


def test_worker_killed_mid_load_loses_no_answered_request_or_its_email(serve):
    inbox = SlowInbox()
    port = free_port()
    controller = start_smtp(port, inbox)
    try:
        env = {**LOAD, "MAIL_SERVER": "127.0.0.1", "MAIL_PORT": str(port), "OUTBOX_STALE_SECONDS": "15"}
        server = serve(env, workers=2)
        victim = worker_pids(server)[0]
        results = send_load(server.port, 300, clients=20, during=lambda: os.kill(victim, signal.SIGKILL))
        assert victim not in worker_pids(server)
        answered = sorted(name for name, status in results.items() if status == 303)
        assert len(answered) >= 250, results  # only requests on the killed worker at that moment may fail
        assert all(status in (303, None) for status in results.values())
        stored = {lead["name"] for lead in read_rows(server, "SELECT name FROM leads")}
        assert set(answered) <= stored
        # The email of the request the killed worker was sending goes out once its claim is stale (15 s).
        # Messages are parsed only when one arrives: parsing hundreds every 0.2 s held the GIL from the
        # SMTP server's thread in this process, so its greeting took longer than MAIL_TIMEOUT.
        deadline, seen, received = time.monotonic() + 90, -1, set()
        while not set(answered) <= received and time.monotonic() < deadline:
            if len(inbox.envelopes) != seen:
                seen = len(inbox.envelopes)
                received = set(subjects(inbox))
            time.sleep(0.2)
        assert set(answered) <= set(subjects(inbox))
        assert f"Worker (pid:{victim}) was sent SIGKILL" in server.output()  # gunicorn saw the kill and replaced it
    finally:
        controller.stop()


def set_writable(database: Path, writable: bool) -> None:
    """Make the database and its write-ahead log (un)writable, even through files the server holds open.

    File modes are checked only when a file is opened (and root ignores them), so this sets the
    immutable attribute, which refuses every write, as root or through passwordless sudo.
    """
    sudo = [] if os.geteuid() == 0 else ["sudo", "-n"]
    files = [str(path) for path in (database, database.with_name(database.name + "-wal")) if path.exists()]
    subprocess.run([*sudo, "chattr", "-i" if writable else "+i", *files], check=True)


def test_unwritable_database_gets_a_503_asking_to_call_and_recovers_without_restart(serve):
    server = serve({"CONTACT_RATE_LIMIT": "1000 per minute"}, workers=2)
    database = data_dir(server) / "leads.db"
    assert visit_and_send(server.port, "Before") == 303
    set_writable(database, False)
    try:
        with pytest.raises(sqlite3.OperationalError):  # the fault is real: nobody can write
            with sqlite3.connect(database) as conn:
                conn.execute("INSERT INTO leads (form_id, created_at, updated_at, name) VALUES ('x', 'x', 'x', 'x')")
        for name in ["During 1", "During 2", "During 3"]:
            conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
            conn.request("GET", "/")
            page = conn.getresponse()
            html = page.read().decode()
            body = urlencode({**form_fields(html), **valid_lead(name=name)})
            cookie = page.getheader("Set-Cookie").split(";")[0]
            conn.request(
                "POST", "/contact", body, {"Content-Type": "application/x-www-form-urlencoded", "Cookie": cookie}
            )
            response = conn.getresponse()
            text = response.read().decode()
            conn.close()
            assert response.status == 503
            assert "Your details were not saved" in text
            assert 'href="tel:+19495106333"' in text
            assert "Thank you" not in text
        assert "could not store a lead" in server.output()
        # SQLite's words for it: a connection opened before the change finds its write refused
        # ("disk I/O error"), one opened after finds the file read-only.
        assert "readonly database" in server.output() or "disk I/O error" in server.output()
    finally:
        set_writable(database, True)
    assert [lead["name"] for lead in read_rows(server, "SELECT name FROM leads")] == ["Before"]
    assert visit_and_send(server.port, "After") == 303
    assert [lead["name"] for lead in read_rows(server, "SELECT name FROM leads")] == ["Before", "After"]


def stalled_clients(port: int, count: int) -> list[socket.socket]:
    """Half of them send part of the headers, half send the headers and part of a body; then nothing."""
    sockets = []
    for n in range(count):
        sock = socket.create_connection(("127.0.0.1", port), timeout=30)
        if n % 2:
            sock.sendall(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: slow")
        else:
            head = "POST /contact HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/x-www-form-urlencoded\r\n"
            sock.sendall(f"{head}Content-Length: 5000\r\n\r\nname=Slow&message=".encode())
        sockets.append(sock)
    return sockets


def read_until_closed(sock: socket.socket, timeout: float) -> bytes:
    sock.settimeout(timeout)
    reply = b""
    try:
        while chunk := sock.recv(65536):
            reply += chunk
    except ConnectionResetError:
        pass
    return reply


def test_a_few_slow_clients_do_not_hold_up_other_visitors(serve):
    server = serve({**LOAD, "CLIENT_TIMEOUT": "5"}, workers=2, threads=8)  # gunicorn.conf.py's thread count
    slow = stalled_clients(server.port, 6)
    try:
        started = time.monotonic()
        assert visit_and_send(server.port, "Patient visitor", timeout=15) == 303
        assert time.monotonic() - started < 5  # served while every slow client was still hanging on
        for sock in slow:
            reply = read_until_closed(sock, 20)
            assert reply == b"" or re.match(rb"HTTP/1.1 400 ", reply), reply[:100]
    finally:
        for sock in slow:
            sock.close()


def test_a_flood_of_slow_clients_is_dropped_and_the_site_serves_again(serve):
    threads, workers = 4, 2
    server = serve({**LOAD, "CLIENT_TIMEOUT": "2"}, workers=workers, threads=threads)
    slow = stalled_clients(server.port, threads * workers + 4)  # more than there are threads
    try:
        with ThreadPoolExecutor(len(slow)) as pool:  # each is dropped once it stalls past the timeout
            replies = list(pool.map(lambda sock: read_until_closed(sock, 40), slow))
        for reply in replies:  # a half-sent body gets the site's page; half-sent headers just a closed socket
            assert reply == b"" or re.match(rb"HTTP/1.1 400 ", reply), reply[:100]
    finally:
        for sock in slow:
            sock.close()
    started = time.monotonic()
    assert visit_and_send(server.port, "Next visitor") == 303
    assert time.monotonic() - started < 5
    assert [lead["name"] for lead in read_rows(server, "SELECT name FROM leads")] == ["Next visitor"]
