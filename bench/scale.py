"""Measure the owner's inbox, search, CSV export and a purge on a database of N generated leads.

    make bench-scale                          # 10k, 100k and 1M leads; prints a table and puts it in docs/benchmarks.md
    .venv/bin/python bench/scale.py --sizes 10000 --no-docs

For each size: a database of N leads over ten years (30 % spam, notes and emails for some) is built
in one transaction, the site is served by gunicorn with gunicorn.conf.py as `make run` serves it,
an owner made with `flask --app app create-admin` signs in, and the script measures the median of
several requests to the inbox, a status filter, a search that hits and one that misses, and a lead's
page; the CSV export of everything but spam (rows/s, and how far the worker's peak memory rose);
and the longest `POST /contact` wait while `flask --app app purge-leads --older-than 2555` deletes
the leads older than seven years beside 20 posts/s.

Then the same size again with "everyday" messages (12 words each from a list of 20, so "migraine" is
in about 46 % of the leads, as "appointment" or "pain" are in a real clinic's inbox): a search for
that common word, for its prefix "migr", for it among the booked, and the CSV export of everything
but spam timed by a client that reads the response as it arrives.
"""

import argparse
import asyncio
import hashlib
import http.cookiejar
import inspect
import os
import random
import re
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import urllib.request
from datetime import UTC, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from run import Server, fetch_forms, percentile, post_open_loop, write_results  # noqa: E402

import db  # noqa: E402
import db.migrations  # noqa: E402
import db.search  # noqa: E402

START, END = "<!-- scale:start -->", "<!-- scale:end -->"
FLASK = str(Path(sys.executable).with_name("flask"))
PASSWORD = "bench scale password"
REQUESTS = 15  # timed requests per page, after 3 to warm up
POST_RATE = 20  # posts per second during the purge

FIRST = (
    "Ann Ben Carla Dan Eve Frank Grace Henry Iris Jack Kim Leo Maria Nina Oscar Paula Quinn Rosa Sam Tina Uma Victor "
    "Wendy Xavier Yara Zoe Emma Liam Olivia Noah Ava Elijah Sophia Lucas Mia Mason Amelia Logan Harper Ethan Evelyn "
    "James Abigail Aiden Emily Daniel Ella Matthew Scarlett David Chloe Joseph Layla Carter Riley Wyatt Nora Owen Lily"
).split()
LAST = (
    "Smith Johnson Williams Brown Jones Garcia Miller Davis Rodriguez Martinez Hernandez Lopez Gonzalez Wilson "
    "Anderson Thomas Taylor Moore Jackson Martin Lee Perez Thompson White Harris Sanchez Clark Ramirez Lewis Robinson "
    "Walker Young Allen King Wright Scott Torres Nguyen Hill Flores Green Adams Nelson Baker Hall Rivera Campbell "
    "Mitchell Carter Roberts Gomez Phillips Evans Turner Diaz Parker Cruz Edwards Collins Reyes Stewart Morris Morales "
    "Murphy Cook Rogers Gutierrez Ortiz Morgan Cooper Peterson Bailey Reed Kelly Howard Ramos Kim Cox Ward Richardson"
).split()
DOMAINS = ["gmail.com", "yahoo.com", "outlook.com", "icloud.com", "hotmail.com", "aol.com", "cox.net", "me.com"]
AREAS = ["949", "714", "657", "562", "310", "213", "760", "858", "619", "951"]
CONDITIONS = [
    "migraines",
    "lower back pain",
    "neck and shoulder pain",
    "insomnia",
    "anxiety",
    "fertility",
    "allergies",
    "sciatica",
    "knee pain",
    "stress",
    "digestive trouble",
    "headaches",
    "arthritis",
    "hot flashes",
    "a weak immune system",
    "fatigue",
]
OPENERS = ["I have had", "I suffer from", "Looking for help with", "My doctor suggested acupuncture for", "I have"]
SPANS = ["for years", "since last spring", "for a few months", "after an injury", "on and off", ""]
ASKS = [
    "Do you take insurance?",
    "Is the first visit longer?",
    "Can I come in this week?",
    "What does a session cost?",
    "Please call me back.",
    "",
]
SPAM = [
    "Boost your Google ranking today with our SEO backlinks package",
    "Crypto investment opportunity, guaranteed returns, reply now",
    "We build websites for clinics, cheap and fast, visit our page",
    "Get more patients with our lead generation service",
    "Buy followers and reviews for your business at a discount",
]
# A clinic's everyday words: each message of the "everyday" leads is 12 of them, drawn with replacement,
# so each word is in 1 - (19/20)^12, about 46 %, of the leads (as "appointment" or "pain" are in a real inbox).
EVERYDAY = (
    "migraine pain appointment back neck sleep stress insurance week call morning help visit first session "
    "headache shoulder knee tired relief"
).split()
TIMES = ["morning", "afternoon", "evening", "any", ""]
SOURCES = [("", "", ""), ("google", "cpc", "spring"), ("facebook", "social", "immune"), ("newsletter", "email", "")]
AGENT = "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 Mobile/15E148 Safari/604.1"


def stamp(moment: datetime) -> str:
    return moment.isoformat(timespec="seconds")


def generated_leads(count: int, now: datetime, rnd: random.Random, everyday: bool = False):
    """Lead rows over the ten years before `now`, oldest first, 30 % of them spam.

    With `everyday`, every message (spam too) is 12 words from EVERYDAY, so one word is in about 46 % of leads.
    """
    span = 3650 * 86400
    offsets = sorted((rnd.random() * span for _ in range(count)), reverse=True)
    for n, seconds in enumerate(offsets):
        created = now - timedelta(seconds=seconds)
        first, last = rnd.choice(FIRST), rnd.choice(LAST)
        spam = rnd.random() < 0.3
        if spam:
            message, status = rnd.choice(SPAM), "spam"
        else:
            message = f"{rnd.choice(OPENERS)} {rnd.choice(CONDITIONS)} {rnd.choice(SPANS)}. {rnd.choice(ASKS)}"
        if everyday:
            message = " ".join(rnd.choices(EVERYDAY, k=12)).capitalize() + "."
        if not spam:
            if seconds < 3 * 86400:
                status = rnd.choice(["new", "new", "contacted"])
            else:
                status = rnd.choices(["new", "contacted", "booked", "not_interested"], [2, 45, 33, 20])[0]
        email = f"{first}.{last}{rnd.randrange(1, 1000)}@{rnd.choice(DOMAINS)}".lower() if rnd.random() < 0.85 else ""
        phone = f"+1{rnd.choice(AREAS)}{rnd.randrange(2000000, 9999999)}" if rnd.random() < 0.9 or not email else ""
        source, medium, campaign = rnd.choice(SOURCES)
        yield (
            f"gen-{n}",
            stamp(created),
            stamp(created),
            f"{first} {last}",
            email,
            phone,
            rnd.choice(TIMES),
            message,
            status,
            int(spam),
            "honeypot" if spam else None,
            source,
            medium,
            campaign,
            "https://www.google.com/" if source == "google" else "",
            AGENT,
        )


def build(path: Path, count: int, everyday: bool = False, seed: int = 13) -> None:
    """Create the schema with the site's migrations, then add `count` leads, some notes and emails, at once."""
    db.migrate(str(path))
    rnd = random.Random(seed)
    now = datetime.now(UTC)
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode = DELETE")  # one big write: no WAL copy of every page
    conn.execute("PRAGMA synchronous = OFF")
    conn.execute("PRAGMA cache_size = -500000")
    conn.execute("BEGIN")
    conn.executemany(
        """INSERT INTO leads (form_id, created_at, updated_at, name, email, phone, preferred_time, message, status,
        is_spam, spam_reason, utm_source, utm_medium, utm_campaign, referrer, user_agent)
        VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)""",
        generated_leads(count, now, rnd, everyday),
    )
    # Notes on one real lead in ten, a delivered notification for one in five.
    conn.execute(
        """INSERT INTO notes (lead_id, at, author, body)
        SELECT id, created_at, 'owner', 'Called back, left a message.' FROM leads
        WHERE status != 'spam' AND id % 10 = 0"""
    )
    conn.execute(
        """INSERT INTO outbox (lead_id, kind, message_id, to_addr, reply_to, subject, body_text, status, attempts,
            next_attempt_at, sent_at, created_at, updated_at)
        SELECT id, 'lead', '<' || id || '@bench>', 'frontdesk@clinic.example', email, 'New request from ' || name,
            message, 'sent', 1, created_at, created_at, created_at, created_at
        FROM leads WHERE status != 'spam' AND id % 5 = 0"""
    )
    conn.execute("COMMIT")
    conn.execute("PRAGMA journal_mode = WAL")
    conn.close()
    with db.connect(str(path)) as database:  # as the daily housekeeping of those years would have left it
        db.search.trim_recent_index(database, batch=count)
    path.with_name(path.name + ".migrate-lock").unlink(missing_ok=True)


def cached_build(count: int, everyday: bool = False) -> Path:
    """A pristine database of `count` leads, built once per schema and kept in the temporary folder."""
    made_by = [m.fn for m in db.migrations.clinic._migrations] + [generated_leads]
    schema = hashlib.sha256("".join(inspect.getsource(fn) for fn in made_by).encode()).hexdigest()[:12]
    kind = "-everyday" if everyday else ""
    path = Path(tempfile.gettempdir()) / f"clinic-scale-{count}{kind}-{schema}.db"
    if not path.exists():
        started = time.monotonic()
        partial = path.with_suffix(".partial")
        partial.unlink(missing_ok=True)
        build(partial, count, everyday)
        partial.rename(path)
        print(f"  built {count:,} leads in {time.monotonic() - started:.0f} s ({path})", flush=True)
    return path


def worker_peaks(server: Server) -> dict[int, float]:
    """Each worker's largest resident set so far (VmHWM), in MB."""
    peaks = {}
    for pid in server.workers():
        status = Path(f"/proc/{pid}/status").read_text()
        peaks[pid] = int(re.search(r"VmHWM:\s+(\d+) kB", status)[1]) / 1024
    return peaks


def sign_in(server: Server, env: dict) -> urllib.request.OpenerDirector:
    """Make an owner with `flask --app app create-admin` and sign in; return a browser-like opener."""
    subprocess.run(
        [FLASK, "--app", "app", "create-admin", "owner"],
        input=f"{PASSWORD}\n{PASSWORD}\n",
        text=True,
        cwd=ROOT,
        env={**os.environ, **env},
        check=True,
        capture_output=True,
    )
    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar()))
    page = opener.open(server.url + "/admin/login").read().decode()
    token = re.search(r'name="csrf_token"[^>]*value="([^"]+)"', page)[1]
    form = urllib.parse.urlencode({"username": "owner", "password": PASSWORD, "csrf_token": token}).encode()
    landed = opener.open(server.url + "/admin/login", form)
    if not landed.url.rstrip("/").endswith("/admin"):
        raise SystemExit(f"signing in failed: landed on {landed.url}")
    return opener


def median_ms(opener, url: str) -> float:
    """Median time of REQUESTS GETs of `url`, each read to its end, after three to warm up."""
    times = []
    for n in range(REQUESTS + 3):
        started = time.perf_counter()
        with opener.open(url) as response:
            response.read()
            if response.status != 200:
                raise SystemExit(f"{url} answered {response.status}")
        if n >= 3:
            times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


def export(server: Server, opener, lead_url: str) -> dict:
    """Download the CSV of everything but spam while a lead's page is asked for every 0.2 s beside it."""
    before = worker_peaks(server)
    beside: list[float] = []
    done = threading.Event()

    def ask_beside() -> None:
        while not done.wait(0.2):
            started = time.perf_counter()
            opener.open(lead_url).read()
            beside.append((time.perf_counter() - started) * 1000)

    thread = threading.Thread(target=ask_beside)
    thread.start()
    started = time.perf_counter()
    lines = size = 0
    first = None
    with opener.open(server.url + "/admin/leads.csv") as response:
        while chunk := response.read1(1 << 16):  # what has arrived, as a browser reads a download
            first = first or time.perf_counter() - started
            lines += chunk.count(b"\n")
            size += len(chunk)
    seconds = time.perf_counter() - started
    done.set()
    thread.join()
    after = worker_peaks(server)
    return {
        "rows": lines - 1,
        "mb": size / 1e6,
        "seconds": seconds,
        "rows_per_s": (lines - 1) / seconds,
        "first_ms": (first or 0) * 1000,
        "peak_up_mb": max(after[pid] - before.get(pid, after[pid]) for pid in after),
        "beside_p50": statistics.median(beside) if beside else 0,
        "beside_max": max(beside, default=0),
    }


async def forms(port: int, count: int) -> list[bytes]:
    """Ready POST requests, each from a new visitor's page, fetched eight at a time."""
    batches = await asyncio.gather(*(fetch_forms(port, count // 8 + 1) for _ in range(8)))
    return [request for batch in batches for request in batch][:count]


def purge(server: Server, env: dict, database: Path) -> dict:
    """Run `flask purge-leads --older-than 2555` while visitors post 20 times a second; time each post."""
    old = sqlite3.connect(database).execute(
        "SELECT count(*) FROM leads WHERE created_at < ?", [(datetime.now(UTC) - timedelta(days=2555)).isoformat()]
    )
    expected = old.fetchone()[0]
    requests = asyncio.run(forms(server.port, POST_RATE * (20 + expected // 1500)))  # enough for a paced purge
    started = time.monotonic()
    process = subprocess.Popen(
        [FLASK, "--app", "app", "purge-leads", "--older-than", "2555"],
        cwd=ROOT,
        env={**os.environ, **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    ended = []

    def purge_over() -> bool:
        if not ended and process.poll() is not None:
            ended.append(time.monotonic())
        return bool(ended) and time.monotonic() > ended[0] + 1  # and one second more

    latencies, statuses = asyncio.run(post_open_loop(server.port, requests, POST_RATE, stop=purge_over))
    output = process.communicate()[0]
    deleted = re.search(r"Deleted (\d+) lead", output)
    return {
        "expected": expected,
        "deleted": int(deleted[1]) if deleted else output.strip(),
        "seconds": (ended[0] if ended else time.monotonic()) - started,
        "posts": len(statuses),
        "failed": sum(1 for status in statuses if status != 303),
        "max_ms": max(latencies, default=0),
        "p50_ms": percentile(latencies, 50) if latencies else 0,
        "outlasted": len(statuses) == len(requests),  # the purge went on after the last post
    }


def serve_copy(count: int, everyday: bool = False, code: Path = ROOT) -> tuple[Path, dict, Server]:
    """A fresh copy of the database of `count` leads in a new data folder, served under gunicorn from `code`."""
    data_dir = Path(tempfile.mkdtemp(prefix=f"bench-scale-{count}-"))
    database = data_dir / "leads.db"
    shutil.copy(cached_build(count, everyday), database)
    env = {
        "DATA_DIR": str(data_dir),
        "SECRET_KEY": "bench",
        "SPAM_MIN_SECONDS": "0",
        "CONTACT_RATE_LIMIT": "1000000 per minute",
        "REMINDER_AFTER_HOURS": "0",
        "LEAD_RETENTION_DAYS": "0",  # the server's own daily purge, where there is one, stays off: we time ours
    }
    with sqlite3.connect(database) as conn:  # and its daily backup is not due while we measure
        if conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'housekeeping'").fetchone():
            conn.execute("UPDATE housekeeping SET due_at = '9999-12-31'")
    conn.close()
    return database, env, Server("app:create_app()", env, chdir=code)


def measure(count: int) -> dict:
    """Serve a fresh copy of the database of `count` leads under gunicorn and measure it."""
    database, env, server = serve_copy(count)
    try:
        opener = sign_in(server, env)
        conn = sqlite3.connect(database)
        lead_id = conn.execute("SELECT max(lead_id) FROM notes").fetchone()[0]
        name = conn.execute("SELECT name FROM leads WHERE id = ?", [lead_id]).fetchone()[0]
        conn.close()
        url = server.url + "/admin"
        result = {
            "leads": count,
            "inbox": median_ms(opener, url),
            "status": median_ms(opener, url + "?status=booked"),
            "search_name": median_ms(opener, url + "?" + urllib.parse.urlencode({"q": name})),
            "search_word": median_ms(opener, url + "?q=migraine"),
            "search_miss": median_ms(opener, url + "?q=xylophone"),
            "lead": median_ms(opener, f"{url}/leads/{lead_id}"),
            "name": name,
        }
        for _ in range(4):  # each worker's first export loads what an export loads
            opener.open(url + "/leads.csv?from=2026-11-01").read()
        result["csv"] = export(server, opener, f"{url}/leads/{lead_id}")
        result["purge"] = purge(server, env, database)
    finally:
        server.stop()
        shutil.rmtree(database.parent, ignore_errors=True)
    return result


def median_and_cpu(server: Server, opener, url: str) -> tuple[float, float]:
    """median_ms of `url`, and the CPU time the workers spent per request (ms), which other work on the
    machine moves far less than the time a request takes."""
    before = server.cpu_seconds()
    median = median_ms(opener, url)
    return median, (server.cpu_seconds() - before) * 1000 / (REQUESTS + 3)


def measure_everyday(count: int, code: Path = ROOT) -> dict:
    """Serve a copy of the "everyday" database of `count` leads: the common word's searches and the export."""
    database, env, server = serve_copy(count, everyday=True, code=code)
    try:
        opener = sign_in(server, env)
        conn = sqlite3.connect(database)
        share = conn.execute("SELECT avg(message LIKE '%migraine%') FROM leads").fetchone()[0]
        lead_id = conn.execute("SELECT max(lead_id) FROM notes").fetchone()[0]
        conn.close()
        url = server.url + "/admin"
        page = opener.open(url + "?q=migraine").read().decode()
        result = {
            "leads": count,
            "share": share,
            "summary": re.sub(r"\s+", " ", re.search(r'<p class="summary">([^<]*)<a', page)[1]).strip(),
            "common": median_and_cpu(server, opener, url + "?q=migraine"),
            "prefix": median_and_cpu(server, opener, url + "?q=migr"),
            "booked": median_and_cpu(server, opener, url + "?status=booked&q=migraine"),
            "code": "this checkout" if code == ROOT else str(code),
        }
        for _ in range(4):  # each worker's first export loads what an export loads
            opener.open(url + "/leads.csv?from=2026-11-01").read()
        cpu = server.cpu_seconds()
        result["csv"] = export(server, opener, f"{url}/leads/{lead_id}")
        result["csv"]["rows_per_cpu_s"] = result["csv"]["rows"] / max(server.cpu_seconds() - cpu, 0.01)
    finally:
        server.stop()
        shutil.rmtree(database.parent, ignore_errors=True)
    return result


def table(results: list[dict]) -> str:
    """The results as a Markdown table, one row per size, targets in the last row."""
    rows = [
        '| leads | inbox | status filter | search: a name | search: "migraine" | search: no match | lead page '
        "| CSV export (all but spam) | worker peak memory during CSV | beside the CSV: lead page p50 / max "
        "| purge > 2555 days | longest `POST /contact` wait during it |",
        "|" + "---|" * 12,
    ]
    for r in results:
        csv, purged = r["csv"], r["purge"]
        beside = f"{csv['beside_p50']:.0f} / {csv['beside_max']:.0f} ms" if csv["beside_max"] else "(too short)"
        rows.append(
            f"| {r['leads']:,} | {r['inbox']:.0f} ms | {r['status']:.0f} ms | {r['search_name']:.0f} ms "
            f"| {r['search_word']:.0f} ms | {r['search_miss']:.0f} ms | {r['lead']:.0f} ms "
            f"| {csv['rows']:,} rows, {csv['mb']:.0f} MB in {csv['seconds']:.1f} s: "
            f"**{csv['rows_per_s']:,.0f} rows/s** "
            f"| +{csv['peak_up_mb']:.1f} MB | {beside} "
            f"| {purged['deleted']:,} of {purged['expected']:,} in {purged['seconds']:.1f} s "
            f"| **{purged['max_ms']:,.0f} ms** (p50 {purged['p50_ms']:.0f} ms), {purged['posts']} posts, "
            f"{purged['failed']} failed{' (the purge outlasted them)' if purged['outlasted'] else ''} |"
        )
    rows.append(
        "| target at 1M | < 50 ms | < 50 ms | < 50 ms | < 50 ms | < 50 ms | | > 50,000 rows/s | < +20 MB | "
        "| | < 200 ms, none failed |"
    )
    return "\n".join(rows)


def everyday_table(results: list[dict]) -> str:
    """The "everyday" results as a Markdown table, one row per size, targets in the last row."""
    rows = [
        '| leads (everyday words) | leads with "migraine" | search: "migraine" | what the page says '
        '| search: "migr" | "migraine" among the booked | CSV export (all but spam), read as it arrives '
        "| worker peak memory during CSV |",
        "|" + "---|" * 8,
    ]
    for r in results:
        csv = r["csv"]
        common, prefix, booked = (
            f"{r[key][0]:.0f} ms (CPU {r[key][1]:.0f} ms)" for key in ("common", "prefix", "booked")
        )
        code = "" if r["code"] == "this checkout" else f" ({r['code']})"
        rows.append(
            f"| {r['leads']:,}{code} | {r['share']:.0%} | **{common}** | {r['summary']} | **{prefix}** | {booked} "
            f"| {csv['rows']:,} rows, {csv['mb']:.0f} MB in {csv['seconds']:.1f} s (first bytes after "
            f"{csv['first_ms']:.0f} ms): **{csv['rows_per_s']:,.0f} rows/s** "
            f"({csv['rows_per_cpu_s']:,.0f} rows per worker CPU second) | +{csv['peak_up_mb']:.1f} MB |"
        )
    rows.append("| target at 1M | at least 40 % | < 50 ms | | < 50 ms | | > 50,000 rows/s | < +20 MB |")
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="10000,100000,1000000", help="comma-separated lead counts")
    parser.add_argument("--no-docs", action="store_true", help="print only; leave docs/benchmarks.md alone")
    parser.add_argument("--kinds", default="varied,everyday", help="which databases: varied, everyday or both")
    parser.add_argument("--code", type=Path, default=ROOT, help="serve this checkout (say, an earlier version)")
    parser.add_argument("--no-readme", action="store_true", dest="no_docs", help=argparse.SUPPRESS)  # its old name
    args = parser.parse_args()
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    results, everyday = [], []
    for count in map(int, args.sizes.split(",")):
        if "varied" in args.kinds:
            print(f"{count:,} leads", flush=True)
            results.append(measure(count))
            print(results[-1], flush=True)
        if "everyday" in args.kinds:
            print(f"{count:,} leads, everyday words", flush=True)
            everyday.append(measure_everyday(count, args.code))
            print(everyday[-1], flush=True)
    tables = ([table(results)] if results else []) + ([everyday_table(everyday)] if everyday else [])
    text = "\n\n".join(tables) + (
        f"\n\nMeasured {started} on this {os.cpu_count()}-core machine (shared with other work), gunicorn.conf.py "
        f"defaults (2 workers, 8 threads), with `make bench-scale` (`bench/scale.py --sizes {args.sizes}`). "
        f"Medians of {REQUESTS} requests each, signed in as an owner"
        + (f'; "a name" is {results[-1]["name"]!r}.' if results else ".")
    )
    print(text)
    if not args.no_docs:
        write_results(text, START, END)
    last = results[-1] if results else None
    if last and everyday and last["leads"] >= 1_000_000:
        failed = [
            name
            for name, ok in [
                ("inbox", last["inbox"] < 50),
                ("status filter", last["status"] < 50),
                ("search hit", last["search_name"] < 50 and last["search_word"] < 50),
                ("search miss", last["search_miss"] < 50),
                ("CSV rows/s", last["csv"]["rows_per_s"] > 50_000),
                ("CSV memory", last["csv"]["peak_up_mb"] < 20),
                ("POST wait during purge", last["purge"]["max_ms"] < 200 and not last["purge"]["failed"]),
                ("common word", everyday[-1]["common"][0] < 50 and everyday[-1]["share"] >= 0.4),
                ("its prefix", everyday[-1]["prefix"][0] < 50),
                ("CSV rows/s, everyday words", everyday[-1]["csv"]["rows_per_s"] > 50_000),
                ("CSV memory, everyday words", everyday[-1]["csv"]["peak_up_mb"] < 20),
            ]
            if not ok
        ]
        if failed:
            print("below target: " + ", ".join(failed))


if __name__ == "__main__":
    main()
