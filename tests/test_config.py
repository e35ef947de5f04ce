"""Settings: HTTPS follows SITE_URL, the optional .env file, and a data folder private on disk."""

import os
import re
import stat
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
from conftest import OWNER_PASSWORD
from flask import url_for

from app import create_app

YEAR = 365 * 24 * 3600


def start(monkeypatch, tmp_path, **environ):
    """An app configured only by the environment (as gunicorn starts it), with `environ` set."""
    for name in ("SITE_URL", "HTTPS"):
        monkeypatch.delenv(name, raising=False)
    for name, value in {"DATA_DIR": str(tmp_path / "data"), "SECRET_KEY": "test", **environ}.items():
        monkeypatch.setenv(name, value)
    return create_app({"OUTBOX_WORKER": False})


def test_an_https_site_url_turns_on_everything_https_needs(monkeypatch, tmp_path):
    app = start(monkeypatch, tmp_path, SITE_URL="https://clinic.example")
    response = app.test_client().get("/", base_url="https://clinic.example")
    max_age = int(re.search(r"max-age=(\d+)", response.headers["Strict-Transport-Security"])[1])
    assert max_age >= YEAR
    cookie = response.headers["Set-Cookie"]
    assert cookie.startswith("__Host-session=") and "; Secure" in cookie and "; Path=/" in cookie
    with app.test_request_context("/"):
        assert url_for("public.privacy", _external=True).startswith("https://")


def test_an_http_site_url_stays_plain(monkeypatch, tmp_path):
    app = start(monkeypatch, tmp_path, SITE_URL="http://127.0.0.1:8000")
    response = app.test_client().get("/")
    assert "Strict-Transport-Security" not in response.headers
    assert response.headers["Set-Cookie"].startswith("session=") and "Secure" not in response.headers["Set-Cookie"]


@pytest.mark.parametrize(
    "site_url, https, secure",
    [("https://clinic.example", "false", False), ("http://clinic.example", "true", True)],
)
def test_the_https_setting_overrides_the_site_url(monkeypatch, tmp_path, site_url, https, secure):
    app = start(monkeypatch, tmp_path, SITE_URL=site_url, HTTPS=https)
    response = app.test_client().get("/", base_url="https://clinic.example")
    assert ("Strict-Transport-Security" in response.headers) is secure
    assert ("; Secure" in response.headers["Set-Cookie"]) is secure


def write_env_file(path: Path, data_dir: Path) -> Path:
    path.write_text(
        "# a site's settings\n"
        f"DATA_DIR={data_dir}\n"
        "SITE_URL=https://from-the-file.example\n"
        'CLINIC_NAME="Clinic From The File"\n'
        "SECRET_KEY=from-the-file\n"
    )
    return path


def test_settings_come_from_the_env_file_and_the_environment_wins(monkeypatch, tmp_path):
    env_file = write_env_file(tmp_path / ".env", tmp_path / "data")
    app = start(monkeypatch, tmp_path, ENV_FILE=str(env_file), CLINIC_NAME="Clinic From The Environment")
    assert app.config["SITE_URL"] == "https://from-the-file.example"
    assert app.config["HTTPS"] is True
    page = app.test_client().get("/").get_data(as_text=True)
    assert "Clinic From The Environment" in page and "Clinic From The File" not in page


def test_no_env_file_is_read_when_env_file_is_empty(monkeypatch, tmp_path):
    write_env_file(tmp_path / ".env", tmp_path / "data")
    monkeypatch.chdir(tmp_path)
    app = start(monkeypatch, tmp_path, ENV_FILE="")
    assert app.config["CLINIC_NAME"] == "Acupuncture Halls"


def test_flask_commands_read_the_env_file(tmp_path):
    env_file = write_env_file(tmp_path / ".env", tmp_path / "data")
    environ = {k: v for k, v in os.environ.items() if k not in ("DATA_DIR", "SITE_URL", "SECRET_KEY")}
    done = subprocess.run(
        [str(Path(sys.executable).with_name("flask")), "--app", "app", "create-admin", "owner"],
        input=OWNER_PASSWORD + "\n",
        env={**environ, "ENV_FILE": str(env_file)},
        cwd=Path(__file__).resolve().parent.parent,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert "Sign in at https://from-the-file.example/admin/login" in done.stdout
    assert (tmp_path / "data" / "leads.db").exists()


def test_the_data_folder_and_the_secret_key_are_private(monkeypatch, tmp_path):
    monkeypatch.delenv("SECRET_KEY", raising=False)
    old = os.umask(0o022)
    try:
        app = create_app({"DATA_DIR": str(tmp_path / "new" / "data"), "OUTBOX_WORKER": False})
    finally:
        os.umask(old)
    data = Path(app.config["DATA_DIR"])
    assert stat.S_IMODE(data.stat().st_mode) == 0o700
    assert stat.S_IMODE((data / "secret_key").stat().st_mode) == 0o600
    assert stat.S_IMODE(Path(app.config["DATABASE"]).stat().st_mode) == 0o600


def test_an_existing_data_folder_open_to_others_is_closed(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    data.chmod(0o755)  # as a fresh clone leaves the repo's data/
    create_app({"DATA_DIR": str(data), "SECRET_KEY": "test", "OUTBOX_WORKER": False})
    assert stat.S_IMODE(data.stat().st_mode) == 0o700


def test_gunicorn_reads_the_env_file(serve, tmp_path):
    env_file = tmp_path / "site.env"
    env_file.write_text('CLINIC_NAME="Clinic From The File"\n')
    server = serve({"ENV_FILE": str(env_file)})
    with urllib.request.urlopen(server.url + "/", timeout=10) as response:
        assert "Clinic From The File" in response.read().decode()
