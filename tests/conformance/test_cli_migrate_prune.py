"""`migrate --sql`, `migrate --check` and `prune --dry-run` apply or delete nothing, on every engine;
and the migration runner applies a version missing below the newest one (a gap filled later)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from nursery_worker import App, JobFilter, SchemaNotReady
from nursery_worker._driver._common import Migrations, check_version

TIMEOUT = 60
CONSOLE_SCRIPT = str(Path(sys.executable).with_name("nursery-worker"))


@pytest.fixture
def cli(engine_dsn: str, engine_schema: str, tmp_path: Path) -> Callable[..., subprocess.CompletedProcess[str]]:
    """Run the console script on the test's database."""

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("NURSERY_WORKER_")}
        argv = [CONSOLE_SCRIPT, *args, "--dsn", engine_dsn, "--schema", engine_schema]
        return subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=TIMEOUT)

    return run


def test_migrate_check_and_sql_on_a_fresh_schema_apply_nothing(
    make_app: Callable[..., App], cli: Callable[..., Any]
) -> None:
    """On a fresh schema --check exits 1 naming every migration and --sql prints them; nothing is applied."""
    first = make_app().pending_migrations_sync()[0]
    check = cli("migrate", "--check")
    assert check.returncode == 1 and "behind" in check.stderr and first.name in check.stderr
    shown = cli("migrate", "--sql")
    assert shown.returncode == 0 and f"-- {first.name} (schema version 1)" in shown.stdout
    assert "CREATE TABLE" in shown.stdout
    assert make_app().pending_migrations_sync()[0].name == first.name  # still pending


def test_migrate_check_passes_once_migrated(make_app: Callable[..., App], cli: Callable[..., Any]) -> None:
    """After migrate, --check exits 0 and --sql has nothing to run."""
    make_app().migrate_sync()
    check = cli("migrate", "--check")
    assert check.returncode == 0 and "up to date" in check.stdout
    assert "nothing to run" in cli("migrate", "--sql").stdout
    assert make_app().pending_migrations_sync() == []


def test_prune_dry_run_counts_per_state_and_deletes_nothing(app: App, cli: Callable[..., Any]) -> None:
    """--dry-run prints what prune would delete, by state, and every job is still there afterwards."""
    app.migrate_sync()
    jobs = app.defer_many_sync([app.job_by_name("t", {"n": i}) for i in range(4)])
    app.bulk_cancel_sync(JobFilter(max_id=jobs[2].id))
    text = cli("prune", "--older-than", "0s", "--dry-run")
    assert text.returncode == 0, text.stderr
    assert text.stdout.splitlines()[0] == "would prune 3 job(s) finished over 0s ago (dry run: nothing deleted)"
    assert "  cancelled  3" in text.stdout.splitlines()
    data = json.loads(cli("prune", "--older-than", "0s", "--dry-run", "--json", "--state", "cancelled").stdout)
    assert data["would_prune"] == {"cancelled": 3} and data["dry_run"] is True
    assert json.loads(cli("prune", "--older-than", "1h", "--dry-run", "--json").stdout)["total"] == 0
    assert app.count_jobs_sync(JobFilter()) == 4


def test_a_migration_missing_below_the_newest_is_still_applied() -> None:
    """A schema that has 1, 2 and 4 (3 merged later) gets 3: pending is by membership, not by the maximum."""
    migrations = Migrations(
        package="nursery_worker._driver.postgres",
        versions=(
            (1, "0001_initial.sql"),
            (2, "0002_job_control.sql"),
            (3, "0003_worker_stats.sql"),
            (4, "0004_queues.sql"),
        ),
    )
    assert [v for v, _, _ in migrations.pending([1, 2, 4], where="schema 'x'")] == [3]


def test_a_schema_at_the_newest_version_with_a_gap_is_not_ready() -> None:
    """check_version refuses a schema whose newest version is current but that lacks an earlier one."""
    with pytest.raises(SchemaNotReady, match="lacks 1 earlier migration"):
        check_version("schema 'x'", 4, 4, applied=3, known=4)
    check_version("schema 'x'", 4, 4, applied=3, known=3)  # this code has no version 3 (yet)
