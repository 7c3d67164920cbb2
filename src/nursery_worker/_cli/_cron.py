"""``nursery-worker cron``: the periodic schedules, their next run and their last job."""

from __future__ import annotations

import click

from ._context import JSON_OPTION, LOOKUP_APP, CliContext, common_options, echo_json


@click.group()
def cron() -> None:
    """Periodic jobs: list the schedules (next run, last job, paused), trigger one now, pause or resume one."""


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


@cron.command("trigger")
@click.argument("name")
@LOOKUP_APP
@JSON_OPTION
@common_options
def cron_trigger(ctx: CliContext, name: str, as_json: bool) -> None:
    """Enqueue one run of schedule NAME now (its task, queue and arguments), paused or not.

    With --app, the app's definition is used (priority, unique key and all); without, the task,
    queue and arguments the schedule was registered with.
    """
    from .._status import job_dict

    job = ctx.run(lambda a: a.trigger_periodic(name))
    if as_json:
        echo_json(job_dict(job))
    elif job.duplicate:
        click.echo(f"job {job.id} ({job.task}) of schedule {name!r} is still queued or running (unique); nothing added")
    else:
        click.echo(f"enqueued job {job.id} ({job.task}) of schedule {name!r} in queue {job.queue!r}")


@cron.command("pause")
@click.argument("name")
@LOOKUP_APP
@common_options
def cron_pause(ctx: CliContext, name: str) -> None:
    """Pause schedule NAME for every worker: its ticks are not enqueued until `cron resume`."""
    changed = ctx.run(lambda a: a.pause_periodic(name))
    click.echo(f"schedule {name!r} " + ("paused" if changed else "was already paused"))


@cron.command("resume")
@click.argument("name")
@LOOKUP_APP
@common_options
def cron_resume(ctx: CliContext, name: str) -> None:
    """Resume schedule NAME: its next due tick is enqueued as usual."""
    changed = ctx.run(lambda a: a.resume_periodic(name))
    click.echo(f"schedule {name!r} " + ("resumed" if changed else "was not paused"))
