"""The durable-steps app of the fault tests: a job of numbered steps, each written down in a ledger file.

The task ``steps.ledgered(directory, steps)`` runs ``steps`` durable steps (``context.step``) in
order. Step *i* appends ``start <i> <attempt> <pid>`` to ``<directory>/ledger`` as it begins and
``done <i> <attempt> <pid>`` once its work is over, then returns ``{"step", "attempt", "pid"}``,
which the worker stores as the step's result. A step is *held* until the test releases it: without
the file ``<directory>/release-<i>`` it never ends, so a test that sees its ``start`` line knows
the worker is inside that step and can SIGKILL it there.

Each line is one ``write`` to a file opened with ``O_APPEND``: once it returns, the line is in the
kernel's page cache, where killing the process cannot take it back; lines of two processes never
interleave within a line.

Worker subprocesses import ``tests.faults.steps_app:app``, built from the environment
(``$NURSERY_WORKER_DSN``, ``$NURSERY_WORKER_SCHEMA``), on PostgreSQL or SQLite alike.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import anyio

from nursery_worker import App, JobContext

TASK = "steps.ledgered"
LEDGER = "ledger"


def release(directory: Path, step: int) -> None:
    """Let step *step* of the jobs writing to *directory* run to its end from now on."""
    (directory / f"release-{step}").touch()


def read_ledger(directory: Path) -> list[tuple[str, int, int, int]]:
    """The ledger's lines so far, in order, as ``(event, step, attempt, pid)``."""
    path = directory / LEDGER
    if not path.exists():
        return []
    lines = []
    for line in path.read_text().splitlines():
        event, step, attempt, pid = line.split()
        lines.append((event, int(step), int(attempt), int(pid)))
    return lines


def _append(directory: Path, event: str, step: int, attempt: int) -> None:
    fd = os.open(directory / LEDGER, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        os.write(fd, f"{event} {step} {attempt} {os.getpid()}\n".encode())
    finally:
        os.close(fd)


async def _step(directory: Path, step: int, attempt: int) -> dict[str, Any]:
    _append(directory, "start", step, attempt)
    if not (directory / f"release-{step}").exists():
        # Held: this attempt never leaves the step; the test kills the process while it waits here.
        await anyio.sleep_forever()
    _append(directory, "done", step, attempt)
    return {"step": step, "attempt": attempt, "pid": os.getpid()}


def register(app: App) -> App:
    """Register ``steps.ledgered`` on *app*; return it."""

    @app.task(name=TASK, max_attempts=20)
    async def ledgered(context: JobContext, directory: str, steps: int) -> list[Any]:
        folder = Path(directory)
        return [await context.step(f"step-{i}", _step, folder, i, context.attempt) for i in range(1, steps + 1)]

    return app


#: For worker subprocesses (``--app tests.faults.steps_app:app``): DSN and schema from the environment.
app = register(App())
