"""Benchmark the site under the production gunicorn settings; print a table and put it in docs/benchmarks.md.

    make bench                      # or: .venv/bin/python bench/run.py [--seconds 10] [--rounds 7] [--no-docs]

1. GET / with wrk, beside bench/baseline.py (a bare WSGI app returning the same bytes) under the
   same gunicorn.conf.py, in alternating short rounds; the ratio is taken within each round, and the
   median of many short rounds is what the machine's other load moves least.
   Each round also measures a second site with ANALYTICS=false, so the cost of counting visits
   shows as the two ratios, and as the workers' CPU time per request of each (which the machine's
   other load moves far less than the rate). wrk sends a browser's User-Agent, so each request is counted
   as a person's visit (a request without one would count as a bot's). Each round also sends `POST /calls`
   (bench/calls.lua: the beacon of a tap on a tel: link) to the site: its workers' CPU time per call
   against per `GET /`.
2. POST /contact at a steady 100 posts/s, open loop: each post is sent when it is due and its
   latency counted from then. Every answer must be 303 and every lead stored.
3. The same while the SMTP server takes 5 s over each message, and with every channel on (an
   Apprise alert and a webhook to a local HTTP sink, the visitor's confirmation, the booking link).
   Then both again with the senders paused, so the rows wait in the outbox: the request path alone.
4. Peak memory (VmHWM) per worker, and capacity: posts per second per core of worker CPU time.
"""

import argparse
import asyncio
import json
import multiprocessing
import os
import re
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlencode

from aiosmtpd.controller import Controller

ROOT = Path(__file__).resolve().parent.parent
BENCHMARKS = ROOT / "docs" / "benchmarks.md"
START, END = "<!-- bench:start -->", "<!-- bench:end -->"
WARMUP = 40  # posts sent before measuring, so every worker has loaded what a first post loads
GUNICORN = str(Path(sys.executable).with_name("gunicorn"))
BROWSER = "Mozilla/5.0 (X11; Linux x86_64; rv:140.0) Gecko/20100101 Firefox/140.0"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Sink:
    """An aiosmtpd handler that accepts every message, after `delay` seconds."""

    def __init__(self, delay: float, count):
        self.delay = delay
        self.count = count

    async def handle_DATA(self, server, session, envelope):
        if self.delay:
            await asyncio.sleep(self.delay)
        with self.count.get_lock():
            self.count.value += 1
        return "250 OK"


def run_smtp(port: int, delay: float, count, ready) -> None:
    """Serve SMTP until killed; in its own process, so it does not slow the load generator."""
    Controller(Sink(delay, count), hostname="127.0.0.1", port=port, server_hostname="bench.smtp").start()
    ready.set()
    while True:
        time.sleep(3600)


def run_http_sink(port: int, count, ready) -> None:
    """Answer 200 to every POST (alerts and webhook events) until killed; in its own process."""

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            self.rfile.read(int(self.headers.get("Content-Length", 0)))
            with count.get_lock():
                count.value += 1
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    ready.set()
    server.serve_forever()


def channel_env(port: int) -> dict:
    """Every channel on: an alert and a webhook to the sink on `port`, the confirmation, the booking link."""
    return {
        "ALERT_URLS": f"json://127.0.0.1:{port}/alert",
        "ALERT_DETAILS": "true",
        "WEBHOOK_URL": f"http://127.0.0.1:{port}/hook",
        "WEBHOOK_SECRET": "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
        "AUTOREPLY": "true",
        "AUTOREPLY_MAX_PER_HOUR": "1000000",  # every post's confirmation is made, as before the hourly limit
        "BOOKING_URL": "https://booking.example/book",
    }


class Server:
    """gunicorn with the gunicorn.conf.py of the checkout it serves from (`chdir`, else this one), serving `app`."""

    def __init__(self, app: str, env: dict, chdir: Path = ROOT):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = tempfile.NamedTemporaryFile(prefix="bench-gunicorn-", suffix=".log", delete=False)
        full = {**os.environ, "PORT": str(self.port), **env}
        conf = chdir / "gunicorn.conf.py" if (chdir / "gunicorn.conf.py").exists() else ROOT / "gunicorn.conf.py"
        self.process = subprocess.Popen(
            [GUNICORN, "-c", str(conf), "--chdir", str(chdir), app],
            cwd=ROOT,
            env=full,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                urllib.request.urlopen(self.url + "/", timeout=1).read()
                break
            except OSError:
                time.sleep(0.1)
        else:
            raise SystemExit(f"{app} did not start; see {self.log.name}")
        while len(self.workers()) < int(full.get("WEB_CONCURRENCY", "2")):
            time.sleep(0.1)

    def workers(self) -> list[int]:
        pid = self.process.pid
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]

    def cpu_seconds(self) -> float:
        """CPU time used so far by the worker processes (all their threads)."""
        total = 0
        for pid in self.workers():
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
        return total / os.sysconf("SC_CLK_TCK")

    def peak_memory_mb(self) -> float:
        """The largest resident set any worker reached (VmHWM)."""
        peaks = []
        for pid in self.workers():
            status = Path(f"/proc/{pid}/status").read_text()
            peaks.append(int(re.search(r"VmHWM:\s+(\d+) kB", status)[1]) / 1024)
        return max(peaks)

    def stop(self) -> None:
        os.killpg(self.process.pid, signal.SIGTERM)
        self.process.wait(20)


def site_env(data_dir: str, smtp_port: int) -> dict:
    return {
        "DATA_DIR": data_dir,
        "SECRET_KEY": "bench",
        "MAIL_SERVER": "127.0.0.1",
        "MAIL_PORT": str(smtp_port),
        "SPAM_MIN_SECONDS": "0",  # the posts follow their page at once; they must count as real leads
        "CONTACT_RATE_LIMIT": "1000000 per minute",  # every post comes from 127.0.0.1
    }


CALLS_SCRIPT = str(ROOT / "bench" / "calls.lua")


def wrk(url: str, seconds: int, connections: int, script: str | None = None) -> dict:
    """Run wrk against `url` as a browser would (its User-Agent); return requests/s and p50/p99 latency in ms."""
    extra = ["-s", script] if script else []
    out = subprocess.run(
        ["wrk", "-t2", f"-c{connections}", f"-d{seconds}s", "--latency", "-H", f"User-Agent: {BROWSER}", *extra, url],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    if "Non-2xx" in out or "Socket errors" in out:
        raise SystemExit(f"wrk saw errors against {url}:\n{out}")

    def ms(label: str) -> float:
        value, unit = re.search(rf"{label}\s+([\d.]+)(us|ms|s)\b", out).groups()
        return float(value) * {"us": 0.001, "ms": 1, "s": 1000}[unit]

    return {"rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out)[1]), "p50": ms("50%"), "p99": ms("99%")}


def wrk_together(servers: list, seconds: int, connections: int) -> list[dict]:
    """Run one wrk per server at the same time, so all meet the same machine load; rate and CPU µs per request each."""
    command = ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "-H", f"User-Agent: {BROWSER}"]
    before = [server.cpu_seconds() for server in servers]
    running = [subprocess.Popen([*command, s.url + "/"], stdout=subprocess.PIPE, text=True) for s in servers]
    outputs = [process.communicate()[0] for process in running]
    found = []
    for server, cpu, out in zip(servers, before, outputs, strict=True):
        if "Non-2xx" in out or "Socket errors" in out:
            raise SystemExit(f"wrk saw errors against {server.url}:\n{out}")
        rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out)[1])
        found.append({"rps": rps, "cpu_us": (server.cpu_seconds() - cpu) / (rps * seconds) * 1e6})
    return found


def form_fields(html: str) -> dict:
    """The hidden inputs of the lead form on a page, by name."""
    return dict(re.findall(r'<input id="\w+" name="(\w+)" type="hidden" value="([^"]*)"', html))


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


async def fetch_forms(port: int, count: int) -> list[bytes]:
    """Open the page `count` times like new visitors; return a ready POST request for each."""
    requests = []
    for n in range(count):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        raw = await reader.read()
        writer.close()
        head, _, body = raw.partition(b"\r\n\r\n")
        cookie = re.search(rb"Set-Cookie: ([^;]+);", head)[1].decode()
        fields = form_fields(body.decode())
        fields.update(name=f"Bench visitor {n}", phone="949-510-6333", email=f"v{n}@example.com", message="Bench")
        data = urlencode(fields).encode()
        requests.append(
            b"POST /contact HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
            b"Content-Type: application/x-www-form-urlencoded\r\n"
            + f"Cookie: {cookie}\r\nContent-Length: {len(data)}\r\n\r\n".encode()
            + data
        )
    return requests


async def post_open_loop(port: int, requests: list[bytes], rate: float, stop=None) -> tuple[list[float], list[int]]:
    """Send each request when it is due (`rate` per second); latency counts from that moment.

    With `stop`, a callable, requests due after it first returns True are not sent.
    """
    loop = asyncio.get_running_loop()
    start = loop.time() + 0.2
    latencies: list[float] = []
    statuses: list[int] = []

    async def one(n: int, request: bytes) -> None:
        due = start + n / rate
        await asyncio.sleep(max(0, due - loop.time()))
        if stop and stop():
            return
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(request)
        head = await reader.readuntil(b"\r\n\r\n")
        length = int(re.search(rb"Content-Length: (\d+)", head)[1])
        await reader.readexactly(length)
        latencies.append((loop.time() - due) * 1000)
        statuses.append(int(head.split()[1]))
        writer.close()

    await asyncio.gather(*(one(n, r) for n, r in enumerate(requests)))
    return latencies, statuses


def post_run(
    smtp_delay: float, seconds: int, rate: float, channels: bool = False, senders: bool = True, code: Path = ROOT
) -> dict:
    """Start a fresh site (served from the checkout `code`) mailing an SMTP sink, post at `rate` for `seconds`;
    return what was measured.

    With `channels`, every alert and webhook channel is on too, sending to an HTTP sink. Without
    `senders`, the workers start no sender thread: the rows wait in the outbox, and what is measured
    is the request path alone.
    """
    smtp_port = free_port()
    mailed, ready = multiprocessing.Value("i", 0), multiprocessing.Event()
    smtp = multiprocessing.Process(target=run_smtp, args=(smtp_port, smtp_delay, mailed, ready), daemon=True)
    smtp.start()
    ready.wait(10)
    env = {}
    delivered, sink_ready, http_port = multiprocessing.Value("i", 0), multiprocessing.Event(), free_port()
    sink = multiprocessing.Process(target=run_http_sink, args=(http_port, delivered, sink_ready), daemon=True)
    if channels:
        sink.start()
        sink_ready.wait(10)
        env = channel_env(http_port)
    if not senders:
        env["OUTBOX_WORKER"] = "false"
    data_dir = tempfile.mkdtemp(prefix="bench-site-")
    server = Server("app:create_app()", {**site_env(data_dir, smtp_port), **env}, chdir=code)
    try:
        count = int(seconds * rate)
        warm = asyncio.run(fetch_forms(server.port, WARMUP))
        asyncio.run(post_open_loop(server.port, warm, 20))  # first posts load phone metadata, compile templates
        requests = asyncio.run(fetch_forms(server.port, count))
        cpu_before = server.cpu_seconds()
        latencies, statuses = asyncio.run(post_open_loop(server.port, requests, rate))
        cpu = server.cpu_seconds() - cpu_before
        with sqlite3.connect(f"{data_dir}/leads.db") as conn:
            stored = conn.execute("SELECT count(*) FROM leads WHERE is_spam = 0").fetchone()[0] - WARMUP
            queued = conn.execute("SELECT count(*) FROM outbox").fetchone()[0] - WARMUP
        return {
            "posts": count,
            "all_303": statuses.count(303) == count,
            "stored": stored,
            "queued": queued,
            "p50": percentile(latencies, 50),
            "p99": percentile(latencies, 99),
            "max": max(latencies),
            "cpu_s": cpu,
            "posts_per_core_s": count / cpu if cpu else float("inf"),
            "mailed": mailed.value,
            "delivered": delivered.value,
            "peak_mb": server.peak_memory_mb(),
            "latencies": latencies,
        }
    finally:
        server.stop()
        smtp.kill()
        if channels:
            sink.kill()


POST_RUNS = {
    "fast": {"smtp_delay": 0},
    "slow": {"smtp_delay": 5},
    "every": {"smtp_delay": 0, "channels": True},
    "paused": {"smtp_delay": 0, "senders": False},
    "every_paused": {"smtp_delay": 0, "channels": True, "senders": False},
}


def post_rounds(seconds: int, rate: float, rounds: int, code: Path = ROOT) -> dict[str, dict]:
    """Each POST_RUNS configuration `rounds` times, interleaved (in turning order), each pooled into one result.

    The machine's other load comes and goes; interleaving spreads it over every configuration, and
    each p99 is taken over the pooled latencies of all its rounds.
    """
    found: dict[str, list[dict]] = {name: [] for name in POST_RUNS}
    names = list(POST_RUNS)
    for n in range(rounds):
        for name in names[n % len(names) :] + names[: n % len(names)]:
            options = POST_RUNS[name]
            found[name].append(
                post_run(
                    options["smtp_delay"],
                    seconds,
                    rate,
                    **{k: v for k, v in options.items() if k != "smtp_delay"},
                    code=code,
                )
            )
    pooled = {}
    for name, runs in found.items():
        latencies = [ms for run in runs for ms in run["latencies"]]
        posts, cpu = sum(run["posts"] for run in runs), sum(run["cpu_s"] for run in runs)
        pooled[name] = {
            "posts": posts,
            "all_303": all(run["all_303"] for run in runs),
            "stored": sum(run["stored"] for run in runs),
            "queued": sum(run["queued"] for run in runs),
            "p50": percentile(latencies, 50),
            "p99": percentile(latencies, 99),
            "p99s": [run["p99"] for run in runs],
            "max": max(latencies),
            "cpu_s": cpu,
            "posts_per_core_s": posts / cpu if cpu else float("inf"),
            "mailed": sum(run["mailed"] for run in runs),
            "delivered": sum(run["delivered"] for run in runs),
            "peak_mb": max(run["peak_mb"] for run in runs),
        }
    return pooled


def get_runs(seconds: int, rounds: int, connections: int, code: Path = ROOT) -> dict:
    """Alternate wrk rounds against the site (served from the checkout `code`) and the baseline app returning the
    same bytes."""
    started = []  # stopped at the end, also when a later one fails to start
    try:
        data_dir = tempfile.mkdtemp(prefix="bench-site-")
        site = Server("app:create_app()", site_env(data_dir, 9), chdir=code)
        started.append(site)
        off_dir = tempfile.mkdtemp(prefix="bench-site-off-")
        site_off = Server("app:create_app()", {**site_env(off_dir, 9), "ANALYTICS": "false"}, chdir=code)
        started.append(site_off)
        body = Path(data_dir) / "landing.html"
        body.write_bytes(urllib.request.urlopen(site.url + "/").read())
        baseline = Server("baseline:app", {"BASELINE_BODY": str(body)}, chdir=ROOT / "bench")
        started.append(baseline)
        for server in (site, site_off, baseline):  # warm them up
            wrk(server.url + "/", 2, connections)
        wrk(site.url + "/calls", 2, connections, CALLS_SCRIPT)
        runs = []
        for n in range(rounds):
            round_ = {}
            servers = [("on", site), ("off", site_off)]
            for name, server in [*(servers if n % 2 else servers[::-1]), ("baseline", baseline)]:
                cpu = server.cpu_seconds()
                round_[name] = wrk(server.url + "/", seconds, connections)
                # CPU time per request, which the machine's other load hardly moves (the rate does).
                round_[name]["cpu_us"] = (server.cpu_seconds() - cpu) / (round_[name]["rps"] * seconds) * 1e6
            # Counting on and off served at the same time: both meet the same load, which sequential
            # rounds on this shared machine do not.
            round_["together"] = wrk_together([site, site_off], seconds, connections // 2)
            cpu = site.cpu_seconds()
            round_["calls"] = wrk(site.url + "/calls", seconds, connections, CALLS_SCRIPT)
            round_["calls"]["cpu_us"] = (site.cpu_seconds() - cpu) / (round_["calls"]["rps"] * seconds) * 1e6
            runs.append(round_)

        def median_round(value) -> dict:
            return sorted(runs, key=value)[rounds // 2]

        ratio = median_round(lambda r: r["on"]["rps"] / r["baseline"]["rps"])
        ratio_off = median_round(lambda r: r["off"]["rps"] / r["baseline"]["rps"])
        together = median_round(lambda r: r["together"][0]["rps"] / r["together"][1]["rps"])
        cpu = median_round(lambda r: r["together"][1]["cpu_us"] / r["together"][0]["cpu_us"])
        calls = median_round(lambda r: r["calls"]["cpu_us"] / r["on"]["cpu_us"])
        return {
            "site": ratio["on"],
            "baseline": ratio["baseline"],
            "ratio": ratio["on"]["rps"] / ratio["baseline"]["rps"],
            "ratios": [r["on"]["rps"] / r["baseline"]["rps"] for r in runs],
            "ratio_off": ratio_off["off"]["rps"] / ratio_off["baseline"]["rps"],
            "ratios_off": [r["off"]["rps"] / r["baseline"]["rps"] for r in runs],
            "together": together["together"][0]["rps"] / together["together"][1]["rps"],
            "together_ratios": [r["together"][0]["rps"] / r["together"][1]["rps"] for r in runs],
            "cpu_ratios": [r["together"][1]["cpu_us"] / r["together"][0]["cpu_us"] for r in runs],
            "cpu_on": cpu["together"][0]["cpu_us"],
            "cpu_off": cpu["together"][1]["cpu_us"],
            "calls": calls["calls"],
            "calls_cpu_ratio": calls["calls"]["cpu_us"] / calls["on"]["cpu_us"],
            "calls_cpu_ratios": [r["calls"]["cpu_us"] / r["on"]["cpu_us"] for r in runs],
            "calls_get_cpu": calls["on"]["cpu_us"],
            "bytes": body.stat().st_size,
            "peak_mb": site.peak_memory_mb(),
        }
    finally:
        for server in started:
            server.stop()


def rounds_of(run: dict) -> str:
    """The p99 of each round of a pooled POST result, as text."""
    return ", ".join(f"{p99:.1f}" for p99 in run["p99s"])


def path_ratios(paused: dict, every_paused: dict) -> list[float]:
    """Every channel's request path p99 over the email's alone, round by round (the two runs of a round are
    close in time, so they meet the same load; one busy moment of the machine moves one round, not the median)."""
    return [every / alone for every, alone in zip(every_paused["p99s"], paused["p99s"], strict=True)]


def table(get: dict, fast: dict, slow: dict, every: dict, paused: dict, every_paused: dict, args) -> str:
    site, base = get["site"], get["baseline"]
    path = path_ratios(paused, every_paused)
    rows = [
        "| measure | result | target |",
        "|---|---|---|",
        f"| `GET /` landing page ({get['bytes']:,} bytes) | {site['rps']:,.0f} req/s, p50 {site['p50']:.1f} ms, "
        f"p99 {site['p99']:.1f} ms | |",
        f"| `GET /` bare WSGI app, same bytes, same gunicorn | {base['rps']:,.0f} req/s, p50 {base['p50']:.1f} ms, "
        f"p99 {base['p99']:.1f} ms | |",
        f"| landing ÷ baseline (median of {args.rounds} paired rounds: "
        f"{', '.join(f'{r:.2f}' for r in get['ratios'])}) | **{get['ratio']:.2f}** | ≥ 0.40 |",
        f"| same with visit counting off (`ANALYTICS=false`), same rounds "
        f"({', '.join(f'{r:.2f}' for r in get['ratios_off'])}) | **{get['ratio_off']:.2f}**; "
        f"on ÷ off {get['ratio'] / get['ratio_off']:.2f} | |",
        f"| counting on ÷ off, both sites under wrk at the same time, each round "
        f"({', '.join(f'{r:.2f}' for r in get['together_ratios'])}) | **{get['together']:.2f}** | ≥ 0.95 |",
        f"| workers' CPU time per `GET /`, counting on / off, same rounds (median) | {get['cpu_on']:.0f} µs / "
        f"{get['cpu_off']:.0f} µs: off ÷ on ({', '.join(f'{r:.2f}' for r in get['cpu_ratios'])}) "
        f"**{get['cpu_off'] / get['cpu_on']:.2f}** | ≥ 0.95 |",
        f"| `POST /calls` (a tap on the phone number), as many as wrk sends | {get['calls']['rps']:,.0f} req/s, "
        f"p50 {get['calls']['p50']:.1f} ms, p99 {get['calls']['p99']:.1f} ms; workers' CPU "
        f"{get['calls']['cpu_us']:.0f} µs per call against {get['calls_get_cpu']:.0f} µs per `GET /` in the same "
        f"round: calls ÷ GET ({', '.join(f'{r:.2f}' for r in get['calls_cpu_ratios'])}) "
        f"**{get['calls_cpu_ratio']:.2f}** | ≤ 1 |",
        f"| `POST /contact` at {args.rate:.0f}/s open loop, fast SMTP ({fast['posts']} posts) | p50 "
        f"{fast['p50']:.1f} ms, **p99 {fast['p99']:.1f} ms** (rounds {rounds_of(fast)}; max {fast['max']:.0f} ms); "
        f"{'all 303' if fast['all_303'] else 'NOT all 303'}, {fast['stored']} stored | p99 < 50 ms |",
        f"| same, SMTP taking 5 s per message ({slow['posts']} posts) | p50 {slow['p50']:.1f} ms, "
        f"**p99 {slow['p99']:.1f} ms** (rounds {rounds_of(slow)}; max {slow['max']:.0f} ms); "
        f"{'all 303' if slow['all_303'] else 'NOT all 303'}, {slow['stored']} stored; "
        f"p99 ratio **{slow['p99'] / fast['p99']:.2f}** | ≤ 1.2 × fast |",
        f"| same, fast SMTP, every channel on: alert, webhook, visitor's confirmation ({every['posts']} posts) "
        f"| p50 {every['p50']:.1f} ms, **p99 {every['p99']:.1f} ms** "
        f"(rounds {rounds_of(every)}; max {every['max']:.0f} ms); "
        f"{'all 303' if every['all_303'] else 'NOT all 303'}, {every['stored']} stored, {every['delivered']} alerts "
        f"and webhook events delivered during the run; p99 ratio **{every['p99'] / fast['p99']:.2f}**; "
        f"workers' CPU {every['cpu_s'] / every['posts'] * 1000:.1f} ms per lead, "
        f"{fast['cpu_s'] / fast['posts'] * 1000:.1f} ms with the email alone | |",
        f"| request path alone (senders paused, rows left in the outbox), fast SMTP settings / every channel on "
        f"({paused['posts']} posts each) | p99 {paused['p99']:.1f} ms ({rounds_of(paused)}) / "
        f"**{every_paused['p99']:.1f} ms** ({rounds_of(every_paused)}); "
        f"{'all 303' if paused['all_303'] and every_paused['all_303'] else 'NOT all 303'}, "
        f"{paused['queued']} / {every_paused['queued']} outbox rows; p99 ratio pooled "
        f"{every_paused['p99'] / paused['p99']:.2f}, each round ({', '.join(f'{r:.2f}' for r in path)}), "
        f"median **{statistics.median(path):.2f}** | ≤ 1.2 × fast |",
        f"| capacity, from workers' CPU time (fast SMTP run) | **{fast['posts_per_core_s']:,.0f} posts/s per core** "
        f"({fast['cpu_s']:.2f} CPU s for {fast['posts']} posts, emails included) | |",
        f"| peak memory per worker (VmHWM) | {max(r['peak_mb'] for r in (get, fast, slow, every)):.0f} MB | |",
    ]
    return "\n".join(rows)


def write_results(text: str, start: str = START, end: str = END) -> None:
    """Replace what docs/benchmarks.md holds between the `start` and `end` markers with `text`."""
    page = BENCHMARKS.read_text()
    if start not in page:
        raise SystemExit(f"docs/benchmarks.md has no {start} ... {end} section")
    head, rest = page.split(start, 1)
    _, tail = rest.split(end, 1)
    BENCHMARKS.write_text(f"{head}{start}\n{text}\n{end}{tail}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=int, default=10, help="length of each POST run")
    parser.add_argument("--rounds", type=int, default=7, help="paired wrk rounds (site, counting off, baseline)")
    parser.add_argument("--round-seconds", type=int, default=4, help="length of each wrk round")
    parser.add_argument("--connections", type=int, default=16, help="wrk connections")
    parser.add_argument("--rate", type=float, default=100, help="posts per second")
    parser.add_argument("--post-rounds", type=int, default=3, help="rounds of the POST runs, interleaved")
    parser.add_argument("--no-docs", action="store_true", help="print only; leave docs/benchmarks.md alone")
    parser.add_argument("--code", type=Path, default=ROOT, help="serve this checkout (say, an earlier version)")
    parser.add_argument("--no-readme", action="store_true", dest="no_docs", help=argparse.SUPPRESS)  # its old name
    args = parser.parse_args()
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    get = get_runs(args.round_seconds, args.rounds, args.connections, args.code)
    posted = post_rounds(args.seconds, args.rate, args.post_rounds, args.code)
    fast, slow, every, paused, every_paused = (posted[name] for name in POST_RUNS)
    text = table(get, fast, slow, every, paused, every_paused, args)
    cpus = os.cpu_count()
    note = (
        f"Measured {started} on this {cpus}-core machine (shared and noisy; wrk and the load generator run on the "
        f"same cores), gunicorn.conf.py defaults, with `make bench` "
        f"(`bench/run.py --seconds {args.seconds} --rounds {args.rounds} --round-seconds {args.round_seconds} "
        f"--post-rounds {args.post_rounds} --connections {args.connections} "
        f"--rate {args.rate:g}`)" + (f", serving the checkout {args.code}." if args.code != ROOT else ".")
    )
    print(text + "\n\n" + note)
    results = ROOT / "bench" / "results"
    results.mkdir(exist_ok=True)
    runs = {"get": get, "fast": fast, "slow": slow, "every": every, "paused": paused, "every_paused": every_paused}
    (results / "latest.json").write_text(json.dumps(runs, indent=2))
    if not args.no_docs:
        write_results(text + "\n\n" + note)
    failed = [
        name
        for name, ok in [
            ("GET ratio", get["ratio"] >= 0.4),
            ("counting on ÷ off", get["together"] >= 0.95),
            ("POST /calls CPU ÷ GET /", get["calls_cpu_ratio"] <= 1),
            ("POST p99", fast["p99"] < 50),
            ("slow-SMTP p99", slow["p99"] <= 1.2 * fast["p99"]),
            ("every channel's request path p99", statistics.median(path_ratios(paused, every_paused)) <= 1.2),
            ("every post answered 303 and stored", fast["all_303"] and slow["all_303"]),
            ("stored", fast["stored"] == fast["posts"] and slow["stored"] == slow["posts"]),
        ]
        if not ok
    ]
    if failed:
        print("below target: " + ", ".join(failed))


if __name__ == "__main__":
    main()
