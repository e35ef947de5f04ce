"""Email status and the audit log."""

from datetime import UTC, datetime, timedelta
from pathlib import Path

from flask import abort, current_app, flash, g, redirect, render_template, url_for

import db
import db.accounts
import db.housekeeping
import db.outbox
import housekeeping
import offsite
import outbox.addresses
import outbox.rows
import outbox.sender
from admin.auth import live_sessions
from admin.blueprint import audit, bp


@bp.get("/status")
def status():
    """Is email working: settings, last delivery, emails in trouble, the test button; open sessions; the audit log."""
    cfg = current_app.config
    database = db.get_db()
    opens, closes = cfg["WORK_HOURS"]
    month_ago = db.iso_utc(datetime.now(UTC) - outbox.rows.SKIPS_KEPT)
    return render_template(
        "admin/status.html",
        health=db.outbox.delivery_health(database),
        email_channel=db.outbox.channel_health(database, "email"),
        channels=outbox.addresses.status(database, cfg),
        mail_server=f"{cfg['MAIL_SERVER']}:{cfg['MAIL_PORT']}" if cfg["MAIL_SERVER"] else None,
        mail_folder=Path(cfg["DATA_DIR"]) / "mail",
        clinic_email=cfg["CLINIC_EMAIL"],
        reminder_hours=cfg["REMINDER_AFTER_HOURS"],
        work_hours=f"{cfg['CLINIC_DAYS']}, {opens // 60:02d}:{opens % 60:02d}–{closes // 60:02d}:{closes % 60:02d}",
        audit_log=db.accounts.recent_audit(database),
        sessions=live_sessions(g.account, datetime.now(UTC)),
        housekeeping=housekeeping.status(database, datetime.now(UTC)),
        retention_days=cfg["LEAD_RETENTION_DAYS"],
        kept_undelivered=db.housekeeping.count_leads_kept_undelivered(
            database, db.iso_utc(datetime.now(UTC) - timedelta(days=cfg["LEAD_RETENTION_DAYS"]))
        )
        if cfg["LEAD_RETENTION_DAYS"] > 0
        else 0,
        keep_days=cfg["BACKUP_KEEP_DAYS"],
        autoreply_max=cfg["AUTOREPLY_MAX_PER_HOUR"] if cfg["AUTOREPLY"] else None,
        skipped_confirmations=db.outbox.skipped_confirmations_since(database, month_ago),
        offsite=offsite.status(database, cfg, datetime.now(UTC)) if offsite.enabled(cfg) else None,
    )


@bp.post("/status/test-email")
def send_test_email():
    """Queue a test email to the clinic's mailbox."""
    email = outbox.rows.check_email(g.account["username"], current_app.config)
    db.outbox.enqueue(db.get_db(), email, db.utcnow())
    outbox.sender.wake_senders()
    audit("test email queued")
    flash(f"A test email is on its way to {current_app.config['CLINIC_EMAIL']}. Reload this page to see it arrive.")
    return redirect(url_for("admin.status"), 303)


@bp.post("/status/test/<key>")
def send_test_message(key: str):
    """Queue a test alert to one ALERT_URLS address, or a test event to the webhook."""
    cfg = current_app.config
    row = outbox.rows.check_row(key, g.account["username"], cfg, db.utcnow())
    if row is None:
        abort(404)
    db.outbox.enqueue(db.get_db(), row, db.utcnow())
    outbox.sender.wake_senders()
    audit(f"test {row['channel']} queued", detail=row["to_addr"])
    flash(f"A test is on its way to {row['to_addr']}. Reload this page to see it arrive.")
    return redirect(url_for("admin.status", _anchor="channels"), 303)
