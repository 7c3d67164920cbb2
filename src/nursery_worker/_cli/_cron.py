"""``nursery-worker cron``: the periodic schedules, their next run and their last job."""

from __future__ import annotations

import click

from ._context import JSON_OPTION, LOOKUP_APP, CliContext, common_options, echo_json


@click.group()
def cron() -> None:
    """Periodic jobs: list the schedules, their next run and their last job."""


@cron.command("list")
@LOOKUP_APP
@JSON_OPTION
@common_options
def cron_list(ctx: CliContext, as_json: bool) -> None:
    """Every periodic schedule: expression, time zone, task, next run, last tick and last job.

    The schedules are read from the database (a worker registers those of its queues when it
    starts); with --app, the app's own are listed too, and those it does not define are marked.
    Next runs are computed from the database's clock.
    """
    from .._status import periodic_dict, render_periodic

    found = ctx.run(lambda a: a.list_periodic())
    if as_json:
        echo_json([periodic_dict(p) for p in found])
    else:
        click.echo(render_periodic(found, app_given=bool(ctx.app_path)))
