"""Schema versions and the command line, the same on every engine."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest

from nursery_worker import App, SchemaNotReady, open_worker

from .conftest import raw_execute

TIMEOUT = 60
CONSOLE_SCRIPT = str(Path(sys.executable).with_name("nursery-worker"))

APP_MODULE = """\
import os
from pathlib import Path

from nursery_worker import App

app = App(schema={schema!r})
LEDGER = Path(__file__).with_name("ran.txt")


@app.task(name="record", max_attempts=2, retry=0)
def record(n: int) -> int:
    with LEDGER.open("a") as f:
        f.write(f"{{n}}\\n")
    if n < 0:
        raise ValueError("negative")
    return n * 2
"""


@pytest.mark.anyio
async def test_migrate_is_idempotent(app: App) -> None:
    """``migrate`` on an up-to-date database applies nothing."""
    await app.migrate()
    assert await app.migrate() == []
    await app.driver.check_schema()


@pytest.mark.anyio
async def test_a_schema_newer_than_the_code_is_refused(app: App, make_app: Callable[..., App]) -> None:
    """A database migrated by a newer nursery-worker makes workers and migrate raise SchemaNotReady, naming the fix."""
    await app.migrate()
    raw_execute(
        app,
        "INSERT INTO {s}.migrations (version, name) VALUES (999, 'future')",
        "INSERT INTO \"{p}migrations\" (version, name, applied_at) VALUES (999, 'future', 0)",
    )
    with pytest.raises(SchemaNotReady, match="upgrade nursery-worker"):
        async with open_worker(app, once=True):
            pass
    with pytest.raises(SchemaNotReady, match="upgrade nursery-worker"):
        await make_app().migrate()


def _cli(args: Sequence[str], *, cwd: Path, dsn: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("NURSERY_WORKER_")}
    env["NURSERY_WORKER_DSN"] = dsn
    return subprocess.run(
        [CONSOLE_SCRIPT, *args], cwd=cwd, env=env, input=stdin, capture_output=True, text=True, timeout=TIMEOUT
    )


def _ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    return result.stdout


@pytest.mark.slow
def test_the_operations_commands_work(engine_dsn: str, engine_schema: str, tmp_path: Path) -> None:
    """migrate, defer, run --once, jobs list/show/cancel/retry, queues pause/list/resume, status, healthcheck, prune."""
    (tmp_path / "opsapp.py").write_text(APP_MODULE.format(schema=engine_schema))

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return _cli(args, cwd=tmp_path, dsn=engine_dsn)

    assert "migrated" in _ok(cli("migrate", "--schema", engine_schema))
    assert "up to date" in _ok(cli("migrate", "--app", "opsapp:app"))
    ids = [
        json.loads(_ok(cli("defer", "record", "--app", "opsapp:app", "--args", json.dumps({"n": n}))))["id"]
        for n in (1, -1, 3)
    ]
    assert "paused" in _ok(cli("queues", "pause", "default", "--app", "opsapp:app"))
    (queue,) = json.loads(_ok(cli("queues", "list", "--json", "--app", "opsapp:app")))
    assert queue["name"] == "default" and queue["paused"] is True and queue["counts"]["available"] == 3
    cancelled = json.loads(_ok(cli("jobs", "cancel", str(ids[2]), "--json", "--app", "opsapp:app")))
    assert cancelled["status"] == "cancelled"
    _ok(cli("queues", "resume", "default", "--app", "opsapp:app"))
    assert "processed 3 job(s)" in _ok(cli("run", "--app", "opsapp:app", "--once", "--poll-interval", "0.1"))
    assert sorted((tmp_path / "ran.txt").read_text().split()) == ["-1", "-1", "1"]
    listed = json.loads(_ok(cli("jobs", "list", "--json", "--app", "opsapp:app")))
    assert {j["id"]: j["state"] for j in listed} == {ids[0]: "completed", ids[1]: "discarded", ids[2]: "cancelled"}
    shown = json.loads(_ok(cli("jobs", "show", str(ids[0]), "--json", "--app", "opsapp:app")))
    assert shown["result"] == 2 and shown["attempt"] == 1
    failed = json.loads(_ok(cli("jobs", "show", str(ids[1]), "--json", "--app", "opsapp:app")))
    assert [e["type"] for e in failed["errors"]] == ["ValueError", "ValueError"]
    retried = json.loads(_ok(cli("jobs", "retry", str(ids[1]), "--json", "--app", "opsapp:app")))
    assert retried == {"retried": [ids[1]], "skipped": []}
    status = json.loads(_ok(cli("status", "--json", "--app", "opsapp:app")))
    assert status["workers"] == [] and status["queues"][0]["counts"]["available"] == 1
    unhealthy = cli("healthcheck", "--any-host", "--app", "opsapp:app")
    assert unhealthy.returncode == 1 and "no worker" in unhealthy.stdout + unhealthy.stderr
    pruned = json.loads(_ok(cli("prune", "--older-than", "0s", "--json", "--app", "opsapp:app")))
    assert pruned["pruned"] == 2  # the completed and the cancelled job
    remaining = json.loads(_ok(cli("jobs", "list", "--json", "--app", "opsapp:app")))
    assert [j["id"] for j in remaining] == [ids[1]]
    lines = "".join(json.dumps({"task": "record", "args": {"n": n}, "priority": n}) + "\n" for n in range(10, 15))
    result = _cli(
        ["defer", "--file", "-", "--app", "opsapp:app", "--batch-size", "2"], cwd=tmp_path, dsn=engine_dsn, stdin=lines
    )
    _ok(result)
    by_file = json.loads(_ok(cli("jobs", "list", "--json", "--state", "available", "--app", "opsapp:app")))
    assert sorted(j["priority"] for j in by_file if j["id"] != ids[1]) == [10, 11, 12, 13, 14]
