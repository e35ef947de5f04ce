"""`flask --app app check`: whether this site is ready for production, one line per problem."""

import contextlib
import os
import sqlite3
from datetime import UTC, datetime
from pathlib import Path

import click
from flask import Flask, current_app
from flask.cli import with_appcontext

import config
import db
import db.accounts
import housekeeping
import offsite
import outbox.alerts
import outbox.email
import outbox.webhooks


def mail_problem(cfg: dict) -> str | None:
    """Why the mail server cannot take the clinic's notifications, or None once it answered as configured."""
    if not cfg["MAIL_SERVER"]:
        return "MAIL_SERVER is not set: notifications are only written to files in data/mail/ and nobody gets them"
    try:
        outbox.email.smtp_connect(cfg).quit()
    except Exception as error:  # whatever stops the probe would stop the clinic's email too
        return (
            f"MAIL_SERVER {cfg['MAIL_SERVER']}:{cfg['MAIL_PORT']} cannot be used within MAIL_TIMEOUT "
            f"({cfg['MAIL_TIMEOUT']:g} s): {outbox.email.describe(error)}"
        )
    return None


def data_dir_problem(cfg: dict) -> str | None:
    """Why DATA_DIR is unfit for health information (not writable, or open to other users), or None."""
    path = Path(cfg["DATA_DIR"]).resolve()
    if not os.access(path, os.W_OK | os.X_OK):
        return f"DATA_DIR {path} is not writable by this user: the site cannot store requests there"
    mode = path.stat().st_mode & 0o777
    if mode & 0o077:
        return f"DATA_DIR {path} is open to other users (mode {mode:04o}): run `chmod 700 {path}`"
    return None


def problems(cfg: dict, database, now: datetime) -> list[str]:
    """Every reason this site is not ready for production, each as one line; empty when it is."""
    found = []
    https = cfg["SITE_URL"].startswith("https://")
    if not https:
        found.append(f"SITE_URL is {cfg['SITE_URL']}: the public address must be https://")
    found.append(mail_problem(cfg))
    found.extend(outbox.alerts.problems(cfg) + outbox.webhooks.problems(cfg))
    if cfg["CLINIC_EMAIL"] == config.SETTINGS["CLINIC_EMAIL"][0]:
        found.append(f"CLINIC_EMAIL is still the example address {cfg['CLINIC_EMAIL']}: set the clinic's mailbox")
    if not db.accounts.count_accounts(database):
        found.append("No admin account: create one with `flask --app app create-admin USERNAME`")
    found.append(data_dir_problem(cfg))
    if https and cfg["TRUSTED_PROXIES"] == 0:
        found.append(
            "TRUSTED_PROXIES is 0 while SITE_URL is https: behind the proxy (Caddy) set TRUSTED_PROXIES=1, "
            "or every visitor shares the proxy's address and rate limit"
        )
    alarm = housekeeping.backup_alarm(database, now)
    if alarm:
        found.append(f"Backups: {alarm}; run `flask --app app backup` to see why")
    trouble = offsite.problem(cfg) or offsite.alarm(database, cfg, now)
    if trouble:
        found.append(f"Off-site backups: {trouble}")
    return [line for line in found if line]


def init_app(app: Flask) -> None:
    """Register the check command."""
    app.cli.add_command(check_command)


@click.command("check")
@with_appcontext
def check_command() -> None:
    """Check that the site is ready for production: print each problem, or "ready"; exit 1 on any."""
    path = current_app.config["DATABASE"]
    try:
        with contextlib.closing(db.connect(path)) as database:
            found = problems(current_app.config, database, datetime.now(UTC))
    except sqlite3.DatabaseError as error:
        found = [f"The database {path} cannot be read ({error}): restore a backup with `flask --app app restore PATH`"]
    for line in found:
        click.echo(line)
    if found:
        raise SystemExit(1)
    click.echo("ready")
