"""The alert (ALERT_URLS) and webhook (WEBHOOK_URL) addresses: the key stored for each, how the owner sees it.

An address can hold a secret (a token, an ntfy topic), so rows store its key and its shown form, never the address.
"""

import functools
import hashlib
from urllib.parse import urlsplit

import apprise

import db.outbox
from outbox.failures import PermanentFailure

WEBHOOK_TIMEOUT_SECONDS = 10

# What the owner reads for each channel, wherever the site names one.
CHANNEL_LABELS = {"email": "Email", "alert": "Phone alert", "webhook": "Webhook"}

# Apprise masks these services' tokens but shows an ntfy topic in full, though anyone who knows it can
# read the alerts: its topics are masked here the way Apprise masks a token ("a...z").
SECRET_TOPIC_SCHEMES = {"ntfy", "ntfys"}


def target_key(url: str) -> str:
    """A short stable name for an alert or webhook address, stored instead of the address and its secrets."""
    return hashlib.sha256(url.encode()).hexdigest()[:16]


def destinations(config: dict) -> dict[str, tuple[str, str]]:
    """Every alert and webhook address configured now, by key: {key: (channel, url)}."""
    found = {target_key(url): ("alert", url) for url in config["ALERT_URLS"]}
    if config["WEBHOOK_URL"]:
        found[target_key(config["WEBHOOK_URL"])] = ("webhook", config["WEBHOOK_URL"])
    return found


def show_all_ahead(config: dict) -> None:
    """Make each configured address's shown form as a server process starts, before its first lead's write."""
    for channel, url in destinations(config).values():
        shown_url(channel, url)


def delivery_seconds(config: dict) -> float:
    """One delivery's whole time, answer included: WEBHOOK_TIMEOUT_SECONDS, and well below OUTBOX_STALE_SECONDS,
    so no other worker reclaims the row (and sends it twice) while this one still waits."""
    return min(WEBHOOK_TIMEOUT_SECONDS, config["OUTBOX_STALE_SECONDS"] / 2)


def address_of(row: dict, config: dict) -> str:
    """The configured address an alert or webhook row goes to, found by its key; PermanentFailure if no longer set."""
    found = destinations(config).get(row["target"])
    if found is None:
        raise PermanentFailure("this address is no longer in ALERT_URLS or WEBHOOK_URL")
    return found[1]


@functools.lru_cache(maxsize=256)
def shown_url(channel: str, url: str) -> str:
    """The address as the owner may see it: Apprise's privacy-safe form, a webhook's origin only.

    Kept once made: an alert row needs it inside the lead's write, and Apprise takes 0.6 ms to parse one
    (0.3 s for its plugins, the first time in a process; see show_all_ahead).
    """
    if channel == "alert":
        plugin = apprise.Apprise.instantiate(url)
        if plugin is None:
            return f"{url.split(':', 1)[0]}:// (not an address Apprise knows)"
        ntfy = ntfy_parts(plugin)
        if ntfy is None:
            return plugin.url(privacy=True).split("?", 1)[0]
        scheme, host, topics = ntfy
        return f"{scheme}://" + "/".join(host + [plugin.pprint(topic) for topic in topics])
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}" + ("/…" if parts.path.strip("/") or parts.query else "/")


def ntfy_parts(plugin: apprise.URLBase) -> tuple[str, list[str], list[str]] | None:
    """An ntfy address's privacy form split as (scheme, [host] or [] for ntfy.sh itself, topics); None for others."""
    shown, _, query = plugin.url(privacy=True).partition("?")
    scheme, _, rest = shown.partition("://")
    if scheme not in SECRET_TOPIC_SCHEMES:
        return None
    parts = rest.split("/")
    first_topic = 0 if "mode=cloud" in query.split("&") else 1
    return scheme, parts[:first_topic], [topic for topic in parts[first_topic:] if topic]


def status(database, config: dict) -> list[dict]:
    """Each alert address and the webhook, as the status page shows them, with their last success and failure."""
    found = []
    for key, (channel, url) in destinations(config).items():
        health = db.outbox.channel_health(database, channel, key)
        label = CHANNEL_LABELS[channel]
        found.append({"key": key, "channel": channel, "label": label, "shown": shown_url(channel, url), **health})
    return found
