"""/healthz reads the database file as it is now, not through a thread's kept connection."""

import os
import threading
from pathlib import Path

from conftest import post_lead

THREADS = 4


def overwrite_in_place(database: Path) -> None:
    """Replace the file's bytes, keeping the file (a bad copy written over it): the same inode."""
    inode = database.stat().st_ino
    with open(database, "r+b") as f:
        f.write(os.urandom(database.stat().st_size))
    assert database.stat().st_ino == inode


def test_a_database_overwritten_in_place_answers_503_from_every_thread(app):
    post_lead(app.test_client())
    before, after = [], []
    warm, overwritten = threading.Barrier(THREADS + 1), threading.Event()

    def server_thread() -> None:
        client = app.test_client()
        before.append(client.get("/healthz").status_code)
        client.get("/admin/login")  # pages that use the thread's kept connection leave it warm
        warm.wait()
        overwritten.wait()
        response = client.get("/healthz")
        after.append((response.status_code, response.get_json()["database"]))

    threads = [threading.Thread(target=server_thread) for _ in range(THREADS)]
    for thread in threads:
        thread.start()
    warm.wait()
    overwrite_in_place(Path(app.config["DATABASE"]))
    overwritten.set()
    for thread in threads:
        thread.join()
    assert before == [200] * THREADS
    assert after == [(503, "cannot be read: file is not a database")] * THREADS


def test_healthz_never_creates_a_missing_database(app):
    database = Path(app.config["DATABASE"])
    for suffix in ("", "-wal", "-shm"):
        Path(f"{database}{suffix}").unlink(missing_ok=True)
    assert app.test_client().get("/healthz").status_code == 503
    assert not database.exists()
