"""The owner's admin area: sign-in, the leads inbox, a lead's page, email status, CSV export, CLI.

`blueprint` holds the blueprint and what every section shares; each section is a module of its own:
`auth` (sign-in, sessions and the guard), `devices` (device cookies, browser names),
`inbox` (list, charts, CSV), `analytics` (visits, requests and bookings by source), `lead` (one lead),
`status` (email status, open sessions, the audit log), `guide` (the owner's guide at /admin/help),
`commands` (`create-admin`, `purge-leads`).
"""

import contextlib
import sqlite3
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

from flask import Flask

import db
import db.accounts
from admin import analytics, auth, commands, guide, inbox, lead, status  # noqa: F401  (each adds its views to bp)
from admin.blueprint import ago, bp, log, phone_display


def init_app(app: Flask) -> None:
    """Register the admin pages, their commands and filters; say how to make an owner if none exists."""
    app.register_blueprint(bp)
    app.cli.add_command(commands.create_admin_command)
    app.cli.add_command(commands.purge_leads_command)
    zone = ZoneInfo(app.config["CLINIC_TIMEZONE"])
    app.jinja_env.filters["ago"] = lambda iso: ago(iso, datetime.now(UTC), zone)
    app.jinja_env.filters["phone"] = phone_display
    try:
        with contextlib.closing(db.connect(app.config["DATABASE"])) as database:
            if not db.accounts.count_accounts(database):
                log.warning("No admin account yet: create one with `flask --app app create-admin USERNAME`")
    except sqlite3.DatabaseError:
        pass  # db.init_app said what is wrong with the database
