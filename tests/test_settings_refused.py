"""Settings and articles that would expose the clinic stop start-up with a clear message, and `flask check` too."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import config
from app import create_app

ROOT = Path(__file__).resolve().parent.parent
FLASK = str(Path(sys.executable).with_name("flask"))


def flask(tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess:
    """`flask --app app ARGS` as the owner runs it, with `env` as the site's settings."""
    base = {**os.environ, "ENV_FILE": "", "DATA_DIR": str(tmp_path / "data"), "SECRET_KEY": "x"}
    return subprocess.run(
        [FLASK, "--app", "app", *args], cwd=ROOT, env={**base, **env}, capture_output=True, text=True, timeout=60
    )


@pytest.mark.parametrize("name", ["WEBHOOK_URL", "BOOKING_URL"])
def test_a_plain_http_address_on_the_internet_stops_start_up_and_check(settings, tmp_path, name):
    url = "http://hooks.example/clinic"
    with pytest.raises(config.ConfigError) as refused:
        create_app({**settings, name: url})
    message = str(refused.value)
    assert message.startswith(f"{name}={url!r}: http:// would carry visitors' requests across the internet")
    assert "use an https:// address" in message
    result = flask(tmp_path, "check", **{name: url})
    assert result.returncode != 0 and message in result.stderr


@pytest.mark.parametrize("url", ["http://127.0.0.1:9000/hook", "http://localhost/hook", "http://[::1]:8080/x"])
def test_plain_http_to_this_machine_is_accepted(settings, url):
    app = create_app({**settings, "WEBHOOK_URL": url, "BOOKING_URL": url})
    assert app.config["WEBHOOK_URL"] == url


def with_image(tmp_path: Path, image: str) -> Path:
    """A copy of the site's articles whose home article names `image`."""
    folder = tmp_path / "content"
    shutil.copytree(ROOT / "content", folder)
    home = next(path for path in folder.glob("*.md") if "home: true" in path.read_text())
    home.write_text(home.read_text().replace("home: true\n", f"home: true\nimage: {image}\n", 1))
    return home


@pytest.mark.parametrize("image", ["/etc/hostname", "../config.py", "favicon.svg/../../config.py", "/srv/x/og.png"])
def test_an_article_image_outside_static_stops_start_up_and_the_commands(settings, tmp_path, image):
    home = with_image(tmp_path, image)
    folder = str(home.parent)
    expected = f"{home}: image {image!r}: only a relative path to a file inside static/ is accepted"
    with pytest.raises(SystemExit) as refused:
        create_app({**settings, "CONTENT_DIR": folder})
    assert str(refused.value).startswith(expected)
    for command in ("articles", "check"):
        result = flask(tmp_path, command, CONTENT_DIR=folder)
        assert result.returncode != 0 and expected in result.stderr, (command, result.stderr)


def test_an_article_image_inside_static_is_published(settings, tmp_path):
    home = with_image(tmp_path, "og.png")
    client = create_app({**settings, "CONTENT_DIR": str(home.parent)}).test_client()
    page = client.get("/", headers={"User-Agent": "test"})
    assert page.status_code == 200 and "/static/og.png?v=" in page.get_data(as_text=True)
