"""Lighthouse (mobile preset) on /, an article, /thanks and Spanish pages; scores to bench/lighthouse-results.json.

make lighthouse                      # 3 runs per page, median scores
make lighthouse ARGS="--runs 1"
make lighthouse ARGS="--pages /es/ /es/thanks"
"""

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LIGHTHOUSE = ROOT / "node_modules" / ".bin" / "lighthouse"
CHROMIUM = "/usr/bin/chromium"
# The machine has no internet: nothing in Chromium may try to reach it.
CHROME_FLAGS = (
    "--headless --no-sandbox --disable-gpu --disable-background-networking --disable-component-update"
    " --disable-sync --no-first-run"
)
CATEGORIES = ["performance", "accessibility", "best-practices", "seo"]
PAGES = ["/", "/articles/acupuncture-for-sleep", "/thanks", "/es/", "/es/privacy", "/es/thanks"]
RESULTS = ROOT / "bench" / "lighthouse-results.json"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_site(data_dir: str) -> tuple[subprocess.Popen, str]:
    """gunicorn as `make run` starts it, on a free loopback port; returns the process and its URL."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    content = Path(data_dir) / "content"  # the site's articles and the tests' second one, served at /articles/...
    content.mkdir()
    for article in [*(ROOT / "content").glob("*.md"), *(ROOT / "tests" / "content").glob("*.md")]:
        shutil.copy(article, content)
    env = {**os.environ, "PORT": str(port), "DATA_DIR": data_dir, "SITE_URL": url, "CONTENT_DIR": str(content)}
    gunicorn = Path(sys.executable).with_name("gunicorn")
    log = open(Path(data_dir) / "gunicorn.log", "wb")
    process = subprocess.Popen(
        [str(gunicorn), "-c", "gunicorn.conf.py", "app:create_app()"], cwd=ROOT, env=env, stdout=log, stderr=log
    )
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url + "/healthz", timeout=1):
                return process, url
        except OSError:
            time.sleep(0.2)
    process.terminate()
    raise SystemExit(f"gunicorn did not start; see {log.name}")


def audit(url: str, out_dir: Path, run: int, tries: int = 3) -> dict:
    """One Lighthouse run on `url`; returns the parsed report.

    Lighthouse sometimes loses the page's trace on a busy machine (NO_NAVSTART); such a run is repeated.
    """
    path = out_dir / f"report-{run}.json"
    command = [
        str(LIGHTHOUSE),
        url,
        "--output=json",
        f"--output-path={path}",
        f"--chrome-flags={CHROME_FLAGS}",
        f"--only-categories={','.join(CATEGORIES)}",
        "--quiet",
    ]
    for attempt in range(1, tries + 1):
        done = subprocess.run(command, env={**os.environ, "CHROME_PATH": CHROMIUM}, timeout=180)
        if done.returncode == 0:
            return json.loads(path.read_text())
        print(f"lighthouse failed on {url} (try {attempt} of {tries})", file=sys.stderr)
    raise SystemExit(f"lighthouse failed {tries} times on {url}")


def summary(reports: list[dict]) -> dict:
    """Median score per category, and the scored audits that fell short in any run."""
    scores = {c: round(statistics.median(r["categories"][c]["score"] * 100 for r in reports)) for c in CATEGORIES}
    short = {}
    for report in reports:
        for category in CATEGORIES:
            for ref in report["categories"][category]["auditRefs"]:
                result = report["audits"][ref["id"]]
                if ref["weight"] and result["score"] is not None and result["score"] < 1:
                    short[ref["id"]] = f"{result['title']} ({category}, score {result['score']})"
    metrics = reports[len(reports) // 2]["audits"]
    timings = {
        name: metrics[name]["displayValue"].replace("\u00a0", " ")
        for name in (
            "first-contentful-paint",
            "largest-contentful-paint",
            "total-blocking-time",
            "cumulative-layout-shift",
        )
    }
    return {"scores": scores, "metrics_of_median_run": timings, "fell_short": short}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3, help="Lighthouse runs per page (median reported)")
    parser.add_argument("--pages", nargs="+", default=PAGES, help="the paths to audit (default: %(default)s)")
    args = parser.parse_args()
    if not LIGHTHOUSE.exists():
        raise SystemExit("node_modules/.bin/lighthouse is missing: run `npm ci`")
    if not shutil.which(CHROMIUM):
        raise SystemExit(f"{CHROMIUM} is missing: sudo apt-get install chromium")

    with tempfile.TemporaryDirectory() as tmp:
        process, base = start_site(tmp)
        try:
            pages = {}
            for page in args.pages:
                out_dir = Path(tmp) / (page.strip("/").replace("/", "_") or "home")
                out_dir.mkdir(exist_ok=True)
                reports = [audit(base + page, out_dir, run) for run in range(args.runs)]
                pages[page] = summary(reports)
                print(page, pages[page]["scores"], file=sys.stderr)
        finally:
            process.terminate()
            process.wait(15)
    version = reports[0]["lighthouseVersion"]
    agent = reports[0]["environment"]["hostUserAgent"]
    results = {
        "measured": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "lighthouse": version,
        "browser": agent,
        "preset": "mobile (default: simulated slow 4G, 4x CPU slowdown)",
        "runs_per_page": args.runs,
        "pages": pages,
    }
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    print("| page | Performance | Accessibility | Best Practices | SEO |\n|---|---|---|---|---|")
    for page, result in pages.items():
        s = result["scores"]
        print(f"| `{page}` | {s['performance']} | {s['accessibility']} | {s['best-practices']} | {s['seo']} |")
    print(f"\nwritten to {RESULTS.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
