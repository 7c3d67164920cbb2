"""``nursery-worker status`` fits the terminal (narrow layouts drop columns deliberately), and
``--watch`` shows rates, on every engine."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Sequence

import anyio
import pytest

from nursery_worker import App, open_worker
from nursery_worker._status import Column, Rates, Snapshot, fit_table

from ..integration.helpers import fast

LONG_QUEUES = ("emails", "reports-with-a-rather-long-queue-name", "default", "thumbnails")


def _status(args: Sequence[str], *, dsn: str, schema: str, columns: str | None = None) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith("NURSERY_WORKER_") and k != "COLUMNS"}
    env |= {"NURSERY_WORKER_DSN": dsn, "NURSERY_WORKER_SCHEMA": schema}
    if columns is not None:
        env["COLUMNS"] = columns
    done = subprocess.run(
        [sys.executable, "-m", "nursery_worker", "status", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


async def _fill(app: App) -> None:
    """Jobs on several queues, one of them paused and one limited: every column has something to show."""
    await app.defer_many(
        [app.job_by_name("send", {"n": n}, queue=q) for q in LONG_QUEUES for n in range(3)]
        + [app.job_by_name("send", {"n": 9}, queue="emails", priority=1)]
    )
    await app.pause_queue("thumbnails")


@pytest.mark.slow
@pytest.mark.anyio
@pytest.mark.parametrize("width", [80, 40])
async def test_no_line_of_status_is_wider_than_the_width_asked_for(
    app: App, engine_dsn: str, engine_schema: str, width: int
) -> None:
    """With queues, a paused queue and a running worker, ``status --width N`` prints no line over N columns."""
    await _fill(app)
    async with open_worker(app, **fast(queues="nothing-here")):
        text = await anyio.to_thread.run_sync(
            lambda: _status(["--width", str(width)], dsn=engine_dsn, schema=engine_schema)
        )
    lines = text.splitlines()
    assert max(len(line) for line in lines) <= width, text
    database, queues = text.split("\n\n")[:2]  # the database line (wrapped) comes first
    assert database.startswith(("database: ", "WARNING database: ")), text
    assert queues.startswith("QUEUE ") and any(" PID " in f" {line} " for line in lines), text
    assert any(line.startswith("(hidden: ") for line in lines), text


@pytest.mark.slow
@pytest.mark.anyio
async def test_status_takes_the_terminal_width_from_columns_and_width_0_is_unlimited(
    app: App, engine_dsn: str, engine_schema: str
) -> None:
    """``COLUMNS=80`` fits the tables to 80 columns; ``--width 0`` shows every column, however wide."""
    await _fill(app)
    async with open_worker(app, **fast(queues="nothing-here")):
        narrow, wide = await anyio.to_thread.run_sync(
            lambda: (
                _status([], dsn=engine_dsn, schema=engine_schema, columns="80"),
                _status(["--width", "0"], dsn=engine_dsn, schema=engine_schema, columns="80"),
            )
        )
    assert max(len(line) for line in narrow.splitlines()) <= 80, narrow
    assert max(len(line) for line in wide.splitlines()) > 80
    assert "OLDEST AVAILABLE" in wide and "SUPERVISOR" in wide and "(hidden" not in wide


@pytest.mark.slow
@pytest.mark.anyio
async def test_status_watch_reports_jobs_per_second_from_its_second_redraw(
    app: App, engine_dsn: str, engine_schema: str
) -> None:
    """``status --watch --json`` has no rates in its first redraw and completed/failed jobs/s from the second."""
    await _fill(app)
    env = {k: v for k, v in os.environ.items() if not k.startswith("NURSERY_WORKER_")}
    env |= {"NURSERY_WORKER_DSN": engine_dsn, "NURSERY_WORKER_SCHEMA": engine_schema}
    argv = [sys.executable, "-m", "nursery_worker", "status", "--watch", "0.2", "--json"]
    redraws = []
    with anyio.fail_after(60):
        async with await anyio.open_process(argv, env=env, stderr=subprocess.DEVNULL) as process:
            assert process.stdout is not None
            buffered = b""
            while len(redraws) < 2:
                buffered += await process.stdout.receive()
                *complete, buffered = buffered.split(b"\n")
                redraws += [json.loads(line) for line in complete if line.strip()]
            process.send_signal(signal.SIGINT)
            assert await process.wait() == 0
    assert "rates" not in redraws[0]
    rates = redraws[1]["rates"]
    assert rates["seconds"] > 0
    assert rates["completed_per_second"] >= 0 and rates["failed_per_second"] >= 0


def test_rates_are_the_counters_differences_over_the_interval() -> None:
    """Rates are completed jobs by queue and failed attempts by worker per second; a counter that went down is 0."""
    from nursery_worker._models import QueueInfo  # noqa: F401  (the snapshot's source, for the reader)

    before = Snapshot(at=10.0, completed={"a": 100, "b": 50}, workers={"w1": (10, 2), "w2": (5, 0)})
    after = Snapshot(at=12.0, completed={"a": 120, "b": 40, "new": 7}, workers={"w1": (30, 6), "w3": (1, 1)})
    rates = Rates.between(before, after)
    assert (rates.seconds, rates.completed, rates.failed) == (2.0, 10.0, 2.0)
    assert rates.by_queue == {"a": 10.0, "b": 0.0}
    assert rates.by_worker == {"w1": (10.0, 2.0)}
    assert rates.summary() == "10.0 jobs/s completed, 2.0 jobs/s failed (last 2.0s)"


def test_a_narrow_table_drops_empty_columns_first_then_the_least_useful() -> None:
    """Fitting drops a column with nothing to show before a fuller one of lower rank, and names what it hid."""
    columns = [Column("NAME", "NAME", 99), Column("EMPTY", "E", 9), Column("LOW", "L", 1), Column("HIGH", "H", 8)]
    rows = [["alpha", "-", "12345678", "7"], ["beta", "0", "1", "8"]]
    assert fit_table(columns, rows, 0).splitlines()[0].split() == ["NAME", "EMPTY", "LOW", "HIGH"]
    text = fit_table(columns, rows, 16)
    assert text.splitlines()[0].split() == ["NAME", "H"]
    assert all(len(line) <= 16 for line in text.splitlines())
    assert "E, L" in " ".join(text.splitlines()[3:])
