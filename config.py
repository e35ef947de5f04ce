"""Settings: embedded defaults, overridden by the environment; the only reader of os.environ."""

import base64
import ipaddress
import os
import re
import secrets
from collections.abc import Mapping
from pathlib import Path
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from dotenv import dotenv_values

ROOT = Path(__file__).resolve().parent

# name: (default, type); every row here has a row in docs/configuration.md's tables.
SETTINGS: dict[str, tuple[object, type]] = {
    "ENV_FILE": (str(ROOT / ".env"), str),
    "SECRET_KEY": (None, str),
    "DATA_DIR": (str(ROOT / "data"), str),
    "DATABASE_PATH": (None, str),
    "DATABASE": (None, str),  # the older name of DATABASE_PATH
    "SITE_URL": ("http://127.0.0.1:8000", str),
    "CONTENT_DIR": (str(ROOT / "content"), str),
    "CLINIC_NAME": ("Acupuncture Halls", str),
    "CLINIC_PHONE": ("+19495106333", str),
    "CLINIC_PHONE_DISPLAY": ("949-510-6333", str),
    "CLINIC_TOWN": ("San Juan Capistrano, CA", str),
    "CLINIC_ADDRESS": ("San Juan Capistrano, CA", str),
    "CLINIC_TIMEZONE": ("America/Los_Angeles", str),
    "CLINIC_EMAIL": ("frontdesk@acupuncturehalls.example", str),
    "CLINIC_REPLY_PROMISE": ("within one working day", str),
    "CLINIC_REPLY_PROMISE_ES": ("en un plazo de un día laborable", str),
    "LEAD_RETENTION_DAYS": (365, int),
    "BACKUP_KEEP_DAYS": (14, int),
    "HOUSEKEEPING_POLL_SECONDS": (60.0, float),
    "NOTIFY_DETAILS": (True, bool),
    "SPAM_MIN_SECONDS": (3.0, float),
    "CONTACT_RATE_LIMIT": ("5 per minute;30 per hour", str),
    "RATELIMIT_ENABLED": (True, bool),
    "RATELIMIT_STORAGE_URI": ("sqlite://", str),
    "MAX_CONTENT_LENGTH": (64 * 1024, int),
    "MAIL_SERVER": (None, str),
    "MAIL_PORT": (25, int),
    "MAIL_USE_TLS": (None, bool),  # unset: on for port 587
    "MAIL_USE_SSL": (None, bool),  # unset: on for port 465
    "MAIL_USERNAME": (None, str),
    "MAIL_PASSWORD": (None, str),
    "MAIL_DEFAULT_SENDER": ("Clinic website <no-reply@acupuncturehalls.example>", str),
    "MAIL_TIMEOUT": (10.0, float),
    "SSL_CERT_FILE": (None, str),  # read by OpenSSL itself; checked here so a typo stops start-up
    "OUTBOX_WORKER": (True, bool),
    "OUTBOX_POLL_SECONDS": (5.0, float),
    "OUTBOX_STALE_SECONDS": (120.0, float),
    "TRUSTED_PROXIES": (0, int),
    "ANALYTICS": (True, bool),
    "ANALYTICS_MAX_ROWS_PER_DAY": (1000, int),
    "ANALYTICS_RETENTION_DAYS": (730, int),
    "HTTPS": (None, bool),  # unset: on when SITE_URL is https
    "ADMIN_IDLE_MINUTES": (30, int),
    "ADMIN_SESSION_HOURS": (12, int),
    "LOGIN_MAX_FAILURES": (5, int),
    "LOGIN_LOCK_MINUTES": (15, int),
    "LOGIN_RATE_LIMIT": ("10 per minute;50 per hour", str),
    "REMINDER_AFTER_HOURS": (4.0, float),
    "CLINIC_HOURS": ("09:00-17:00", str),
    "CLINIC_DAYS": ("Mon-Fri", str),
    "ALERT_URLS": ("", str),  # space-separated Apprise URLs
    "ALERT_DETAILS": (False, bool),
    "AUTOREPLY": (False, bool),
    "AUTOREPLY_MAX_PER_HOUR": (20, int),
    "BOOKING_URL": (None, str),
    "WEBHOOK_URL": (None, str),
    "WEBHOOK_SECRET": (None, str),
    "RESTIC_REPOSITORY": (None, str),  # unset: no off-site backups
    "RESTIC_PASSWORD_FILE": (None, str),
    "RESTIC_PASSWORD": (None, str),
    "OFFSITE_DELAY_SECONDS": (60.0, float),
    "OFFSITE_KEEP_DAYS": (30, int),
    "WEEKLY_REPORT": (True, bool),
    "WEEKLY_REPORT_DAY": ("Mon", str),
    "WEEKLY_REPORT_HOUR": (8, int),  # in CLINIC_TIMEZONE
}

# Passed to restic as they are (besides the RESTIC_ settings above): its backends' own variables
# (S3, B2, Azure, Google, Swift, rclone), its other RESTIC_ options, and what any program needs.
RESTIC_PREFIXES = ("RESTIC_", "AWS_", "B2_", "AZURE_", "GOOGLE_", "OS_", "ST_", "RCLONE_")
RESTIC_SYSTEM = {
    "PATH",
    "HOME",
    "TMPDIR",
    "XDG_CACHE_HOME",
    "SSL_CERT_FILE",
    "SSL_CERT_DIR",
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "NO_PROXY",
    "http_proxy",
    "https_proxy",
    "no_proxy",
}

TRUE = {"1", "true", "yes", "on"}
FALSE = {"0", "false", "no", "off", ""}


class ConfigError(SystemExit):
    """A setting in the environment cannot be used; stops start-up with its message."""


def parse(name: str, raw: str, kind: type) -> object:
    """Turn one environment string into the setting's type, or raise ConfigError."""
    if kind is bool:
        if raw.strip().lower() in TRUE:
            return True
        if raw.strip().lower() in FALSE:
            return False
        raise ConfigError(f"{name}={raw!r}: expected one of 1/true/yes or 0/false/no")
    if kind in (int, float):
        try:
            return kind(raw)
        except ValueError:
            raise ConfigError(f"{name}={raw!r}: expected a number") from None
    return raw


def with_env_file(environ: Mapping[str, str]) -> dict[str, str]:
    """`environ` over the values of the optional `.env` file it names (ENV_FILE, '' for none)."""
    path = environ.get("ENV_FILE", SETTINGS["ENV_FILE"][0])
    if not path or not os.path.isfile(path):
        return dict(environ)
    # Taken literally, never expanded: a "$" in a password stays a "$".
    from_file = {name: value for name, value in dotenv_values(path, interpolate=False).items() if value is not None}
    return {**from_file, **environ}


def from_env(environ: Mapping[str, str] = os.environ) -> dict:
    """Return the settings: defaults, overridden by the `.env` file, overridden by `environ`."""
    environ = with_env_file(environ)
    config = {}
    for name, (default, kind) in SETTINGS.items():
        raw = environ.get(name)
        config[name] = default if raw is None or raw == "" else parse(name, raw, kind)
    config["RESTIC_ENV"] = {
        name: value
        for name, value in environ.items()
        if (name.startswith(RESTIC_PREFIXES) or name in RESTIC_SYSTEM) and name not in SETTINGS
    }
    try:
        ZoneInfo(config["CLINIC_TIMEZONE"])
    except (ZoneInfoNotFoundError, ValueError):
        raise ConfigError(f"CLINIC_TIMEZONE={config['CLINIC_TIMEZONE']!r}: unknown time zone") from None
    return config


def finish(config: dict) -> dict:
    """Fill the settings derived from others: database path, secret key, HTTPS, cookies, mail."""
    data_dir = private_folder(Path(config["DATA_DIR"]))
    config["DATABASE"] = config["DATABASE_PATH"] = database_path(config, data_dir)
    if not config["SECRET_KEY"]:
        config["SECRET_KEY"] = stored_secret(data_dir / "secret_key")
    config["SITE_URL"] = config["SITE_URL"].rstrip("/")
    if config["HTTPS"] is None:  # an https address is served over HTTPS; HTTPS=true/false overrides
        config["HTTPS"] = config["SITE_URL"].lower().startswith("https://")
    config["SESSION_COOKIE_HTTPONLY"] = True
    config["SESSION_COOKIE_SAMESITE"] = "Lax"
    config["SESSION_COOKIE_SECURE"] = config["HTTPS"]
    if config["HTTPS"]:
        config["SESSION_COOKIE_NAME"] = "__Host-session"
        config["PREFERRED_URL_SCHEME"] = "https"
    # An hour-old form must still send; the form view renews a stale token itself.
    config["WTF_CSRF_TIME_LIMIT"] = None
    config["RATELIMIT_HEADERS_ENABLED"] = False
    if config["RATELIMIT_STORAGE_URI"] == "sqlite://":  # one counter file that every worker shares
        config["RATELIMIT_STORAGE_URI"] = f"sqlite://{(data_dir / 'ratelimit.db').resolve()}"
    config["RATELIMIT_SWALLOW_ERRORS"] = True  # a broken counter store must not turn a lead away
    finish_mail(config)
    config["WORK_HOURS"] = parse_hours(config["CLINIC_HOURS"])
    config["WORK_DAYS"] = parse_days(config["CLINIC_DAYS"])
    config["WEEKLY_REPORT_WEEKDAY"] = parse_weekday(config["WEEKLY_REPORT_DAY"], config["WEEKLY_REPORT_HOUR"])
    finish_channels(config)
    finish_offsite(config)
    return config


def database_path(config: dict, data_dir: Path) -> str:
    """The database file: DATABASE_PATH, or its older name DATABASE, or leads.db in DATA_DIR."""
    path, old = config["DATABASE_PATH"], config["DATABASE"]
    if path and old and Path(path) != Path(old):
        raise ConfigError(f"DATABASE_PATH={path!r} and DATABASE={old!r} differ: set only DATABASE_PATH")
    return path or old or str(data_dir / "leads.db")


def finish_mail(config: dict) -> None:
    """Choose the SMTP encryption from the port unless set (587 STARTTLS, 465 TLS); check SSL_CERT_FILE."""
    if config["MAIL_USE_SSL"] is None:
        config["MAIL_USE_SSL"] = config["MAIL_PORT"] == 465 and not config["MAIL_USE_TLS"]
    if config["MAIL_USE_TLS"] is None:
        config["MAIL_USE_TLS"] = config["MAIL_PORT"] == 587 and not config["MAIL_USE_SSL"]
    if config["MAIL_USE_TLS"] and config["MAIL_USE_SSL"]:
        raise ConfigError("MAIL_USE_TLS and MAIL_USE_SSL are both on: use TLS (port 587) or SSL (port 465)")
    cert_file = config["SSL_CERT_FILE"]
    if cert_file and not Path(cert_file).is_file():
        raise ConfigError(f"SSL_CERT_FILE={cert_file!r}: no such file")


def finish_channels(config: dict) -> None:
    """Check the web addresses of the booking page and the webhook, and the webhook's secret."""
    for name in ("BOOKING_URL", "WEBHOOK_URL"):
        url = config[name]
        if url and not re.fullmatch(r"https?://[^\s/?#]+[^\s]*", url, re.IGNORECASE):
            raise ConfigError(f"{name}={url!r}: expected a web address starting with https://")
        if url and url.lower().startswith("http://") and not is_loopback(url):
            raise ConfigError(
                f"{name}={url!r}: http:// would carry visitors' requests across the internet unencrypted; "
                "use an https:// address (http:// is accepted only to this machine, e.g. http://127.0.0.1)"
            )
    secret = config["WEBHOOK_SECRET"]
    if secret:
        try:
            key = base64.b64decode(secret.removeprefix("whsec_"), validate=True)
        except ValueError:
            key = b""
        if not secret.startswith("whsec_") or len(key) < 16:
            raise ConfigError(
                "WEBHOOK_SECRET: expected whsec_ followed by at least 16 bytes in base64; "
                "make one with `flask --app app webhook-secret`"
            )
    if isinstance(config["ALERT_URLS"], str):
        config["ALERT_URLS"] = config["ALERT_URLS"].split()


def finish_offsite(config: dict) -> None:
    """Check that an off-site repository comes with its key, and that the delay and keep days make sense."""
    if config["RESTIC_REPOSITORY"] and not (config["RESTIC_PASSWORD_FILE"] or config["RESTIC_PASSWORD"]):
        raise ConfigError(
            "RESTIC_REPOSITORY is set without its key: set RESTIC_PASSWORD_FILE (or RESTIC_PASSWORD); "
            'see README, "Off-site backups"'
        )
    if config["OFFSITE_DELAY_SECONDS"] < 0:
        raise ConfigError(f"OFFSITE_DELAY_SECONDS={config['OFFSITE_DELAY_SECONDS']:g}: expected 0 or more seconds")
    if config["OFFSITE_KEEP_DAYS"] < 1:
        raise ConfigError(f"OFFSITE_KEEP_DAYS={config['OFFSITE_KEEP_DAYS']}: expected 1 or more days")
    config.setdefault("RESTIC_ENV", {})


def is_loopback(url: str) -> bool:
    """Whether a web address names this machine (localhost, 127.0.0.0/8, ::1)."""
    try:
        host = urlsplit(url).hostname or ""
        return host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


DAYS = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"]


def parse_hours(text: str) -> tuple[int, int]:
    """Turn '09:00-17:00' into opening and closing minutes of the day, or raise ConfigError."""
    match = re.fullmatch(r"\s*(\d{1,2}):(\d{2})\s*-\s*(\d{1,2}):(\d{2})\s*", text)
    if match:
        h1, m1, h2, m2 = (int(part) for part in match.groups())
        opens, closes = h1 * 60 + m1, h2 * 60 + m2
        if m1 < 60 and m2 < 60 and 0 <= opens < closes <= 24 * 60:
            return opens, closes
    raise ConfigError(f"CLINIC_HOURS={text!r}: expected opening and closing times like 09:00-17:00")


def parse_days(text: str) -> frozenset[int]:
    """Turn 'Mon-Fri' or 'Mon,Wed,Sat' into weekday numbers (Monday is 0), or raise ConfigError."""
    days: set[int] = set()
    try:
        for part in text.lower().replace(" ", "").split(","):
            first, _, last = part.partition("-")
            start, end = DAYS.index(first[:3]), DAYS.index((last or first)[:3])
            days.update(range(start, end + 1) if start <= end else [*range(start, 7), *range(end + 1)])
    except ValueError:
        raise ConfigError(f"CLINIC_DAYS={text!r}: expected days like Mon-Fri or Mon,Wed,Sat") from None
    return frozenset(days)


def parse_weekday(day: str, hour: int) -> int:
    """Turn WEEKLY_REPORT_DAY ('Mon' ... 'Sun') into its weekday number (Monday is 0), checking the hour too."""
    if day.strip().lower()[:3] not in DAYS or len(day.strip()) < 3:
        raise ConfigError(f"WEEKLY_REPORT_DAY={day!r}: expected a day like Mon or Friday")
    if not 0 <= hour <= 23:
        raise ConfigError(f"WEEKLY_REPORT_HOUR={hour!r}: expected an hour from 0 to 23")
    return DAYS.index(day.strip().lower()[:3])


def private_folder(path: Path) -> Path:
    """Make `path` a folder only this user can enter, and make every file the process creates 0600."""
    os.umask(0o077)  # the one place: database, backups, .eml files, counters and keys are the owner's alone
    path.mkdir(parents=True, exist_ok=True)
    mode = path.stat().st_mode & 0o777
    if mode & 0o077 and path.stat().st_uid == os.getuid():
        path.chmod(mode & 0o700)  # e.g. a clone's data/ (0755) is tightened on the first start
    return path


def stored_secret(path: Path) -> str:
    """Return the secret kept at `path`, making it once so sessions survive restarts."""
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        pass
    key = secrets.token_hex(32)
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    tmp.unlink(missing_ok=True)  # left by a process of the same id that died here
    # Created 0600 by the same call that creates it, so the key is never readable by others, not even briefly.
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(key)
    try:
        os.link(tmp, path)  # atomic: two workers starting at once agree on one key
    except FileExistsError:
        key = path.read_text().strip()
    finally:
        tmp.unlink()
    return key
