"""Measure the owner's inbox, search, CSV export and a purge on a database of N generated leads.

    make bench-scale                          # 10k, 100k and 1M leads; prints a table and puts it in the README
    .venv/bin/python bench/scale.py --sizes 10000 --no-readme

For each size: a database of N leads over ten years (30 % spam, notes and emails for some) is built
in one transaction, the site is served by gunicorn with gunicorn.conf.py as `make run` serves it,
an owner made with `flask --app app create-admin` signs in, and the script measures the median of
several requests to the inbox, a status filter, a search that hits and one that misses, and a lead's
page; the CSV export of everything but spam (rows/s, and how far the worker's peak memory rose);
and the longest `POST /contact` wait while `flask --app app purge-leads --older-than 2555` deletes
the leads older than seven years beside 20 posts/s.
"""

import argparse
import random
import sqlite3
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import db  # noqa: E402

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
TIMES = ["morning", "afternoon", "evening", "any", ""]
SOURCES = [("", "", ""), ("google", "cpc", "spring"), ("facebook", "social", "immune"), ("newsletter", "email", "")]
AGENT = "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 Mobile/15E148 Safari/604.1"


def stamp(moment: datetime) -> str:
    return moment.isoformat(timespec="seconds")


def generated_leads(count: int, now: datetime, rnd: random.Random):
    """Lead rows over the ten years before `now`, oldest first, 30 % of them spam."""
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


def build(path: Path, count: int, seed: int = 13) -> None:
    """Create the schema with the site's migrations, then add `count` leads, some notes and emails, at once."""
    db.migrate(str(path))
    rnd = random.Random(seed)
    now = datetime.now(UTC)
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA synchronous = OFF")
    conn.execute("BEGIN")
    conn.executemany(
        """INSERT INTO leads (form_id, created_at, updated_at, name, email, phone, preferred_time, message, status,
        is_spam, spam_reason, utm_source, utm_medium, utm_campaign, referrer, user_agent)
        VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)""",
        generated_leads(count, now, rnd),
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
    conn.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--build", type=Path, help="only build a database at this path")
    parser.add_argument("--sizes", default="10000,100000,1000000", help="comma-separated lead counts")
    args = parser.parse_args()
    if args.build:
        for size in map(int, args.sizes.split(",")):
            started = time.monotonic()
            build(args.build, size)
            print(f"built {size:,} leads in {time.monotonic() - started:.1f} s at {args.build}")


if __name__ == "__main__":
    main()
