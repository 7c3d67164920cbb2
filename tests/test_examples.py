"""Every example in examples/ runs to completion against the test database and says what it shows."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest

from .conftest import TEST_DSN

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.slow


def run(*args: str, schema: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "NURSERY_WORKER_DSN": TEST_DSN}
    if schema is not None:
        env["NURSERY_WORKER_SCHEMA"] = schema
    return subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120, check=False)


def drop(schema: str) -> None:
    with psycopg.connect(TEST_DSN, autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


@pytest.mark.parametrize(
    ("module", "schema", "expected"),
    [
        ("embedded_worker", "example_embedded", "fetched https://example.com/4"),
        ("fastapi_app", "example_fastapi", "completed: welcome mail sent to ada@example.com"),
        ("django_project", "example_django", "receipts sent: ['tea']"),
        ("retries_and_timeouts", "example_retries", "completed after 3 attempt(s)"),
        ("transactional_enqueue", "example_transactional", "receipt jobs enqueued for orders: ['1']"),
        ("bulk_enqueue", "example_bulk", "worked 10000 jobs"),
        ("cancel", "example_cancel", "had already finished (cancelled); nothing changed"),
        ("snooze_retry_discard", "example_steer", "snoozed 2 time(s), retried 2, discarded 1"),
        ("unique_jobs", "example_unique", "20 concurrent defers of reindex users -> 1 job"),
        ("results", "example_results", "parse('42') -> 42"),
        ("context_and_middleware", "example_middleware", "hello ada from job 1 on queue default"),
        ("testing_your_tasks", "example_testing", "drain: completed [2] snoozed 1"),
        ("supervisor", "example_supervisor", "worked 20 jobs in 2 processes"),
        ("metrics_and_tracing", "example_metrics", "5 in the trace of their defer"),
        ("queue_pause", "example_pause", "after resume: ['report daily', 'email to ada@example.com']"),
        ("workflows", "example_workflows", "'merged report', 'published report']"),
        ("limits_and_breakers", "example_limits", "after the probe: closed"),
        ("periodic", "example_periodic", "job(s): each tick enqueued once"),
        ("embedded_sqlite", "example_embedded_sqlite", "receipts sent for orders [1]: 'receipt #1'"),
        ("dashboard", "example_dashboard", "job page: 200 True False"),
        ("bulk_operations", "example_bulk_ops", "deleted 2400 cancelled job(s) and job"),
        ("typed_tasks", "example_typed", "add(2, b=3) -> 5; word_count -> [('be', 2),"),
        ("order_flow", "example_order_flow", "payment API called 1 time(s), carrier API 2 time(s)"),
    ],
)
def test_example_runs_and_prints_its_result(module: str, schema: str, expected: str) -> None:
    """The example exits 0 and prints the result it exists to show."""
    drop(schema)
    try:
        result = run(sys.executable, "-m", f"examples.{module}")
    finally:
        drop(schema)
    assert result.returncode == 0, result.stderr
    assert expected in result.stdout, result.stdout + result.stderr


def test_quick_start_app_runs_end_to_end_through_the_cli() -> None:
    """examples.hello enqueues jobs and `nursery-worker run --once` works them all off."""
    schema = f"example_hello_{os.getpid()}"
    try:
        enqueue = run(sys.executable, "-m", "examples.hello", schema=schema)
        assert enqueue.returncode == 0, enqueue.stderr
        cli = (sys.executable, "-m", "nursery_worker")
        worked = run(*cli, "run", "--app", "examples.hello:app", "--once", schema=schema)
        assert worked.returncode == 0, worked.stderr
        assert "hello, Ada!" in worked.stdout
        assert "processed 5 job(s): 5 completed, 0 failed" in worked.stdout
        with psycopg.connect(TEST_DSN, autocommit=True) as conn:
            row = conn.execute(f"SELECT count(*) FROM {schema}.jobs WHERE state <> 'completed'").fetchone()
        assert row == (0,)
    finally:
        drop(schema)
