"""One lead: its fields, emails and notes; status, spam, delete, resend."""

from email.utils import make_msgid

from flask import abort, current_app, flash, g, redirect, render_template, request, url_for

import db
import db.leads
import db.outbox
import outbox.email
import outbox.rows
import outbox.sender
from admin.blueprint import audit, bp, log
from forms import LeadUpdateForm


def lead_or_404(lead_id: int) -> dict:
    lead = db.leads.get_lead(db.get_db(), lead_id)
    if lead is None:
        abort(404)
    return lead


def render_lead(lead: dict, form: LeadUpdateForm, status: int = 200):
    database = db.get_db()
    emails = [
        {**e, "attempts_log": db.outbox.attempts_of_row(database, e["id"])}
        for e in db.outbox.rows_for_lead(database, lead["id"])
    ]
    notes = db.leads.notes_for_lead(database, lead["id"])
    page = render_template(
        "admin/lead.html", lead=lead, form=form, emails=emails, notes=notes, labels=db.leads.LEAD_STATUSES
    )
    return page, status


@bp.get("/leads/<int:lead_id>")
def lead_detail(lead_id: int):
    """Every field of one lead, its email's delivery log, notes, and what can be done with it."""
    lead = lead_or_404(lead_id)
    return render_lead(lead, LeadUpdateForm(status=lead["status"]))


@bp.post("/leads/<int:lead_id>")
def update_lead(lead_id: int):
    """Change a lead's status and/or add a note."""
    lead = lead_or_404(lead_id)
    form = LeadUpdateForm()
    if not form.validate():
        return render_lead(lead, form, 422)
    database, now, done = db.get_db(), db.utcnow(), []
    # One lead.updated for the save, queued with its first change.
    event = outbox.rows.lead_event("lead.updated", {**lead, "status": form.status.data}, current_app.config, now)
    if form.status.data != lead["status"]:
        db.leads.set_status(database, lead_id, form.status.data, now, queue=event)
        event = []
        audit("status changed", lead_id, f"{lead['status']} → {form.status.data}")
        done.append(f"marked {db.leads.LEAD_STATUSES[form.status.data].lower()}")
    if form.note.data:
        db.leads.add_note(database, lead_id, g.account["username"], form.note.data, now, queue=event)
        audit("note added", lead_id)
        done.append("note added")
    if done:
        outbox.sender.ALERTS_AND_WEBHOOKS.wake.set()
    flash(f"Saved: {', '.join(done)}." if done else "Nothing to change.")
    return redirect(url_for("admin.lead_detail", lead_id=lead_id), 303)


@bp.post("/leads/<int:lead_id>/spam")
def mark_spam(lead_id: int):
    """Mark a lead as spam, or as not spam (it goes back to new)."""
    lead = lead_or_404(lead_id)
    status = "spam" if request.form.get("spam") == "1" else "new"
    now = db.utcnow()
    event = outbox.rows.lead_event("lead.updated", {**lead, "status": status}, current_app.config, now)
    db.leads.set_status(db.get_db(), lead_id, status, now, queue=event)
    outbox.sender.ALERTS_AND_WEBHOOKS.wake.set()
    audit("status changed", lead_id, f"{lead['status']} → {status}")
    flash(
        "Marked as spam: it is hidden from the inbox." if status == "spam" else "Marked as not spam: it is new again."
    )
    return redirect(url_for("admin.lead_detail", lead_id=lead_id), 303)


@bp.get("/leads/<int:lead_id>/delete")
def confirm_delete(lead_id: int):
    """Ask before deleting a lead for good."""
    return render_template("admin/delete.html", lead=lead_or_404(lead_id))


@bp.post("/leads/<int:lead_id>/delete")
def delete_lead(lead_id: int):
    """Delete a lead, its notes and its emails (a privacy request)."""
    lead_or_404(lead_id)
    for message_id in db.leads.delete_lead(db.get_db(), lead_id):
        outbox.email.eml_path(message_id, current_app.config).unlink(missing_ok=True)
    audit("deleted lead", lead_id)
    log.info("lead %s deleted by admin %s", lead_id, g.account["id"])
    flash(f"Request #{lead_id} and its emails are deleted.")
    return redirect(url_for("admin.inbox"), 303)


@bp.post("/emails/<int:email_id>/resend")
def resend_email(email_id: int):
    """Send an email again through the outbox."""
    database = db.get_db()
    email = db.outbox.get_row(database, email_id)
    if email is None:
        abort(404)
    db.outbox.resend(database, email_id, make_msgid(domain="clinic-site"), db.utcnow())
    outbox.sender.wake_senders()
    audit("email sent again", email["lead_id"], f"email #{email_id}")
    flash("The email is queued to be sent again. Its delivery shows below in a moment.")
    if email["lead_id"] and db.leads.get_lead(database, email["lead_id"]):
        return redirect(url_for("admin.lead_detail", lead_id=email["lead_id"]), 303)
    return redirect(url_for("admin.status"), 303)
