"""Command-line tasks: `flask --app app create-admin USERNAME` and `flask --app app purge-leads`."""

import re
import sys
import time
from datetime import UTC, datetime, timedelta

import click
from flask import current_app
from flask.cli import with_appcontext
from werkzeug.security import generate_password_hash

import db
import db.accounts
import db.housekeeping
import housekeeping
import progress

USERNAME = re.compile(r"[a-z0-9][a-z0-9._@-]{0,63}")
PASSWORD_MIN = 12


@click.command("create-admin")
@click.argument("username")
@with_appcontext
def create_admin_command(username: str) -> None:
    """Create an admin account, or reset its password (which signs out its sessions)."""
    name = username.strip().lower()
    if not USERNAME.fullmatch(name):
        raise click.BadParameter("use up to 64 letters, digits and . _ @ -, starting with a letter or digit")
    if sys.stdin.isatty():
        password = click.prompt("Password", hide_input=True, confirmation_prompt=True)
    else:
        password = sys.stdin.readline().rstrip("\r\n")
    if len(password) < PASSWORD_MIN:
        raise click.ClickException(f"Please choose a password of at least {PASSWORD_MIN} characters.")
    database = db.connect(current_app.config["DATABASE"])
    try:
        created = db.accounts.set_password(database, name, generate_password_hash(password), db.utcnow())
        action = "account created" if created else "password reset"
        db.accounts.audit(database, "command line", action, db.utcnow(), detail=name)
    finally:
        database.close()
    if created:
        click.echo(f"Account {name!r} created. Sign in at {current_app.config['SITE_URL']}/admin/login")
    else:
        click.echo(f"Password of {name!r} changed; its open sessions are signed out.")


@click.command("purge-leads")
@click.option(
    "--older-than",
    "days",
    metavar="DAYS",
    type=click.IntRange(min=1),
    default=None,
    help="Delete leads received more than DAYS days ago (default: LEAD_RETENTION_DAYS).",
)
@progress.every_option
@with_appcontext
def purge_leads_command(days: int | None, every: float) -> None:
    """Delete old leads with their notes, emails and email files, in small batches, showing how far it is."""
    days = days or current_app.config["LEAD_RETENTION_DAYS"]
    if not days:
        raise click.ClickException("LEAD_RETENTION_DAYS is 0 (keep every lead): give --older-than DAYS to purge.")
    started, now = time.monotonic(), datetime.now(UTC)
    database = db.connect(current_app.config["DATABASE"])
    try:
        total = db.housekeeping.count_leads_before(database, db.iso_utc(now - timedelta(days=days)))
        with progress.shown("Deleting leads", total, every) as advance:
            counts = housekeeping.purge_and_log(database, current_app.config, now, days, "command line", None, advance)
    finally:
        database.close()
    click.echo(
        f"Deleted {counts['leads']} lead(s) received more than {days} days ago, with their notes and emails "
        f"({counts['emails']} other finished email(s), {counts['audit']} audit line(s)), "
        f"in {progress.took(time.monotonic() - started)}."
    )
    if counts["kept"]:
        click.echo(f"Kept {counts['kept']} older lead(s) not yet delivered (an email, alert or webhook still waits).")
