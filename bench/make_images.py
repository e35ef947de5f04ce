"""Render the apple-touch icon and the share image from static/favicon.svg with Chromium (run once, commit the PNGs).

.venv/bin/python bench/make_images.py   # then optionally: pngquant --skip-if-larger --ext .png --force static/*.png
"""

import sys
from pathlib import Path

from playwright.sync_api import sync_playwright

ROOT = Path(__file__).resolve().parent.parent
STATIC = ROOT / "static"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking"]

TOUCH_ICON = """<!doctype html><style>html,body{margin:0;background:#1f6b5c}svg{display:block}</style>
<svg xmlns="http://www.w3.org/2000/svg" width="180" height="180" viewBox="0 0 32 32">
<rect width="32" height="32" fill="#1f6b5c"/>
<path d="M16 5.5c6.8 4.3 7.7 14.4 0 20.4-7.7-6-6.8-16.1 0-20.4z" fill="#fff"/>
<path d="M16 9.8v12.8" stroke="#1f6b5c" stroke-width="1.7" stroke-linecap="round"/></svg>"""

SHARE_IMAGE = """<!doctype html><style>
html,body{margin:0}
body{width:1200px;height:630px;box-sizing:border-box;padding:80px 90px;background:#1f6b5c;color:#fff;
font-family:"DejaVu Sans","Liberation Sans",sans-serif;display:flex;flex-direction:column;justify-content:space-between}
.brand{display:flex;align-items:center;gap:28px;font-size:44px;font-weight:700}
h1{font-size:76px;line-height:1.12;margin:0;max-width:980px}
p{margin:0;font-size:36px;color:#d8efe9}
</style>
<div class="brand">SVG Acupuncture Halls</div>
<h1>Acupuncture and immune system modulation</h1>
<p>San Juan Capistrano, CA · 949-510-6333</p>"""


def main() -> None:
    # The favicon's mark in reverse: a white tile with a green leaf.
    mark = (STATIC / "favicon.svg").read_text().replace("<svg ", '<svg width="96" height="96" ', 1)
    mark = mark.replace("#1f6b5c", "GREEN").replace("#fff", "#1f6b5c").replace("GREEN", "#fff")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 180, "height": 180})
        page.set_content(TOUCH_ICON)
        page.screenshot(path=STATIC / "apple-touch-icon.png")
        page = browser.new_page(viewport={"width": 1200, "height": 630})
        page.set_content(SHARE_IMAGE.replace("SVG", mark))
        page.screenshot(path=STATIC / "og.png")
        browser.close()
    for name in ("apple-touch-icon.png", "og.png"):
        print(name, (STATIC / name).stat().st_size, "bytes", file=sys.stderr)


if __name__ == "__main__":
    main()
