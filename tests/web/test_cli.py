"""The command line's part of the dashboard: ``jobs show --why`` (the diagnosis the job page shows)
and ``web``'s refusals before it serves anything."""

from __future__ import annotations

import json

from click.testing import CliRunner

from nursery_worker import App
from nursery_worker._cli import cli


def test_jobs_show_why_names_a_paused_queue(migrated: App, engine_dsn: str, engine_schema: str) -> None:
    """``jobs show ID --why --json`` lists the paused queue among the reasons."""

    @migrated.task(queue="parked", name="web.parked")
    def parked() -> None: ...

    job = parked.defer_sync()
    migrated.close()
    runner = CliRunner()
    paused = runner.invoke(cli, ["queues", "pause", "parked", "--dsn", engine_dsn, "--schema", engine_schema])
    assert paused.exit_code == 0, paused.output
    shown = runner.invoke(
        cli, ["jobs", "show", str(job.id), "--why", "--json", "--dsn", engine_dsn, "--schema", engine_schema]
    )
    assert shown.exit_code == 0, shown.output
    codes = [r["code"] for r in json.loads(shown.output)["why"]]
    assert "queue_paused" in codes and "no_worker" in codes


def test_web_read_write_needs_a_token(engine_dsn: str) -> None:
    """``web --read-write`` without a token exits with a usage error before serving."""
    result = CliRunner().invoke(
        cli, ["web", "--read-write", "--dsn", engine_dsn], env={"NURSERY_WORKER_WEB_TOKEN": None}
    )
    assert result.exit_code == 2 and "--token" in result.output
