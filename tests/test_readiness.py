"""`flask --app app check`: each production problem on its own line, "ready" when there is none."""

import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from conftest import OWNER_PASSWORD, free_port, rows

import config
from app import create_app

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def ready(settings, smtp, tmp_path):
    """Settings of a site ready for production, mailing the loopback SMTP server."""
    tmp_path.chmod(0o700)
    return {
        **settings,
        "MAIL_SERVER": "127.0.0.1",
        "MAIL_PORT": smtp.port,
        "MAIL_TIMEOUT": 3.0,
        "TRUSTED_PROXIES": 1,
    }


def check(settings: dict, with_admin: bool = True, before=None):
    app = create_app(settings)
    if with_admin:
        made = app.test_cli_runner().invoke(args=["create-admin", "owner"], input=OWNER_PASSWORD + "\n")
        assert made.exit_code == 0
    if before:
        before(app)
    return app.test_cli_runner().invoke(args=["check"])


def test_a_ready_site_passes_as_a_real_command(ready, tmp_path):
    check(ready)  # makes the owner's account
    env = {**os.environ, **{k: str(v) for k, v in ready.items() if k != "OUTBOX_WORKER"}}
    flask = str(Path(sys.executable).with_name("flask"))
    result = subprocess.run([flask, "--app", "app", "check"], cwd=ROOT, env=env, capture_output=True, text=True)
    assert (result.returncode, result.stdout) == (0, "ready\n"), result.stderr


def test_a_recent_good_backup_is_fine(ready):
    result = check(ready, before=lambda app: app.test_cli_runner().invoke(args=["backup"]))
    assert (result.exit_code, result.output) == (0, "ready\n")


def fail_a_backup(app) -> None:
    result = app.test_cli_runner().invoke(args=["backup", "--to", "/no/such/folder/leads.db"])
    assert result.exit_code == 1


def age_the_backup(app) -> None:
    app.test_cli_runner().invoke(args=["backup"])
    three_days_ago = (datetime.now(UTC) - timedelta(days=3)).isoformat(timespec="seconds")
    rows(app, "UPDATE housekeeping_log SET finished_at = ?", [three_days_ago])


def open_data_dir(app) -> None:
    Path(app.config["DATA_DIR"]).chmod(0o755)


@pytest.mark.parametrize(
    "change, before, expected",
    [
        ({"SITE_URL": "http://clinic.example"}, None, "SITE_URL is http://clinic.example: the public address must"),
        ({"MAIL_SERVER": None}, None, "MAIL_SERVER is not set"),
        ({"MAIL_PORT": "closed"}, None, "cannot be used within MAIL_TIMEOUT (3 s): ConnectionRefusedError"),
        ({"MAIL_USE_TLS": True}, None, "cannot be used within MAIL_TIMEOUT (3 s)"),  # no STARTTLS offered
        ({"MAIL_USERNAME": "clinic", "MAIL_PASSWORD": "secret"}, None, "cannot be used within"),  # login in clear
        ({"CLINIC_EMAIL": config.SETTINGS["CLINIC_EMAIL"][0]}, None, "CLINIC_EMAIL is still the example address"),
        ({}, "no admin", "No admin account: create one with `flask --app app create-admin USERNAME`"),
        ({}, open_data_dir, "is open to other users (mode 0755): run `chmod 700"),
        ({"TRUSTED_PROXIES": 0}, None, "TRUSTED_PROXIES is 0 while SITE_URL is https"),
        ({}, fail_a_backup, "Backups: the last backup failed: The database could not be backed up"),
        ({}, age_the_backup, "Backups: the last good backup is 3 days old"),
    ],
)
def test_each_problem_is_flagged_on_its_own(ready, change, before, expected):
    settings = {**ready, **change}
    if settings["MAIL_PORT"] == "closed":
        settings["MAIL_PORT"] = free_port()
    result = check(settings, with_admin=before != "no admin", before=before if callable(before) else None)
    assert result.exit_code == 1
    lines = result.output.splitlines()
    assert len(lines) == 1 and expected in lines[0], result.output


def test_a_data_dir_the_site_cannot_write_is_flagged(ready, tmp_path):
    if os.geteuid() == 0:
        pytest.skip("root may write anywhere")
    result = check(ready, before=lambda app: tmp_path.chmod(0o500))
    tmp_path.chmod(0o700)
    assert result.exit_code == 1 and "is not writable by this user" in result.output


def test_a_database_that_cannot_be_read_is_flagged(ready):
    app = create_app(ready)
    Path(app.config["DATABASE"]).write_bytes(os.urandom(8192))
    for leftover in Path(app.config["DATABASE"]).parent.glob("leads.db-*"):
        leftover.unlink()
    result = app.test_cli_runner().invoke(args=["check"])
    assert result.exit_code == 1
    assert "cannot be read" in result.output and "flask --app app restore PATH" in result.output
