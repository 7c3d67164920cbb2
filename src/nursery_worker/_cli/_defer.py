"""``nursery-worker defer``: enqueue one job by task name, or many from a JSON-lines file."""

from __future__ import annotations

import json
import sys
from typing import Any

import click

from .._app import App
from .._dsn import redact
from .._errors import NurseryWorkerError
from .._models import JobSpec
from ._context import CliContext, app_option, common_options

_LINE_KEYS = frozenset({"task", "args", "queue", "priority", "max_attempts", "depends_on"})


def _unknown_task(app: App, task: str) -> str | None:
    """With ``--app``, a task name its app does not register is a mistake: say so, and the names it has.

    (Without ``--app`` any name goes: a producer need not import the worker's code.)
    """
    if task in app.tasks:
        return None
    near = sorted(name for name in app.tasks if name.rsplit(".", 1)[-1] == task)
    hint = f"; did you mean {' or '.join(map(repr, near))}?" if near else ""
    known = ", ".join(sorted(app.tasks)) or "none"
    return f"no task named {task!r} is registered in the --app (registered: {known}){hint}"


def _read_specs(
    app: App, stream: Any, name: str, *, check_known: bool = False, no_queue: list[int] | None = None
) -> list[JobSpec]:
    """Every job of a JSON-lines stream, validated before anything is inserted.

    *check_known* (``--app`` given): a task name the app does not register is an error. The line
    numbers without a ``"queue"`` are appended to *no_queue*, when given.
    """
    specs: list[JobSpec] = []
    for number, line in enumerate(stream, start=1):
        if not line.strip():
            continue
        where = f"{name} line {number}"
        try:
            item = json.loads(line)
        except json.JSONDecodeError as exc:
            raise click.ClickException(f"{where}: not valid JSON ({exc}); nothing was deferred") from None
        if not isinstance(item, dict):
            raise click.ClickException(
                f"{where}: expected a JSON object, got {type(item).__name__}; nothing was deferred"
            )
        unknown = sorted(set(item) - _LINE_KEYS)
        if unknown:
            raise click.ClickException(
                f"{where}: unknown key(s) {', '.join(map(repr, unknown))} (allowed: {', '.join(sorted(_LINE_KEYS))}); "
                "nothing was deferred"
            )
        task = item.get("task")
        if not isinstance(task, str):
            raise click.ClickException(f"{where}: 'task' must be a task name (a string); nothing was deferred")
        args = item.get("args", {})
        if not isinstance(args, dict):
            raise click.ClickException(f"{where}: 'args' must be a JSON object; nothing was deferred")
        if no_queue is not None and item.get("queue") is None:
            no_queue.append(number)
        if check_known and (problem := _unknown_task(app, task)):
            raise click.ClickException(f"{where}: {problem}; nothing was deferred")
        try:
            specs.append(
                app.job_by_name(
                    task,
                    args,
                    queue=item.get("queue"),
                    priority=item.get("priority"),
                    max_attempts=item.get("max_attempts"),
                    depends_on=item.get("depends_on"),
                )
            )
        except (TypeError, ValueError) as exc:
            raise click.ClickException(f"{where}: {exc}; nothing was deferred") from None
    return specs


@click.command()
@click.argument("task", required=False)
@click.option("--args", "args_json", default="{}", show_default=True, help="Keyword arguments as a JSON object.")
@click.option(
    "--file",
    "jobs_file",
    type=click.File("r", encoding="utf-8"),
    default=None,
    help='Defer many jobs from a JSON-lines file (- for stdin): {"task": ..., "args": {...}, "queue": ...} a line.',
)
@click.option("--batch-size", default=500, show_default=True, type=click.IntRange(1, 10_000), help="Jobs per insert.")
@click.option(
    "--progress/--no-progress",
    default=None,
    help="Show progress on stderr while deferring a file (default: when stderr is a terminal).",
)
@app_option("Optional App, to check the arguments against the task.")
@click.option(
    "--queue",
    default=None,
    help="Queue (default: the task's with --app; without --app 'default', and a note says so on stderr).",
)
@click.option("--priority", default=None, type=int, help="Priority (higher runs first).")
@click.option("--max-attempts", default=None, type=click.IntRange(min=1))
@click.option(
    "--depends-on",
    "depends_on",
    multiple=True,
    type=click.IntRange(min=1),
    help="A job id this job waits for (repeat for several): it stays pending until they all completed.",
)
@common_options
def defer(
    ctx: CliContext,
    task: str | None,
    args_json: str,
    jobs_file: Any,
    batch_size: int,
    progress: bool | None,
    queue: str | None,
    priority: int | None,
    max_attempts: int | None,
    depends_on: tuple[int, ...],
) -> None:
    """Enqueue one job of TASK and print it as JSON, or many with --file.

    With --file, every line is validated first (a bad line names its number and nothing is
    inserted); the jobs are then inserted in batches of --batch-size and the count printed.
    """
    if (task is None) == (jobs_file is None):
        raise click.UsageError("give either TASK (one job) or --file PATH|- (many jobs), not both or neither")
    if jobs_file is not None:
        _defer_file(ctx, jobs_file, batch_size, progress)
        return
    assert task is not None
    try:
        args = json.loads(args_json)
    except json.JSONDecodeError as exc:
        raise click.UsageError(f"--args is not valid JSON ({exc}): {args_json[:80]!r}") from None
    if not isinstance(args, dict):
        raise click.UsageError(f"--args must be a JSON object of keyword arguments, got {type(args).__name__}")
    app = ctx.app()
    if ctx.app_path and (problem := _unknown_task(app, task)):
        raise click.UsageError(problem)
    try:
        spec = app.job_by_name(
            task,
            args,
            queue=queue,
            priority=priority,
            max_attempts=max_attempts,
            depends_on=list(depends_on) or None,
        )
    except (TypeError, ValueError) as exc:
        raise click.UsageError(str(exc)) from None
    (job,) = app.defer_many_sync([spec])
    if not ctx.app_path:
        # Without the app, the task's own queue and signature are unknown: say what was assumed.
        where = f"to queue {job.queue!r}" + (
            "" if queue is not None else " (the default: the task's own queue is unknown)"
        )
        click.echo(
            f"note: no --app, so job {job.id} went {where}, and the task name {task!r} and its arguments "
            "could not be checked; give --app to check them and use the task's queue",
            err=True,
        )
    click.echo(json.dumps({"id": job.id, "task": job.task, "queue": job.queue, "state": job.state.value}))


def _defer_file(ctx: CliContext, jobs_file: Any, batch_size: int, progress: bool | None) -> None:
    app = ctx.app()
    name = "stdin" if jobs_file.name == "<stdin>" else jobs_file.name
    done = 0
    try:
        no_queue: list[int] = []
        specs = _read_specs(app, jobs_file, name, check_known=bool(ctx.app_path), no_queue=no_queue)
        if not ctx.app_path and specs:
            # Said before the progress lines: the last lines of stderr stay the count.
            default = f", and the {len(no_queue)} line(s) without \"queue\" go to queue 'default'" if no_queue else ""
            click.echo(
                f"note: no --app, so the task names and arguments could not be checked{default}; give --app to "
                "check them and use each task's queue",
                err=True,
            )
        interactive = sys.stderr.isatty()
        show = interactive if progress is None else progress
        batches = [specs[i : i + batch_size] for i in range(0, len(specs), batch_size)]
        if show and interactive:
            with click.progressbar(length=len(specs), label="deferring", file=sys.stderr) as bar:
                for batch in batches:
                    done += len(app.defer_many_sync(batch))
                    bar.update(len(batch))
        else:
            for batch in batches:
                done += len(app.defer_many_sync(batch))
                if show:
                    click.echo(f"deferred {done}/{len(specs)}", err=True)
    except (NurseryWorkerError, click.ClickException) as exc:
        if done:
            raise click.ClickException(f"{redact(str(exc))} (after {done} job(s) were deferred)") from None
        raise
    click.echo(f"deferred {done} job(s) from {name}")
