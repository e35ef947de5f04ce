"""Every migration of leads.db, in the order they run, each under the name it was applied with.

sqlite-utils records a migration by its name: never rename or edit one, and add new ones only at the end.
The order is the order of registration below, not the numbers in the names. A migration holds what it needs
(SQL fragments, the ntfy masking) instead of calling code that may later change.
"""

import re

from sqlite_utils import Database
from sqlite_utils.db import ForeignKey
from sqlite_utils.migrations import Migrations

clinic = Migrations("clinic")


@clinic()
def m001_leads_and_outbox(db: Database) -> None:
    """Leads, their notification emails, and every delivery attempt."""
    db.table("leads").create(
        {
            "id": int,
            "form_id": str,
            "created_at": str,
            "updated_at": str,
            "name": str,
            "email": str,
            "phone": str,
            "preferred_time": str,
            "message": str,
            "status": str,
            "is_spam": int,
            "spam_reason": str,
            "utm_source": str,
            "utm_medium": str,
            "utm_campaign": str,
            "referrer": str,
            "user_agent": str,
        },
        pk="id",
        not_null={"form_id", "created_at", "updated_at", "name", "status", "is_spam"},
        defaults={"status": "new", "is_spam": 0, "email": "", "phone": "", "message": ""},
    )
    db.table("leads").create_index(["form_id"], unique=True)
    db.table("leads").create_index(["created_at"])
    db.table("outbox").create(
        {
            "id": int,
            "lead_id": int,
            "kind": str,
            "message_id": str,
            "to_addr": str,
            "reply_to": str,
            "subject": str,
            "body_text": str,
            "body_html": str,
            "status": str,
            "attempts": int,
            "next_attempt_at": str,
            "claimed_at": str,
            "sent_at": str,
            "last_error": str,
            "created_at": str,
            "updated_at": str,
        },
        pk="id",
        not_null={"kind", "message_id", "to_addr", "subject", "body_text", "status", "attempts"},
        defaults={"status": "pending", "attempts": 0},
    )
    db.table("outbox").create_index(["status", "next_attempt_at"])
    db.table("outbox").create_index(["lead_id"])
    db.table("email_attempts").create(
        {"id": int, "outbox_id": int, "at": str, "ok": int, "error": str},
        pk="id",
        not_null={"outbox_id", "at", "ok"},
    )
    db.table("email_attempts").create_index(["outbox_id"])


@clinic()
def m002_admin(db: Database) -> None:
    """Owner accounts, server-side sessions, sign-in failures, the audit log, notes, reminders."""
    db.table("accounts").create(
        {"id": int, "username": str, "password_hash": str, "created_at": str, "updated_at": str},
        pk="id",
        not_null={"username", "password_hash", "created_at", "updated_at"},
    )
    db.table("accounts").create_index(["username"], unique=True)
    db.table("admin_sessions").create(
        {"id": str, "account_id": int, "created_at": str, "last_seen_at": str, "address": str},
        pk="id",
        not_null={"account_id", "created_at", "last_seen_at"},
        foreign_keys=[("account_id", "accounts", "id")],
    )
    db.table("admin_sessions").create_index(["account_id"])
    db.table("login_failures").create({"id": int, "key": str, "at": str}, pk="id", not_null={"key", "at"})
    db.table("login_failures").create_index(["key", "at"])
    db.table("audit_log").create(
        {"id": int, "at": str, "actor": str, "action": str, "lead_id": int, "detail": str, "address": str},
        pk="id",
        not_null={"at", "actor", "action"},
    )
    db.table("audit_log").create_index(["at"])
    db.table("notes").create(
        {"id": int, "lead_id": int, "at": str, "author": str, "body": str},
        pk="id",
        not_null={"lead_id", "at", "author", "body"},
        foreign_keys=[("lead_id", "leads", "id")],
    )
    db.table("notes").create_index(["lead_id"])
    db.table("leads").add_column("reminded_at", str)
    db.table("leads").create_index(["status", "created_at"])


@clinic()
def m003_admin_session_browser(db: Database) -> None:
    """The short name of the browser each admin session signed in from ("Safari on iPhone")."""
    db.table("admin_sessions").add_column("browser", str)


@clinic()
def m011_account_device_generation(db: Database) -> None:
    """Each account's device generation; a fresh one, so device cookies from before it count no more."""
    db.table("accounts").add_column("device_generation", str)
    db.execute("UPDATE accounts SET device_generation = lower(hex(randomblob(16)))")


# What m004_leads_fts builds the index and its triggers from, as it was applied (db.search reads the index
# with these status codes; a later change to either needs a migration of its own).
FTS_COLUMNS = "name, email, phone, message"

PHONE_DIGITS_MAX = 15  # E.164

# Each index row's rowid is the lead's id * 8 + its status's code, so a search counts its matches per
# status from the index alone, without reading a lead. The index stores these: never renumber them;
# a new status needs a code of its own and a migration that recreates the triggers.
FTS_STATUS_CODES = {"new": 0, "contacted": 1, "booked": 2, "not_interested": 3, "spam": 4}

FTS_OTHER_STATUS = 7


def _phone_suffixes(column: str) -> str:
    """SQL for every tail of the phone's digits, space-separated, so a prefix search matches digits anywhere."""
    digits = column
    for ch in "+ -().":
        digits = f"replace({digits}, '{ch}', '')"
    return " || ' ' || ".join(f"substr({digits}, {start})" for start in range(1, PHONE_DIGITS_MAX - 1))


def _fts_values(row: str) -> str:
    """SQL for the rowid and the indexed columns of the lead `row` (new, old or leads)."""
    codes = " ".join(f"WHEN '{status}' THEN {code}" for status, code in FTS_STATUS_CODES.items())
    rowid = f"{row}.id * 8 + CASE {row}.status {codes} ELSE {FTS_OTHER_STATUS} END"
    return f"{rowid}, {row}.name, {row}.email, {_phone_suffixes(f'{row}.phone')}, {row}.message"


@clinic()
def m004_leads_fts(db: Database) -> None:
    """A full-text index of the leads, kept in step by triggers, and built for the leads already stored."""
    # Contentless (the text stays in leads only): its phone column holds derived digit tails and its
    # rowid the status too, which an external-content table could not read back from leads. Deleting a
    # row needs the indexed values, which the triggers compute from old.* exactly as from new.*.
    db.execute(
        f"""CREATE VIRTUAL TABLE leads_fts USING fts5({FTS_COLUMNS}, content='',
        tokenize='unicode61 remove_diacritics 2', prefix='2 3')"""
    )
    insert = f"INSERT INTO leads_fts (rowid, {FTS_COLUMNS}) VALUES ({_fts_values('new')});"
    delete = f"INSERT INTO leads_fts (leads_fts, rowid, {FTS_COLUMNS}) VALUES ('delete', {_fts_values('old')});"
    db.execute(f"CREATE TRIGGER leads_fts_insert AFTER INSERT ON leads BEGIN {insert} END")
    db.execute(f"CREATE TRIGGER leads_fts_delete AFTER DELETE ON leads BEGIN {delete} END")
    db.execute(
        f"CREATE TRIGGER leads_fts_update AFTER UPDATE OF id, status, {FTS_COLUMNS} ON leads"
        f" BEGIN {delete} {insert} END"
    )
    db.execute(f"INSERT INTO leads_fts (rowid, {FTS_COLUMNS}) SELECT {_fts_values('leads')} FROM leads")


@clinic()
def m005_inbox_counts(db: Database) -> None:
    """What the inbox counts without reading every lead: a count per status kept by triggers; the last delivery."""
    db.table("lead_counts").create({"status": str, "n": int}, pk="status", not_null={"n"})
    add = "INSERT INTO lead_counts (status, n) VALUES (new.status, 1) ON CONFLICT (status) DO UPDATE SET n = n + 1;"
    remove = "UPDATE lead_counts SET n = n - 1 WHERE status = old.status;"
    db.execute(f"CREATE TRIGGER lead_counts_insert AFTER INSERT ON leads BEGIN {add} END")
    db.execute(f"CREATE TRIGGER lead_counts_delete AFTER DELETE ON leads BEGIN {remove} END")
    db.execute(
        "CREATE TRIGGER lead_counts_update AFTER UPDATE OF status ON leads WHEN old.status IS NOT new.status"
        f" BEGIN {remove} {add} END"
    )
    db.execute("INSERT INTO lead_counts (status, n) SELECT status, count(*) FROM leads GROUP BY status")
    db.table("outbox").create_index(["status", "sent_at"])  # the last delivery, for the inbox's email banner


@clinic()
def m003_lead_data_goes_with_its_lead(db: Database) -> None:
    """Emails, their attempts and notes point at their lead with ON DELETE CASCADE (a table rebuild each)."""
    # Rows whose parent is already gone would fail the new constraint; they belong to nobody.
    db.execute("DELETE FROM email_attempts WHERE outbox_id NOT IN (SELECT id FROM outbox)")
    db.execute("DELETE FROM outbox WHERE lead_id IS NOT NULL AND lead_id NOT IN (SELECT id FROM leads)")
    db.execute("DELETE FROM notes WHERE lead_id NOT IN (SELECT id FROM leads)")
    # outbox first: email_attempts must not point at it with a cascade while it is rebuilt.
    for table, column, parent in (
        ("outbox", "lead_id", "leads"),
        ("email_attempts", "outbox_id", "outbox"),
        ("notes", "lead_id", "leads"),
    ):
        db.table(table).transform(foreign_keys=[ForeignKey(table, column, parent, "id", on_delete="CASCADE")])


@clinic()
def m004_housekeeping(db: Database) -> None:
    """When the daily housekeeping is next due, and a log of each backup and purge."""
    db.table("housekeeping").create(
        {"job": str, "due_at": str, "claimed_at": str, "claimed_by": str}, pk="job", not_null={"due_at"}
    )
    db.table("housekeeping").insert({"job": "daily", "due_at": ""})  # a new site is due at once
    db.table("housekeeping_log").create(
        {
            "id": int,
            "job": str,
            "started_at": str,
            "finished_at": str,
            "ok": int,
            "detail": str,
            "path": str,
            "size_bytes": int,
            "leads": int,
            "actor": str,
        },
        pk="id",
        not_null={"job", "started_at", "finished_at", "ok"},
    )
    db.table("housekeeping_log").create_index(["job", "id"])


@clinic()
def m008_lead_landing_page(db: Database) -> None:
    """The page each lead was sent from (`/` or `/articles/<slug>`); every earlier lead came from `/`."""
    db.table("leads").add_column("landing_page", str)
    db.execute("UPDATE leads SET landing_page = '/'")
    db.table("leads").create_index(["landing_page", "created_at"])


@clinic()
def m009_outbox_channels(db: Database) -> None:
    """Each outbox row's channel (email, alert, webhook) and, for alerts and webhooks, which address it goes to."""
    db.table("outbox").add_column("channel", str, not_null_default="email")
    db.table("outbox").add_column("target", str)
    db.table("outbox").create_index(["channel", "status", "next_attempt_at"])  # each sender's claim
    db.table("outbox").create_index(["channel", "target", "status"])
    db.table("outbox").create_index(["kind", "to_addr", "created_at"])  # one confirmation a day per address


# Before m012, an ntfy alert's address and Apprise's errors about it were stored with the topic in full.
STORED_NTFY_ADDRESS = re.compile(r"\bntfys?://[^\s?'\"]*")

STORED_NTFY_ERROR_TOPIC = re.compile(r"(?<=topic ')[a-z0-9_-]+(?=')", re.IGNORECASE)


def _masked_topic(topic: str) -> str:
    """A topic as Apprise masks a token: its first and last character."""
    return f"{topic[0]}...{topic[-1]}" if topic else topic


def _masked_ntfy_address(address: str) -> str:
    """A stored ntfy address with its topics masked; a host of your own stays shown."""
    scheme, _, rest = address.partition("://")
    parts = rest.split("/")
    # ntfy.sh itself was shown as topics only, and a topic is letters, digits, _ and -: a part with more is a host
    # (a bare host name is masked too, which hides nothing secret).
    first_topic = 1 if re.search(r"[.:@\[]", parts[0]) or parts[0] == "localhost" else 0
    return f"{scheme}://" + "/".join(parts[:first_topic] + [_masked_topic(topic) for topic in parts[first_topic:]])


def masked_stored_ntfy(text: str | None) -> str | None:
    """Stored text with each ntfy topic masked, in an address or in an error naming the topic."""
    if not text:
        return text
    text = STORED_NTFY_ERROR_TOPIC.sub(lambda match: _masked_topic(match[0]), text)
    return STORED_NTFY_ADDRESS.sub(lambda match: _masked_ntfy_address(match[0]), text)


@clinic()
def m012_mask_stored_ntfy_topics(db: Database) -> None:
    """Mask the ntfy topics stored in full before: alert addresses, their errors, the audit log's test lines."""
    db.register_function(masked_stored_ntfy, deterministic=True)
    db.execute(
        "UPDATE outbox SET to_addr = masked_stored_ntfy(to_addr), last_error = masked_stored_ntfy(last_error)"
        " WHERE channel = 'alert'"
    )
    db.execute(
        "UPDATE email_attempts SET error = masked_stored_ntfy(error)"
        " WHERE outbox_id IN (SELECT id FROM outbox WHERE channel = 'alert')"
    )
    db.execute("UPDATE audit_log SET detail = masked_stored_ntfy(detail) WHERE action = 'test alert queued'")


@clinic()
def m010_analytics(db: Database) -> None:
    """Page views and unique visitors per day (the clinic's calendar), page and source."""
    db.table("visit_counts").create(
        {"day": str, "page": str, "source": str, "medium": str, "campaign": str, "page_views": int, "visitors": int},
        pk=("day", "page", "source", "medium", "campaign"),
        not_null={"day", "page", "source", "medium", "campaign", "page_views", "visitors"},
        defaults={"medium": "", "campaign": "", "page_views": 0, "visitors": 0},
    )


@clinic()
def m013_autoreply_skips(db: Database) -> None:
    """Confirmations the hourly limit (AUTOREPLY_MAX_PER_HOUR) skipped, counted per UTC hour."""
    db.table("autoreply_skips").create({"hour": str, "skipped": int}, pk="hour", not_null={"skipped"})
    db.table("outbox").create_index(["kind", "created_at"])  # the confirmations of the last hour and day


# Off-site backups: any change to leads or notes marks the database changed; a snapshot follows
# OFFSITE_DELAY_SECONDS later (offsite.py). After the first change the trigger finds the mark set
# and writes nothing, so a busy minute costs one small UPDATE, not one per post.


@clinic()
def m014_offsite_backups(db: Database) -> None:
    """When the database last changed since an off-site snapshot, the jobs that upload and prune them."""
    db.table("housekeeping").add_column("changed_at", str)
    db.table("housekeeping_log").add_column("snapshot", str)
    for job in ("offsite", "offsite-prune"):
        db.table("housekeeping").insert({"job": job, "due_at": ""})  # a newly configured repository gets one at once
    for table in ("leads", "notes"):
        for event in ("INSERT", "UPDATE", "DELETE"):
            db.execute(
                f"CREATE TRIGGER offsite_{table}_{event.lower()} AFTER {event} ON {table} BEGIN"
                " UPDATE housekeeping SET changed_at = strftime('%Y-%m-%dT%H:%M:%S+00:00', 'now')"
                " WHERE job = 'offsite' AND changed_at IS NULL; END"
            )


@clinic()
def m015_calls_and_booking_clicks(db: Database) -> None:
    """Taps on the phone number and clicks on Book online, counted per day, page and source beside the visits."""
    db.table("visit_counts").add_column("calls", int, not_null_default=0)
    db.table("visit_counts").add_column("booking_clicks", int, not_null_default=0)


@clinic()
def m016_lead_language(db: Database) -> None:
    """The language of the page each lead was sent from (`en` or `es`); every earlier lead came from an English page."""
    db.execute("ALTER TABLE leads ADD COLUMN language TEXT NOT NULL DEFAULT 'en'")


@clinic()
def m017_confirmation_mailbox(db: Database) -> None:
    """Each confirmation's mailbox (lower case, no +tag, no dots at Gmail) in an index of its own: the one-a-day
    check looks one mailbox up instead of reading and normalising the day's addresses inside the lead's write.
    """

    def mailbox(address: str) -> str:  # as outbox.rows.mailbox() did when this migration was written
        local, _, domain = address.strip().lower().rpartition("@")
        local = local.split("+", 1)[0]
        gmail = domain in ("gmail.com", "googlemail.com")
        return f"{local.replace('.', '')}@gmail.com" if gmail else f"{local}@{domain}"

    db.execute("ALTER TABLE outbox ADD COLUMN mailbox TEXT")
    for row in list(db.query("SELECT id, to_addr FROM outbox WHERE kind = 'autoreply'")):
        db.execute("UPDATE outbox SET mailbox = ? WHERE id = ?", [mailbox(row["to_addr"]), row["id"]])
    db.execute("CREATE INDEX idx_outbox_mailbox_created_at ON outbox (mailbox, created_at) WHERE mailbox IS NOT NULL")
    db.execute("DROP INDEX IF EXISTS idx_outbox_kind_to_addr_created_at")  # the check it served reads the one above


@clinic()
def m018_recent_search_index(db: Database) -> None:
    """A second full-text index that holds only the newest leads (ids from search_recent.from_id on), kept in step
    by triggers like leads_fts: a search looks for a common word among the newest there in a few milliseconds,
    where leads_fts first merges the word's whole list (about 30 ms for a word in half of a million leads).
    Raising from_id drops the older leads from it (db.search.trim_recent_index); it is never lowered.
    """
    db.execute(
        f"""CREATE VIRTUAL TABLE leads_fts_recent USING fts5({FTS_COLUMNS}, content='',
        tokenize='unicode61 remove_diacritics 2', prefix='2 3')"""
    )
    top = db.execute("SELECT coalesce(max(id), 0) FROM leads").fetchone()[0]
    db.execute("CREATE TABLE search_recent (from_id INTEGER NOT NULL)")
    db.execute("INSERT INTO search_recent (from_id) VALUES (?)", [max(0, top - 40_000)])
    recent = "(SELECT from_id FROM search_recent)"
    insert = f"INSERT INTO leads_fts_recent (rowid, {FTS_COLUMNS}) VALUES ({_fts_values('new')});"
    columns = f"leads_fts_recent, rowid, {FTS_COLUMNS}"
    delete = f"INSERT INTO leads_fts_recent ({columns}) VALUES ('delete', {_fts_values('old')});"
    db.execute(
        f"CREATE TRIGGER leads_fts_recent_insert AFTER INSERT ON leads WHEN new.id >= {recent} BEGIN {insert} END"
    )
    db.execute(
        f"CREATE TRIGGER leads_fts_recent_delete AFTER DELETE ON leads WHEN old.id >= {recent} BEGIN {delete} END"
    )
    db.execute(
        f"CREATE TRIGGER leads_fts_recent_update AFTER UPDATE OF id, status, {FTS_COLUMNS} ON leads"
        f" WHEN old.id >= {recent} BEGIN {delete} {insert} END"
    )
    # A contentless index forgets a row only when given the values it indexed: the lead's, as the triggers made them.
    forget = (
        f"INSERT INTO leads_fts_recent ({columns}) SELECT 'delete', {_fts_values('leads')}"
        " FROM leads WHERE leads.id >= old.from_id AND leads.id < new.from_id;"
    )
    db.execute(
        "CREATE TRIGGER search_recent_trim AFTER UPDATE OF from_id ON search_recent"
        f" WHEN new.from_id > old.from_id BEGIN {forget} END"
    )
    db.execute(
        f"INSERT INTO leads_fts_recent (rowid, {FTS_COLUMNS}) SELECT {_fts_values('leads')} FROM leads WHERE id >= ?",
        [max(0, top - 40_000)],
    )
