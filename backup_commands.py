"""`flask backup` and `flask restore`: to and from data/backups/, a path of your own, or the off-site repository."""

import contextlib
import time
from datetime import UTC, datetime
from pathlib import Path

import click
from flask import Flask, current_app
from flask.cli import with_appcontext

import backups
import db
import offsite
import progress


def init_app(app: Flask) -> None:
    """Register the backup and restore commands."""
    app.cli.add_command(backup_command)
    app.cli.add_command(restore_command)


@click.command("backup")
@click.option("--to", "to", type=click.Path(path_type=Path), help="Write the backup here instead of data/backups/.")
@click.option(
    "--offsite", "to_offsite", is_flag=True, help="Send a snapshot to the off-site restic repository instead."
)
@click.option("--list", "list_", is_flag=True, help="With --offsite: list the snapshots in the repository.")
@click.option("--init", "init", is_flag=True, help="With --offsite: initialise the repository (once).")
@progress.every_option
@with_appcontext
def backup_command(to: Path | None, to_offsite: bool, list_: bool, init: bool, every: float) -> None:
    """Back the database up now (safe while the site runs), showing how far it is; say where and how many leads."""
    if to_offsite:
        if to:
            raise click.UsageError("--to and --offsite go to different places: choose one")
        offsite_command(list_, init)
        return
    if list_ or init:
        raise click.UsageError("--list and --init go with --offsite")
    started = time.monotonic()
    database = db.connect(current_app.config["DATABASE"])
    try:
        result = backups.backup_and_log(database, current_app.config, datetime.now(UTC), "command line", to, every)
    except backups.BackupError as error:
        raise click.ClickException(str(error)) from None
    finally:
        database.close()
    click.echo(
        f"Backup written to {result['path']}: {result['leads']} lead(s), "
        f"{result['size_bytes'] / 1e6:.1f} MB, integrity check ok, in {progress.took(time.monotonic() - started)}."
    )


def offsite_command(list_: bool, init: bool) -> None:
    """`backup --offsite`: one snapshot now, or the list of snapshots, or the repository's creation."""
    cfg = current_app.config
    where = offsite.masked(cfg["RESTIC_REPOSITORY"] or "")
    try:
        if init:
            offsite.init(cfg)
            click.echo(f"Initialised the off-site repository {where}.")
            click.echo(
                "Keep a copy of its key (RESTIC_PASSWORD_FILE) away from this server: "
                "without it the backups cannot be read."
            )
        elif list_:
            found = offsite.snapshots(cfg)
            for item in found:
                click.echo(f"{item['short_id']}  {item['time'][:19].replace('T', ' ')} UTC")
            click.echo(f"{len(found)} snapshot(s) in {where}.")
        else:
            with contextlib.closing(db.connect(cfg["DATABASE"])) as database:
                result = offsite.snapshot_and_log(database, cfg, datetime.now(UTC), "command line")
            click.echo(
                f"Snapshot {result['snapshot'][:8]} sent to {where}: {result['leads']} lead(s), "
                f"{result['size_bytes'] / 1e6:.1f} MB, encrypted."
            )
    except offsite.OffsiteError as error:
        raise click.ClickException(f"Off-site backup: {error}") from None


@click.command("restore")
@click.argument("path", type=click.Path(path_type=Path), required=False)
@click.option(
    "--offsite", "from_offsite", is_flag=True, help="Restore from the off-site restic repository (the latest snapshot)."
)
@click.option(
    "--snapshot", "snapshot_id", default="latest", help="With --offsite: this snapshot instead of the latest."
)
@progress.every_option
@with_appcontext
def restore_command(path: Path | None, from_offsite: bool, snapshot_id: str, every: float) -> None:
    """Replace the database with a backup (stop the server first); the current one is kept as a dated copy."""
    if bool(path) == from_offsite:
        raise click.UsageError("Give the backup file to restore, or --offsite (not both).")
    click.echo("The server must be stopped while a backup is restored.")
    started = time.monotonic()
    try:
        if from_offsite:
            result = offsite.restore(current_app.config, snapshot_id, datetime.now(UTC))
            source = f"off-site snapshot {snapshot_id}"
        else:
            result = backups.restore(current_app.config, path, datetime.now(UTC), every)
            source = str(path)
    except (backups.BackupError, offsite.OffsiteError) as error:
        raise click.ClickException(str(error)) from None
    click.echo(
        f"Restored {result['leads']} lead(s) from {source} into {current_app.config['DATABASE']} "
        f"in {progress.took(time.monotonic() - started)}."
    )
    if result["kept"]:
        click.echo(f"The previous database is kept as {result['kept']}.")
    click.echo("Start the server again (e.g. `sudo systemctl start clinic-site`).")
