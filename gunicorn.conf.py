"""gunicorn settings for a small 2-core server; `make run` uses them.

Two worker processes (one per core) with a pool of threads each: a request mostly waits on
SQLite or the network, so threads keep a core busy while others wait. The app logs one line per
request itself, so gunicorn's access log stays off.
"""

import contextlib
import gc
import os
import signal
import socket
import struct

bind = f"{os.environ.get('HOST', '127.0.0.1')}:{os.environ.get('PORT', '8000')}"
workers = int(os.environ.get("WEB_CONCURRENCY", "2"))
threads = int(os.environ.get("WEB_THREADS", "8"))
worker_class = "gthread"
timeout = 30
graceful_timeout = 10
keepalive = 5
accesslog = None
errorlog = "-"
limit_request_line = 4094
limit_request_fields = 50
limit_request_field_size = 8190
# Seconds a client may stall mid-request before its socket read fails and its thread is freed.
client_timeout = float(os.environ.get("CLIENT_TIMEOUT", "10"))


def on_starting(server):
    """Before any worker starts: read the settings and the articles, so a mistake in either stops gunicorn
    with its message (a worker that fails to load the app would be restarted over and over); and make the
    visitor table the workers share (see visits.py; it is never on disk)."""
    import articles
    import config
    import visits

    settings = config.from_env()
    articles.load_for(settings)
    config.finish_channels(settings)  # e.g. a WEBHOOK_URL over http:// to another machine
    visits.share_across_workers(server.cfg.workers)


def when_ready(server):
    """Give every accepted connection read and write timeouts (accepted sockets inherit them)."""
    seconds, micros = int(client_timeout), int((client_timeout % 1) * 1_000_000)
    value = struct.pack("ll", seconds, micros)
    for listener in server.LISTENERS:
        listener.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, value)
        listener.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, value)


def site_of(worker):
    """The worker's Flask app; None for a worker that never loaded it, or bench/baseline.py's bare WSGI app."""
    app = getattr(worker, "wsgi", None)
    return app if hasattr(app, "extensions") else None


def post_worker_init(worker):
    """Each worker, once it has loaded the app, starts its background threads (email sender, visit counts)."""
    from app import start_background, stop_sending

    if site_of(worker) is None:
        return
    start_background(worker.wsgi)
    open_pool_connections(worker)
    # What the worker has loaded by now (the app, its modules, settings and articles) lives as long as the
    # worker: kept out of the garbage collector's full passes, which stopped every thread for up to 100 ms
    # (a run of 1,000 posts at 100 a second met one, about its 550th post; ten posts in a row waited).
    gc.freeze()
    # A worker told to stop may spend graceful_timeout on its last requests before worker_exit runs;
    # its senders must not take another email in that time, so they hear of the SIGTERM at once.
    graceful_exit = signal.getsignal(signal.SIGTERM)

    def on_sigterm(signum, frame):
        stop_sending(worker.wsgi)
        graceful_exit(signum, frame)

    signal.signal(signal.SIGTERM, on_sigterm)


def open_pool_connections(worker):
    """Start every thread of the worker's pool now, each with its database connection, before any visitor.

    The pool starts a thread when no other is free, so the threads and their connections (parsing the
    schema) would otherwise come in the first burst of visitors, each keeping one of them waiting.
    """
    import sqlite3
    import threading

    import db

    ready = threading.Barrier(worker.cfg.threads, timeout=10)  # every task waits, so each gets a thread

    def open_connection():
        with contextlib.suppress(sqlite3.Error), worker.wsgi.app_context():
            db.get_db()  # kept by the thread for its requests; a database that cannot be used now is tried then
        ready.wait()

    for started in [worker.tpool.submit(open_connection) for _ in range(worker.cfg.threads)]:
        with contextlib.suppress(threading.BrokenBarrierError):
            started.result()


def worker_exit(server, worker):
    """A worker that shuts down stops its background threads after their current step (and writes its counts)."""
    from app import stop_background

    if site_of(worker) is not None:
        stop_background(worker.wsgi)
