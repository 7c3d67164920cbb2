"""``nursery-worker status`` and ``healthcheck``: what the queues, breakers and workers are doing."""

from __future__ import annotations

import functools
import json
import os
import signal
import socket
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import anyio.abc
import click

from .._app import App
from .._dsn import redact
from .._errors import NurseryWorkerError
from ._context import JSON_OPTION, LOOKUP_APP, CliContext, common_options
from ._types import POSITIVE_DURATION

_DEFAULT_HEALTH_AGE = 10.0


@click.command()
@LOOKUP_APP
@JSON_OPTION
@click.option(
    "--watch",
    type=POSITIVE_DURATION,
    is_flag=False,
    flag_value=2.0,
    default=None,
    metavar="[SECONDS]",
    help="Redraw every SECONDS (default 2) until Ctrl-C, with jobs/s completed and failed since the last redraw.",
)
@click.option(
    "--width",
    type=click.IntRange(min=0),
    default=None,
    metavar="N",
    help="Fit the tables to N columns (0: unlimited). Default: the terminal's ($COLUMNS first); unlimited when piped.",
)
@common_options
def status(ctx: CliContext, as_json: bool, watch: float | None, width: int | None) -> None:
    """Show the database's health, each queue (paused?, jobs by state, oldest available job's age,
    limits), the circuit breakers, durable jobs (how many a durable sleep or an event wait holds,
    and the progress of executing jobs that report it), and every worker.

    The database line (PostgreSQL) names the oldest open transaction on the server (its age, pid,
    state and client) and the jobs table's dead tuples, marked WARNING when a transaction has been
    open over 60 s or dead tuples pile up; with SQLite it gives the write-ahead log's size.

    Workers: pid, host, state, uptime, restarts, counters, and the age of the last heartbeat, all by
    the database's clock. Narrow terminals get short headers and drop the least useful columns
    (named on a last line); ``--watch`` adds the rates since the previous redraw.
    """
    from .._status import PROGRESS_ROWS, Rates, Snapshot, render_status, status_dict, terminal_width, wrap_lines

    schema = ctx.app().schema
    columns = terminal_width(width, isatty=sys.stdout.isatty(), environ=os.environ)
    last: list[Snapshot] = []

    def draw(queues: Any, workers: Any, breakers: Any, database: Any, durable: Any) -> None:
        now = Snapshot.take(time.monotonic(), queues, workers)
        rates = Rates.between(last[0], now) if last else None
        last[:] = [now]
        if as_json:
            data = status_dict(
                queues, workers, schema=schema, breakers=breakers, rates=rates, database=database, durable=durable
            )
            click.echo(json.dumps(data) if watch is not None else json.dumps(data, indent=2))
        else:
            text = render_status(
                queues,
                workers,
                schema=schema,
                breakers=breakers,
                width=columns,
                rates=rates,
                database=database,
                durable=durable,
            )
            if watch is not None:
                if sys.stdout.isatty():
                    click.clear()
                stamp = time.strftime("%Y-%m-%d %H:%M:%S")
                head = wrap_lines(f"nursery-worker status: schema {schema!r} at {stamp} (every {watch:g}s)", columns)
                text = f"{head}\n\n{text}\n"
            click.echo(text)
        sys.stdout.flush()

    async def redraw(app: App) -> None:
        draw(
            await app.list_queues(),
            await app.driver.list_workers(),
            await app.list_breakers(),
            await app.driver.database_health(),
            await app.driver.durable_overview(limit=PROGRESS_ROWS),
        )

    async def body(app: App) -> None:
        if watch is None:
            await redraw(app)
        else:
            await _watch(functools.partial(redraw, app), watch)

    try:
        ctx.run(body)
    except KeyboardInterrupt:
        # Ctrl-C before the watch caught the signals itself (while connecting): a stop all the same.
        return


async def _watch(redraw: Callable[[], Awaitable[None]], seconds: float) -> None:
    """Call *redraw* every *seconds* until SIGINT or SIGTERM.

    The signals are taken through the event loop, before the first redraw: a signal cancels the
    loop at its next checkpoint and the watch returns normally (exit 0), the app's connections
    closed. A ``KeyboardInterrupt`` raised wherever the main thread happens to be could land in
    the middle of a database call or of the loop's own machinery, and did not always stop it.
    """
    async with anyio.create_task_group() as tg:
        await tg.start(_cancel_on_signal, tg.cancel_scope)
        while True:
            await redraw()
            await anyio.sleep(seconds)


async def _cancel_on_signal(
    scope: anyio.CancelScope, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
) -> None:
    """Cancel *scope* at the first SIGINT or SIGTERM; ready once the handlers are installed."""
    with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        task_status.started()
        async for _ in signals:
            scope.cancel()
            return


@click.command()
@LOOKUP_APP
@click.option("--worker-id", default=None, help="This worker (an id from `status --json`).")
@click.option("--pid", type=int, default=None, help="The worker of this process id on this host.")
@click.option("--any-host", is_flag=True, help="Any worker in the schema, not only those of this host (the default).")
@click.option(
    "--max-age",
    default=_DEFAULT_HEALTH_AGE,
    show_default=True,
    type=POSITIVE_DURATION,
    help="Seconds: a heartbeat older than this is unhealthy (5 beats at the default --heartbeat-interval).",
)
@common_options
def healthcheck(ctx: CliContext, worker_id: str | None, pid: int | None, any_host: bool, max_age: float) -> None:
    """Exit 0 if a worker has a heartbeat within --max-age seconds, else print why and exit 1.

    For container probes: it asks the database (and its clock), so it checks what peers see: a
    worker whose heartbeat lapses is the one whose jobs get rescued. By default it looks for any
    worker of this host (the container's hostname).
    """
    host = socket.gethostname()
    try:
        workers = ctx.run(lambda a: a.driver.list_workers())
    except (NurseryWorkerError, click.ClickException) as exc:
        message = exc.format_message() if isinstance(exc, click.ClickException) else str(exc)
        click.echo(f"unhealthy: {redact(message)}", err=True)
        sys.exit(1)
    if worker_id is not None:
        chosen, what = [w for w in workers if w.id == worker_id], f"worker {worker_id!r}"
    elif pid is not None:
        chosen, what = [w for w in workers if w.pid == pid and w.hostname == host], f"pid {pid} on {host}"
    elif any_host:
        chosen, what = list(workers), f"schema {ctx.app().schema!r}"
    else:
        chosen, what = [w for w in workers if w.hostname == host], f"host {host}"
    if not chosen:
        click.echo(f"unhealthy: no worker is registered for {what}", err=True)
        sys.exit(1)
    best = min(chosen, key=lambda w: w.now - w.heartbeat_at)
    age = max(0.0, (best.now - best.heartbeat_at).total_seconds())
    if age > max_age:
        click.echo(
            f"unhealthy: the last heartbeat for {what} was {age:.1f}s ago (worker {best.id}; --max-age {max_age:g}s)",
            err=True,
        )
        sys.exit(1)
    click.echo(f"healthy: worker {best.id} beat {age:.1f}s ago")
