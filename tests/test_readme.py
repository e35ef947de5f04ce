"""The README stays true to the code: every setting documented, nothing documented that is not read."""

import re
from pathlib import Path

import config

ROOT = Path(__file__).resolve().parent.parent


def section(title: str) -> str:
    """The text of the README's `## title` section."""
    text = (ROOT / "README.md").read_text()
    return text.split(f"\n## {title}\n", 1)[1].split("\n## ", 1)[0]


def test_settings_table_lists_exactly_the_settings_read():
    documented = set()
    for line in section("Configuration").splitlines():
        if line.startswith("| `"):
            first_cell = line.split("|")[1]
            documented.update(re.findall(r"`([A-Z][A-Z0-9_]*)`", first_cell))
    gunicorn_conf = (ROOT / "gunicorn.conf.py").read_text()
    read_by_gunicorn = set(re.findall(r"os\.environ\.get\(\s*['\"]([A-Z0-9_]+)['\"]", gunicorn_conf))
    assert read_by_gunicorn  # the pattern still finds what gunicorn.conf.py reads
    assert documented == set(config.SETTINGS) | read_by_gunicorn
