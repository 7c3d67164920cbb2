"""`nursery-worker jobs cancel|retry|delete` in bulk (preview, confirmation, chunks) and by id, on
every engine, run as a user runs them: the console script in a subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest

from nursery_worker import App, JobFilter

TIMEOUT = 60
CONSOLE_SCRIPT = str(Path(sys.executable).with_name("nursery-worker"))


@pytest.fixture
def cli(engine_dsn: str, engine_schema: str, tmp_path: Path) -> Callable[..., subprocess.CompletedProcess[str]]:
    """Run the console script on the test's database, with *stdin* as its input."""

    def run(*args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("NURSERY_WORKER_")}
        argv: Sequence[str] = [CONSOLE_SCRIPT, *args, "--dsn", engine_dsn, "--schema", engine_schema]
        return subprocess.run(argv, cwd=tmp_path, env=env, input=stdin, capture_output=True, text=True, timeout=TIMEOUT)

    return run


@pytest.fixture
def seeded(app: App) -> App:
    """The app with 25 available jobs in queue emails and 3 in default."""
    app.migrate_sync()
    app.defer_many_sync([app.job_by_name("emails.send", {"n": i}, queue="emails") for i in range(25)])
    app.defer_many_sync([app.job_by_name("reports.build", {"n": i}) for i in range(3)])
    return app


def _ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    return result.stdout


def test_bulk_cancel_prints_the_count_then_acts_after_a_yes(seeded: App, cli: Callable[..., Any]) -> None:
    """The bulk form prints the count and the filter, asks, and after "y" cancels in chunks and sums up."""
    out = _ok(cli("jobs", "cancel", "--queue", "emails", "--state", "available", "--chunk-size", "10", stdin="y\n"))
    assert out.splitlines()[0] == "25 job(s) match (state available, queue emails) and would be cancelled"
    assert out.splitlines()[-1] == "cancelled 25 of 25 job(s)"
    assert seeded.count_jobs_sync(JobFilter(states="cancelled", queue="emails")) == 25
    assert seeded.count_jobs_sync(JobFilter(states="available", queue="default")) == 3


def test_bulk_cancel_answered_no_changes_nothing(seeded: App, cli: Callable[..., Any]) -> None:
    """Answering "n" to the confirmation aborts with exit 1 and leaves every job as it was."""
    result = cli("jobs", "cancel", "--queue", "emails", stdin="n\n")
    assert result.returncode == 1 and "nothing was cancelled" in result.stderr
    assert "25 job(s) match (queue emails) and would be cancelled" in result.stdout
    assert seeded.count_jobs_sync(JobFilter(states="available")) == 28


def test_bulk_form_without_a_filter_needs_all(seeded: App, cli: Callable[..., Any]) -> None:
    """A bulk form with no filter is refused unless --all is given; with --all --yes it acts on every job."""
    refused = cli("jobs", "cancel", "--yes")
    assert refused.returncode == 2 and "pass --all" in refused.stderr
    assert seeded.count_jobs_sync(JobFilter(states="available")) == 28
    out = _ok(cli("jobs", "cancel", "--all", "--yes"))
    assert "28 job(s) match (every job) and would be cancelled" in out


def test_bulk_retry_and_delete_with_json_and_an_id_range(seeded: App, cli: Callable[..., Any]) -> None:
    """--yes --json acts without asking and prints the result; --id-range narrows by id."""
    seeded.bulk_cancel_sync(JobFilter(queue="emails"))
    # The ids run from 1 in a fresh schema: the emails jobs are 1-25.
    retried = json.loads(_ok(cli("jobs", "retry", "--id-range", "1-10", "--yes", "--json")))
    assert (retried["action"], retried["matched"], retried["changed"]) == ("retry", 10, 10)
    deleted = json.loads(_ok(cli("jobs", "delete", "--state", "cancelled", "--yes", "--json")))
    assert (deleted["matched"], deleted["changed"], deleted["skipped"]) == (15, 15, 0)
    assert seeded.count_jobs_sync(JobFilter()) == 13


def test_jobs_delete_by_id_and_its_refusals(seeded: App, cli: Callable[..., Any]) -> None:
    """`jobs delete ID...` deletes those jobs; deleting executing jobs in bulk is refused with the reason."""
    out = _ok(cli("jobs", "delete", "1", "2"))
    assert out.splitlines() == ["job 1 (emails.send, available) deleted", "job 2 (emails.send, available) deleted"]
    refused = cli("jobs", "delete", "--state", "executing", "--yes")
    assert refused.returncode == 1 and "executing jobs cannot be deleted" in refused.stderr
    mixed = cli("jobs", "delete", "3", "--queue", "emails")
    assert mixed.returncode == 2 and "give either job IDs or a filter" in mixed.stderr
    assert seeded.count_jobs_sync(JobFilter()) == 26
