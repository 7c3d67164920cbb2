"""Bad input, row by row of the table in ``docs/guarantees.md`` ("Bad input").

Most rows have their behaviour tests where the feature lives (``test_enqueue.py``, ``test_cli.py``,
``test_worker_execution.py``, ``test_migrations.py``, ``test_app_config.py``, ``test_outcomes.py``);
the table names them. This module adds what they leave out: that every refusal names the bad value
*and* the fix, a fuzz test of queue and task names full of SQL metacharacters, the invalid cron row,
and the worker-side messages.
"""

from __future__ import annotations

import datetime as dt
import math
from collections import Counter
from collections.abc import Callable
from typing import Any

import anyio.from_thread
import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nursery_worker import App, ConfigurationError, JobState, Retry, SchemaNotReady, Snooze, TaskNotFound, open_worker

from .helpers import fast, wait_for_state

Conn = psycopg.Connection[Any]
PASSWORD = "pw-9f3c1e"


def _app_with_task(dsn: str, schema: str, **options: Any) -> App:
    app = App(dsn=dsn, schema=schema, **options)

    @app.task(name="bad.work")
    async def work(n: int, tags: Any = None) -> None: ...

    return app


def _task_with_negative_timeout(app: App) -> None:
    @app.task(timeout=-1)
    async def negative() -> None: ...


def _job(app: App, **kwargs: Any) -> Any:
    return app.tasks["bad.work"].job(**kwargs)


def _configured(app: App, **options: Any) -> Any:
    return app.tasks["bad.work"].configure(**options).job(n=1)


#: (row, the call, the exception it raises, fragments naming the bad value, fragments naming the fix)
REFUSALS: list[tuple[str, Callable[[App], Any], type[Exception], list[str], list[str]]] = [
    ("not JSON: a set", lambda a: _job(a, n=1, tags={1, 2}), TypeError, ["tags", "set"], ["pass a list"]),
    ("not JSON: bytes", lambda a: _job(a, n=1, tags=b"x"), TypeError, ["tags", "bytes"], ["str"]),
    ("NaN", lambda a: _job(a, n=1, tags=math.nan), ValueError, ["tags", "nan"], ["None or a finite number"]),
    ("Infinity", lambda a: _job(a, n=1, tags=[math.inf]), ValueError, ["tags[0]", "inf"], ["finite"]),
    ("NUL character", lambda a: _job(a, n=1, tags="a\x00b"), ValueError, ["tags", "NUL"], ["remove it"]),
    ("missing argument", lambda a: _job(a), TypeError, ["'n'"], ["(signature: work(n:"]),
    ("unexpected argument", lambda a: _job(a, n=1, m=2), TypeError, ["'m'"], ["(signature: work(n:"]),
    (
        "queue with SQL metacharacters",
        lambda a: _configured(a, queue="x'; DROP TABLE jobs; --"),
        ConfigurationError,
        ["x'; DROP TABLE jobs; --"],
        ["letters, digits", "for example 'emails'"],
    ),
    (
        "task name with a space",
        lambda a: a.job_by_name("bad name"),
        ConfigurationError,
        ["'bad name'"],
        ["without spaces", "for example"],
    ),
    (
        "unique_key with a NUL",
        lambda a: _configured(a, unique_key="a\x00b"),
        ConfigurationError,
        ["unique_key 'a\\x00b'", "NUL"],
        ["remove it"],
    ),
    ("unknown task", lambda a: a.get_task("bad.wrok"), TaskNotFound, ["'bad.wrok'"], ["registered: bad.work"]),
    ("negative task timeout", _task_with_negative_timeout, ConfigurationError, ["timeout=-1"], ["> 0, or None"]),
    ("negative delay", lambda a: _configured(a, delay=-5), ConfigurationError, ["delay=-5"], [">= 0"]),
    ("negative snooze", lambda a: Snooze(-5), ConfigurationError, ["-5"], [">= 0"]),
    ("negative retry", lambda a: Retry(after=-5), ConfigurationError, ["-5"], [">= 0"]),
    (
        "naive scheduled_at",
        lambda a: _configured(a, scheduled_at=dt.datetime(2030, 1, 1)),
        ConfigurationError,
        ["datetime.datetime(2030, 1, 1, 0, 0)", "naive"],
        ["aware datetime", "delay="],
    ),
    (
        "naive retry time",
        lambda a: Retry(after=dt.datetime(2030, 1, 1)),
        ConfigurationError,
        ["datetime.datetime(2030, 1, 1, 0, 0)"],
        ["aware datetime"],
    ),
    (
        "malformed DSN",
        lambda a: App(dsn=f"host=127.0.0.1 password={PASSWORD} dangling"),
        ConfigurationError,
        ["host=127.0.0.1 password=***"],
        ["'postgresql://user:password@host:5432/db'"],
    ),
    (
        "schema name with SQL metacharacters",
        lambda a: App(dsn="postgresql://u@h/db", schema="x; drop"),
        ConfigurationError,
        ["'x; drop'"],
        ["lowercase letters", "for example 'nursery_worker'"],
    ),
    (
        "arguments above max_args_bytes",
        lambda a: (
            _app_with_task("postgresql://u@h/db", "s", max_args_bytes=64).tasks["bad.work"].job(n=1, tags="x" * 99)
        ),
        ValueError,
        ["encode to 116 bytes", "limit of 64"],
        ["store the payload elsewhere", "max_args_bytes"],
    ),
]


@pytest.mark.parametrize(("row", "call", "error", "value", "fix"), REFUSALS, ids=[r[0] for r in REFUSALS])
def test_each_refusal_names_the_bad_value_and_the_fix(
    dsn: str,
    schema: str,
    row: str,
    call: Callable[[App], Any],
    error: type[Exception],
    value: list[str],
    fix: list[str],
) -> None:
    """A refused input raises at the call site with a message naming the bad value and how to fix it."""
    app = _app_with_task(dsn, schema)
    with pytest.raises(error) as info:
        call(app)
    message = str(info.value)
    for fragment in value + fix:
        assert fragment in message, f"{row}: {fragment!r} not in {message!r}"
    assert PASSWORD not in message


@pytest.mark.anyio
async def test_negative_worker_timeouts_are_refused_naming_the_option(app: App) -> None:
    """open_worker and wait_for refuse negative timeouts with the option, its value and the allowed range."""
    for option in ("shutdown_timeout", "poll_interval", "cancel_grace", "final_timeout", "heartbeat_interval"):
        with pytest.raises(ConfigurationError) as info:
            async with open_worker(app, **{option: -1}):
                pass
        assert f"open_worker({option}=-1): must be a number > 0" in str(info.value)
    with pytest.raises(ConfigurationError, match=r"wait_for\(timeout=-1\): must be seconds >= 0 or None"):
        await app.wait_for(1, timeout=-1)


@pytest.mark.anyio
async def test_an_unmigrated_schema_names_the_schema_and_the_command(dsn: str, schema: str) -> None:
    """Any call on a schema that was never migrated raises SchemaNotReady naming it and `nursery-worker migrate`."""
    async with _app_with_task(dsn, schema) as app:
        for call in (lambda: app.tasks["bad.work"].defer(n=1), lambda: app.list_queues(), lambda: app.get_job(1)):
            with pytest.raises(SchemaNotReady) as info:
                await call()
            assert repr(schema) in str(info.value) and "run `nursery-worker migrate`" in str(info.value)


def test_an_invalid_cron_expression_is_refused_naming_it_and_the_fix(app: App) -> None:
    """@app.periodic(cron=...) with an expression that cannot be parsed raises ConfigurationError naming it."""
    periodic = app.periodic
    for n, expression in enumerate(("61 * * * *", "* * *", "every minute")):
        with pytest.raises(ConfigurationError) as info:

            @periodic(cron=expression)
            @app.task(name=f"bad.tick{n}")
            async def tick() -> None: ...

        message = str(info.value)
        assert repr(expression) in message and "minute hour day-of-month month day-of-week" in message


# --- the worker's side -------------------------------------------------------------------------


@pytest.mark.anyio
async def test_a_job_of_an_unregistered_task_is_discarded_with_the_way_to_run_it(app: App) -> None:
    """A worker meeting an unregistered task discards the job, and the error says how to get it run after all."""

    @app.task(name="bad.known")
    async def known() -> None: ...

    (job,) = await app.defer_many([app.job_by_name("bad.unknown")])
    async with open_worker(app, **fast()):
        gone = await wait_for_state(app, job.id, JobState.DISCARDED)
    (error,) = gone.errors
    assert "'bad.unknown'" in error.message and "bad.known" in error.message
    assert "retry" in error.message


@pytest.mark.anyio
async def test_a_nul_in_a_tasks_error_is_escaped_and_recorded(app: App) -> None:
    """A task that fails with a NUL in its message (or its Retry reason) has the error recorded, NUL escaped."""

    @app.task(name="bad.nul", max_attempts=1)
    async def fails() -> None:
        raise ValueError("bad\x00value")

    @app.task(name="bad.nul_retry", max_attempts=1)
    async def retries() -> None:
        raise Retry(after=0, reason="why\x00not")

    jobs = await app.defer_many([fails.job(), retries.job()])
    async with open_worker(app, **fast()):
        gone = [await wait_for_state(app, job.id, JobState.DISCARDED) for job in jobs]
    assert [e.message for job in gone for e in job.errors] == ["bad\\x00value", "why\\x00not"]


# --- queue and task names full of SQL metacharacters ----------------------------------------------

#: Names an attacker (or a careless caller) might try, next to arbitrary text and valid names.
HOSTILE = [
    "x'; DROP TABLE jobs; --",
    'default"; DELETE FROM jobs; --',
    "a--b",
    "q:1",
    "a.b",
    "jobs); TRUNCATE jobs; --",
    "$1",
    "%s",
    "%(queue)s",
    "{s}",
    "\\",
    "'",
    "default' OR '1'='1",
    "ü-ñ",
    "x" * 100,
    "x" * 101,
    "Robert'); DROP TABLE students;--",
    # Without spaces, so that they pass as task names: stored and matched as plain text.
    "x';DROP/**/TABLE/**/jobs;--",
    "default';DELETE/**/FROM/**/jobs;--",
    "a'||pg_sleep(1)||'",
    "t\\');TRUNCATE/**/queues;--",
]
names = st.one_of(
    st.sampled_from(HOSTILE),
    st.text(max_size=40),
    st.from_regex(r"[A-Za-z0-9_][A-Za-z0-9_.:\-]{0,30}", fullmatch=True),
)


def test_queue_and_task_names_with_sql_metacharacters_leave_the_schema_intact(
    app: App, db: Conn, schema: str, anyio_backend: str
) -> None:
    """Any queue or task name either is refused or round-trips through defer, pause and list as plain data."""
    deferred: Counter[tuple[str, str]] = Counter()
    paused: set[str] = set()
    tables = "SELECT table_name FROM information_schema.tables WHERE table_schema = %s ORDER BY 1"
    migrated = db.execute(tables, [schema]).fetchall()
    assert {"jobs", "migrations", "queues", "workers"} <= {t[0] for t in migrated}

    with anyio.from_thread.start_blocking_portal(backend=anyio_backend) as portal:

        @settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
        @given(queue=names, task=names)
        def attempt(queue: str, task: str) -> None:
            try:
                spec = app.job_by_name(task, {}, queue=queue)
            except ConfigurationError:
                spec = None
            if spec is not None:
                portal.call(app.defer_many, [spec])
                deferred[spec.queue, spec.task] += 1
            try:
                portal.call(app.pause_queue, queue)
                paused.add(queue)
            except ConfigurationError:
                pass
            for kwargs in ({"queue": queue}, {"task": task}):
                try:
                    listed = portal.call(lambda kw=kwargs: app.list_jobs(limit=10_000, **kw))
                except ConfigurationError:
                    continue
                key = 0 if "queue" in kwargs else 1
                assert len(listed) == sum(n for k, n in deferred.items() if k[key] == next(iter(kwargs.values())))
            queues = portal.call(app.list_queues)
            assert {q.name for q in queues if q.paused} == paused

        attempt()

    assert db.execute(tables, [schema]).fetchall() == migrated
    stored = Counter((q, t) for q, t in db.execute("SELECT queue, task FROM jobs").fetchall())
    assert stored == deferred
    assert {r[0] for r in db.execute("SELECT name FROM queues WHERE paused").fetchall()} == paused
    assert deferred, "no example deferred a job"
