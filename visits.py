"""Cookieless visit counting: page views and unique visitors per day, page and source, for the admin's analytics.

On the request path a visit is an in-memory increment; a background thread adds the day's counts to
SQLite every few seconds and when the worker stops. A visitor is a keyed hash of the client address and
user agent under a random salt of the day. The salt and the day's hashes live only in memory that
every gunicorn worker of one server shares (an anonymous shared mapping made by the master before it
forks, see gunicorn.conf.py), so two workers count a visitor once; nothing of them is written to disk,
and they are wiped when the day ends.
"""

import hashlib
import logging
import mmap
import multiprocessing
import os
import re
import sqlite3
import struct
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from datetime import date, datetime, timedelta
from datetime import time as day_start
from urllib.parse import parse_qs, urlsplit
from zoneinfo import ZoneInfo

from crawlerdetect import CrawlerDetect
from flask import Flask

import db

log = logging.getLogger("clinic.visits")

FLUSH_SECONDS = 5.0
BOTS = "bots"
DIRECT = "direct"
INTERNAL = "internal"  # a page reached from another page of this site
# Pages that are counted: what a visitor reads, i.e. a 200 HTML answer to GET outside these prefixes.
NOT_PAGES = ("/admin", "/static")
# Crawlers by crawlerdetect's list, plus tools it may let through: Lighthouse, headless and scripted browsers.
TOOLS = re.compile(r"lighthouse|headless|phantomjs|puppeteer|playwright|selenium|webdriver", re.IGNORECASE)
CACHE_MAX = 4096  # user agents and referrers remembered per worker before the caches start again

# Referring sites under the names people use, and the medium they stand for.
SEARCH = {"google", "bing", "duckduckgo", "yahoo", "ecosia", "baidu", "yandex", "startpage", "qwant", "brave", "aol"}
SOCIAL = {
    "facebook",
    "instagram",
    "linkedin",
    "x",
    "youtube",
    "pinterest",
    "reddit",
    "tiktok",
    "nextdoor",
    "threads",
    "bluesky",
    "whatsapp",
    "mastodon",
    "yelp",
}
SHORT_NAMES = {
    "twitter.com": "x",
    "x.com": "x",
    "t.co": "x",
    "fb.com": "facebook",
    "fb.me": "facebook",
    "lnkd.in": "linkedin",
    "youtu.be": "youtube",
    "pin.it": "pinterest",
    "bsky.app": "bluesky",
    "wa.me": "whatsapp",
    "threads.net": "threads",
    "search.brave.com": "brave",
}

# The shared mapping: a header (day, salt, slots used), then an open-addressing set of 64-bit hashes.
HEADER = struct.Struct("<q32sq")
SLOTS = 1 << 18  # 2 MB; up to 3/4 of it (196,608 visitors a day) is filled, then visitors count without it
LOCK_WAIT_SECONDS = 0.05
LOCK_FAILURES_MAX = 20  # waits in a row that time out: the lock's holder died holding it
SHARED = None  # the server's VisitorTable, made in gunicorn's master by share_across_workers()
CRAWLERS = CrawlerDetect()
clock = time.time  # the moment of a visit (tests move it to the next day)


class VisitorTable:
    """The day's salt and visitor hashes, in anonymous memory that forked workers share and no file holds."""

    def __init__(self, slots: int = SLOTS):
        self.slots = slots
        self.memory = mmap.mmap(-1, HEADER.size + 8 * slots)  # MAP_SHARED | MAP_ANONYMOUS
        self.hashes = memoryview(self.memory)[HEADER.size :].cast("Q")
        self.lock = multiprocessing.Lock()  # a semaphore every forked worker shares
        self.failures = 0

    def add(self, day: int, address: str, agent: str) -> bool:
        """Remember this visitor for `day` (an ordinal); whether they are new today."""
        if not self.locked():
            return False
        try:
            stored_day, salt, used = HEADER.unpack_from(self.memory)
            if stored_day != day:
                if day < stored_day:
                    return False  # a request from just before midnight, answered after it
                salt, used = self.start_day(day)
            digest = hashlib.blake2b(f"{address}\n{agent}".encode(), key=salt, digest_size=8).digest()
            value = int.from_bytes(digest, "little") or 1  # 0 marks an empty slot
            mask = self.slots - 1
            slot = value & mask
            while self.hashes[slot]:
                if self.hashes[slot] == value:
                    return False
                slot = (slot + 1) & mask
            if used < self.slots * 3 // 4:
                self.hashes[slot] = value
                HEADER.pack_into(self.memory, 0, day, salt, used + 1)
            return True
        finally:
            self.lock.release()

    def locked(self) -> bool:
        """Take the lock; False after a wait too long (a busy machine), and for good once a holder seems dead."""
        if self.failures >= LOCK_FAILURES_MAX:
            return False
        if self.lock.acquire(timeout=LOCK_WAIT_SECONDS):
            self.failures = 0
            return True
        self.failures += 1
        if self.failures == LOCK_FAILURES_MAX:
            log.error("the visitor table's lock is held too long; counting page views only until a restart")
        return False

    def start_day(self, day: int) -> tuple[bytes, int]:
        """Forget the last day's salt and hashes and draw a new salt (call holding the lock)."""
        salt = os.urandom(32)
        self.memory[HEADER.size :] = bytes(8 * self.slots)
        HEADER.pack_into(self.memory, 0, day, salt, 0)
        return salt, 0

    def forget_before(self, day: int) -> None:
        """Wipe a salt and hashes older than `day`, so they are gone soon after their midnight."""
        if not self.locked():
            return
        try:
            stored_day = HEADER.unpack_from(self.memory)[0]
            if 0 < stored_day < day:
                self.memory[:] = bytes(len(self.memory))
        finally:
            self.lock.release()


def share_across_workers() -> None:
    """Make the server's visitor table before gunicorn forks its workers (its on_starting hook)."""
    global SHARED
    SHARED = VisitorTable()


def host_of(url: str) -> str:
    """The host name of a URL, lower case, without `www.`; '' when there is none."""
    try:
        host = (urlsplit(url).hostname or "").rstrip(".")
    except ValueError:
        return ""
    return host[4:] if host.startswith("www.") else host


def site_name(host: str) -> tuple[str, str]:
    """A referring host as (source, medium): ('google', 'search'), ('facebook', 'social'), ('a.org', 'referral')."""
    for short, name in SHORT_NAMES.items():
        if host == short or host.endswith("." + short):
            return name, "search" if name in SEARCH else "social"
    for label in host.split(".")[:-1]:
        if label in SEARCH:
            return label, "search"
        if label in SOCIAL and label != "x":
            return label, "social"
    return host[:100], "referral"


def source_of(utm: Mapping[str, str], referrer: str | None, own_hosts: Iterable[str]) -> tuple[str, str, str]:
    """(source, medium, campaign) of a visit or a lead: its utm_ tags, else the referring site, else direct."""
    source = (utm.get("utm_source") or "").strip()[:100].lower()
    if source:
        medium = (utm.get("utm_medium") or "").strip()[:100].lower()
        return source, medium, (utm.get("utm_campaign") or "").strip()[:100]
    host = host_of(referrer) if referrer else ""
    if not host:
        return DIRECT, "", ""
    if host in own_hosts:
        return INTERNAL, "", ""
    return (*site_name(host), "")


def is_bot(agent: str) -> bool:
    """Whether a user agent is a crawler or a tool (Lighthouse, a headless browser, curl), or missing."""
    return not agent.strip() or bool(TOOLS.search(agent)) or CRAWLERS.is_crawler(agent)


class Counter:
    """One server process's counts not yet written: {(day, page, source, medium, campaign): [views, visitors]}."""

    def __init__(self, app: Flask):
        self.zone = ZoneInfo(app.config["CLINIC_TIMEZONE"])
        self.database = app.config["DATABASE"]
        self.own_hosts = {host_of(app.config["SITE_URL"])}
        self.visitors = SHARED or VisitorTable()  # outside gunicorn (tests, `make dev`) one process is the server
        self.pending: dict[tuple, list[int]] = {}
        self.lock = threading.Lock()
        self.bots: dict[str, bool] = {}
        self.sources: dict[tuple[str, str, str], tuple[str, str, str]] = {}
        self.day, self.ordinal, self.day_starts, self.day_ends = "", 0, 0.0, 0.0

    def set_day(self, now: float) -> None:
        """Move to the clinic's calendar day of `now`."""
        today = datetime.fromtimestamp(now, self.zone).date()
        self.day, self.ordinal = today.isoformat(), today.toordinal()
        self.day_starts = datetime.combine(today, day_start.min, self.zone).timestamp()
        self.day_ends = datetime.combine(today + timedelta(days=1), day_start.min, self.zone).timestamp()

    def __call__(self, environ: dict, headers: list[tuple[str, str]]) -> None:
        """Count a 200 answer, if it is a GET of a page (with_headers calls this as the response starts)."""
        path = environ.get("PATH_INFO", "")
        if environ.get("REQUEST_METHOD") != "GET" or path.startswith(NOT_PAGES):
            return
        for name, value in headers:
            if name == "Content-Type":
                if not value.startswith("text/html"):
                    return
                break
        now = clock()
        if not self.day_starts <= now < self.day_ends:
            self.set_day(now)
        agent = environ.get("HTTP_USER_AGENT", "")
        bot = self.bots.get(agent)
        if bot is None:
            if len(self.bots) >= CACHE_MAX:
                self.bots.clear()
            bot = self.bots[agent] = is_bot(agent)
        new_visitor = False
        if bot:
            key = (self.day, path[:200], BOTS, "", "")
        else:
            key = (self.day, path[:200], *self.source(environ))
            if environ.get("HTTP_SEC_GPC") != "1" and environ.get("HTTP_DNT") != "1":
                new_visitor = self.visitors.add(self.ordinal, environ.get("REMOTE_ADDR", ""), agent)
        with self.lock:
            counts = self.pending.get(key)
            if counts is None:
                counts = self.pending[key] = [0, 0]
            counts[0] += 1
            counts[1] += new_visitor

    def source(self, environ: dict) -> tuple[str, str, str]:
        """(source, medium, campaign) of a request, from a cache keyed by its query, referrer and host."""
        query = environ.get("QUERY_STRING", "")
        if "utm_" not in query:
            query = ""
        cache_key = (query, environ.get("HTTP_REFERER", ""), environ.get("HTTP_HOST", ""))
        found = self.sources.get(cache_key)
        if found is None:
            utm = {k: v[0] for k, v in parse_qs(query).items()} if query else {}
            own = {*self.own_hosts, host_of("//" + cache_key[2])}
            if len(self.sources) >= CACHE_MAX:
                self.sources.clear()
            found = self.sources[cache_key] = source_of(utm, cache_key[1], own)
        return found

    def take(self) -> dict[tuple, list[int]]:
        """The counts gathered since the last call, leaving none behind."""
        with self.lock:
            pending, self.pending = self.pending, {}
        return pending

    def put_back(self, pending: dict[tuple, list[int]]) -> None:
        """Return counts that could not be written, to be tried with the next ones."""
        with self.lock:
            for key, (views, visitors) in pending.items():
                counts = self.pending.setdefault(key, [0, 0])
                counts[0] += views
                counts[1] += visitors

    def flush(self) -> int:
        """Add the counts gathered so far to the database; how many rows were written."""
        pending = self.take()
        if not pending:
            return 0
        try:
            database = db.connect(self.database)
            try:
                db.add_visit_counts(database, [(*key, *counts) for key, counts in pending.items()])
            finally:
                database.close()
        except sqlite3.Error:
            log.exception("could not write %s rows of visit counts; trying again later", len(pending))
            self.put_back(pending)
            return 0
        return len(pending)


def init_app(app: Flask) -> Callable | None:
    """The counter serving.with_headers calls for each response, or None when ANALYTICS is off."""
    if not app.config["ANALYTICS"]:
        return None
    counter = app.extensions["visits"] = Counter(app)
    return counter


def flush(app: Flask) -> None:
    """Write this process's pending counts now (the analytics page does, so it shows its own visits)."""
    counter = app.extensions.get("visits")
    if counter is not None:
        counter.flush()


def start(app: Flask) -> Callable[[], None] | None:
    """Start the thread that writes the counts every few seconds; return what stops it after a last write."""
    counter = app.extensions.get("visits")
    if counter is None:
        return None
    stopping = threading.Event()

    def run() -> None:
        while not stopping.wait(FLUSH_SECONDS):
            counter.flush()
            counter.visitors.forget_before(datetime.fromtimestamp(clock(), counter.zone).date().toordinal())

    thread = threading.Thread(target=run, name="visit-counts", daemon=True)
    thread.start()

    def stop() -> None:
        stopping.set()
        thread.join(FLUSH_SECONDS)
        counter.flush()

    return stop


def day_of(iso: str, zone: ZoneInfo) -> date:
    """The clinic's calendar day of a stored UTC time."""
    return datetime.fromisoformat(iso).astimezone(zone).date()
