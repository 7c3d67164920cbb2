"""The ``nursery-worker`` command line, run as a user runs it: a real subprocess per command.

Each test works in a schema of its own; apps the CLI loads are written into ``tmp_path`` and the
subprocess runs there, with ``NURSERY_WORKER_DSN`` in its environment.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.parse
from collections.abc import Sequence
from importlib.metadata import version
from pathlib import Path
from typing import Any

import psycopg
import pytest

from nursery_worker import App
from nursery_worker._driver.postgres import MIGRATIONS

VERSIONS = [version for version, _ in MIGRATIONS]

TIMEOUT = 60
CONSOLE_SCRIPT = Path(sys.executable).with_name("nursery-worker")

APP_MODULE = """\
from pathlib import Path

import anyio

from nursery_worker import App

app = App(schema={schema!r})
not_an_app = 42
RAN = Path(__file__).with_name("ran.txt")


@app.task(name="record")
async def record(n: int) -> None:
    await anyio.sleep(0)
    with RAN.open("a") as f:
        f.write(f"{{n}}\\n")
"""


def _env(dsn: str | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("NURSERY_WORKER_")}
    if dsn is not None:
        env["NURSERY_WORKER_DSN"] = dsn
    return env


def _cli(
    args: Sequence[str], *, cwd: Path, dsn: str | None, command: Sequence[str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run the CLI (``python -m nursery_worker`` unless *command* is given) and capture its output."""
    argv = [*(command or [sys.executable, "-m", "nursery_worker"]), *args]
    return subprocess.run(argv, cwd=cwd, env=_env(dsn), capture_output=True, text=True, timeout=TIMEOUT)


def _write_app(tmp_path: Path, schema: str) -> None:
    (tmp_path / "myjobs.py").write_text(APP_MODULE.format(schema=schema))


def _is_click_usage_hint(line: str) -> bool:
    return line.startswith("Usage: ") or (line.startswith("Try '") and line.endswith("' for help."))


def _assert_one_line_error(result: subprocess.CompletedProcess[str], *needles: str) -> str:
    """Assert a non-zero exit with exactly one error line (and no traceback); return that line.

    Click's two-line usage hint (``Usage: ...`` / ``Try '... --help' for help.``) before a usage
    error is allowed; every other non-blank line of stderr counts as part of the error.
    """
    assert result.returncode != 0, result
    assert "Traceback" not in result.stderr, result.stderr
    assert "Traceback" not in result.stdout, result.stdout
    lines = [line for line in result.stderr.splitlines() if line.strip() and not _is_click_usage_hint(line)]
    assert len(lines) == 1, f"expected one error line on stderr, got {len(lines)}:\n{result.stderr}"
    (line,) = lines
    assert line.startswith("Error: "), line
    for needle in needles:
        assert needle in line, f"{needle!r} not in {line!r}"
    return line


def _rows(db: psycopg.Connection[Any], query: str, *params: object) -> list[tuple[Any, ...]]:
    return db.execute(query, params).fetchall()


def _job_count(db: psycopg.Connection[Any]) -> int:
    return int(_rows(db, "SELECT count(*) FROM jobs")[0][0])


def _defer(app: App, *jobs: tuple[dict[str, Any], str]) -> list[int]:
    """Enqueue ``record`` jobs by name as ``(args, queue)`` pairs; return their ids."""
    specs = [app.job_by_name("record", args, queue=queue) for args, queue in jobs]
    return [job.id for job in app.defer_many_sync(specs)]


# --- migrate, help, version ---------------------------------------------------------------------


def test_migrate_creates_the_schema_and_reports_what_it_applied(
    tmp_path: Path, dsn: str, schema: str, db: psycopg.Connection[Any]
) -> None:
    """`migrate` creates the tables in the named schema and prints the versions it applied."""
    result = _cli(["migrate", "--schema", schema, "--dsn", dsn], cwd=tmp_path, dsn=None)
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    assert schema in result.stdout
    assert "applied 1" in result.stdout
    tables = {
        r[0] for r in _rows(db, "SELECT table_name FROM information_schema.tables WHERE table_schema = %s", schema)
    }
    assert {"jobs", "workers", "migrations"} <= tables


def test_migrate_twice_is_idempotent(tmp_path: Path, dsn: str, schema: str, db: psycopg.Connection[Any]) -> None:
    """A second `migrate` succeeds, applies nothing and says the schema is up to date."""
    first = _cli(["migrate", "--schema", schema, "--dsn", dsn], cwd=tmp_path, dsn=None)
    assert first.returncode == 0, first.stderr
    second = _cli(["migrate", "--schema", schema, "--dsn", dsn], cwd=tmp_path, dsn=None)
    assert second.returncode == 0, second.stderr
    assert "up to date" in second.stdout
    assert "applied" not in second.stdout
    assert _rows(db, "SELECT version FROM migrations ORDER BY version") == [(v,) for v in VERSIONS]


def test_migrate_reads_the_dsn_from_the_environment(
    tmp_path: Path, dsn: str, schema: str, db: psycopg.Connection[Any]
) -> None:
    """Without --dsn, `migrate` connects to $NURSERY_WORKER_DSN."""
    result = _cli(["migrate", "--schema", schema], cwd=tmp_path, dsn=dsn)
    assert result.returncode == 0, result.stderr
    assert _rows(db, "SELECT version FROM migrations ORDER BY version") == [(v,) for v in VERSIONS]


def test_python_dash_m_help_lists_the_commands(tmp_path: Path) -> None:
    """`python -m nursery_worker --help` exits 0 and lists run, migrate and defer."""
    result = _cli(["--help"], cwd=tmp_path, dsn=None)
    assert result.returncode == 0, result.stderr
    assert "Usage:" in result.stdout
    for command in ("run", "migrate", "defer"):
        assert command in result.stdout


def test_version_prints_the_installed_version(tmp_path: Path) -> None:
    """`--version` exits 0 and prints the installed package's version."""
    result = _cli(["--version"], cwd=tmp_path, dsn=None)
    assert result.returncode == 0, result.stderr
    assert version("nursery-worker") in result.stdout


def test_console_script_migrates_defers_and_runs(
    tmp_path: Path, dsn: str, schema: str, db: psycopg.Connection[Any]
) -> None:
    """The `nursery-worker` console script next to the interpreter works like `python -m nursery_worker`."""
    assert CONSOLE_SCRIPT.exists(), CONSOLE_SCRIPT
    script = [str(CONSOLE_SCRIPT)]
    _write_app(tmp_path, schema)
    migrated = _cli(["migrate", "--app", "myjobs:app"], cwd=tmp_path, dsn=dsn, command=script)
    assert migrated.returncode == 0, migrated.stderr
    deferred = _cli(
        ["defer", "record", "--args", '{"n": 7}', "--app", "myjobs:app"], cwd=tmp_path, dsn=dsn, command=script
    )
    assert deferred.returncode == 0, deferred.stderr
    ran = _cli(["run", "--app", "myjobs:app", "--once"], cwd=tmp_path, dsn=dsn, command=script)
    assert ran.returncode == 0, ran.stderr
    assert "processed 1 job(s)" in ran.stdout
    assert _rows(db, "SELECT state, args FROM jobs") == [("completed", {"n": 7})]


# --- defer --------------------------------------------------------------------------------------


def test_defer_prints_the_job_as_json_and_inserts_it(
    tmp_path: Path, dsn: str, schema: str, app: App, db: psycopg.Connection[Any]
) -> None:
    """`defer TASK --args '{"n": 1}'` prints JSON naming the new job's id, and that row holds the args."""
    result = _cli(["defer", "some.task", "--args", '{"n": 1}', "--schema", schema], cwd=tmp_path, dsn=dsn)
    assert result.returncode == 0, result.stderr
    printed = json.loads(result.stdout)
    assert isinstance(printed["id"], int)
    assert printed["task"] == "some.task"
    rows = _rows(db, "SELECT task, queue, args, state, attempt FROM jobs WHERE id = %s", printed["id"])
    assert rows == [("some.task", "default", {"n": 1}, "available", 0)]
    assert _job_count(db) == 1


def test_defer_applies_queue_priority_and_max_attempts(
    tmp_path: Path, dsn: str, schema: str, app: App, db: psycopg.Connection[Any]
) -> None:
    """`defer --queue --priority --max-attempts` stores those options on the job."""
    result = _cli(
        ["defer", "t", "--queue", "emails", "--priority", "5", "--max-attempts", "3", "--schema", schema],
        cwd=tmp_path,
        dsn=dsn,
    )
    assert result.returncode == 0, result.stderr
    job_id = json.loads(result.stdout)["id"]
    assert _rows(db, "SELECT queue, priority, max_attempts FROM jobs WHERE id = %s", job_id) == [("emails", 5, 3)]


@pytest.mark.parametrize("bad_args", ['{"n": 1', "not json", ""], ids=["truncated", "bare-word", "empty"])
def test_defer_rejects_invalid_json_args(
    tmp_path: Path, dsn: str, schema: str, app: App, db: psycopg.Connection[Any], bad_args: str
) -> None:
    """`defer --args` that is not valid JSON fails with one error line and inserts nothing."""
    result = _cli(["defer", "t", "--args", bad_args, "--schema", schema], cwd=tmp_path, dsn=dsn)
    _assert_one_line_error(result, "--args", "JSON")
    assert _job_count(db) == 0


@pytest.mark.parametrize("bad_args", ["[1, 2]", "3", '"n"', "null"], ids=["list", "int", "string", "null"])
def test_defer_rejects_non_object_json_args(
    tmp_path: Path, dsn: str, schema: str, app: App, db: psycopg.Connection[Any], bad_args: str
) -> None:
    """`defer --args` that is JSON but not an object fails with one error line and inserts nothing."""
    result = _cli(["defer", "t", "--args", bad_args, "--schema", schema], cwd=tmp_path, dsn=dsn)
    _assert_one_line_error(result, "--args", "object")
    assert _job_count(db) == 0


def test_defer_rejects_a_bad_queue_name(
    tmp_path: Path, dsn: str, schema: str, app: App, db: psycopg.Connection[Any]
) -> None:
    """`defer --queue` with an invalid queue name fails with one error line and inserts nothing."""
    result = _cli(["defer", "t", "--queue", "no spaces!", "--schema", schema], cwd=tmp_path, dsn=dsn)
    _assert_one_line_error(result, "queue", "no spaces!")
    assert _job_count(db) == 0


def test_defer_with_app_rejects_args_that_do_not_fit_the_task(
    tmp_path: Path, dsn: str, schema: str, app: App, db: psycopg.Connection[Any]
) -> None:
    """`defer --app` checks the arguments against the task's signature before inserting."""
    _write_app(tmp_path, schema)
    result = _cli(["defer", "record", "--args", '{"m": 1}', "--app", "myjobs:app"], cwd=tmp_path, dsn=dsn)
    _assert_one_line_error(result)
    assert _job_count(db) == 0


def test_defer_with_app_refuses_a_task_name_the_app_does_not_register(
    tmp_path: Path, dsn: str, schema: str, app: App, db: psycopg.Connection[Any]
) -> None:
    """`defer --app` with an unregistered task name fails in one line naming the registered tasks."""
    _write_app(tmp_path, schema)
    result = _cli(["defer", "recordd", "--args", '{"n": 1}', "--app", "myjobs:app"], cwd=tmp_path, dsn=dsn)
    _assert_one_line_error(result)
    assert "'recordd'" in result.stderr and "record" in result.stderr
    assert _job_count(db) == 0


# --- run --once ---------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_run_once_processes_every_available_job(
    tmp_path: Path, dsn: str, schema: str, app: App, db: psycopg.Connection[Any], backend: str
) -> None:
    """`run --once` runs every available job, prints the count, exits 0 and leaves all rows completed."""
    _write_app(tmp_path, schema)
    _defer(app, *[({"n": n}, "default") for n in range(5)])
    result = _cli(["run", "--app", "myjobs:app", "--once", "--backend", backend], cwd=tmp_path, dsn=dsn)
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    assert "processed 5 job(s): 5 completed, 0 failed" in result.stdout
    assert _rows(db, "SELECT DISTINCT state FROM jobs") == [("completed",)]
    assert sorted(int(n) for n in (tmp_path / "ran.txt").read_text().split()) == [0, 1, 2, 3, 4]


@pytest.mark.slow
def test_run_once_works_off_jobs_deferred_by_the_defer_command(
    tmp_path: Path, dsn: str, schema: str, db: psycopg.Connection[Any]
) -> None:
    """Jobs enqueued with the `defer` command into a schema made by `migrate` are run by `run --once`."""
    _write_app(tmp_path, schema)
    assert _cli(["migrate", "--schema", schema], cwd=tmp_path, dsn=dsn).returncode == 0
    for n in (1, 2):
        deferred = _cli(["defer", "record", "--args", json.dumps({"n": n}), "--schema", schema], cwd=tmp_path, dsn=dsn)
        assert deferred.returncode == 0, deferred.stderr
    result = _cli(["run", "--app", "myjobs:app", "--once"], cwd=tmp_path, dsn=dsn)
    assert result.returncode == 0, result.stderr
    assert "processed 2 job(s): 2 completed, 0 failed" in result.stdout
    assert _rows(db, "SELECT state, count(*) FROM jobs GROUP BY state") == [("completed", 2)]


@pytest.mark.slow
def test_run_once_with_no_jobs_exits_zero(tmp_path: Path, dsn: str, schema: str, app: App) -> None:
    """`run --once` on an empty queue prints a count of zero and exits 0."""
    _write_app(tmp_path, schema)
    result = _cli(["run", "--app", "myjobs:app", "--once"], cwd=tmp_path, dsn=dsn)
    assert result.returncode == 0, result.stderr
    assert "processed 0 job(s)" in result.stdout


@pytest.mark.slow
def test_run_once_works_only_the_given_queues(
    tmp_path: Path, dsn: str, schema: str, app: App, db: psycopg.Connection[Any]
) -> None:
    """`run --queues a,b --once` runs the jobs of queues a and b and leaves other queues' jobs available."""
    _write_app(tmp_path, schema)
    _defer(app, ({"n": 1}, "a"), ({"n": 2}, "b"), ({"n": 3}, "default"), ({"n": 4}, "c"))
    result = _cli(["run", "--app", "myjobs:app", "--once", "--queues", "a,b"], cwd=tmp_path, dsn=dsn)
    assert result.returncode == 0, result.stderr
    assert "processed 2 job(s): 2 completed, 0 failed" in result.stdout
    states = dict(_rows(db, "SELECT queue, state FROM jobs"))
    assert states == {"a": "completed", "b": "completed", "default": "available", "c": "available"}


@pytest.mark.slow
def test_run_dsn_option_overrides_the_environment(
    tmp_path: Path, dsn: str, schema: str, app: App, db: psycopg.Connection[Any]
) -> None:
    """`run --dsn` connects there even when $NURSERY_WORKER_DSN points at an unreachable server."""
    _write_app(tmp_path, schema)
    _defer(app, ({"n": 1}, "default"))
    result = _cli(
        ["run", "--app", "myjobs:app", "--once", "--dsn", dsn],
        cwd=tmp_path,
        dsn="postgresql://postgres@127.0.0.1:1/test",
    )
    assert result.returncode == 0, result.stderr
    assert _rows(db, "SELECT state FROM jobs") == [("completed",)]


BIG_RESULTS_MODULE = """\
from nursery_worker import App

app = App(schema={schema!r})


@app.task(name="echo")
async def echo(size: int) -> str:
    return "x" * size
"""


@pytest.mark.slow
def test_run_max_result_bytes_discards_a_larger_result_and_keeps_the_others(
    tmp_path: Path, dsn: str, schema: str, app: App, db: psycopg.Connection[Any]
) -> None:
    """`run --max-result-bytes 100` discards a job whose result is larger, naming its size and the limit, and
    completes the others."""
    (tmp_path / "bigjobs.py").write_text(BIG_RESULTS_MODULE.format(schema=schema))
    app.defer_many_sync([app.job_by_name("echo", {"size": size}) for size in (10, 500, 98)])
    result = _cli(["run", "--app", "bigjobs:app", "--once", "--max-result-bytes", "100"], cwd=tmp_path, dsn=dsn)
    assert result.returncode == 0, result.stderr
    assert "processed 3 job(s): 2 completed, 1 failed" in result.stdout
    rows = _rows(db, "SELECT state, result IS NULL, errors -> -1 ->> 'message' FROM jobs ORDER BY id")
    assert [(state, no_result) for state, no_result, _ in rows] == [
        ("completed", False),
        ("discarded", True),
        ("completed", False),
    ]
    assert "502 bytes of JSON, above the limit of 100 (max_result_bytes)" in rows[1][2]


def _with_password(dsn: str, password: str) -> tuple[str, str]:
    """*dsn* (a URL) with a password: its own if it has one (the server may need it), else *password*."""
    parts = urllib.parse.urlsplit(dsn)
    if parts.password:
        return dsn, parts.password
    user, _, host = parts.netloc.rpartition("@")
    return urllib.parse.urlunsplit(parts._replace(netloc=f"{user or 'postgres'}:{password}@{host}")), password


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/cmdline").exists(), reason="needs /proc (Linux)")
def test_run_dsn_option_leaves_no_password_in_the_world_readable_command_line(
    tmp_path: Path, dsn: str, schema: str, app: App
) -> None:
    """A single worker started with `run --dsn URL` replaces its /proc/PID/cmdline with a title naming the app."""
    _write_app(tmp_path, schema)
    secret_dsn, password = _with_password(dsn, "pw-4c1d-hidden")
    _defer(app, ({"n": 1}, "default"))
    argv = [sys.executable, "-m", "nursery_worker", "run", "--app", "myjobs:app", "--dsn", secret_dsn]
    stderr = tmp_path / "worker.err"
    with stderr.open("w") as err:
        proc = subprocess.Popen(argv, cwd=tmp_path, env=_env(None), stdout=subprocess.DEVNULL, stderr=err)
    try:
        ran = tmp_path / "ran.txt"
        deadline = time.monotonic() + TIMEOUT
        while not ran.exists():  # it connected with the DSN and ran the job: it is running
            assert proc.poll() is None, f"worker exited early ({proc.returncode}):\n{stderr.read_text()}"
            assert time.monotonic() < deadline, f"the job did not run within {TIMEOUT}s:\n{stderr.read_text()}"
            time.sleep(0.05)
        cmdline = Path(f"/proc/{proc.pid}/cmdline").read_bytes()
        assert password.encode() not in cmdline
        assert cmdline.startswith(b"nursery-worker: worker [app=myjobs:app queues=default]"), cmdline[:200]
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=TIMEOUT) == 0, stderr.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=TIMEOUT)
    assert password not in stderr.read_text()


# --- bad input ----------------------------------------------------------------------------------


def test_run_app_module_that_does_not_import(tmp_path: Path, dsn: str, schema: str) -> None:
    """`run --app nosuchmodule:app` fails with one line naming the module."""
    result = _cli(["run", "--app", "nosuchmodule:app", "--once"], cwd=tmp_path, dsn=dsn)
    _assert_one_line_error(result, "nosuchmodule")


def test_run_app_attribute_that_does_not_exist(tmp_path: Path, dsn: str, schema: str) -> None:
    """`run --app myjobs:nothing` fails with one line naming the missing attribute."""
    _write_app(tmp_path, schema)
    result = _cli(["run", "--app", "myjobs:nothing", "--once"], cwd=tmp_path, dsn=dsn)
    _assert_one_line_error(result, "nothing")


def test_run_app_attribute_that_is_not_an_app(tmp_path: Path, dsn: str, schema: str) -> None:
    """`run --app myjobs:not_an_app` fails with one line saying it is not an App."""
    _write_app(tmp_path, schema)
    result = _cli(["run", "--app", "myjobs:not_an_app", "--once"], cwd=tmp_path, dsn=dsn)
    _assert_one_line_error(result, "not_an_app", "App")


def test_run_app_path_without_a_colon(tmp_path: Path, dsn: str, schema: str) -> None:
    """`run --app missingcolon` fails with one line showing the expected 'module:attribute' form."""
    _write_app(tmp_path, schema)
    result = _cli(["run", "--app", "missingcolon", "--once"], cwd=tmp_path, dsn=dsn)
    _assert_one_line_error(result, "missingcolon", ":")


def test_run_app_module_that_raises_at_import(tmp_path: Path, dsn: str, schema: str) -> None:
    """An app module whose import raises fails with one line naming the error, not a traceback."""
    (tmp_path / "broken.py").write_text("raise RuntimeError('boom at import')\n")
    result = _cli(["run", "--app", "broken:app", "--once"], cwd=tmp_path, dsn=dsn)
    _assert_one_line_error(result, "boom at import")


def test_run_concurrency_zero(tmp_path: Path, dsn: str, schema: str) -> None:
    """`run --concurrency 0` fails with one line naming the option."""
    _write_app(tmp_path, schema)
    result = _cli(["run", "--app", "myjobs:app", "--concurrency", "0"], cwd=tmp_path, dsn=dsn)
    _assert_one_line_error(result, "--concurrency")


def test_run_poll_interval_zero(tmp_path: Path, dsn: str, schema: str) -> None:
    """`run --poll-interval 0` fails with one line naming the option."""
    _write_app(tmp_path, schema)
    result = _cli(["run", "--app", "myjobs:app", "--poll-interval", "0"], cwd=tmp_path, dsn=dsn)
    _assert_one_line_error(result, "--poll-interval")


def test_run_rescue_window_shorter_than_two_heartbeats(tmp_path: Path, dsn: str, schema: str, app: App) -> None:
    """`run --rescue-after` below twice `--heartbeat-interval` fails with one line naming both settings."""
    _write_app(tmp_path, schema)
    args = ["run", "--app", "myjobs:app", "--rescue-after", "3", "--heartbeat-interval", "2"]
    result = _cli(args, cwd=tmp_path, dsn=dsn)
    _assert_one_line_error(result, "rescue_after", "heartbeat_interval")


@pytest.mark.slow
def test_run_once_without_listen_polls_the_jobs(
    tmp_path: Path, dsn: str, schema: str, app: App, db: psycopg.Connection[Any]
) -> None:
    """`run --once --no-listen --poll-interval 0.1` works off the available jobs by polling alone."""
    _write_app(tmp_path, schema)
    _defer(app, *[({"n": n}, "default") for n in range(3)])
    args = ["run", "--app", "myjobs:app", "--once", "--no-listen", "--poll-interval", "0.1"]
    result = _cli(args, cwd=tmp_path, dsn=dsn)
    assert result.returncode == 0, result.stderr
    assert "processed 3 job(s): 3 completed, 0 failed" in result.stdout
    assert _rows(db, "SELECT DISTINCT state FROM jobs") == [("completed",)]


def test_run_max_result_bytes_zero(tmp_path: Path, dsn: str, schema: str) -> None:
    """`run --max-result-bytes 0` fails with one line naming the option."""
    _write_app(tmp_path, schema)
    result = _cli(["run", "--app", "myjobs:app", "--max-result-bytes", "0"], cwd=tmp_path, dsn=dsn)
    _assert_one_line_error(result, "--max-result-bytes", "must be an int >= 1")


def test_run_shutdown_timeout_zero(tmp_path: Path, dsn: str, schema: str) -> None:
    """`run --shutdown-timeout 0` fails with one line naming the option."""
    _write_app(tmp_path, schema)
    result = _cli(["run", "--app", "myjobs:app", "--shutdown-timeout", "0"], cwd=tmp_path, dsn=dsn)
    _assert_one_line_error(result, "--shutdown-timeout")


def test_run_bad_queue_name(tmp_path: Path, dsn: str, schema: str, app: App) -> None:
    """`run --queues` with an invalid queue name fails with one line naming it."""
    _write_app(tmp_path, schema)
    result = _cli(["run", "--app", "myjobs:app", "--once", "--queues", "ok,not ok!"], cwd=tmp_path, dsn=dsn)
    _assert_one_line_error(result, "not ok!")


def test_run_without_any_dsn_uses_the_embedded_file_and_says_how_to_switch(tmp_path: Path, schema: str) -> None:
    """`run` with neither --dsn nor $NURSERY_WORKER_DSN runs on ./nursery-worker.sqlite3, named in one WARNING."""
    _write_app(tmp_path, schema)
    result = _cli(["run", "--app", "myjobs:app", "--once"], cwd=tmp_path, dsn=None)
    assert result.returncode == 0, result.stderr
    (line,) = [line for line in result.stderr.splitlines() if "embedded SQLite" in line]
    assert str(tmp_path / "nursery-worker.sqlite3") in line and "WARNING" in line
    assert "NURSERY_WORKER_DSN=postgresql://" in line and "only processes on this host" in line


def test_migrate_without_any_dsn_creates_the_embedded_file(tmp_path: Path, schema: str) -> None:
    """`migrate` with neither --dsn nor $NURSERY_WORKER_DSN creates the tables in ./nursery-worker.sqlite3."""
    result = _cli(["migrate", "--schema", schema], cwd=tmp_path, dsn=None)
    assert result.returncode == 0, result.stderr
    assert "migrated" in result.stdout
    assert (tmp_path / "nursery-worker.sqlite3").exists()


def test_run_on_an_unmigrated_schema_names_the_migrate_command(tmp_path: Path, dsn: str, schema: str) -> None:
    """`run` against a schema that was never migrated fails with one line telling to run `nursery-worker migrate`."""
    _write_app(tmp_path, schema)
    result = _cli(["run", "--app", "myjobs:app", "--once"], cwd=tmp_path, dsn=dsn)
    _assert_one_line_error(result, "nursery-worker migrate")


def test_defer_on_an_unmigrated_schema_names_the_migrate_command(tmp_path: Path, dsn: str, schema: str) -> None:
    """`defer` into a schema that was never migrated fails with one line telling to run `nursery-worker migrate`."""
    result = _cli(["defer", "t", "--schema", schema], cwd=tmp_path, dsn=dsn)
    _assert_one_line_error(result, "nursery-worker migrate")


def test_run_schema_option_that_differs_from_the_app(tmp_path: Path, dsn: str, schema: str) -> None:
    """`run --schema` that contradicts the app's own schema fails with one line naming both."""
    _write_app(tmp_path, schema)
    result = _cli(["run", "--app", "myjobs:app", "--once", "--schema", "other_schema"], cwd=tmp_path, dsn=dsn)
    _assert_one_line_error(result, "other_schema", schema)


UNREACHABLE = "postgresql://postgres:hunter2@127.0.0.1:1/test"


def test_run_unreachable_database_fails_promptly_without_leaking_the_password(tmp_path: Path, schema: str) -> None:
    """`run` against an unreachable database exits non-zero within ~15 s, and its password is printed nowhere."""
    _write_app(tmp_path, schema)
    started = time.monotonic()
    result = _cli(["run", "--app", "myjobs:app", "--once", "--dsn", UNREACHABLE], cwd=tmp_path, dsn=None)
    elapsed = time.monotonic() - started
    assert result.returncode != 0
    assert elapsed < 15, f"took {elapsed:.1f}s to report an unreachable database"
    assert "hunter2" not in result.stdout
    assert "hunter2" not in result.stderr
    assert "Traceback" not in result.stderr


def test_run_unreachable_database_prints_one_line(tmp_path: Path, schema: str) -> None:
    """`run` against an unreachable database reports it on one error line."""
    _write_app(tmp_path, schema)
    result = _cli(["run", "--app", "myjobs:app", "--once", "--dsn", UNREACHABLE], cwd=tmp_path, dsn=None)
    _assert_one_line_error(result, "127.0.0.1")


def test_migrate_unreachable_database_does_not_leak_the_password(tmp_path: Path, schema: str) -> None:
    """`migrate` against an unreachable database exits non-zero and prints its password nowhere."""
    result = _cli(["migrate", "--schema", schema, "--dsn", UNREACHABLE], cwd=tmp_path, dsn=None)
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    assert "hunter2" not in result.stdout + result.stderr


def test_defer_unreachable_database_does_not_leak_the_password(tmp_path: Path, schema: str) -> None:
    """`defer` against an unreachable database exits non-zero and prints its password nowhere."""
    result = _cli(["defer", "t", "--schema", schema, "--dsn", UNREACHABLE], cwd=tmp_path, dsn=None)
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    assert "hunter2" not in result.stdout + result.stderr


def test_unreachable_password_in_the_environment_is_not_leaked(tmp_path: Path, schema: str) -> None:
    """A password in $NURSERY_WORKER_DSN of an unreachable database is printed nowhere."""
    _write_app(tmp_path, schema)
    result = _cli(["run", "--app", "myjobs:app", "--once"], cwd=tmp_path, dsn=UNREACHABLE)
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    assert "hunter2" not in result.stdout + result.stderr
