"""``nursery-worker queues``: list queues; pause, resume and limit them."""

from __future__ import annotations

import click

from ._context import JSON_OPTION, LOOKUP_APP, CliContext, common_options, echo_json


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


def _set_paused(ctx: CliContext, name: str, paused: bool, as_json: bool) -> None:
    changed = ctx.run(lambda a: a.pause_queue(name) if paused else a.resume_queue(name))
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
@LOOKUP_APP
@JSON_OPTION
@common_options
def queues_pause(ctx: CliContext, name: str, as_json: bool) -> None:
    """Stop every worker from fetching NAME's jobs (running jobs finish; deferring still works)."""
    _set_paused(ctx, name, True, as_json)


@queues.command("limit")
@click.argument("name")
@click.option("--max-concurrency", type=click.IntRange(min=1), default=None, help="Jobs of NAME running at once.")
@click.option("--rate-limit", default=None, help="Starts of NAME's jobs per window: '100/m', '10/s', '30/10s'.")
@click.option("--clear", is_flag=True, help="Lift both limits.")
@LOOKUP_APP
@JSON_OPTION
@common_options
def queues_limit(
    ctx: CliContext, name: str, max_concurrency: int | None, rate_limit: str | None, clear: bool, as_json: bool
) -> None:
    """Set NAME's limits across every worker and host; each call sets both (an omitted one is lifted)."""
    from .._status import queue_dict

    if clear and (max_concurrency is not None or rate_limit is not None):
        raise click.UsageError("--clear lifts both limits; do not combine it with --max-concurrency or --rate-limit")
    if not clear and max_concurrency is None and rate_limit is None:
        raise click.UsageError("give --max-concurrency, --rate-limit, or --clear to lift both")
    info = ctx.run(lambda a: a.set_queue_limits(name, max_concurrency=max_concurrency, rate_limit=rate_limit))
    if as_json:
        echo_json(queue_dict(info))
    else:
        limits = [f"at most {info.max_concurrency} running"] if info.max_concurrency is not None else []
        limits += [f"at most {info.rate_limit} starts"] if info.rate_limit is not None else []
        click.echo(f"queue {name!r}: " + (", ".join(limits) if limits else "no limits"))


@queues.command("resume")
@click.argument("name")
@LOOKUP_APP
@JSON_OPTION
@common_options
def queues_resume(ctx: CliContext, name: str, as_json: bool) -> None:
    """Let workers fetch NAME's jobs again; they are notified at once."""
    _set_paused(ctx, name, False, as_json)
