"""The flow-control commands (`queues limit`, `breakers list`, and what `status` shows of them), run
as a user runs them: the console script in a subprocess, against a schema of the test's own."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import psycopg
import pytest

from nursery_worker import App

CONSOLE_SCRIPT = str(Path(sys.executable).with_name("nursery-worker"))


def _cli(args: Sequence[str], *, dsn: str, schema: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("NURSERY_WORKER_")}
    argv = [CONSOLE_SCRIPT, *args, "--dsn", dsn, "--schema", schema]
    return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60)


def test_queues_limit_sets_and_lifts_a_queue_limit(app: App, dsn: str, schema: str) -> None:
    """`queues limit` stores the limits, `queues list` shows them, and `--clear` lifts them."""
    out = _cli(
        ["queues", "limit", "emails", "--max-concurrency", "3", "--rate-limit", "100/m", "--create"],
        dsn=dsn,
        schema=schema,
    )
    assert out.returncode == 0, out.stderr
    assert "at most 3 running" in out.stdout and "100/60s" in out.stdout
    listed = _cli(["queues", "list", "--json"], dsn=dsn, schema=schema)
    (queue,) = json.loads(listed.stdout)
    assert (queue["max_concurrency"], queue["rate_limit"]) == (3, "100/60s")
    table = _cli(["queues", "list"], dsn=dsn, schema=schema).stdout
    assert "3 at once, 100/60s" in table
    cleared = _cli(["queues", "limit", "emails", "--clear"], dsn=dsn, schema=schema)
    assert cleared.returncode == 0 and "no limits" in cleared.stdout


def test_queues_limit_refuses_a_bad_rate_in_one_line(app: App, dsn: str, schema: str) -> None:
    """A malformed --rate-limit exits 1 with one line naming the value and the accepted forms."""
    out = _cli(["queues", "limit", "emails", "--rate-limit", "lots"], dsn=dsn, schema=schema)
    assert out.returncode == 1
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "'lots'" in lines[0] and "100/m" in lines[0]


def test_breakers_list_and_status_show_an_open_breaker(
    app: App, dsn: str, schema: str, db: psycopg.Connection[tuple[object, ...]]
) -> None:
    """An open breaker appears in `breakers list` (with when its probe is due) and in `status --json`."""
    db.execute(
        "INSERT INTO breakers (task, threshold, cooldown, state, failures, opened_at) "
        "VALUES ('call_api', 3, 60, 'open', 3, now())"
    )
    out = _cli(["breakers", "list"], dsn=dsn, schema=schema)
    assert out.returncode == 0, out.stderr
    assert "call_api" in out.stdout and "open" in out.stdout and "probe in" in out.stdout
    status = json.loads(_cli(["status", "--json"], dsn=dsn, schema=schema).stdout)
    (breaker,) = status["breakers"]
    assert (breaker["task"], breaker["state"], breaker["failures"]) == ("call_api", "open", 3)


@pytest.mark.parametrize("args", [["--clear", "--max-concurrency", "2"], []])
def test_queues_limit_needs_exactly_one_kind_of_change(app: App, dsn: str, schema: str, args: list[str]) -> None:
    """`queues limit` without a limit, or with --clear and a limit, is a usage error."""
    out = _cli(["queues", "limit", "emails", *args], dsn=dsn, schema=schema)
    assert out.returncode == 2


def test_defer_depends_on_makes_a_pending_job_and_jobs_show_names_its_dependency(
    app: App, dsn: str, schema: str
) -> None:
    """`defer --depends-on ID` enqueues a pending job; `jobs show` lists what it waits for."""
    first = json.loads(_cli(["defer", "reports.build", "--args", '{"n": 1}'], dsn=dsn, schema=schema).stdout)
    out = _cli(["defer", "reports.send", "--depends-on", str(first["id"])], dsn=dsn, schema=schema)
    assert out.returncode == 0, out.stderr
    second = json.loads(out.stdout)
    assert second["state"] == "pending"
    shown = _cli(["jobs", "show", str(second["id"])], dsn=dsn, schema=schema).stdout
    assert f"depends on   {first['id']}" in shown
    as_json = json.loads(_cli(["jobs", "show", str(second["id"]), "--json"], dsn=dsn, schema=schema).stdout)
    assert as_json["depends_on"] == [first["id"]]
    missing = _cli(["defer", "reports.send", "--depends-on", "999999"], dsn=dsn, schema=schema)
    assert missing.returncode == 1 and "999999" in missing.stderr
