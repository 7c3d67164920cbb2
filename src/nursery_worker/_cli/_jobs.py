"""``nursery-worker jobs``: list, show, retry and cancel jobs."""

from __future__ import annotations

import click

from .._app import App
from .._errors import NurseryWorkerError
from .._state import JobState
from ._context import JSON_OPTION, LOOKUP_APP, CliContext, common_options, echo_json

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
    """List, show, retry and cancel jobs."""


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
    """Show one job in full: arguments, result, and each error with its traceback."""
    from .._admin import Admin
    from .._diagnose import diagnose
    from .._status import job_dict, render_job

    ident = _job_id(job_id)
    if why:
        job, reasons = ctx.run(lambda a: diagnose(Admin(a), ident))
    else:
        job, reasons = ctx.run(lambda a: a.get_job(ident)), []
    if as_json:
        data = job_dict(job)
        if why:
            data["why"] = [{"code": r.code, "message": r.message, "blocking": r.blocking} for r in reasons]
        echo_json(data)
        return
    click.echo(render_job(job))
    if why:
        click.echo("\nwhy is it not running?")
        for reason in reasons:
            click.echo(f"  {'-' if reason.blocking else '·'} {reason.message}")


@jobs.command("retry")
@click.argument("job_id", required=False)
@click.option(
    "--state",
    default=None,
    type=click.Choice(["discarded", "cancelled"]),
    help="Retry every job in this state (with --queue/--task to narrow it).",
)
@click.option("--queue", default=None, help="With --state: only this queue.")
@click.option("--task", default=None, help="With --state: only this task.")
@click.option(
    "--limit", default=1000, show_default=True, type=click.IntRange(1, 100_000), help="With --state: at most."
)
@LOOKUP_APP
@JSON_OPTION
@common_options
def jobs_retry(
    ctx: CliContext,
    job_id: str | None,
    state: str | None,
    queue: str | None,
    task: str | None,
    limit: int,
    as_json: bool,
) -> None:
    """Put a discarded or cancelled job (ID), or all of them (--state), back in their queue."""
    if (job_id is None) == (state is None):
        raise click.UsageError("give either a job ID or --state discarded|cancelled, not both or neither")
    if job_id is not None and (queue is not None or task is not None):
        raise click.UsageError("--queue and --task narrow --state; they do not apply to one job ID")
    ctx.app()  # a bad --app is reported before a bad job id
    if job_id is not None:
        ident = _job_id(job_id)
        job = ctx.run(lambda a: a.retry(ident))
        if as_json:
            echo_json({"retried": [job.id], "skipped": []})
        else:
            click.echo(f"job {job.id} ({job.task}) is available again in queue {job.queue!r}")
        return
    assert state is not None

    async def retry_all(a: App) -> tuple[list[int], list[tuple[int, str]]]:
        retried: list[int] = []
        skipped: list[tuple[int, str]] = []
        before: int | None = None
        while len(retried) + len(skipped) < limit:
            page = await a.list_jobs(
                state=state,
                queue=queue,
                task=task,
                limit=min(500, limit - len(retried) - len(skipped)),
                before_id=before,
            )
            if not page:
                break
            for job in page:
                try:
                    retried.append((await a.retry(job.id)).id)
                except NurseryWorkerError as exc:  # raced with another retry, or a unique key is taken
                    skipped.append((job.id, str(exc)))
            before = page[-1].id
        return retried, skipped

    retried, skipped = ctx.run(retry_all)
    if as_json:
        echo_json({"retried": retried, "skipped": [{"id": i, "reason": r} for i, r in skipped]})
        return
    for ident, reason in skipped:
        click.echo(f"skipped job {ident}: {reason}", err=True)
    click.echo(f"retried {len(retried)} {state} job(s)" + (f"; skipped {len(skipped)}" if skipped else ""))


@jobs.command("cancel")
@click.argument("job_id")
@LOOKUP_APP
@JSON_OPTION
@common_options
def jobs_cancel(ctx: CliContext, job_id: str, as_json: bool) -> None:
    """Cancel a waiting job at once, or ask the worker running it to cancel it."""
    ident = _job_id(job_id)
    result = ctx.run(lambda a: a.cancel(ident))
    if as_json:
        echo_json(
            {"id": result.job.id, "status": result.status, "state": result.job.state.value, "message": result.message}
        )
    else:
        click.echo(result.message)
