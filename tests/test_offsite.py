"""Off-site backups: a real restic against a real repository server (`rclone serve restic`) on loopback."""

import logging
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.request
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import requests

import db
import offsite
import readiness
from app import create_app
from conftest import add_lead, form_fields, free_port, missing, rows, valid_lead

ROOT = Path(__file__).resolve().parent.parent
FLASK = str(Path(sys.executable).with_name("flask"))


class Repository:
    """`rclone serve restic` on a loopback port, serving a folder; stopped and started again at will."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.port = free_port()
        self.url = f"rest:http://127.0.0.1:{self.port}/"
        self.process = None
        self.start()

    def start(self) -> None:
        self.process = subprocess.Popen(
            ["rclone", "serve", "restic", "--addr", f"127.0.0.1:{self.port}", str(self.folder)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{self.port}/config", timeout=1)
                return
            except urllib.error.HTTPError:
                return  # answering (404 before `init`)
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("rclone serve restic did not start")

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(10)


KEY = "a long random test key\n"


@pytest.fixture(scope="session")
def initialised(tmp_path_factory) -> Path:
    """A restic repository made once with `restic init` (its key derivation takes a while); tests copy it."""
    for program in ("restic", "rclone"):
        if shutil.which(program) is None:
            missing(f"{program} not found: install it with `sudo apt-get install restic rclone`")
    folder = tmp_path_factory.mktemp("restic") / "repository"
    env = {"PATH": os.environ["PATH"], "RESTIC_PASSWORD": KEY.strip(), "RESTIC_REPOSITORY": str(folder)}
    subprocess.run(["restic", "init", "--repository-version", "2", "--no-cache"], env=env, check=True, capture_output=True)
    return folder


def serve_repository(tmp_path, initialised: Path | None) -> Repository:
    """A REST server on loopback for a copy of the initialised repository (or an empty folder), with its key file."""
    folder = tmp_path / "repository"
    if initialised:
        shutil.copytree(initialised, folder)
    else:
        folder.mkdir()
    repo = Repository(folder)
    repo.key_file = tmp_path / "restic-key"
    repo.key_file.write_text(KEY)
    repo.key_file.chmod(0o600)
    return repo


@pytest.fixture
def repository(tmp_path, initialised):
    """An initialised restic repository behind `rclone serve restic` on loopback, and its key file (0600)."""
    repo = serve_repository(tmp_path, initialised)
    yield repo
    repo.stop()


@pytest.fixture
def empty_repository(tmp_path, initialised):
    """A restic REST server on loopback with nothing in it yet, and a key file."""
    repo = serve_repository(tmp_path, None)
    yield repo
    repo.stop()


def restic_settings(repo) -> dict:
    """The settings that point the site at `repo`."""
    return {"RESTIC_REPOSITORY": repo.url, "RESTIC_PASSWORD_FILE": str(repo.key_file)}


@pytest.fixture
def offsite_app(settings, repository):
    """A test app backing up to the repository (initialised), with a one-second delay."""
    settings.update(restic_settings(repository), OFFSITE_DELAY_SECONDS=1)
    return create_app(settings)


def flask(data_dir, *args, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run `flask --app app ARGS` as the owner would, in a subprocess."""
    full_env = {**os.environ, "DATA_DIR": str(data_dir), **(env or {})}
    return subprocess.run(
        [FLASK, "--app", "app", *args], cwd=ROOT, env=full_env, capture_output=True, text=True, timeout=120
    )


def lead_state(database_path) -> dict:
    """Every lead with its status and notes, as a comparable value."""
    conn = sqlite3.connect(database_path)
    try:
        leads = conn.execute("SELECT id, name, email, message, status FROM leads ORDER BY id").fetchall()
        notes = conn.execute("SELECT lead_id, body FROM notes ORDER BY id").fetchall()
    finally:
        conn.close()
    return {"leads": leads, "notes": notes}


def test_commands_init_send_list_and_restore_a_snapshot(settings, empty_repository):
    settings.update(restic_settings(empty_repository))
    app = create_app(settings)
    cli = app.test_cli_runner()
    before = cli.invoke(args=["backup", "--offsite"])
    assert before.exit_code == 1
    assert "never initialised" in before.output and "backup --offsite --init" in before.output
    site = settings["DATA_DIR"]
    check = flask(site, "check", env=restic_settings(empty_repository))  # the real command, as the owner runs it
    assert "Off-site backups: the repository was never initialised" in check.stdout

    made = cli.invoke(args=["backup", "--offsite", "--init"])
    assert made.exit_code == 0, made.output
    assert "Keep a copy of its key" in made.output
    add_lead(app, name="First Visitor")
    first = cli.invoke(args=["backup", "--offsite"])
    assert first.exit_code == 0, first.output
    assert "1 lead(s)" in first.output and "encrypted" in first.output
    add_lead(app, name="Second Visitor")
    assert cli.invoke(args=["backup", "--offsite"]).exit_code == 0
    listed = cli.invoke(args=["backup", "--offsite", "--list"])
    assert "2 snapshot(s)" in listed.output
    first_id = listed.output.split()[0]
    add_lead(app, name="Not Backed Up")

    restored = flask(site, "restore", "--offsite", env=restic_settings(empty_repository))
    assert restored.returncode == 0, restored.stderr
    assert "Restored 2 lead(s) from off-site snapshot latest" in restored.stdout
    assert [r["name"] for r in rows(app, "SELECT name FROM leads")] == ["First Visitor", "Second Visitor"]
    older = cli.invoke(args=["restore", "--offsite", "--snapshot", first_id])
    assert older.exit_code == 0, older.output
    assert [r["name"] for r in rows(app, "SELECT name FROM leads")] == ["First Visitor"]
    assert not list(Path(site).glob(".offsite*")), "no copy is left in DATA_DIR"

    for args, error in (
        (["restore", "--offsite", "--snapshot", "--help"], "is not a snapshot id"),
        (["restore", "--offsite", "--snapshot", "abcdef12"], "no matching ID found"),
        (["restore"], "Give the backup file to restore, or --offsite"),
        (["backup", "--list"], "--list and --init go with --offsite"),
    ):
        refused = cli.invoke(args=args)
        assert refused.exit_code != 0 and error in refused.output, refused.output
    assert [r["name"] for r in rows(app, "SELECT name FROM leads")] == ["First Visitor"]


def test_restore_offsite_is_refused_while_the_server_runs(offsite_app, serve, repository):
    add_lead(offsite_app, name="Kept Visitor")
    with db.connect(offsite_app.config["DATABASE"]).conn:
        pass
    offsite.snapshot(offsite_app.config)
    data_dir = offsite_app.config["DATA_DIR"]
    server = serve({"DATA_DIR": data_dir, **restic_settings(repository)}, workers=1)
    refused = flask(data_dir, "restore", "--offsite", env=restic_settings(repository))
    assert refused.returncode == 1
    assert "The site's server is running" in refused.stderr
    server.stop()
    assert flask(data_dir, "restore", "--offsite", env=restic_settings(repository)).returncode == 0


def test_check_names_each_off_site_problem(offsite_app, repository, tmp_path):
    cfg = offsite_app.config
    assert offsite.problem(cfg) is None
    no_restic = {**cfg, "RESTIC_ENV": {**cfg["RESTIC_ENV"], "PATH": str(tmp_path)}}
    assert offsite.problem(no_restic) == "restic is not installed: `apt-get install restic`"
    unreachable = {**cfg, "RESTIC_REPOSITORY": f"rest:http://127.0.0.1:{free_port()}/"}
    assert offsite.problem(unreachable).startswith("the repository cannot be reached")
    wrong_key = tmp_path / "wrong-key"
    wrong_key.write_text("not the key")
    wrong_key.chmod(0o600)
    assert "does not open the repository" in offsite.problem({**cfg, "RESTIC_PASSWORD_FILE": str(wrong_key)})
    wrong_key.chmod(0o644)
    assert "chmod 600" in offsite.problem({**cfg, "RESTIC_PASSWORD_FILE": str(wrong_key)})
    empty = tmp_path / "empty-repository"
    assert "never initialised" in offsite.problem({**cfg, "RESTIC_REPOSITORY": str(empty)})
    with db.connect(cfg["DATABASE"]).conn as conn:
        found = readiness.problems(unreachable, db.Database(conn), datetime.now(UTC))
    assert any(line.startswith("Off-site backups: the repository cannot be reached") for line in found)


def test_a_change_is_sent_after_the_delay_and_a_quiet_site_sends_nothing(offsite_app, repository):
    cfg = offsite_app.config
    database = db.connect(cfg["DATABASE"])
    now = datetime.now(UTC)
    assert offsite.run_due(database, cfg, now, "test")  # a new site: one snapshot at once
    assert not offsite.run_due(database, cfg, now + timedelta(hours=1), "test")  # nothing changed
    lead_id = add_lead(offsite_app, name="New Visitor")
    later = datetime.now(UTC)
    assert db.offsite_changed_at(database) is not None
    assert not offsite.run_due(database, cfg, later - timedelta(seconds=5), "test")  # before the delay
    assert offsite.run_due(database, cfg, later + timedelta(seconds=2), "test")
    assert db.offsite_changed_at(database) is None
    assert len(offsite.snapshots(cfg)) == 2
    for change in (
        lambda: db.set_status(database, lead_id, "contacted", db.utcnow()),
        lambda: db.add_note(database, lead_id, "owner", "Called back", db.utcnow()),
        lambda: db.delete_lead(database, lead_id),
    ):
        change()
        assert db.offsite_changed_at(database) is not None
        assert offsite.run_due(database, cfg, datetime.now(UTC) + timedelta(seconds=2), "test")
    assert len(offsite.snapshots(cfg)) == 5
    assert not offsite.run_due(database, cfg, datetime.now(UTC) + timedelta(hours=23), "test")
    assert offsite.run_due(database, cfg, datetime.now(UTC) + timedelta(days=1, minutes=1), "test")  # daily anyway
    database.close()


def test_the_repository_holds_no_visitor_text(offsite_app, repository, client):
    visitor = {"name": "Zelda Quixotic", "email": "zelda.quixotic@example.org", "message": "Migraines every Tuesday"}
    page = client.get("/")
    response = client.post("/contact", data={**form_fields(page.get_data(as_text=True)), **valid_lead(**visitor)})
    assert response.status_code == 303
    result = offsite.snapshot(offsite_app.config)
    assert result["leads"] == 1
    copy = Path(offsite_app.config["DATA_DIR"]) / "from-the-snapshot.db"
    offsite.download(offsite_app.config, result["snapshot"], copy)
    assert all(text.encode() in copy.read_bytes() for text in visitor.values())  # the snapshot holds them
    cache = Path(offsite_app.config["DATA_DIR"]) / "restic-cache"
    stored = [path for path in [*repository.folder.rglob("*"), *cache.rglob("*")] if path.is_file()]
    assert len(stored) > 5
    for path in stored:
        data = path.read_bytes()
        for text in visitor.values():
            for form in (text.encode(), text.encode("utf-16-le"), text.lower().encode()):
                assert form not in data, f"{text!r} found in {path}"


def test_failures_are_retried_with_backoff_and_logged_once(offsite_app, repository, caplog):
    caplog.set_level(logging.INFO, logger="clinic.offsite")
    cfg = offsite_app.config
    database = db.connect(cfg["DATABASE"])
    repository.stop()
    now = datetime.now(UTC)
    assert offsite.run_due(database, cfg, now, "test")
    assert offsite.run_due(database, cfg, now + timedelta(seconds=1), "test")  # 1 s after the first failure
    assert not offsite.run_due(database, cfg, now + timedelta(seconds=2), "test")  # then 2 s
    assert offsite.run_due(database, cfg, now + timedelta(seconds=4), "test")
    assert [r.message for r in caplog.records if r.levelname == "ERROR"][0].startswith("off-site backup failed")
    assert len([r for r in caplog.records if r.levelname == "ERROR"]) == 1
    status = offsite.status(database, cfg, now + timedelta(days=2))
    assert "cannot be reached" in status["last"]["detail"]
    assert "no off-site backup has been made yet" in status["alarm"]
    repository.start()
    assert offsite.run_due(database, cfg, now + timedelta(hours=2), "test")
    assert any(r.message.startswith("off-site backup works again") for r in caplog.records)
    assert offsite.alarm(database, cfg, datetime.now(UTC)) is None
    database.close()
