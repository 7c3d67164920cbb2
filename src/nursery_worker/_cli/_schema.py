"""``nursery-worker migrate`` and ``prune``: the tables, and what they keep."""

from __future__ import annotations

import re

import click

from ._context import JSON_OPTION, LOOKUP_APP, CliContext, common_options, echo_json

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*$")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def _duration(text: str) -> float:
    """``90``, ``90s``, ``15m``, ``12h``, ``7d``, ``2w`` as seconds."""
    match = _DURATION.match(text.lower())
    if match is None:
        raise click.UsageError(f"{text!r} is not a duration: use seconds or a number with s, m, h, d or w (e.g. 7d)")
    return float(match.group(1)) * _UNITS[match.group(2)]


@click.command()
@LOOKUP_APP
@common_options
def migrate(ctx: CliContext) -> None:
    """Create or upgrade the tables (idempotent; safe to run concurrently)."""
    app = ctx.app()
    applied = app.migrate_sync()
    if applied:
        click.echo(f"schema {app.schema!r} migrated: applied {', '.join(map(str, applied))}")
    else:
        click.echo(f"schema {app.schema!r} is up to date")


@click.command()
@click.option(
    "--older-than",
    default="7d",
    show_default=True,
    help="Finished over this long ago: seconds, or a number with s, m, h, d or w.",
)
@click.option(
    "--state",
    "states",
    multiple=True,
    type=click.Choice(["completed", "discarded", "cancelled"]),
    help="Only this final state (repeatable; default: all three).",
)
@LOOKUP_APP
@JSON_OPTION
@common_options
def prune(ctx: CliContext, older_than: str, states: tuple[str, ...], as_json: bool) -> None:
    """Delete finished jobs (and their results) older than --older-than, in bounded batches."""
    seconds = _duration(older_than)
    chosen = states or ("completed", "discarded", "cancelled")
    count = ctx.run(lambda a: a.prune(older_than=seconds, states=chosen))
    if as_json:
        echo_json({"pruned": count, "older_than": seconds, "states": list(chosen)})
    else:
        age = f"{older_than}s" if older_than.replace(".", "", 1).isdigit() else older_than
        click.echo(f"pruned {count} job(s) ({', '.join(chosen)}) finished over {age} ago")
