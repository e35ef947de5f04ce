"""Leads: storing one, reading it, its status and notes, deleting it."""

from sqlite_utils import Database
from sqlite_utils.db import NotFoundError

from db import insert_row, write
from db.outbox import enqueue, rows_for_lead

# Every status a lead can have, in the order the admin shows them, with the label the owner reads.
LEAD_STATUSES = {
    "new": "New",
    "contacted": "Contacted",
    "booked": "Booked",
    "not_interested": "Not interested",
    "spam": "Spam",
}


def add_lead(db: Database, lead: dict, now: str) -> tuple[int, bool]:
    """Store a lead unless its form was sent before; return its id and whether it is new.

    Call inside write(), so the check and the insert cannot interleave with another.
    """
    existing = list(db.query("SELECT id FROM leads WHERE form_id = ?", [lead["form_id"]]))
    if existing:
        return existing[0]["id"], False
    row = {**lead, "created_at": now, "updated_at": now, "status": "spam" if lead.get("is_spam") else "new"}
    return insert_row(db, "leads", row), True


def get_lead(db: Database, lead_id: int) -> dict | None:
    """Return one lead as a dict, or None."""
    try:
        return db.table("leads").get(lead_id)
    except NotFoundError:
        return None


def count_leads(db: Database) -> int:
    """Return how many leads are stored, spam included."""
    return db.table("leads").count


def set_status(db: Database, lead_id: int, status: str, now: str, queue: list[dict] = ()) -> str | None:
    """Change a lead's status (spam flag follows) and queue the outbox rows in `queue` with it.

    Return the old status, or None if no such lead.
    """
    with write(db):
        lead = get_lead(db, lead_id)
        if lead is None:
            return None
        db.execute(
            "UPDATE leads SET status = ?, is_spam = ?, updated_at = ? WHERE id = ?",
            [status, int(status == "spam"), now, lead_id],
        )
        for row in queue:
            enqueue(db, row, now)
        return lead["status"]


def add_note(db: Database, lead_id: int, author: str, body: str, now: str, queue: list[dict] = ()) -> None:
    """Append a note to a lead and queue the outbox rows in `queue` with it."""
    with write(db):
        insert_row(db, "notes", {"lead_id": lead_id, "at": now, "author": author, "body": body})
        db.execute("UPDATE leads SET updated_at = ? WHERE id = ?", [now, lead_id])
        for row in queue:
            enqueue(db, row, now)


def notes_for_lead(db: Database, lead_id: int) -> list[dict]:
    """Return a lead's notes, oldest first."""
    return list(db.query("SELECT * FROM notes WHERE lead_id = ? ORDER BY id", [lead_id]))


def delete_lead(db: Database, lead_id: int) -> list[str]:
    """Delete one lead; its notes, emails and attempts go with it (ON DELETE CASCADE).

    Return the Message-IDs of its emails, so their files can go too; empty if there was no such lead.
    """
    with write(db):
        message_ids = [e["message_id"] for e in rows_for_lead(db, lead_id)]
        deleted = db.execute("DELETE FROM leads WHERE id = ?", [lead_id]).rowcount
        return message_ids if deleted else []


def leads_still_new(db: Database, limit: int) -> tuple[int, list[dict]]:
    """How many requests (not spam) are still new, and the id and time of the oldest `limit` of them."""
    count = next(db.query("SELECT count(*) AS n FROM leads WHERE status = 'new'"))["n"]
    rows = db.query("SELECT id, created_at FROM leads WHERE status = 'new' ORDER BY created_at, id LIMIT ?", [limit])
    return count, list(rows)
