"""The deploy/ setup, end to end: gunicorn as deploy/clinic-site.service starts it, behind Caddy from
deploy/Caddyfile over HTTPS, configured by a .env made from .env.example."""

import gzip
import http.client
import http.cookiejar
import json
import os
import re
import shlex
import shutil
import socket
import sqlite3
import ssl
import stat
import struct
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from contextlib import contextmanager
from functools import partial
from pathlib import Path

import pytest
from conftest import OWNER_PASSWORD, csrf_token, form_fields, free_port, missing, valid_lead
from dotenv import dotenv_values

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
INSTALLED_AT = "/srv/clinic-site"  # where deploy/ expects the checkout on the server
OBSERVATORY = ROOT / "node_modules" / "@mdn" / "mdn-http-observatory" / "src" / "scan.js"
# The test runner's own values must not leak into the site (conftest sets ENV_FILE to "").
SETTINGS_NOT_FROM_HERE = {"SECRET_KEY", "DATA_DIR", "SITE_URL", "HTTPS", "ENV_FILE"}


def unit_settings(name: str) -> dict[str, str]:
    """The [Service] lines of a systemd unit in deploy/, as name -> value (the last one wins)."""
    lines = (DEPLOY / name).read_text().splitlines()
    pairs = (line.split("=", 1) for line in lines if "=" in line and not line.startswith("#"))
    return {key.strip(): value.strip() for key, value in pairs}


def site_env(tmp_path: Path, port: int, site_url: str) -> tuple[Path, dict[str, str]]:
    """A .env as a clinic would write it from .env.example, pointed at loopback, and its values."""
    values = dotenv_values(ROOT / ".env.example")
    assert values["TRUSTED_PROXIES"] == "1"
    values.update(
        SITE_URL=site_url,
        PORT=str(port),
        DATA_DIR=str(tmp_path / "site" / "data"),  # not there yet: the app makes it
        MAIL_SERVER="",  # no mail server: notifications become .eml files under data/mail/
        CONTACT_RATE_LIMIT="2 per minute",
        SPAM_MIN_SECONDS="0",
        WEB_THREADS="4",
    )
    env_file = tmp_path / ".env"
    env_file.write_text("".join(f"{key}={value}\n" for key, value in values.items()))
    # systemd's EnvironmentFile= puts the file into the environment; the app reads it as well.
    environ = {key: value for key, value in os.environ.items() if key not in SETTINGS_NOT_FROM_HERE}
    return env_file, {**environ, **dotenv_values(env_file), "ENV_FILE": str(env_file)}


def start(command: list[str], env: dict, log: Path, cwd: Path = ROOT) -> subprocess.Popen:
    """Start a server in its own process group, its output going to `log`."""
    with open(log, "wb") as out:
        return subprocess.Popen(command, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


def stop(process: subprocess.Popen) -> None:
    """Stop a server started by `start`, and whatever it started."""
    if process.poll() is None:
        os.killpg(process.pid, 15)
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, 9)
            process.wait()


def wait_for(check, what: str, process: subprocess.Popen, log: Path, timeout: float = 30):
    """Call `check` until it returns something true; fail with the server's log if it dies or takes too long."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{what} exited:\n{log.read_text(errors='replace')}")
        try:
            result = check()
            if result:
                return result
        except OSError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{what} did not come up in {timeout} s:\n{log.read_text(errors='replace')}")


class Site:
    """The running pair: gunicorn on loopback behind Caddy, and what a test needs to reach them."""

    def __init__(self, tmp_path: Path, host: str = "127.0.0.1", http_port: int = 0, https_port: int = 0):
        self.tmp, self.host = tmp_path, host
        self.http_port, self.https_port = http_port or free_port(), https_port or free_port()
        self.url = f"https://{host}" if self.https_port == 443 else f"https://{host}:{self.https_port}"
        self.gunicorn_port = free_port()
        self.env_file, self.env = site_env(tmp_path, self.gunicorn_port, self.url)
        self.data = Path(self.env["DATA_DIR"])
        self.processes: list[subprocess.Popen] = []

    def start_gunicorn(self) -> None:
        """ExecStart and WorkingDirectory of deploy/clinic-site.service, with the checkout here."""
        unit = unit_settings("clinic-site.service")
        assert unit["WorkingDirectory"] == INSTALLED_AT and unit["EnvironmentFile"] == f"{INSTALLED_AT}/.env"
        command = shlex.split(unit["ExecStart"].replace(INSTALLED_AT, str(ROOT)))
        self.gunicorn_log = self.tmp / "gunicorn.log"
        process = start(command, self.env, self.gunicorn_log)
        self.processes.append(process)
        url = f"http://127.0.0.1:{self.gunicorn_port}/healthz"
        wait_for(lambda: urllib.request.urlopen(url, timeout=1).status == 200, "gunicorn", process, self.gunicorn_log)

    def start_caddy(self) -> None:
        """deploy/Caddyfile as shipped, with options for a test on loopback added to its global block."""
        storage = self.tmp / "caddy"
        shipped = (DEPLOY / "Caddyfile").read_text()
        assert shipped.count("\n{\n") == 1, "deploy/Caddyfile should have one global options block"
        options = (
            "\tadmin off\n"
            f"\thttp_port {self.http_port}\n"
            f"\tdefault_bind {self.host}\n"
            "\tlocal_certs\n"  # `tls internal` for every site: Caddy's own CA instead of Let's Encrypt
            "\tskip_install_trust\n"  # and never into the system's trust store
            f"\tstorage file_system {{\n\t\troot {storage}\n\t}}\n"
        )
        overlay = self.tmp / "Caddyfile"
        overlay.write_text(shipped.replace("\n{\n", "\n{\n" + options, 1))
        drop_in = unit_settings("caddy.conf")
        assert drop_in["EnvironmentFile"] == f"{INSTALLED_AT}/.env"
        assert f"--config {INSTALLED_AT}/deploy/Caddyfile" in drop_in["ExecStart"]
        env = {
            **os.environ,
            **dotenv_values(self.env_file),  # as the drop-in's EnvironmentFile= gives them
            "HOME": str(self.tmp),
            "XDG_DATA_HOME": str(self.tmp / "xdg-data"),
            "XDG_CONFIG_HOME": str(self.tmp / "xdg-config"),
        }
        self.caddy_log = self.tmp / "caddy.log"
        process = start(["caddy", "run", "--config", str(overlay), "--adapter", "caddyfile"], env, self.caddy_log)
        self.processes.append(process)
        self.root_ca = storage / "pki" / "authorities" / "local" / "root.crt"
        wait_for(self.root_ca.exists, "caddy", process, self.caddy_log)
        self.tls = ssl.create_default_context(cafile=str(self.root_ca))

        def answers() -> bool:
            return self.client().open(self.url + "/healthz", timeout=2).status == 200

        wait_for(answers, "caddy", process, self.caddy_log)

    def client(self, source: str = "127.0.0.1") -> urllib.request.OpenerDirector:
        """A visitor's browser: trusts Caddy's root CA, keeps cookies, connects from `source`."""
        opener = urllib.request.build_opener(
            FromAddress(source, self.tls), urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar())
        )
        opener.addheaders = [("User-Agent", "test-visitor")]
        return opener

    def flask(self, *args: str, stdin: str = "") -> subprocess.CompletedProcess:
        """Run `flask --app app ARGS` as an owner would on the server, with the site's settings."""
        flask = ROOT / ".venv" / "bin" / "flask"
        return subprocess.run(
            [str(flask), "--app", "app", *args], input=stdin, env=self.env, cwd=ROOT, capture_output=True, text=True
        )

    def stop(self) -> None:
        for process in reversed(self.processes):
            stop(process)


class FromAddress(urllib.request.HTTPSHandler):
    """HTTPS from a chosen loopback address, so two clients look like two visitors to Caddy."""

    def __init__(self, source: str, context: ssl.SSLContext):
        super().__init__(context=context)
        self.source, self.context = source, context

    def https_open(self, req):
        connection = partial(http.client.HTTPSConnection, source_address=(self.source, 0))
        return self.do_open(connection, req, context=self.context)


@contextmanager
def serving(site: Site):
    """gunicorn and Caddy up for the `with` block, both stopped after it."""
    if shutil.which("caddy") is None:
        missing("caddy not found: install it with `sudo apt-get install caddy` to test deploy/")
    try:
        site.start_gunicorn()
        site.start_caddy()
        yield site
    finally:
        site.stop()


@pytest.fixture
def site(tmp_path):
    with serving(Site(tmp_path)) as running:
        yield running


def get(client, url: str, **headers):
    """GET `url` with `client`, adding `headers`."""
    return client.open(urllib.request.Request(url, headers=headers), timeout=10)


def send_lead(site: Site, client, **headers):
    """Load / and send the form as a browser would (Referer included); return the final response."""
    page = get(client, site.url + "/", **{"Accept-Encoding": "identity"})
    data = urllib.parse.urlencode({**form_fields(page.read().decode()), **valid_lead()}).encode()
    request = urllib.request.Request(site.url + "/contact", data=data, headers={"Referer": site.url + "/", **headers})
    try:
        return client.open(request, timeout=10)
    except urllib.error.HTTPError as error:
        return error


def test_a_visitor_and_the_owner_over_https_through_caddy(site):
    visitor = site.client()
    # HTTP is redirected to HTTPS.
    plain = http.client.HTTPConnection("127.0.0.1", site.http_port, timeout=10)
    plain.request("GET", "/privacy?utm_source=poster", headers={"Host": "127.0.0.1"})
    redirect = plain.getresponse()
    assert redirect.status in (301, 308)
    assert redirect.headers["Location"] == f"{site.url}/privacy?utm_source=poster"
    plain.close()

    # The landing page: compressed, HSTS, the host-only secure session cookie.
    landing = get(visitor, site.url + "/?utm_source=leaflet-spring", **{"Accept-Encoding": "zstd, gzip"})
    assert landing.headers["Content-Encoding"] == "zstd"
    assert b"<form" not in landing.read()
    max_age = int(re.search(r"max-age=(\d+)", landing.headers["Strict-Transport-Security"])[1])
    assert max_age >= 365 * 24 * 3600
    cookie = landing.headers["Set-Cookie"]
    assert cookie.startswith("__Host-session=") and "; Secure" in cookie and "; HttpOnly" in cookie
    assert "Domain=" not in cookie and "; Path=/" in cookie
    gzipped = get(visitor, site.url + "/", **{"Accept-Encoding": "gzip"})
    assert gzipped.headers["Content-Encoding"] == "gzip"
    assert b'action="/contact"' in gzip.decompress(gzipped.read())

    # The form goes through (flask-wtf's HTTPS checks included) to /thanks, and the lead is stored.
    thanks = send_lead(site, visitor)
    assert thanks.status == 200 and thanks.url == site.url + "/thanks"
    assert "Jane" in thanks.read().decode()
    with sqlite3.connect(site.data / "leads.db") as conn:
        assert conn.execute("SELECT name, is_spam FROM leads").fetchall() == [("Jane Doe", 0)]

    # The owner, made on the command line, signs in and out.
    made = site.flask("create-admin", "owner", stdin=OWNER_PASSWORD + "\n")
    assert made.returncode == 0, made.stderr
    assert f"{site.url}/admin/login" in made.stdout
    owner = site.client()
    login = get(owner, site.url + "/admin/login").read().decode()
    token = csrf_token(login)
    data = urllib.parse.urlencode({"username": "owner", "password": OWNER_PASSWORD, "csrf_token": token}).encode()
    referer = {"Referer": site.url + "/admin/login"}
    inbox = owner.open(urllib.request.Request(site.url + "/admin/login", data=data, headers=referer), timeout=10)
    assert inbox.url == site.url + "/admin"
    html = inbox.read().decode()
    assert "Jane Doe" in html
    token = csrf_token(html)
    data = urllib.parse.urlencode({"csrf_token": token}).encode()
    out = owner.open(urllib.request.Request(site.url + "/admin/logout", data=data, headers=referer), timeout=10)
    assert out.url.startswith(site.url + "/admin/login")
    assert get(owner, site.url + "/admin").url.startswith(site.url + "/admin/login")

    # Caddy's access log has the requests but not their query strings.
    log = site.caddy_log.read_text()
    assert '"uri":"/"' in log and "leaflet-spring" not in log and "utm_source" not in log


def test_each_visitor_address_has_its_own_rate_limit_behind_caddy(site):
    first, second = site.client("127.0.0.2"), site.client("127.0.0.3")
    assert [send_lead(site, first).status for _ in range(3)] == [200, 200, 429]
    assert send_lead(site, second).status == 200
    # An X-Forwarded-For a visitor makes up does not change the address the site sees.
    assert send_lead(site, first, **{"X-Forwarded-For": "198.51.100.7"}).status == 429
    assert send_lead(site, second, **{"X-Forwarded-For": "198.51.100.8"}).status == 200
    assert send_lead(site, second, **{"X-Forwarded-For": "198.51.100.9"}).status == 429
    assert "127.0.0.0/24" in site.gunicorn_log.read_text()  # as the logs show any visitor's address


def test_neither_log_holds_a_visitors_address_or_user_agent(site):
    agent = "Mozilla/5.0 (unique-agent-7f3a9c) Firefox/140.0"
    visitor = site.client("127.0.0.77")
    visitor.addheaders = [("User-Agent", agent)]
    assert get(visitor, site.url + "/?utm_source=leaflet").status == 200
    assert get(visitor, site.url + "/privacy", **{"X-Forwarded-For": "198.51.100.77"}).status == 200
    assert send_lead(site, visitor).status == 200
    assert [send_lead(site, visitor).status for _ in range(2)] == [200, 429]  # the limit's refusal is logged too
    for missing_page in ("/no-such-page", "/admin/no-such-page"):
        with pytest.raises(urllib.error.HTTPError):
            get(visitor, site.url + missing_page)
    time.sleep(0.5)  # Caddy writes its log lines after the answers
    logs = {"caddy": site.caddy_log.read_text(), "gunicorn": site.gunicorn_log.read_text()}
    for name, text in logs.items():
        for secret in ("127.0.0.77", "unique-agent-7f3a9c", "198.51.100.77"):
            assert secret not in text, (name, secret)
    assert '"remote_ip":"127.0.0.0"' in logs["caddy"] and '"uri":"/privacy"' in logs["caddy"]
    assert "GET /privacy 200" in logs["gunicorn"] and "127.0.0.0/24" in logs["gunicorn"]


def test_everything_under_data_dir_is_private_after_serving_a_lead(site):
    assert send_lead(site, site.client()).status == 200
    assert site.flask("create-admin", "owner", stdin=OWNER_PASSWORD + "\n").returncode == 0
    deadline = time.monotonic() + 10
    while not list(site.data.glob("mail/*.eml")) and time.monotonic() < deadline:
        time.sleep(0.1)  # the sender thread writes the notification as a file
    found = {path.relative_to(site.data).as_posix(): stat.S_IMODE(path.stat().st_mode) for path in site.data.rglob("*")}
    assert {"leads.db", "secret_key", "ratelimit.db", "mail"} <= set(found)
    assert any(name.endswith(".eml") for name in found)
    assert stat.S_IMODE(site.data.stat().st_mode) == 0o700
    private = {name: 0o700 if (site.data / name).is_dir() else 0o600 for name in found}
    assert {name: oct(mode) for name, mode in found.items()} == {name: oct(mode) for name, mode in private.items()}


def test_the_readme_installs_what_deploy_ships():
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## Put it online") :].split("\n## ")[0]
    for path in set(re.findall(r"deploy/[\w.-]+", section)):
        assert (ROOT / path).is_file(), path
    assert f"git clone https://github.com/OWNER/clinic-site.git {INSTALLED_AT}" in section
    assert "cp deploy/clinic-site.service /etc/systemd/system/" in section
    assert "deploy/caddy.conf /etc/systemd/system/caddy.service.d/" in section
    assert unit_settings("clinic-site.service")["User"] in section
    for command in ("create-admin", "check"):
        assert f"runuser -u clinic-site -- .venv/bin/flask --app app {command}" in section


def test_mozilla_http_observatory_grades_the_deploy_a_plus(tmp_path):
    """Mozilla's own scanner (npm @mdn/mdn-http-observatory) against Caddy and gunicorn as deployed.

    It scans only ports 80 and 443 of a host name, so Caddy takes those on a loopback address of its own.
    """
    if not OBSERVATORY.is_file() or shutil.which("node") is None:
        missing("the HTTP Observatory is not installed: `make test` installs it (npm ci)")
    if os.geteuid() != 0:
        missing("the HTTP Observatory scans ports 80 and 443, which only root may listen on")
    with serving(Site(tmp_path, host="127.0.0.8", http_port=80, https_port=443)) as site:
        scan = subprocess.run(
            ["node", str(OBSERVATORY), site.host],
            env={**os.environ, "NODE_EXTRA_CA_CERTS": str(site.root_ca)},  # trust Caddy's test CA
            capture_output=True,
            text=True,
            timeout=120,
        )
    report = json.loads(scan.stdout or scan.stderr)
    assert "scan" in report, report
    failed = {name: test["result"] for name, test in report["tests"].items() if not test["pass"]}
    assert (report["scan"]["grade"], failed) == ("A+", {}), report["scan"]
    assert report["scan"]["score"] >= 100


def test_an_error_line_keeps_only_the_network_of_a_visitor_who_hung_up(tmp_path):
    """A visitor who closes the connection mid-answer makes Caddy log "write tcp ...->ADDRESS:PORT: broken pipe"."""
    (tmp_path / "big.bin").write_bytes(os.urandom(20_000_000))  # far more than the socket buffers hold
    upstream_port, caddy_port = free_port(), free_port()
    upstream = subprocess.Popen(
        [sys.executable, "-m", "http.server", str(upstream_port), "--bind", "127.0.0.1", "--directory", str(tmp_path)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    shipped = (DEPLOY / "Caddyfile").read_text()
    config = (
        shipped.replace("\n{\n", f"\n{{\n\tadmin off\n\tstorage file_system {tmp_path / 'caddy'}\n", 1)
        .replace("{$SITE_URL} {", f"http://127.0.0.1:{caddy_port} {{")
        .replace("reverse_proxy 127.0.0.1:{$PORT:8000}", f"reverse_proxy 127.0.0.1:{upstream_port}")
    )
    (tmp_path / "Caddyfile").write_text(config)
    log = tmp_path / "caddy.log"
    env = {**os.environ, "HOME": str(tmp_path), "XDG_DATA_HOME": str(tmp_path), "XDG_CONFIG_HOME": str(tmp_path)}
    caddy = start(["caddy", "run", "--config", str(tmp_path / "Caddyfile"), "--adapter", "caddyfile"], env, log)
    try:
        wait_for(lambda: socket_answers(upstream_port) and socket_answers(caddy_port), "caddy", caddy, log)
        deadline = time.monotonic() + 20
        while "write tcp" not in log.read_text() and time.monotonic() < deadline:  # not "context canceled" only
            with socket.socket() as visitor:
                visitor.bind(("127.0.0.77", 0))
                visitor.connect(("127.0.0.1", caddy_port))
                visitor.sendall(f"GET /big.bin HTTP/1.1\r\nHost: 127.0.0.1:{caddy_port}\r\n\r\n".encode())
                visitor.recv(100)
                visitor.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # hang up hard
            time.sleep(0.2)
        text = log.read_text()
        assert "write tcp" in text  # the error line this is about was written
        assert "127.0.0.77" not in text
        assert "->127.0.0: write" in text  # its network is still there, for telling a flood from one visitor
    finally:
        caddy.terminate()
        upstream.terminate()
        caddy.wait(10)
        upstream.wait(10)


def socket_answers(port: int) -> bool:
    """True once something accepts connections on the loopback `port`."""
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0
