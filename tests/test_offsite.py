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
from conftest import OWNER_PASSWORD, add_lead, form_fields, free_port, missing, rows, sign_in, valid_lead
from test_housekeeping import post_without_following, wait_until

import config
import db
import db.housekeeping
import db.leads
import offsite
import readiness
from app import create_app
from backups import copy_database

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
    subprocess.run(
        ["restic", "init", "--repository-version", "2", "--no-cache"], env=env, check=True, capture_output=True
    )
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


def server_env(repo, **extra) -> dict:
    """A live server's environment: the repository, and no rate limit in the way of the test's visitors."""
    return {**restic_settings(repo), "CONTACT_RATE_LIMIT": "100000 per minute", **extra}


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
    assert db.housekeeping.offsite_changed_at(database) is not None
    assert not offsite.run_due(database, cfg, later - timedelta(seconds=5), "test")  # before the delay
    assert offsite.run_due(database, cfg, later + timedelta(seconds=2), "test")
    assert db.housekeeping.offsite_changed_at(database) is None
    assert len(offsite.snapshots(cfg)) == 2
    for change in (
        lambda: db.leads.set_status(database, lead_id, "contacted", db.utcnow()),
        lambda: db.leads.add_note(database, lead_id, "owner", "Called back", db.utcnow()),
        lambda: db.leads.delete_lead(database, lead_id),
    ):
        change()
        assert db.housekeeping.offsite_changed_at(database) is not None
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
    assert offsite.alarm(database, cfg, now).startswith("no off-site backup has been made yet (last error: the repo")
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


def offsite_log(database_path) -> list[dict]:
    """The off-site snapshots the site logged, oldest first."""
    conn = sqlite3.connect(database_path)
    conn.row_factory = sqlite3.Row
    try:
        return [dict(r) for r in conn.execute("SELECT * FROM housekeeping_log WHERE job = 'offsite' ORDER BY id")]
    finally:
        conn.close()


def names_in_latest_snapshot(cfg: dict, tmp_path) -> set[str]:
    """The names of the leads in the newest off-site snapshot."""
    copy = tmp_path / f"latest-{time.monotonic_ns()}.db"
    offsite.download(cfg, "latest", copy)
    return {name for (name,) in sqlite3.connect(copy).execute("SELECT name FROM leads")}


@pytest.mark.slow
def test_posts_go_on_while_the_repository_is_down_and_the_snapshot_follows(serve, repository, settings, tmp_path):
    repository.stop()
    env = server_env(repository, OFFSITE_DELAY_SECONDS="1", HOUSEKEEPING_POLL_SECONDS="0.5")
    server = serve(env)
    cfg = create_app({**settings, **restic_settings(repository), "DATA_DIR": server.data_dir}).config
    wait_until(lambda: offsite_log(cfg["DATABASE"]), what="the first off-site attempt")
    posted = [post_without_following(server.url, f"During outage {n}") for n in range(10)]
    assert {status for status, _ in posted} == {303}
    print(f"longest POST /contact with the repository down: {max(t for _, t in posted) * 1000:.0f} ms")
    wait_until(lambda: len(offsite_log(cfg["DATABASE"])) >= 3, what="retries")
    assert not any(entry["ok"] for entry in offsite_log(cfg["DATABASE"]))
    assert server.output().count("off-site backup failed") == 1  # once per outage, whatever the retries

    repository.start()
    wait_until(lambda: offsite_log(cfg["DATABASE"])[-1]["ok"], timeout=60, what="the snapshot after the outage")
    assert names_in_latest_snapshot(cfg, tmp_path) == {f"During outage {n}" for n in range(10)}
    assert "off-site backup works again" in server.output()

    refused = flask(server.data_dir, "restore", "--offsite", env=restic_settings(repository))
    assert refused.returncode == 1 and "The site's server is running" in refused.stderr


def leads_notes_and_statuses(server, count: int, database_path: str) -> None:
    """Visitors post `count` leads over HTTP from two threads; the owner changes statuses, adds notes, deletes one."""
    names = iter(range(count))
    lock = threading.Lock()

    def visitor() -> None:
        while True:
            with lock:
                n = next(names, None)
            if n is None:
                return
            status, _ = post_without_following(server.url, f"Drill Visitor {n}")
            assert status == 303

    threads = [threading.Thread(target=visitor) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    database = db.connect(database_path)
    ids = [row["id"] for row in database.query("SELECT id FROM leads ORDER BY id")]
    for lead_id in ids[::3]:
        db.leads.set_status(database, lead_id, "contacted", db.utcnow())
        db.leads.add_note(database, lead_id, "owner", f"Called back about {lead_id}", db.utcnow())
    db.leads.delete_lead(database, ids[1])
    database.close()


def lose_the_server(server) -> None:
    """SIGKILL every process of the server (workers, restic), then delete its DATA_DIR."""
    os.killpg(server.process.pid, signal.SIGKILL)
    server.process.wait()
    shutil.rmtree(server.data_dir)


@pytest.mark.slow
def test_loss_drill_killed_150_s_after_the_last_change_loses_nothing(serve, repository, tmp_path):
    """The default settings: a change is off-site within two minutes, so a server lost 150 s later loses nothing."""
    server = serve(server_env(repository))
    leads_notes_and_statuses(server, 40, f"{server.data_dir}/leads.db")
    before = lead_state(f"{server.data_dir}/leads.db")
    assert len(before["leads"]) == 39 and before["notes"]
    last_change = datetime.now(UTC)
    time.sleep(150)
    sent = [e for e in offsite_log(f"{server.data_dir}/leads.db") if e["ok"]][-1]
    after = (datetime.fromisoformat(sent["finished_at"]) - last_change).total_seconds()
    print(f"the last change was off-site {after:.0f} s after it was made")
    lose_the_server(server)

    fresh = tmp_path / "new-machine"
    restored = flask(fresh, "restore", "--offsite", env=restic_settings(repository))
    assert restored.returncode == 0, restored.stderr
    assert "Restored 39 lead(s)" in restored.stdout
    again = serve(server_env(repository, DATA_DIR=str(fresh)))
    assert lead_state(f"{again.data_dir}/leads.db") == before


@pytest.mark.slow
def test_loss_drill_killed_5_s_after_a_lead_loses_only_the_last_delay(serve, repository, tmp_path):
    """The README's bound: what arrived within OFFSITE_DELAY_SECONDS of the loss may be lost, nothing older."""
    env = server_env(repository, OFFSITE_DELAY_SECONDS="10")
    server = serve(env)
    database_path = f"{server.data_dir}/leads.db"
    leads_notes_and_statuses(server, 10, database_path)
    sent = lead_state(database_path)
    uploaded = len([entry for entry in offsite_log(database_path) if entry["ok"]])
    changed = db.connect(database_path)
    wait_until(
        lambda: (
            db.housekeeping.offsite_changed_at(changed) is None
            and len([entry for entry in offsite_log(database_path) if entry["ok"]]) > uploaded
        ),
        timeout=60,
        what="the changes to go off-site",
    )
    changed.close()
    for n in range(3):
        assert post_without_following(server.url, f"Last Seconds {n}")[0] == 303
    time.sleep(5)
    lose_the_server(server)

    fresh = tmp_path / "new-machine"
    restored = flask(fresh, "restore", "--offsite", env=env)
    assert restored.returncode == 0, restored.stderr
    again = serve({**env, "DATA_DIR": str(fresh)})
    assert lead_state(f"{again.data_dir}/leads.db") == sent  # everything but the leads of the last 5 s


def test_the_daily_prune_keeps_hourly_then_daily_snapshots_and_nothing_older(offsite_app, tmp_path):
    cfg = offsite_app.config
    cfg["OFFSITE_KEEP_DAYS"] = 10  # a 12-day-old snapshot is past it, though within the default 30
    now = datetime.now(UTC)
    ages = {"forgotten": timedelta(days=12), "older the same day": timedelta(days=3, minutes=1)}
    ages |= {"daily": timedelta(days=3), "hourly": timedelta(hours=30), "now": timedelta(0)}
    lead_id = None
    for name, age in ages.items():
        if lead_id:
            db.leads.delete_lead(db.connect(cfg["DATABASE"]), lead_id)
        lead_id = add_lead(offsite_app, name=f"Visitor {name}")
        stamp = f"{(now - age).astimezone():%Y-%m-%d %H:%M:%S}"  # restic reads it in local time
        copy_database(cfg["DATABASE"], tmp_path / f"{name}.db")
        with open(tmp_path / f"{name}.db", "rb") as data:
            offsite.restic(
                cfg,
                ["backup", "--stdin", "--stdin-filename", "leads.db", "--tag", "clinic-site", "--time", stamp],
                stdin=data,
            )
    offsite.forget(cfg)
    kept = offsite.snapshots(cfg)
    assert len(kept) == 3
    names = set()
    for snapshot in kept:
        copy = tmp_path / f"{snapshot['short_id']}.db"
        offsite.download(cfg, snapshot["id"], copy)
        names |= {name for (name,) in sqlite3.connect(copy).execute("SELECT name FROM leads")}
    assert names == {"Visitor daily", "Visitor hourly", "Visitor now"}


def test_status_page_inbox_banner_and_privacy_page(settings, repository, client):
    settings.update(restic_settings(repository), RESTIC_REPOSITORY=repository.url.replace("//", "//backup:s3cret@"))
    app = create_app(settings)
    assert "encrypted copies" not in create_app({**settings, "RESTIC_REPOSITORY": None}).test_client().get(
        "/privacy"
    ).get_data(as_text=True)
    owner = app.test_client()
    assert app.test_cli_runner().invoke(args=["create-admin", "owner"], input=OWNER_PASSWORD + "\n").exit_code == 0
    assert sign_in(owner).status_code == 303
    privacy = owner.get("/privacy").get_data(as_text=True)
    assert "a deleted request stays in those copies for at most 30 days" in privacy

    database = db.connect(app.config["DATABASE"])
    two_days_ago = db.iso_utc(datetime.now(UTC) - timedelta(days=2))
    entry = {"job": "offsite", "started_at": two_days_ago, "finished_at": two_days_ago, "actor": "housekeeping"}
    db.housekeeping.log_housekeeping(
        database, {**entry, "ok": 1, "snapshot": "0123456789abcdef", "leads": 3, "size_bytes": 65536}
    )
    repository.stop()
    assert offsite.run_due(database, app.config, datetime.now(UTC), "test")
    database.close()

    status = owner.get("/admin/status").get_data(as_text=True)
    assert "rest:http://backup:***@127.0.0.1" in status and "s3cret" not in status
    assert "the repository cannot be reached" in status
    assert "01234567" in status and "3 requests" in status  # the last good snapshot
    inbox = owner.get("/admin").get_data(as_text=True)
    assert "Off-site backups need attention:" in inbox and "the last good off-site backup is 48 hours old" in inbox


def test_restic_gets_its_own_and_its_backends_variables_and_no_other_secret(tmp_path):
    environ = {
        "ENV_FILE": "",
        "PATH": "/usr/bin",
        "RESTIC_REPOSITORY": "s3:https://s3.example.com/bucket",
        "RESTIC_PASSWORD_FILE": str(tmp_path / "key"),
        "AWS_ACCESS_KEY_ID": "id",
        "AWS_SECRET_ACCESS_KEY": "secret",
        "MAIL_PASSWORD": "mail secret",
        "SECRET_KEY": "session secret",
    }
    cfg = config.finish({**config.from_env(environ), "DATA_DIR": str(tmp_path)})
    env = offsite.restic_env(cfg)
    assert env["AWS_ACCESS_KEY_ID"] == "id" and env["AWS_SECRET_ACCESS_KEY"] == "secret"
    assert env["RESTIC_REPOSITORY"] == "s3:https://s3.example.com/bucket" and env["PATH"] == "/usr/bin"
    assert "MAIL_PASSWORD" not in env and "SECRET_KEY" not in env
    with pytest.raises(config.ConfigError, match="RESTIC_REPOSITORY is set without its key"):
        config.finish(config.from_env({"ENV_FILE": "", "RESTIC_REPOSITORY": "sftp:host:/x", "DATA_DIR": str(tmp_path)}))
