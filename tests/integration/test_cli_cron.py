"""``nursery-worker cron list``, run as a user runs it: the console script in a subprocess, against
schedules a scheduler registered in a schema of the test's own."""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import anyio
import psycopg
import pytest

from nursery_worker import App
from nursery_worker._maintenance import Scheduler

CONSOLE_SCRIPT = str(Path(sys.executable).with_name("nursery-worker"))
Conn = psycopg.Connection[Any]

APP_MODULE = """\
from nursery_worker import App

app = App(schema={schema!r})


@app.periodic(cron="0 6 * * MON-FRI", timezone="Europe/Paris", args={{"kind": "daily"}})
@app.task(name="reports.send", queue="reports")
async def send(kind: str) -> None: ...


@app.periodic(cron="* * * * *", name="heartbeat.minute", catch_up=3600)
@app.task(name="heartbeat")
async def beat() -> None: ...
"""


def _cli(args: Sequence[str], *, dsn: str, schema: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("NURSERY_WORKER_")}
    argv = [CONSOLE_SCRIPT, *args, "--dsn", dsn, "--schema", schema]
    return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60, cwd=cwd)


def _ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    return result.stdout


def _register(app: App, db: Conn, *names: str) -> None:
    """Register *names* as a worker would, then let one of them enqueue a tick (an hour of past)."""
    scheduler = Scheduler(app.driver, tuple(app.schedules[n] for n in names))
    anyio.run(scheduler.run_once)
    db.execute("UPDATE periodic SET active_since = now() - interval '1 hour'")
    anyio.run(scheduler.run_once)


def _app(tmp_path: Path, schema: str, dsn: str) -> App:
    """The app the CLI imports (tasks.py in tmp_path), defined here too, to register its schedules."""
    (tmp_path / "tasks.py").write_text(APP_MODULE.format(schema=schema))
    namespace: dict[str, Any] = {}
    exec(APP_MODULE.format(schema=schema), namespace)
    app: App = namespace["app"]
    app.configure_database(dsn=dsn)
    app.migrate_sync()
    return app


def test_cron_list_shows_each_schedule_next_run_and_last_job(tmp_path: Path, dsn: str, schema: str, db: Conn) -> None:
    """`cron list --app` prints one row per schedule: expression, zone, task, queue, next run, last tick and job."""
    app = _app(tmp_path, schema, dsn)
    try:
        _register(app, db, "heartbeat.minute")
    finally:
        app.close()

    out = _ok(_cli(["cron", "list", "--app", "tasks:app"], dsn=dsn, schema=schema, cwd=tmp_path))

    header, *rows = (re.split(r"\s{2,}", line.strip()) for line in out.strip().splitlines())
    assert header == ["NAME", "CRON", "TIMEZONE", "TASK", "QUEUE", "NEXT RUN", "LAST TICK", "LAST JOB"]
    minute, reports = rows
    assert minute[:5] == ["heartbeat.minute", "* * * * *", "UTC", "heartbeat", "default"]
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:00 UTC \(in \d+s\)", minute[5])
    assert minute[6].endswith(":00 UTC") and re.fullmatch(r"\d+ available", minute[7])
    assert reports[:5] == ["reports.send", "0 6 * * MON-FRI", "Europe/Paris", "reports.send", "reports"]
    assert re.search(r" 06:00:00 CES?T \(in ", reports[5])  # the next run, in the schedule's zone
    assert reports[6:] == ["-", "-"]  # not registered yet: no worker of its queue ran


def test_cron_list_json_and_a_schedule_the_app_no_longer_defines(
    tmp_path: Path, dsn: str, schema: str, db: Conn
) -> None:
    """`cron list --json` gives every field; without --app the database's schedules are listed, marked not in_app."""
    app = _app(tmp_path, schema, dsn)
    try:
        _register(app, db, "heartbeat.minute", "reports.send")
    finally:
        app.close()
    db.execute("UPDATE periodic SET name = 'removed.schedule' WHERE name = 'reports.send'")

    data = json.loads(_ok(_cli(["cron", "list", "--json", "--app", "tasks:app"], dsn=dsn, schema=schema, cwd=tmp_path)))
    assert [(d["name"], d["in_app"]) for d in data] == [
        ("heartbeat.minute", True),
        ("removed.schedule", False),
        ("reports.send", True),
    ]
    minute = data[0]
    assert minute["cron"] == "* * * * *" and minute["timezone"] == "UTC" and minute["task"] == "heartbeat"
    assert minute["last_job_state"] == "available" and isinstance(minute["last_job_id"], int)
    assert 0 < minute["next_in"] <= 60
    assert dt.datetime.fromisoformat(minute["next_tick"]).second == 0
    assert data[1]["args"] == {"kind": "daily"} and data[1]["queue"] == "reports"

    table = _ok(_cli(["cron", "list", "--app", "tasks:app"], dsn=dsn, schema=schema, cwd=tmp_path))
    assert "removed.schedule*" in table and "* not defined in the app" in table
    bare = json.loads(_ok(_cli(["cron", "list", "--json"], dsn=dsn, schema=schema)))
    assert [(d["name"], d["in_app"]) for d in bare] == [("heartbeat.minute", False), ("removed.schedule", False)]


def test_cron_list_with_nothing_scheduled_says_so(dsn: str, schema: str, app: App) -> None:
    """With no schedule anywhere, `cron list` prints one sentence and exits 0."""
    out = _ok(_cli(["cron", "list"], dsn=dsn, schema=schema))
    assert out.strip() == "no periodic schedules: none is defined in the app and no worker has registered one"


def test_cron_list_on_an_unmigrated_schema_is_a_one_line_error(dsn: str, schema: str) -> None:
    """An unmigrated schema is one line naming the migrate command, exit 1."""
    result = _cli(["cron", "list"], dsn=dsn, schema=schema)
    assert result.returncode == 1
    assert "nursery-worker migrate" in result.stderr and len(result.stderr.strip().splitlines()) == 1


pytestmark = pytest.mark.slow
