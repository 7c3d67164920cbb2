"""Structured logs: every line inside a job carries its context; JSON lines parse; no password ever shows."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from nursery_worker import App, JobState, open_worker
from nursery_worker._logging import ConsoleFormatter, JobContextFilter, JsonFormatter, job_log_context

from .helpers import fast, wait_for_state

PASSWORD = "s3cr3t-pw"
TIMEOUT = 60


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []
        self.addFilter(JobContextFilter())

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def collected() -> Iterator[_Collect]:
    handler = _Collect()
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    yield handler
    root.removeHandler(handler)
    root.setLevel(old_level)


@pytest.mark.anyio
async def test_log_lines_inside_a_job_carry_its_context(app: App, collected: _Collect) -> None:
    """A task's own log line (async and sync) carries job id, task, queue, attempt and worker id."""
    log = logging.getLogger("user.tasks")

    @app.task(queue="mail")
    async def async_job(n: int) -> None:
        log.info("async says %d", n)

    @app.task(queue="mail")
    def sync_job(n: int) -> None:
        log.info("sync says %d", n)

    a = await async_job.defer(n=1)
    s = await sync_job.defer(n=2)
    async with open_worker(app, **fast(queues="mail")) as worker:
        await wait_for_state(app, a.id, JobState.COMPLETED)
        await wait_for_state(app, s.id, JobState.COMPLETED)
    by_message = {r.getMessage(): r for r in collected.records if r.name == "user.tasks"}
    for message, job in (("async says 1", a), ("sync says 2", s)):
        record = by_message[message]
        assert (record.job_id, record.task, record.queue, record.attempt, record.worker_id) == (  # type: ignore[attr-defined]
            job.id,
            job.task,
            "mail",
            1,
            worker.id,
        )


@pytest.mark.anyio
async def test_the_worker_failure_line_carries_the_job_context(app: App, collected: _Collect) -> None:
    """nursery-worker's own line about a failed attempt carries the job's fields."""

    @app.task(max_attempts=1)
    async def boom() -> None:
        raise ValueError("boom")

    job = await boom.defer()
    async with open_worker(app, **fast()):
        await wait_for_state(app, job.id, JobState.DISCARDED)
    lines = [r for r in collected.records if r.name.startswith("nursery_worker") and "boom" in r.getMessage()]
    assert lines
    assert all(r.job_id == job.id and r.attempt == 1 for r in lines)  # type: ignore[attr-defined]


def test_records_outside_a_job_have_no_context() -> None:
    """Outside a job the fields are None and the console line has no job suffix."""
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "hello", None, None)
    JobContextFilter().filter(record)

    assert record.job_id is None  # type: ignore[attr-defined]
    assert ConsoleFormatter().format(record).endswith("x: hello")


def test_console_and_json_lines_show_the_context_and_redact_passwords() -> None:
    """Both formats show the job's fields and replace any DSN password in message or traceback."""
    with job_log_context(job_id=7, task="t", queue="q", attempt=2, worker_id="w1"):
        try:
            raise RuntimeError(f"cannot reach postgresql://u:{PASSWORD}@h/db")
        except RuntimeError:
            record = logging.LogRecord(
                "x", logging.ERROR, __file__, 1, "dsn %s", (f"postgresql://u:{PASSWORD}@h/db",), sys.exc_info()
            )
        JobContextFilter().filter(record)
    console = ConsoleFormatter().format(record)
    data = json.loads(JsonFormatter().format(record))

    assert "[job=7 task=t queue=q attempt=2 worker=w1]" in console
    assert {k: data[k] for k in ("job_id", "task", "queue", "attempt", "worker_id")} == {
        "job_id": 7,
        "task": "t",
        "queue": "q",
        "attempt": 2,
        "worker_id": "w1",
    }
    assert data["level"] == "error" and data["logger"] == "x" and "RuntimeError" in data["exc"]
    assert PASSWORD not in console and PASSWORD not in json.dumps(data)


# --- the real console script ---------------------------------------------------------------------

APP_MODULE = """\
import logging

from nursery_worker import App

app = App(schema={schema!r})
log = logging.getLogger("myjobs")


@app.task(name="record", max_attempts=1)
async def record(n: int) -> None:
    log.info("recording %d", n)
    if n < 0:
        raise ValueError("negative")
"""


def _cli(args: list[str], cwd: Path, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("NURSERY_WORKER_")}
    return subprocess.run(
        [sys.executable, "-m", "nursery_worker", *args],
        cwd=cwd,
        env=env,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )


def _password_dsn(dsn: str) -> str:
    scheme, rest = dsn.split("://", 1)
    userinfo, host = rest.split("@", 1)
    return f"{scheme}://{userinfo.split(':', 1)[0]}:{PASSWORD}@{host}"


def test_run_with_json_logs_prints_one_object_per_line_with_the_job_context(
    tmp_path: Path, dsn: str, schema: str
) -> None:
    """`run --once --log-format json`: every stderr line is a JSON object; the task's line names its job."""
    (tmp_path / "myjobs.py").write_text(APP_MODULE.format(schema=schema))
    common = ["--dsn", dsn, "--schema", schema]
    assert _cli(["migrate", *common], tmp_path).returncode == 0
    deferred = _cli(["defer", "record", "--args", '{"n": 5}', *common], tmp_path)
    job_id = json.loads(deferred.stdout)["id"]

    result = _cli(["run", "--app", "myjobs:app", "--once", "--log-format", "json", "--dsn", dsn], tmp_path)

    assert result.returncode == 0, result.stderr
    lines = [json.loads(line) for line in result.stderr.splitlines() if line.strip()]
    (task_line,) = [line for line in lines if line["logger"] == "myjobs"]
    assert task_line["message"] == "recording 5"
    assert task_line["job_id"] == job_id and task_line["task"] == "record" and task_line["attempt"] == 1
    assert task_line["queue"] == "default" and task_line["worker_id"]
    assert {"ts", "level", "logger", "message"} <= set(task_line)


def test_no_command_prints_the_dsn_password(tmp_path: Path, dsn: str, schema: str) -> None:
    """Every command of a run with a password DSN (and a failing connection) keeps the password out of its output."""
    secret_dsn = _password_dsn(dsn)
    (tmp_path / "myjobs.py").write_text(APP_MODULE.format(schema=schema))
    common = ["--dsn", secret_dsn, "--schema", schema, "--log-level", "debug"]
    runs = [
        _cli(["migrate", *common], tmp_path),
        _cli(["defer", "record", "--args", '{"n": 1}', *common], tmp_path),
        _cli(["defer", "--file", "-", *common], tmp_path, stdin='{"task": "record", "args": {"n": -1}}\n'),
        _cli(["run", "--app", "myjobs:app", "--once", "--dsn", secret_dsn, "--log-level", "debug"], tmp_path),
        _cli(["run", "--app", "myjobs:app", "--once", "--dsn", secret_dsn, "--log-format", "json"], tmp_path),
        _cli(["status", *common], tmp_path),
        _cli(["status", "--json", *common], tmp_path),
        _cli(["jobs", "list", *common], tmp_path),
        _cli(["jobs", "list", "--json", *common], tmp_path),
        _cli(["jobs", "show", "2", *common], tmp_path),
        _cli(["queues", "pause", "default", *common], tmp_path),
        _cli(["prune", "--older-than", "0", *common], tmp_path),
    ]
    unreachable = f"postgresql://postgres:{PASSWORD}@127.0.0.1:1/test"
    failures = [
        _cli(["healthcheck", *common], tmp_path),  # no worker is running: exit 1
        _cli(["status", "--dsn", unreachable, "--schema", schema], tmp_path),
        _cli(["jobs", "list", "--dsn", unreachable, "--log-level", "debug"], tmp_path),
        _cli(["healthcheck", "--dsn", unreachable], tmp_path),
        _cli(["run", "--app", "myjobs:app", "--once", "--dsn", unreachable, "--log-format", "json"], tmp_path),
        _cli(["migrate", "--dsn", f"host=127.0.0.1 port=1 password={PASSWORD}"], tmp_path),
    ]

    assert [r.returncode for r in runs] == [0] * len(runs), [r.stderr for r in runs if r.returncode]
    assert all(r.returncode != 0 for r in failures)
    assert "recording 1" in runs[3].stderr  # the run really worked the jobs
    for r in runs + failures:
        assert PASSWORD not in r.stdout + r.stderr, r.args


@pytest.mark.anyio
@pytest.mark.parametrize("log_args", [False, True])
async def test_job_arguments_are_logged_only_when_asked(app: App, collected: _Collect, log_args: bool) -> None:
    """A job's arguments appear on its log lines (and in both formats) only with log_args=True."""
    log = logging.getLogger("user.tasks")

    @app.task
    async def greet(name: str) -> None:
        log.info("greeting")

    job = await greet.defer(name="ada")
    async with open_worker(app, **fast(log_args=log_args)):
        await wait_for_state(app, job.id, JobState.COMPLETED)
    (record,) = [r for r in collected.records if r.name == "user.tasks"]
    assert record.job_args == ({"name": "ada"} if log_args else None)  # type: ignore[attr-defined]
    console = ConsoleFormatter().format(record)
    as_json = json.loads(JsonFormatter().format(record))
    if log_args:
        assert 'args={"name":"ada"}' in console and as_json["args"] == {"name": "ada"}
    else:
        assert "ada" not in console and "args" not in as_json
