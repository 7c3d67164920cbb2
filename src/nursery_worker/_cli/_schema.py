"""``nursery-worker migrate`` and ``prune``: the tables, and what they keep."""

from __future__ import annotations

import sys

import click

from .._durations import format_duration_exact
from ._context import JSON_OPTION, LOOKUP_APP, CliContext, common_options, echo_json
from ._types import DURATION


@click.command()
@click.option("--sql", "show_sql", is_flag=True, help="Print the SQL of the pending migrations; apply nothing.")
@click.option(
    "--check",
    is_flag=True,
    help="Apply nothing; exit 1 naming the pending migrations when the schema is behind, 0 when current.",
)
@LOOKUP_APP
@common_options
def migrate(ctx: CliContext, show_sql: bool, check: bool) -> None:
    """Create or upgrade the tables (idempotent; safe to run concurrently)."""
    app = ctx.app()
    if show_sql or check:
        pending = app.pending_migrations_sync()
        if show_sql:
            for migration in pending:
                click.echo(f"-- {migration.name} (schema version {migration.version})")
                click.echo(migration.sql.rstrip() + "\n")
            if not pending:
                click.echo(f"-- schema {app.schema!r} is up to date: nothing to run")
        if check:
            if pending:
                names = ", ".join(m.name for m in pending)
                click.echo(
                    f"schema {app.schema!r} is behind: {len(pending)} migration(s) pending ({names}); "
                    "run `nursery-worker migrate`",
                    err=True,
                )
                sys.exit(1)
            click.echo(f"schema {app.schema!r} is up to date", err=show_sql)
        return
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
@click.option("--dry-run", is_flag=True, help="Print how many jobs of each state it would delete; delete nothing.")
@LOOKUP_APP
@JSON_OPTION
@common_options
def prune(ctx: CliContext, older_than: float, states: tuple[str, ...], dry_run: bool, as_json: bool) -> None:
    """Delete finished jobs (and their results) older than --older-than, in bounded batches."""
    seconds = older_than
    chosen = states or ("completed", "discarded", "cancelled")
    if dry_run:
        counts = ctx.run(lambda a: a.count_prunable(older_than=seconds, states=chosen))
        if as_json:
            echo_json({"would_prune": counts, "total": sum(counts.values()), "older_than": seconds, "dry_run": True})
            return
        age = format_duration_exact(seconds)
        click.echo(f"would prune {sum(counts.values())} job(s) finished over {age} ago (dry run: nothing deleted)")
        for state, count in counts.items():
            click.echo(f"  {state:<10} {count}")
        return
    count = ctx.run(lambda a: a.prune(older_than=seconds, states=chosen))
    if as_json:
        echo_json({"pruned": count, "older_than": seconds, "states": list(chosen)})
    else:
        click.echo(f"pruned {count} job(s) ({', '.join(chosen)}) finished over {format_duration_exact(seconds)} ago")
