"""``nursery-worker jobs``: list, show, cancel, retry and delete jobs, one by id or in bulk by filter."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any, TypeVar

import click

from .._jobfilter import BulkAction, BulkResult, JobFilter
from .._state import JobState
from ._context import JSON_OPTION, LOOKUP_APP, CliContext, common_options, echo_json
from ._types import DURATION

F = TypeVar("F", bound=Callable[..., Any])

_STATE_CHOICE = click.Choice([s.value for s in JobState])


def _job_id(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise click.UsageError(f"{text!r} is not a job id (a positive integer)") from None
    if value < 1:
        raise click.UsageError(f"{text!r} is not a job id (a positive integer)")
    return value


@click.group()
def jobs() -> None:
    """List, show, cancel, retry and delete jobs: one by ID, or in bulk by filter (previewed first)."""


@jobs.command("list")
@LOOKUP_APP
@click.option("--state", "states", multiple=True, type=_STATE_CHOICE, help="Only this state (repeatable).")
@click.option("--queue", default=None, help="Only this queue.")
@click.option("--task", default=None, help="Only this task.")
@click.option("--limit", default=50, show_default=True, type=click.IntRange(1, 10_000))
@click.option("--before-id", default=None, type=click.IntRange(min=1), help="Page: only ids below this one.")
@JSON_OPTION
@common_options
def jobs_list(
    ctx: CliContext,
    states: tuple[str, ...],
    queue: str | None,
    task: str | None,
    limit: int,
    before_id: int | None,
    as_json: bool,
) -> None:
    """List jobs, newest first."""
    from .._status import job_dict, render_jobs

    found = ctx.run(
        lambda a: a.list_jobs(state=states or None, queue=queue, task=task, limit=limit, before_id=before_id)
    )
    if as_json:
        echo_json([job_dict(j) for j in found])
    else:
        click.echo(render_jobs(found))


@jobs.command("show")
@click.argument("job_id")
@LOOKUP_APP
@click.option(
    "--why", is_flag=True, help="Also say why the job is not running (with --app: its tasks are checked too)."
)
@JSON_OPTION
@common_options
def jobs_show(ctx: CliContext, job_id: str, why: bool, as_json: bool) -> None:
    """Show one job in full: arguments, result, its progress and what it waits for, its durable
    steps (state, attempt, runs, duration, result or error), and each error with its traceback."""
    from .._admin import Admin
    from .._app import App
    from .._diagnose import diagnose
    from .._status import STEP_ROWS, job_dict, render_job, step_dict

    ident = _job_id(job_id)

    async def read(app: App) -> tuple[Any, Any, Any]:
        if why:
            job, reasons = await diagnose(Admin(app), ident)
        else:
            job, reasons = await app.get_job(ident), []
        # The text lists the first STEP_ROWS (one more tells that there are more); --json every one.
        return job, reasons, await app.get_steps(ident, limit=None if as_json else STEP_ROWS + 1)

    job, reasons, steps = ctx.run(read)
    if as_json:
        data = job_dict(job)
        data["steps"] = [step_dict(s) for s in steps]
        if why:
            data["why"] = [{"code": r.code, "message": r.message, "blocking": r.blocking} for r in reasons]
        echo_json(data)
        return
    click.echo(render_job(job, steps))
    if why:
        click.echo("\nwhy is it not running?")
        for reason in reasons:
            click.echo(f"  {'-' if reason.blocking else '·'} {reason.message}")


def _id_range(text: str | None) -> tuple[int | None, int | None]:
    """``100-200``, ``100-`` (from 100), ``-200`` (up to 200) or ``150`` (just that id)."""
    if text is None:
        return None, None
    low, sep, high = text.strip().partition("-")
    try:
        first = int(low) if low.strip() else None
        last = int(high) if high.strip() else None
        if not sep:
            last = first
    except ValueError:
        first = last = None
        sep = "bad"
    if (first is None and last is None) or any(v is not None and v < 1 for v in (first, last)):
        raise click.UsageError(
            f"--id-range {text!r} is not an id range; use FIRST-LAST (100-200), FIRST- (100-), -LAST (-200) or one id"
        )
    return first, last


def _filter_options(states: tuple[str, ...] | None = None) -> Callable[[F], F]:
    """The bulk form's options: the filter, --all, --yes and --chunk-size."""
    choices = click.Choice(list(states) if states else [s.value for s in JobState])

    def decorate(command: F) -> F:
        options = [
            click.option("--state", "states", multiple=True, type=choices, help="Only this state (repeatable)."),
            click.option("--queue", default=None, help="Only this queue."),
            click.option("--task", default=None, help="Only this task."),
            click.option(
                "--older-than",
                default=None,
                type=DURATION,
                help="Only jobs inserted over this long ago (database clock): 90s, 1h30m, 2d.",
            ),
            click.option("--id-range", default=None, help="Only these ids: 100-200, 100- or -200."),
            click.option("--all", "match_all", is_flag=True, help="Without a filter: act on every job it can."),
            click.option("--yes", "-y", is_flag=True, help="Act without asking (the count is still printed first)."),
            click.option(
                "--chunk-size",
                default=500,
                show_default=True,
                type=click.IntRange(1, 10_000),
                help="Jobs per transaction.",
            ),
        ]
        for option in reversed(options):
            command = option(command)
        return command

    return decorate


#: Each action's past participle, imperative and progress label.
_VERBS = {
    "cancel": ("cancelled", "cancel", "cancelling"),
    "retry": ("retried", "retry", "retrying"),
    "delete": ("deleted", "delete", "deleting"),
}


def _bulk(
    ctx: CliContext,
    action: BulkAction,
    *,
    states: tuple[str, ...],
    queue: str | None,
    task: str | None,
    older_than: float | None,
    id_range: str | None,
    match_all: bool,
    yes: bool,
    chunk_size: int,
    as_json: bool,
) -> None:
    """The bulk form: build the filter, print the count, confirm, act in chunks, summarise."""
    first, last = _id_range(id_range)
    job_filter = JobFilter(
        states=states or None, queue=queue, task=task, older_than=older_than, min_id=first, max_id=last
    )
    if job_filter.is_empty and not match_all:
        raise click.UsageError(
            f"give a job ID, or a filter (--state, --queue, --task, --older-than, --id-range); to {action} every "
            "job it can, pass --all"
        )
    narrowed = job_filter.for_action(action)
    ctx.app()  # a bad --app is reported before anything is counted
    count = ctx.run(lambda a: a.count_jobs(narrowed))
    done, verb, label = _VERBS[action]
    described = job_filter.describe() if not job_filter.is_empty else "every job"
    preview = f"{count} job(s) match ({described}) and would be {done}"
    click.echo(preview, err=as_json)
    if count == 0:
        if as_json:
            echo_json(_result_dict(BulkResult(action=action, matched=0, changed=0), job_filter))
        return
    if not yes and not click.confirm(f"{verb.capitalize()} them?", err=True):
        click.echo(f"nothing was {done}", err=True)
        sys.exit(1)
    with click.progressbar(length=count, label=label, file=sys.stderr) as bar:
        result = ctx.run(
            lambda a: {"cancel": a.bulk_cancel, "retry": a.bulk_retry, "delete": a.bulk_delete}[action](
                narrowed, chunk_size=chunk_size, progress=bar.update
            )
        )
    if as_json:
        echo_json(_result_dict(result, job_filter))
        return
    summary = f"{done} {result.changed} of {result.matched} job(s)"
    if result.requested:
        summary += f"; asked the workers of {result.requested} executing job(s) to cancel them"
    if result.skipped:
        summary += f"; skipped {result.skipped} that changed state meanwhile or could not be {done}"
    click.echo(summary)


def _result_dict(result: BulkResult, job_filter: JobFilter) -> dict[str, Any]:
    return {
        "action": result.action,
        "filter": job_filter.describe(),
        "matched": result.matched,
        "changed": result.changed,
        "requested": result.requested,
        "skipped": result.skipped,
    }


#: The bulk form's filter parameters and the flag each comes from (in the order messages list them).
_FILTER_FLAGS = {
    "states": "--state",
    "queue": "--queue",
    "task": "--task",
    "older_than": "--older-than",
    "id_range": "--id-range",
    "match_all": "--all",
}


def _refuse_mixed(ids: tuple[str, ...], bulk: dict[str, Any]) -> None:
    named = [flag for name, flag in _FILTER_FLAGS.items() if bulk[name] not in (None, (), False)]
    if ids and named:
        raise click.UsageError(
            f"the filter options ({', '.join(named)}) select jobs in bulk; give either job IDs or a filter, not both"
        )


@jobs.command("cancel")
@click.argument("job_ids", nargs=-1)
@_filter_options()
@LOOKUP_APP
@JSON_OPTION
@common_options
def jobs_cancel(
    ctx: CliContext,
    job_ids: tuple[str, ...],
    as_json: bool,
    **bulk: Any,
) -> None:
    """Cancel jobs: each ID given, or every job the filter matches (count shown, then confirmed).

    A waiting job is cancelled at once; an executing one is asked to cancel, and its worker
    cancels it. In bulk, only unfinished states are taken (all of them unless --state narrows it).
    """
    _refuse_mixed(job_ids, bulk)
    if not job_ids:
        _bulk(ctx, "cancel", as_json=as_json, **bulk)
        return
    idents = [_job_id(j) for j in job_ids]
    results = ctx.run(lambda a: _each(idents, a.cancel))
    if as_json:
        out = [{"id": r.job.id, "status": r.status, "state": r.job.state.value, "message": r.message} for r in results]
        echo_json(out[0] if len(out) == 1 else out)
    else:
        for r in results:
            click.echo(r.message)


async def _each(idents: list[int], operation: Callable[[int], Any]) -> list[Any]:
    """*operation* on each id in turn (the first failure stops it, as one id alone would)."""
    return [await operation(ident) for ident in idents]


@jobs.command("retry")
@click.argument("job_id", required=False)
@_filter_options(("discarded", "cancelled"))
@LOOKUP_APP
@JSON_OPTION
@common_options
def jobs_retry(
    ctx: CliContext,
    job_id: str | None,
    as_json: bool,
    **bulk: Any,
) -> None:
    """Put a discarded or cancelled job (ID), or every one the filter matches, back in its queue."""
    ids = () if job_id is None else (job_id,)
    _refuse_mixed(ids, bulk)
    if job_id is None:
        _bulk(ctx, "retry", as_json=as_json, **bulk)
        return
    ctx.app()  # a bad --app is reported before a bad job id
    ident = _job_id(job_id)
    job = ctx.run(lambda a: a.retry(ident))
    if as_json:
        echo_json({"retried": [job.id], "skipped": []})
    else:
        click.echo(f"job {job.id} ({job.task}) is available again in queue {job.queue!r}")


@jobs.command("delete")
@click.argument("job_ids", nargs=-1)
@_filter_options()
@LOOKUP_APP
@JSON_OPTION
@common_options
def jobs_delete(
    ctx: CliContext,
    job_ids: tuple[str, ...],
    as_json: bool,
    **bulk: Any,
) -> None:
    """Delete jobs (and their results): each ID given, or every job the filter matches (count shown,
    then confirmed). An executing job is never deleted: cancel it first."""
    _refuse_mixed(job_ids, bulk)
    if not job_ids:
        _bulk(ctx, "delete", as_json=as_json, **bulk)
        return
    idents = [_job_id(j) for j in job_ids]
    deleted = ctx.run(lambda a: _each(idents, a.delete_job))
    if as_json:
        echo_json({"deleted": [j.id for j in deleted]})
    else:
        for j in deleted:
            click.echo(f"job {j.id} ({j.task}, {j.state.value}) deleted")
