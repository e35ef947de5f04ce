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
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from datetime import date, datetime, timedelta
from datetime import time as day_start
from urllib.parse import parse_qs, urlencode, urlsplit
from zoneinfo import ZoneInfo

from crawlerdetect import CrawlerDetect
from flask import Flask
from limits import parse_many
from limits.storage import MemoryStorage
from limits.strategies import FixedWindowRateLimiter

import db
import db.visits
import languages
from extensions import client_network, logged_address

log = logging.getLogger("clinic.visits")
request_log = logging.getLogger("clinic.request")

FLUSH_SECONDS = 5.0
BOTS = "bots"
DIRECT = "direct"
INTERNAL = "internal"  # a page reached from another page of this site
OTHER = "other"  # the visits of a day's new sources past ANALYTICS_MAX_ROWS_PER_DAY
BOUNDED = {BOTS, DIRECT, INTERNAL, OTHER}  # sources with one row per page at most: never held back by the limit
# C0 and C1 controls, format characters and line separators: taken out of a tag before it is counted or stored.
CONTROLS = re.compile("[\x00-\x1f\x7f-\x9f\u200b-\u200f\u202a-\u202e\u2028\u2029\u2060-\u206f\ufeff]")
# What a queued entry adds to its row: the index of its count in [page views, visitors, calls, booking clicks].
VIEW, CALL, BOOKING_CLICK = 0, 2, 3
CALLS_PATH = "/calls"
CALL_PAGES = ("/privacy", "/thanks")  # with the articles: the pages a call is counted on by their path
ERROR_PAGE = "(error page)"  # the page of a call from any other page: a 404's, a 429's ...
BEACON_MAX_BYTES = 4096
UTM_FIELDS = ("utm_source", "utm_medium", "utm_campaign")
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

# The shared mapping: a header (day, salt), then one region per worker: (owner pid, slots used) and an
# open-addressing set of 64-bit hashes. Each worker writes only its own region and reads them all, so the
# request path takes no lock another process could hold; the lock is for a new day's salt and claiming.
HEADER = struct.Struct("<q32s")
REGION_HEADER = struct.Struct("<qq")
SLOTS = 1 << 17  # 1 MB a region; up to 3/4 filled (98,304 visitors a worker a day), then visitors count without it
LOCK_WAIT_SECONDS = 1.0
SHARED = None  # the server's VisitorTable, made in gunicorn's master by share_across_workers()
CRAWLERS = CrawlerDetect()
clock = time.time  # the moment of a visit (tests move it to the next day)


class VisitorTable:
    """The day's salt and visitor hashes, in anonymous memory that forked workers share and no file holds."""

    def __init__(self, regions: int = 1, slots: int = SLOTS):
        self.slots = slots
        self.region_bytes = REGION_HEADER.size + 8 * slots
        self.memory = mmap.mmap(-1, HEADER.size + regions * self.region_bytes)  # MAP_SHARED | MAP_ANONYMOUS
        self.starts = [HEADER.size + i * self.region_bytes for i in range(regions)]
        whole = memoryview(self.memory)
        size = self.region_bytes
        self.regions = [whole[start + REGION_HEADER.size : start + size].cast("Q") for start in self.starts]
        self.lock = multiprocessing.Lock()  # a semaphore every forked worker shares, for the rare steps only
        self.own: tuple[int, int] | None = None  # (pid, region) this process writes
        self.insert_lock = threading.Lock()
        self.day, self.salt = 0, b""  # this process's copy of the day's salt
        self.refused_day = 0  # a day the lock or a region could not be had: page views only, no more waits

    def add(self, day: int, address: str, agent: str) -> bool:
        """Remember this visitor for `day` (an ordinal); whether they are new today (in any worker)."""
        if day != self.day and (day == self.refused_day or not self.enter_day(day)):
            return False
        digest = hashlib.blake2b(f"{address}\n{agent}".encode(), key=self.salt, digest_size=8).digest()
        value = int.from_bytes(digest, "little") or 1  # 0 marks an empty slot
        mask, first = self.slots - 1, value & (self.slots - 1)
        for hashes in self.regions:  # without a lock: a worker's insert is one aligned 8-byte write
            slot = first
            while current := hashes[slot]:
                if current == value:
                    return False
                slot = (slot + 1) & mask
        with self.insert_lock:  # this process's threads take turns writing its region
            own = self.own[1]
            found, slot = self.find(self.regions[own], value)
            if found:
                return False
            used = REGION_HEADER.unpack_from(self.memory, self.starts[own])[1]
            if used < self.slots * 3 // 4:
                self.regions[own][slot] = value
                REGION_HEADER.pack_into(self.memory, self.starts[own], os.getpid(), used + 1)
        return True

    def find(self, hashes: memoryview, value: int) -> tuple[bool, int]:
        """Whether `value` is in one region's set, and the slot where it is or would go."""
        mask = self.slots - 1
        slot = value & mask
        while hashes[slot]:
            if hashes[slot] == value:
                return True, slot
            slot = (slot + 1) & mask
        return False, slot

    def enter_day(self, day: int) -> bool:
        """Take `day`'s salt, drawing it if this is the first worker there, and this process's region."""
        if not self.lock.acquire(timeout=LOCK_WAIT_SECONDS):
            log.error("the visitor table's lock is held too long; this worker counts page views only today")
            self.refused_day = day
            return False
        try:
            stored_day, salt = HEADER.unpack_from(self.memory)
            if day < stored_day:
                return False  # a request from just before midnight, answered after it
            if day > stored_day:
                self.memory[:] = bytes(len(self.memory))  # the last day's salt and hashes are gone
                salt = os.urandom(32)
                HEADER.pack_into(self.memory, 0, day, salt)
            if not self.claim_region():
                self.refused_day = day
                return False
            self.day, self.salt = day, salt
            return True
        finally:
            self.lock.release()

    def claim_region(self) -> bool:
        """Find this process's region, or take a free one or a dead worker's (call holding the lock)."""
        pid = os.getpid()
        owners = [REGION_HEADER.unpack_from(self.memory, start)[0] for start in self.starts]
        if pid in owners:
            self.own = (pid, owners.index(pid))
            return True
        for i, owner in enumerate(owners):
            if owner == 0 or not process_alive(owner):
                # A dead worker's visitors stay: the worker that takes its place goes on from them.
                used = REGION_HEADER.unpack_from(self.memory, self.starts[i])[1]
                REGION_HEADER.pack_into(self.memory, self.starts[i], pid, used)
                self.own = (pid, i)
                return True
        log.error("no free region in the visitor table; this worker counts page views only today")
        return False

    def forget_before(self, day: int) -> None:
        """Wipe a salt and hashes older than `day`, so they are gone soon after their midnight."""
        if self.day < day:
            self.day, self.salt = 0, b""  # this process's copy
        if not self.lock.acquire(timeout=LOCK_WAIT_SECONDS):
            return
        try:
            stored_day = HEADER.unpack_from(self.memory)[0]
            if 0 < stored_day < day:
                self.memory[:] = bytes(len(self.memory))
        finally:
            self.lock.release()


def process_alive(pid: int) -> bool:
    """Whether a process with this id still runs."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def share_across_workers(workers: int) -> None:
    """Make the server's visitor table before gunicorn forks its workers (its on_starting hook).

    Two regions more than workers, for workers started while a dead one's region is not yet reclaimed.
    """
    global SHARED
    SHARED = VisitorTable(regions=workers + 2)


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


def tag(value: str | None) -> str:
    """A utm_ tag as counted: control and format characters taken out, surrounding space stripped, 100 characters."""
    return CONTROLS.sub("", value or "").strip()[:100]


def source_of(utm: Mapping[str, str], referrer: str | None, own_hosts: Iterable[str]) -> tuple[str, str, str]:
    """(source, medium, campaign) of a visit or a lead: its utm_ tags, else the referring site, else direct."""
    source = tag(utm.get("utm_source")).lower()
    if source:
        return source, tag(utm.get("utm_medium")).lower(), tag(utm.get("utm_campaign"))
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
    """One server process's visits not yet written, each a (day, page, source, medium, campaign) key."""

    def __init__(self, app: Flask):
        self.zone = ZoneInfo(app.config["CLINIC_TIMEZONE"])
        self.database = app.config["DATABASE"]
        self.max_rows_per_day = app.config["ANALYTICS_MAX_ROWS_PER_DAY"]
        self.own_hosts = {host_of(app.config["SITE_URL"])}
        self.visitors = SHARED or VisitorTable()  # outside gunicorn (tests, `make dev`) one process is the server
        # (day, page, agent, utm query, referrer, host, new visitor, VIEW/CALL/BOOKING_CLICK): see take()
        self.visits: deque[tuple] = deque()
        self.unwritten: dict[tuple, list[int]] = {}  # counts a failed write left for the next one
        self.flush_lock = threading.Lock()  # the writing thread and the analytics page may flush at once
        self.bots: dict[str, bool] = {}  # this cache and the next: only take() uses them, holding flush_lock
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
        self.today()
        agent = environ.get("HTTP_USER_AGENT", "")
        new_visitor = False
        if environ.get("HTTP_SEC_GPC") != "1" and environ.get("HTTP_DNT") != "1":
            # Bots too: telling them apart waits for take(), off the request path (a user agent not seen
            # before costs crawlerdetect up to a millisecond); a bot's visitor is never counted there.
            new_visitor = self.visitors.add(self.ordinal, environ.get("REMOTE_ADDR", ""), agent)
        query = environ.get("QUERY_STRING", "")
        visit = (self.day, path[:200], agent, query if "utm_" in query else "", environ.get("HTTP_REFERER", ""))
        # atomic: no lock a thread could hold across a GIL switch
        self.visits.append((*visit, environ.get("HTTP_HOST", ""), new_visitor, VIEW))

    def today(self) -> str:
        """The clinic's calendar day now (ISO), moving on at midnight."""
        now = clock()
        if not self.day_starts <= now < self.day_ends:
            self.set_day(now)
        return self.day

    def count(self, kind: int, page: str, agent: str, query: str, referrer: str, host: str) -> None:
        """Queue a call or a booking click (`kind`) on the row its page view would have: no visitor, no identifier."""
        day = self.today()
        self.visits.append((day, page[:200], agent, query if "utm_" in query else "", referrer, host, False, kind))

    def source(self, query: str, referrer: str, host: str) -> tuple[str, str, str]:
        """(source, medium, campaign) of a visit, from a cache keyed by its utm_ query, referrer and host."""
        cache_key = (query, referrer, host)
        found = self.sources.get(cache_key)
        if found is None:
            utm = {k: v[0] for k, v in parse_qs(query).items()} if query else {}
            own = {*self.own_hosts, host_of("//" + host)}
            if len(self.sources) >= CACHE_MAX:
                self.sources.clear()
            found = self.sources[cache_key] = source_of(utm, referrer, own)
        return found

    def is_bot(self, agent: str) -> bool:
        """is_bot(agent), from a cache."""
        bot = self.bots.get(agent)
        if bot is None:
            if len(self.bots) >= CACHE_MAX:
                self.bots.clear()
            bot = self.bots[agent] = is_bot(agent)
        return bot

    def take(self) -> dict[tuple, list[int]]:
        """What was gathered since the last call, added up: {key: [views, visitors, calls, booking clicks]}.

        Call holding flush_lock.
        """
        pending, self.unwritten = self.unwritten, {}
        visits = self.visits
        while visits:
            day, page, agent, query, referrer, host, new_visitor, kind = visits.popleft()
            if self.is_bot(agent):
                key, new_visitor = (day, page, BOTS, "", ""), False
            else:
                key = (day, page, *self.source(query, referrer, host))
            counts = pending.get(key)
            if counts is None:
                counts = pending[key] = [0, 0, 0, 0]
            counts[kind] += 1
            counts[1] += new_visitor
        return pending

    def flush(self) -> int:
        """Add the counts gathered so far to the database; how many rows were written."""
        with self.flush_lock:
            pending = self.take()
            if not pending:
                return 0
            try:
                database = db.connect(self.database)
                try:
                    counts = [(*key, *counts) for key, counts in pending.items()]
                    db.visits.add_visit_counts(database, counts, self.max_rows_per_day, OTHER, BOUNDED)
                finally:
                    database.close()
            except sqlite3.Error:
                log.exception("could not write %s rows of visit counts; trying again later", len(pending))
                self.unwritten = pending
                return 0
            return len(pending)


def init_app(app: Flask) -> Callable | None:
    """The counter serving.with_headers calls for each response, or None when ANALYTICS is off."""
    if not app.config["ANALYTICS"]:
        return None
    counter = app.extensions["visits"] = Counter(app)
    return counter


def calls_route(app: Flask, wsgi_app):
    """Answer `POST /calls`, the site script's beacon for a tap on a `tel:` link, below Flask's dispatch.

    Nobody reads the answer and a page view should not cost more, so Flask's per-request machinery is
    skipped, as the first-visit landing skips it: instead of a CSRF token, only the browser's own
    same-origin headers are believed (another site's page cannot set them); `/contact`'s rate limit per
    client network, counted in this server process's memory; then the call joins the counter's queue
    with the page's path, `utm_` tags and referrer, which name its row as they named the page view's.
    204, or 403, 413, 429 without a body.
    """
    counter = app.extensions.get("visits")
    limits = parse_many(app.config["CONTACT_RATE_LIMIT"]) if app.config["RATELIMIT_ENABLED"] else []
    # A call is a count, not a record: a network gets CONTACT_RATE_LIMIT per worker process. The counter
    # file that every worker shares made a call cost more CPU than a page view (967 against 922 µs; 527 without it).
    in_memory = FixedWindowRateLimiter(MemoryStorage())
    pages = {article["path"] for article in app.extensions["articles"]}
    pages |= {languages.prefixed(lang, page) for lang in languages.PREFIXES for page in CALL_PAGES}

    def within_limit(address: str) -> bool:
        network = client_network(address)
        return all(in_memory.hit(item, CALLS_PATH, network) for item in limits)

    def answer(environ) -> str:
        if not same_origin(environ):
            return "403 Forbidden"
        try:
            length = int(environ.get("CONTENT_LENGTH") or 0)
        except ValueError:
            return "400 Bad Request"
        if length > BEACON_MAX_BYTES:
            return "413 Content Too Large"
        body = environ["wsgi.input"].read(length) if length > 0 else b""
        if not within_limit(environ.get("REMOTE_ADDR", "")):
            return "429 Too Many Requests"
        if counter is not None:
            fields = {name: values[0] for name, values in parse_qs(body.decode("utf-8", "replace")).items()}
            page = fields.get("page", "")
            agent, host = environ.get("HTTP_USER_AGENT", ""), environ.get("HTTP_HOST", "")
            page = page if page in pages else ERROR_PAGE
            counter.count(CALL, page, agent, fields.get("query", ""), fields.get("referrer", ""), host)
        return "204 No Content"

    def calls(environ, start_response):
        if environ.get("PATH_INFO") != CALLS_PATH or environ.get("REQUEST_METHOD") != "POST":
            return wsgi_app(environ, start_response)
        status = answer(environ)
        start_response(status, [("Content-Length", "0"), ("Cache-Control", "no-store")])
        elapsed = (time.perf_counter() - environ.get("clinic.started", time.perf_counter())) * 1000
        address = logged_address(environ.get("REMOTE_ADDR"))
        request_log.info("POST %s %s 0B %.1fms %s", CALLS_PATH, status[:3], elapsed, address)
        return []

    return calls


def count_booking_click(app: Flask, environ: dict, lead: dict | None) -> None:
    """Count a click on Book online on the row of the lead's request (its page and source), else of /thanks."""
    counter = app.extensions.get("visits")
    if counter is None:
        return
    agent = environ.get("HTTP_USER_AGENT", "")
    if lead is None:  # /thanks opened without a request of the visitor's: the page it was clicked on
        counter.count(
            BOOKING_CLICK, "/thanks", agent, "", environ.get("HTTP_REFERER", ""), environ.get("HTTP_HOST", "")
        )
        return
    query = urlencode({name: lead.get(name) or "" for name in UTM_FIELDS})
    counter.count(BOOKING_CLICK, lead.get("landing_page") or "/", agent, query, lead.get("referrer") or "", "")


def same_origin(environ: dict) -> bool:
    """Whether the browser says this request comes from a page of this site (Sec-Fetch-Site, else Origin)."""
    fetch_site = environ.get("HTTP_SEC_FETCH_SITE")
    if fetch_site is not None:
        return fetch_site == "same-origin"
    try:
        return urlsplit(environ.get("HTTP_ORIGIN") or "").netloc == environ.get("HTTP_HOST", "") != ""
    except ValueError:
        return False


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
