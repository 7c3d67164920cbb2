"""``nursery-worker migrate`` and ``prune``: the tables, and what they keep."""

from __future__ import annotations

import click

from .._durations import format_duration_exact
from ._context import JSON_OPTION, LOOKUP_APP, CliContext, common_options, echo_json
from ._types import DURATION


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
    type=DURATION,
    help="Finished over this long ago: seconds, or a duration such as 12h, 7d, 1d12h.",
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
def prune(ctx: CliContext, older_than: float, states: tuple[str, ...], as_json: bool) -> None:
    """Delete finished jobs (and their results) older than --older-than, in bounded batches."""
    seconds = older_than
    chosen = states or ("completed", "discarded", "cancelled")
    count = ctx.run(lambda a: a.prune(older_than=seconds, states=chosen))
    if as_json:
        echo_json({"pruned": count, "older_than": seconds, "states": list(chosen)})
    else:
        click.echo(f"pruned {count} job(s) ({', '.join(chosen)}) finished over {format_duration_exact(seconds)} ago")
