"""The interface other tools rely on: GET /healthz, RATELIMIT_ENABLED, DATABASE_PATH."""

import json
import sqlite3
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from conftest import drain, post_lead

import config
from app import create_app


def get_json(url: str) -> tuple[int, dict, str]:
    """Status, JSON body and content type of a GET, error statuses included."""
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, json.load(response), response.headers["Content-Type"]
    except urllib.error.HTTPError as error:
        return error.code, json.load(error), error.headers["Content-Type"]


def test_healthz_counts_waiting_and_failed_emails(settings, smtp):
    settings.update(MAIL_SERVER="127.0.0.1", MAIL_PORT=smtp.port)
    app = create_app(settings)
    client = app.test_client()
    assert client.get("/healthz").get_json() == {"database": "ok", "emails_waiting": 0, "emails_failed": 0}
    smtp.reply = "550 Mailbox unavailable"
    post_lead(client)
    drain(app)
    post_lead(client, name="Second Visitor")
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response.get_json() == {"database": "ok", "emails_waiting": 1, "emails_failed": 1}


def test_a_database_file_put_in_place_while_the_site_runs_is_read_by_the_next_request(settings, tmp_path):
    app = create_app(settings)
    client = app.test_client()
    post_lead(client)
    assert client.get("/healthz").get_json()["emails_waiting"] == 1  # this thread now keeps a connection
    empty = tmp_path / "empty"
    empty.mkdir()
    create_app({**settings, "DATA_DIR": str(empty)})  # another site's database, with no email waiting
    database = Path(app.config["DATABASE"])
    for suffix in ("-wal", "-shm"):  # moved aside, as `flask restore` does
        Path(f"{database}{suffix}").unlink(missing_ok=True)
    (empty / "leads.db").replace(database)
    assert client.get("/healthz").get_json() == {"database": "ok", "emails_waiting": 0, "emails_failed": 0}


def test_healthz_answers_503_while_the_database_cannot_be_read(serve):
    server = serve(workers=1)
    assert get_json(server.url + "/healthz")[:2] == (200, {"database": "ok", "emails_waiting": 0, "emails_failed": 0})
    database = server.log_path.parent / "leads.db"
    database.rename(database.with_name("leads.db.aside"))
    database.mkdir()  # a folder where the file should be: SQLite cannot open it
    try:
        status, body, content_type = get_json(server.url + "/healthz")
    finally:
        database.rmdir()
        database.with_name("leads.db.aside").rename(database)
    assert status == 503
    assert content_type == "application/json"
    assert list(body) == ["database"] and "unable to open database file" in body["database"]
    assert "the database cannot be read" in server.output()
    assert get_json(server.url + "/healthz")[0] == 200  # back without a restart


def test_ratelimit_enabled_false_in_the_environment_turns_limits_off(settings, monkeypatch):
    settings["CONTACT_RATE_LIMIT"] = "2 per minute"
    statuses = [post_lead(create_app(settings).test_client(), name=f"Visitor {i}").status_code for i in range(3)]
    assert statuses == [303, 303, 429]

    monkeypatch.setenv("RATELIMIT_ENABLED", "false")
    app = create_app({**settings, "DATA_DIR": str(Path(settings["DATA_DIR"]) / "off")})
    statuses = [post_lead(app.test_client(), name=f"Visitor {i}").status_code for i in range(5)]
    assert statuses == [303] * 5


@pytest.mark.parametrize("name", ["DATABASE_PATH", "DATABASE"])
def test_database_path_from_the_environment(settings, tmp_path, monkeypatch, name):
    path = tmp_path / "elsewhere.db"
    monkeypatch.setenv(name, str(path))
    app = create_app(settings)
    assert post_lead(app.test_client()).status_code == 303
    assert app.config["DATABASE_PATH"] == app.config["DATABASE"] == str(path)
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT name FROM leads").fetchall() == [("Jane Doe",)]
    assert not (tmp_path / "leads.db").exists()


def test_database_path_and_database_must_agree(tmp_path):
    env = {"DATA_DIR": str(tmp_path), "DATABASE_PATH": str(tmp_path / "a.db"), "DATABASE": str(tmp_path / "b.db")}
    with pytest.raises(config.ConfigError, match="DATABASE_PATH"):
        config.finish(config.from_env(env))
