"""How far a long command is: click's progress bar on a terminal, a line about every 30 s otherwise."""

import contextlib
import sys
import time
from collections.abc import Callable, Iterator

import click

EVERY_SECONDS = 30.0  # off a terminal (cron, systemd's journal): one line this often, not one per batch

# Every long command takes it; hidden, since only the tests need lines sooner than every 30 s.
every_option = click.option(
    "--progress-every", "every", type=click.FloatRange(min=0), default=EVERY_SECONDS, hidden=True
)


def took(seconds: float) -> str:
    """A duration as an operator reads it: 0.4 s, 12 s, 5 min 37 s, 1 h 02 min."""
    if seconds < 10:
        return f"{seconds:.1f} s"
    if seconds < 60:
        return f"{seconds:.0f} s"
    minutes, seconds = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {seconds:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


@contextlib.contextmanager
def shown(
    label: str, total: int, every: float = EVERY_SECONDS, amount: Callable[[int], str] = "{:,}".format
) -> Iterator[Callable[[int], None]]:
    """Yield `advance(n)`, to call as each part of `total` is done, and show how far the work is.

    On a terminal: click's progress bar. Elsewhere: a line when `every` seconds have passed since
    the last one, "label: 1,200 of 300,000 (0%), 31 s so far". `amount` writes a count for the line.
    """
    if sys.stdout.isatty():
        with click.progressbar(length=total, label=label, show_eta=True, show_percent=True) as bar:
            yield bar.update
        return
    started = last = time.monotonic()
    done = 0

    def advance(n: int) -> None:
        nonlocal done, last
        done += n
        now = time.monotonic()
        if now - last >= every:
            last = now
            share = f"{done / total:.0%}" if total else "100%"
            click.echo(f"{label}: {amount(done)} of {amount(total)} ({share}), {took(now - started)} so far")

    yield advance
