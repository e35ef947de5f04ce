"""Measure /admin/analytics after a flood of page views with random tags and referrers (issue 16's target).

    .venv/bin/python bench/analytics_flood.py [--visits 10000]

In one process, through the site's own WSGI stack: N GETs of / with random 100-character utm_ tags or a
random referring host, then the owner's analytics page for that day, requested 20 times: the median and
the slowest time, the page's size, and how much the database grew. Targets: under 200 ms, under 200 KB, and
under 1 MB of growth for 10,000 visits.
"""

import argparse
import logging
import os
import random
import sqlite3
import statistics
import string
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ["ENV_FILE"] = ""

import visits  # noqa: E402
from app import create_app  # noqa: E402

BROWSER = "Mozilla/5.0 (X11; Linux x86_64; rv:140.0) Gecko/20100101 Firefox/140.0"
PASSWORD = "correct horse battery staple"


def word(rng: random.Random, length: int = 100) -> str:
    return "".join(rng.choices(string.ascii_letters + string.digits, k=length))


def size(path: str) -> int:
    with sqlite3.connect(path) as conn:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    return Path(path).stat().st_size


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--visits", type=int, default=10_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        overrides = {"DATA_DIR": folder, "SECRET_KEY": "bench", "OUTBOX_WORKER": False, "RATELIMIT_ENABLED": False}
        app = create_app(overrides)
        logging.getLogger("clinic.request").setLevel(logging.WARNING)
        before = size(app.config["DATABASE"])
        rng, client = random.Random(16), app.test_client()
        for i in range(args.visits):
            if i % 2:
                path, referrer = f"/?utm_source={word(rng)}&utm_medium={word(rng)}&utm_campaign={word(rng)}", ""
            else:
                path, referrer = "/", f"https://{word(rng, 60)}.example/"
            address = f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}"
            headers = {"User-Agent": BROWSER, "Referer": referrer}
            client.get(path, headers=headers, environ_base={"REMOTE_ADDR": address})
        visits.flush(app)
        grown = size(app.config["DATABASE"]) - before
        runner = app.test_cli_runner()
        assert runner.invoke(args=["create-admin", "owner"], input=PASSWORD + "\n").exit_code == 0
        owner = app.test_client()
        login = owner.get("/admin/login").get_data(as_text=True)
        token = login.split('name="csrf_token"', 1)[1].split('value="', 1)[1].split('"', 1)[0]
        owner.post("/admin/login", data={"username": "owner", "password": PASSWORD, "csrf_token": token})
        today = datetime.now(ZoneInfo(app.config["CLINIC_TIMEZONE"])).date().isoformat()
        times, body = [], b""
        for _ in range(20):
            started = time.perf_counter()
            response = owner.get(f"/admin/analytics?from={today}&to={today}")
            times.append((time.perf_counter() - started) * 1000)
            assert response.status_code == 200
            body = response.get_data()
        print(f"{args.visits} visits: database grew {grown / 1e6:.2f} MB")
        median, slowest = statistics.median(times), max(times)
        print(f"/admin/analytics for the day: median {median:.1f} ms, slowest {slowest:.1f} ms, {len(body) // 1000} kB")


if __name__ == "__main__":
    main()
