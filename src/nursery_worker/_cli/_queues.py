"""``nursery-worker queues``: list queues; pause, resume and limit them."""

from __future__ import annotations

from typing import Any

import click

from .._admin import UNCHANGED, Admin
from ._context import JSON_OPTION, LOOKUP_APP, CliContext, common_options, echo_json

#: ``--create``: act on a queue nothing names yet (otherwise refused as a likely typo).
CREATE_OPTION = click.option(
    "--create",
    is_flag=True,
    help="Act on NAME even if no job, task, periodic schedule or worker names it (else refused as a likely typo).",
)


@click.group()
def queues() -> None:
    """List queues; pause, resume and limit them."""


@queues.command("list")
@LOOKUP_APP
@JSON_OPTION
@common_options
def queues_list(ctx: CliContext, as_json: bool) -> None:
    """Every queue with jobs or a pause record: running or paused, and its jobs by state."""
    from .._status import queue_dict, render_queues

    found = ctx.run(lambda a: a.list_queues())
    if as_json:
        echo_json([queue_dict(q) for q in found])
    else:
        click.echo(render_queues(found))


def _set_paused(ctx: CliContext, name: str, paused: bool, as_json: bool, create: bool) -> None:
    def change(admin: Admin) -> Any:
        if paused:
            return admin.pause_queue(name, create=create)
        return admin.resume_queue(name, create=create)

    changed = ctx.run(lambda a: change(Admin(a)))
    if as_json:
        echo_json({"queue": name, "paused": paused, "changed": changed})
    elif paused:
        click.echo(
            f"queue {name!r} paused: workers stop fetching its jobs; running jobs finish"
            if changed
            else f"queue {name!r} was already paused"
        )
    else:
        click.echo(f"queue {name!r} resumed" if changed else f"queue {name!r} was not paused")


@queues.command("pause")
@click.argument("name")
@CREATE_OPTION
@LOOKUP_APP
@JSON_OPTION
@common_options
def queues_pause(ctx: CliContext, name: str, create: bool, as_json: bool) -> None:
    """Stop every worker from fetching NAME's jobs (running jobs finish; deferring still works)."""
    _set_paused(ctx, name, True, as_json, create)


@queues.command("limit")
@click.argument("name")
@click.option("--max-concurrency", type=click.IntRange(min=1), default=None, help="Jobs of NAME running at once.")
@click.option("--rate-limit", default=None, help="Starts of NAME's jobs per window: '100/m', '10/s', '30/10s'.")
@click.option("--no-concurrency-limit", is_flag=True, help="Lift NAME's --max-concurrency limit.")
@click.option("--no-rate-limit", is_flag=True, help="Lift NAME's --rate-limit limit.")
@click.option("--clear", is_flag=True, help="Lift both limits.")
@CREATE_OPTION
@LOOKUP_APP
@JSON_OPTION
@common_options
def queues_limit(
    ctx: CliContext,
    name: str,
    max_concurrency: int | None,
    rate_limit: str | None,
    no_concurrency_limit: bool,
    no_rate_limit: bool,
    clear: bool,
    create: bool,
    as_json: bool,
) -> None:
    """Change NAME's limits across every worker and host; a limit not named keeps its value."""
    from .._status import queue_dict

    if clear and (max_concurrency is not None or rate_limit is not None or no_concurrency_limit or no_rate_limit):
        raise click.UsageError("--clear lifts both limits; give it alone")
    if max_concurrency is not None and no_concurrency_limit:
        raise click.UsageError("give --max-concurrency N or --no-concurrency-limit, not both")
    if rate_limit is not None and no_rate_limit:
        raise click.UsageError("give --rate-limit R or --no-rate-limit, not both")
    concurrency: Any = (
        None if clear or no_concurrency_limit else (UNCHANGED if max_concurrency is None else max_concurrency)
    )
    rate: Any = None if clear or no_rate_limit else (UNCHANGED if rate_limit is None else rate_limit)
    if concurrency is UNCHANGED and rate is UNCHANGED:
        raise click.UsageError(
            "give --max-concurrency, --rate-limit, --no-concurrency-limit, --no-rate-limit, or --clear to lift both"
        )
    info = ctx.run(
        lambda a: Admin(a).set_queue_limits(name, max_concurrency=concurrency, rate_limit=rate, create=create)
    )
    if as_json:
        echo_json(queue_dict(info))
    else:
        limits = [f"at most {info.max_concurrency} running"] if info.max_concurrency is not None else []
        limits += [f"at most {info.rate_limit} starts"] if info.rate_limit is not None else []
        click.echo(f"queue {name!r}: " + (", ".join(limits) if limits else "no limits"))


@queues.command("resume")
@click.argument("name")
@CREATE_OPTION
@LOOKUP_APP
@JSON_OPTION
@common_options
def queues_resume(ctx: CliContext, name: str, create: bool, as_json: bool) -> None:
    """Let workers fetch NAME's jobs again; they are notified at once."""
    _set_paused(ctx, name, False, as_json, create)
