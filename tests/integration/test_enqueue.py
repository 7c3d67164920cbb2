"""Integration tests of the enqueue API against real PostgreSQL: ``defer`` and its family,
task registration and options, JSON argument checking, bulk and transactional enqueue."""

from __future__ import annotations

import datetime as dt
import math
from types import MappingProxyType
from typing import Any

import anyio
import anyio.to_thread
import psycopg
import pytest
from psycopg import sql

from nursery_worker import (
    App,
    ConfigurationError,
    ExponentialBackoff,
    Job,
    JobNotFound,
    JobSpec,
    JobState,
    NurseryWorkerError,
)

pytestmark = pytest.mark.anyio

Conn = psycopg.Connection[Any]
FAR_FUTURE = dt.datetime(2100, 1, 1, tzinfo=dt.UTC)
LONG_AGO = dt.datetime(2000, 1, 1, tzinfo=dt.UTC)


def job_count(db: Conn) -> int:
    """How many rows the test schema's jobs table holds."""
    row = db.execute("SELECT count(*) FROM jobs").fetchone()
    assert row is not None
    return int(row[0])


def job_row(db: Conn, job_id: int) -> dict[str, Any]:
    """The stored row of job *job_id*, as a dict."""
    cur = db.execute(
        "SELECT id, task, queue, args, state, attempt, max_attempts, priority, scheduled_at, worker_id "
        "FROM jobs WHERE id = %s",
        [job_id],
    )
    row = cur.fetchone()
    assert row is not None, f"job {job_id} is not in the jobs table"
    assert cur.description is not None
    return {col.name: value for col, value in zip(cur.description, row, strict=True)}


def db_now(db: Conn) -> dt.datetime:
    """The database's clock."""
    row = db.execute("SELECT now()").fetchone()
    assert row is not None
    return row[0]  # type: ignore[no-any-return]


# --- defer and get_job ----------------------------------------------------------------------


async def test_defer_returns_an_available_job_with_id_attempt_zero_and_args(app: App) -> None:
    """defer returns a Job carrying its new id, state available, attempt 0 and the arguments given."""

    @app.task
    async def send(to: str, count: int = 1) -> None: ...

    job = await send.defer(to="ada@example.com", count=2)

    assert isinstance(job, Job)
    assert isinstance(job.id, int) and job.id > 0
    assert job.state is JobState.AVAILABLE
    assert job.attempt == 0
    assert job.args == {"to": "ada@example.com", "count": 2}
    assert job.task == send.name
    assert job.queue == "default"
    assert job.priority == 0
    assert job.max_attempts == 20
    assert job.worker_id is None
    assert job.errors == ()


async def test_defer_writes_a_row_matching_the_returned_job(app: App, db: Conn) -> None:
    """The row defer inserts holds the task name, queue, args, state and options of the returned Job."""

    @app.task(queue="emails", priority=3, max_attempts=4)
    async def send(to: str) -> None: ...

    job = await send.defer(to="ada@example.com")

    row = job_row(db, job.id)
    assert row["task"] == send.name
    assert row["queue"] == "emails"
    assert row["args"] == {"to": "ada@example.com"}
    assert row["state"] == "available"
    assert row["attempt"] == 0
    assert row["max_attempts"] == 4
    assert row["priority"] == 3
    assert row["scheduled_at"] == job.scheduled_at
    assert row["worker_id"] is None
    assert job_count(db) == 1


async def test_get_job_snapshot_equals_the_job_defer_returned(app: App) -> None:
    """get_job right after defer returns a Job equal, field by field, to the one defer returned."""

    @app.task
    async def send(to: str, tags: list[str]) -> None: ...

    job = await send.defer(to="ada@example.com", tags=["a", "b"])

    assert await app.get_job(job.id) == job


async def test_get_job_returns_a_fresh_snapshot(app: App, db: Conn) -> None:
    """get_job reads the row anew on each call, while earlier snapshots keep their values."""

    @app.task
    async def send(to: str) -> None: ...

    job = await send.defer(to="ada@example.com")
    first = await app.get_job(job.id)
    db.execute("UPDATE jobs SET priority = 7 WHERE id = %s", [job.id])
    second = await app.get_job(job.id)

    assert second.priority == 7
    assert first.priority == 0
    assert job.priority == 0
    assert second is not first


async def test_job_snapshots_are_frozen(app: App) -> None:
    """Assigning to an attribute of a Job snapshot raises instead of pretending to change the job."""

    @app.task
    async def send(to: str) -> None: ...

    job = await app.get_job((await send.defer(to="ada@example.com")).id)

    with pytest.raises(AttributeError):
        job.state = JobState.COMPLETED  # type: ignore[misc]
    with pytest.raises(AttributeError):
        job.attempt = 5  # type: ignore[misc]
    assert job.state is JobState.AVAILABLE


async def test_get_job_of_an_unknown_id_raises_job_not_found_naming_it(app: App) -> None:
    """get_job of an id that does not exist raises JobNotFound, a LookupError whose message names the id."""
    with pytest.raises(JobNotFound) as info:
        await app.get_job(987654321)

    assert isinstance(info.value, LookupError)
    assert isinstance(info.value, NurseryWorkerError)
    assert info.value.job_id == 987654321
    assert "987654321" in str(info.value)


@pytest.mark.parametrize("bad_id", ["x", "1", 1.0, None, True])
async def test_get_job_with_a_non_int_id_raises_type_error(app: App, bad_id: Any) -> None:
    """get_job of anything but an int (str, float, None, bool) raises TypeError naming the value."""
    with pytest.raises(TypeError) as info:
        await app.get_job(bad_id)

    assert repr(bad_id) in str(info.value)


# --- registering tasks ----------------------------------------------------------------------


async def test_default_task_name_is_module_and_qualname(app: App, db: Conn) -> None:
    """A task registered without name= is called module.qualname, and its jobs carry that name."""

    @app.task
    async def send(to: str) -> None: ...

    expected = f"{__name__}.test_default_task_name_is_module_and_qualname.<locals>.send"
    assert send.name == expected
    assert app.tasks[expected] is send
    job = await send.defer(to="x")
    assert job.task == expected
    assert job_row(db, job.id)["task"] == expected


async def test_name_option_overrides_the_task_name(app: App, db: Conn) -> None:
    """@app.task(name=...) registers the task, and its jobs, under the given name."""

    @app.task(name="billing.send_invoice")
    async def send(invoice_id: int) -> None: ...

    assert send.name == "billing.send_invoice"
    assert app.get_task("billing.send_invoice") is send
    job = await send.defer(invoice_id=1)
    assert job_row(db, job.id)["task"] == "billing.send_invoice"


def test_registering_another_function_under_a_taken_name_raises(app: App) -> None:
    """Registering a different function under an existing task name raises ConfigurationError naming it."""

    @app.task(name="shared.name")
    async def first() -> None: ...

    async def second() -> None: ...

    with pytest.raises(ConfigurationError) as info:
        app.task(name="shared.name")(second)

    assert "shared.name" in str(info.value)
    assert "name=" in str(info.value)
    assert app.tasks["shared.name"] is first


async def test_plain_def_functions_register_as_tasks(app: App, db: Conn) -> None:
    """A plain (sync) def registers as a task and can be deferred like an async one."""

    @app.task
    def resize(image_id: int) -> None: ...

    assert resize.is_async is False
    job = await resize.defer(image_id=7)
    assert job_row(db, job.id)["args"] == {"image_id": 7}


def test_async_generator_functions_are_rejected(app: App) -> None:
    """@app.task on an async generator function raises TypeError and registers nothing."""

    async def stream() -> Any:
        yield 1

    with pytest.raises(TypeError) as info:
        app.task(stream)

    assert "generator" in str(info.value)
    assert app.tasks == {}


def test_generator_functions_are_rejected(app: App) -> None:
    """@app.task on a (sync) generator function raises TypeError and registers nothing."""

    def stream() -> Any:
        yield 1

    with pytest.raises(TypeError):
        app.task(stream)
    assert app.tasks == {}


# --- task options ---------------------------------------------------------------------------


@pytest.mark.parametrize("timeout", [0, -1, -0.5, math.nan, "30"])
def test_timeout_must_be_a_positive_number(app: App, timeout: Any) -> None:
    """@app.task(timeout=...) with zero, a negative, NaN or a non-number raises ConfigurationError naming it."""
    with pytest.raises(ConfigurationError) as info:

        @app.task(timeout=timeout)
        async def work() -> None: ...

    assert "timeout=" in str(info.value)
    assert repr(timeout) in str(info.value)
    assert app.tasks == {}


@pytest.mark.parametrize("max_attempts", [0, -1, 1.5, True, "3"])
def test_max_attempts_must_be_an_int_of_at_least_one(app: App, max_attempts: Any) -> None:
    """@app.task(max_attempts=...) below 1 or not an int raises ConfigurationError naming the value."""
    with pytest.raises(ConfigurationError) as info:

        @app.task(max_attempts=max_attempts)
        async def work() -> None: ...

    assert "max_attempts=" in str(info.value)
    assert repr(max_attempts) in str(info.value)


@pytest.mark.parametrize("queue", ["", " ", "has space", "a;drop table", "x" * 101, "-dash", "emails\n", None, 5])
def test_invalid_queue_names_are_rejected(app: App, queue: Any) -> None:
    """@app.task(queue=...) with an empty, spaced, injected, too long or non-str name raises ConfigurationError."""
    with pytest.raises(ConfigurationError) as info:

        @app.task(queue=queue)
        async def work() -> None: ...

    assert f"queue={queue!r}" in str(info.value)
    assert "for example" in str(info.value)


@pytest.mark.parametrize("name", ["", "has space", "tab\tname", "x" * 256, "nul\x00", "trailing\n", 5])
def test_invalid_task_names_are_rejected(app: App, name: Any) -> None:
    """@app.task(name=...) that is empty, spaced, has control characters, is over 255 long or not a str is refused."""
    with pytest.raises(ConfigurationError) as info:

        @app.task(name=name)
        async def work() -> None: ...

    assert repr(name) in str(info.value)
    assert app.tasks == {}


def test_a_queue_name_of_100_characters_is_accepted(app: App) -> None:
    """A queue name of exactly 100 allowed characters is valid."""

    @app.task(queue="q" * 100)
    async def work() -> None: ...

    assert work.queue == "q" * 100


@pytest.mark.parametrize("retry", [-1, -0.1, "fast", True, object()])
def test_invalid_retry_is_rejected(app: App, retry: Any) -> None:
    """@app.task(retry=...) that is negative, a bool or neither a number nor callable raises ConfigurationError."""
    with pytest.raises(ConfigurationError) as info:

        @app.task(retry=retry)
        async def work() -> None: ...

    assert "retry=" in str(info.value)


@pytest.mark.parametrize("retry", [0, 2.5, ExponentialBackoff(base=5), lambda attempt: attempt * 2.0])
def test_valid_retry_values_are_accepted(app: App, retry: Any) -> None:
    """retry= accepts a non-negative number, an ExponentialBackoff or a callable attempt -> seconds."""

    @app.task(retry=retry)
    async def work() -> None: ...

    assert work.backoff(1) >= 0


def test_configuration_errors_are_value_errors(app: App) -> None:
    """An invalid task option can be caught as a plain ValueError."""
    with pytest.raises(ValueError):

        @app.task(max_attempts=0)
        async def work() -> None: ...


@pytest.mark.parametrize("priority", [2**31, -(2**31) - 1, 1.5, True])
def test_priority_must_be_an_int32(app: App, priority: Any) -> None:
    """@app.task(priority=...) outside the 32-bit range or not an int raises ConfigurationError naming it."""
    with pytest.raises(ConfigurationError) as info:

        @app.task(priority=priority)
        async def work() -> None: ...

    assert "priority=" in str(info.value)


# --- configure() ----------------------------------------------------------------------------


async def test_configure_overrides_queue_priority_and_max_attempts(app: App, db: Conn) -> None:
    """configure(queue=, priority=, max_attempts=) applies to the job deferred through it."""

    @app.task(queue="default", priority=1, max_attempts=3)
    async def send(to: str) -> None: ...

    job = await send.configure(queue="urgent", priority=9, max_attempts=7).defer(to="x")

    assert (job.queue, job.priority, job.max_attempts) == ("urgent", 9, 7)
    row = job_row(db, job.id)
    assert (row["queue"], row["priority"], row["max_attempts"]) == ("urgent", 9, 7)


async def test_configure_leaves_the_task_defaults_unchanged(app: App) -> None:
    """A later plain defer uses the task's own options, not those of an earlier configure()."""

    @app.task(queue="default", priority=1, max_attempts=3)
    async def send(to: str) -> None: ...

    await send.configure(queue="urgent", priority=9, max_attempts=7).defer(to="x")
    job = await send.defer(to="y")

    assert (job.queue, job.priority, job.max_attempts) == ("default", 1, 3)


async def test_future_scheduled_at_makes_a_scheduled_job(app: App, db: Conn) -> None:
    """configure(scheduled_at=<future>) inserts the job as scheduled, due at that instant."""

    @app.task
    async def send(to: str) -> None: ...

    when = dt.datetime(2100, 1, 1, 12, 0, tzinfo=dt.timezone(dt.timedelta(hours=5)))
    job = await send.configure(scheduled_at=when).defer(to="x")

    assert job.state is JobState.SCHEDULED
    assert job.scheduled_at == when
    row = job_row(db, job.id)
    assert row["state"] == "scheduled"
    assert row["scheduled_at"] == when


async def test_past_scheduled_at_makes_an_available_job(app: App) -> None:
    """configure(scheduled_at=<past>) inserts the job as available at once."""

    @app.task
    async def send(to: str) -> None: ...

    job = await send.configure(scheduled_at=LONG_AGO).defer(to="x")

    assert job.state is JobState.AVAILABLE
    assert job.scheduled_at == LONG_AGO


async def test_naive_scheduled_at_is_rejected(app: App, db: Conn) -> None:
    """configure(scheduled_at=<naive datetime>) raises ConfigurationError naming the value and the fix."""

    @app.task
    async def send(to: str) -> None: ...

    naive = dt.datetime(2100, 1, 1, 12, 0)
    with pytest.raises(ConfigurationError) as info:
        await send.configure(scheduled_at=naive).defer(to="x")

    message = str(info.value)
    assert repr(naive) in message
    assert "naive" in message
    assert "timezone" in message or "delay=" in message
    assert job_count(db) == 0


@pytest.mark.parametrize("scheduled_at", ["2100-01-01T00:00:00+00:00", 4102444800, dt.date(2100, 1, 1)])
async def test_scheduled_at_must_be_a_datetime(app: App, db: Conn, scheduled_at: Any) -> None:
    """configure(scheduled_at=...) with a string, a timestamp or a date raises ConfigurationError."""

    @app.task
    async def send(to: str) -> None: ...

    with pytest.raises(ConfigurationError) as info:
        await send.configure(scheduled_at=scheduled_at).defer(to="x")

    assert "scheduled_at=" in str(info.value)
    assert job_count(db) == 0


async def test_delay_schedules_the_job_by_the_database_clock(app: App, db: Conn) -> None:
    """configure(delay=60) inserts a scheduled job due 60 s after the database's now() at insert."""

    @app.task
    async def send(to: str) -> None: ...

    before = db_now(db)
    job = await send.configure(delay=60).defer(to="x")
    after = db_now(db)

    assert job.state is JobState.SCHEDULED
    assert before + dt.timedelta(seconds=60) <= job.scheduled_at <= after + dt.timedelta(seconds=60)
    assert job_row(db, job.id)["scheduled_at"] == job.scheduled_at


async def test_timedelta_delay_is_accepted(app: App, db: Conn) -> None:
    """configure(delay=timedelta(...)) works like the same number of seconds."""

    @app.task
    async def send(to: str) -> None: ...

    before = db_now(db)
    job = await send.configure(delay=dt.timedelta(minutes=5)).defer(to="x")
    after = db_now(db)

    assert job.state is JobState.SCHEDULED
    assert before + dt.timedelta(minutes=5) <= job.scheduled_at <= after + dt.timedelta(minutes=5)


async def test_zero_delay_makes_an_available_job(app: App) -> None:
    """configure(delay=0) inserts a job that is available at once."""

    @app.task
    async def send(to: str) -> None: ...

    job = await send.configure(delay=0).defer(to="x")

    assert job.state is JobState.AVAILABLE


async def test_scheduled_at_and_delay_together_are_rejected(app: App, db: Conn) -> None:
    """configure() with both scheduled_at= and delay= raises ConfigurationError naming both."""

    @app.task
    async def send(to: str) -> None: ...

    with pytest.raises(ConfigurationError) as info:
        await send.configure(scheduled_at=FAR_FUTURE, delay=10).defer(to="x")

    assert "scheduled_at=" in str(info.value)
    assert "delay=" in str(info.value)
    assert job_count(db) == 0


@pytest.mark.parametrize("delay", [-1, -0.001, dt.timedelta(seconds=-5), math.nan, math.inf, "10", 1e15])
async def test_negative_non_finite_or_unstorable_delay_is_rejected(app: App, db: Conn, delay: Any) -> None:
    """configure(delay=...) negative, NaN, infinite, past any timestamp or not a number raises ConfigurationError."""

    @app.task
    async def send(to: str) -> None: ...

    with pytest.raises(ConfigurationError) as info:
        await send.configure(delay=delay).defer(to="x")

    assert "delay=" in str(info.value)
    assert job_count(db) == 0


@pytest.mark.parametrize("options", [{"queue": "bad queue"}, {"priority": 2**40}, {"max_attempts": 0}])
async def test_configure_validates_its_options(app: App, db: Conn, options: dict[str, Any]) -> None:
    """configure() with an invalid queue, priority or max_attempts raises ConfigurationError naming it."""

    @app.task
    async def send(to: str) -> None: ...

    with pytest.raises(ConfigurationError) as info:
        await send.configure(**options).defer(to="x")

    (key,) = options
    assert f"{key}=" in str(info.value)
    assert job_count(db) == 0


# --- JSON arguments -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "error", "fragments"),
    [
        pytest.param({"tags": {"a", "b"}}, TypeError, ["tags", "set", "list"], id="set"),
        pytest.param({"tags": frozenset({"a"})}, TypeError, ["tags", "frozenset"], id="frozenset"),
        pytest.param({"blob": b"\x00\x01"}, TypeError, ["blob", "bytes"], id="bytes"),
        pytest.param({"blob": bytearray(b"x")}, TypeError, ["blob", "bytearray"], id="bytearray"),
        pytest.param({"obj": object()}, TypeError, ["obj", "object"], id="object"),
        pytest.param({"when": dt.datetime(2024, 1, 1)}, TypeError, ["when", "isoformat"], id="datetime"),
        pytest.param({"data": {"nested": [1, {2, 3}]}}, TypeError, ["data['nested'][1]", "set"], id="nested-set"),
        pytest.param({"ratio": math.nan}, ValueError, ["ratio", "nan"], id="nan"),
        pytest.param({"ratio": math.inf}, ValueError, ["ratio", "inf"], id="inf"),
        pytest.param({"ratios": [1.0, -math.inf]}, ValueError, ["ratios[1]", "inf"], id="nested-inf"),
        pytest.param({"by_id": {1: "a"}}, TypeError, ["by_id", "int", "key"], id="int-key"),
        pytest.param({"by_id": {("a", "b"): "a"}}, TypeError, ["by_id", "tuple", "key"], id="tuple-key"),
        pytest.param({"text": "a\x00b"}, ValueError, ["text", "NUL"], id="nul"),
        pytest.param({"items": ["ok", "bad\x00"]}, ValueError, ["items[1]", "NUL"], id="nested-nul"),
        pytest.param({"mapping": {"k\x00": 1}}, ValueError, ["mapping", "NUL"], id="nul-key"),
        pytest.param({"text": "a\ud800b"}, ValueError, ["text"], id="lone-surrogate"),
        pytest.param({"opts": MappingProxyType({"a": 1})}, TypeError, ["opts"], id="mappingproxy"),
    ],
)
async def test_non_json_arguments_are_refused_at_the_call_site(
    app: App, db: Conn, kwargs: dict[str, Any], error: type[Exception], fragments: list[str]
) -> None:
    """An argument that is not plain JSON raises TypeError/ValueError naming its path, and writes no row."""

    @app.task
    async def work(**kwargs: Any) -> None: ...

    with pytest.raises(error) as info:
        await work.defer(**kwargs)

    message = str(info.value)
    for fragment in fragments:
        assert fragment in message
    assert job_count(db) == 0


async def test_non_json_arguments_are_refused_by_job_too(app: App) -> None:
    """task.job(...) (for defer_many) checks arguments as defer does, before anything is sent."""

    @app.task
    async def work(tags: Any) -> None: ...

    with pytest.raises(TypeError) as info:
        work.job(tags={1, 2})

    assert "tags" in str(info.value)


async def test_tuple_arguments_are_stored_as_lists(app: App, db: Conn) -> None:
    """A tuple argument is accepted and stored, and read back by get_job, as a JSON list."""

    @app.task
    async def work(pair: Any, nested: Any) -> None: ...

    job = await work.defer(pair=(1, 2), nested={"xs": (3, (4, 5))})

    assert job_row(db, job.id)["args"] == {"pair": [1, 2], "nested": {"xs": [3, [4, 5]]}}
    assert (await app.get_job(job.id)).args == {"pair": [1, 2], "nested": {"xs": [3, [4, 5]]}}


async def test_the_job_defer_returns_carries_the_args_as_stored(app: App) -> None:
    """The Job defer returns holds the arguments as the row stores them (a tuple comes back as a list)."""

    @app.task
    async def work(pair: Any) -> None: ...

    job = await work.defer(pair=(1, 2))

    assert job.args == {"pair": [1, 2]}
    assert job.args == (await app.get_job(job.id)).args


async def test_json_round_trips_unicode_big_ints_and_nesting(app: App) -> None:
    """Unicode text, 64-bit-plus ints, floats, bools, None and nested containers read back unchanged."""

    @app.task
    async def work(**kwargs: Any) -> None: ...

    args = {
        "text": "héllo ☃ \U0001f600",
        "big": 2**70,
        "neg": -(2**63),
        "f": 0.1,
        "flag": False,
        "none": None,
        "nested": {"a": [1, {"b": [True, None, "x"]}], "": "empty key"},
    }
    job = await work.defer(**args)

    assert (await app.get_job(job.id)).args == args


async def test_missing_argument_raises_type_error_before_writing(app: App, db: Conn) -> None:
    """Deferring without a required argument raises TypeError naming it and the signature, writing nothing."""

    @app.task
    async def send(to: str, subject: str = "hi") -> None: ...

    with pytest.raises(TypeError) as info:
        await send.defer(subject="x")

    assert "'to'" in str(info.value)
    assert "signature" in str(info.value)
    assert "subject" in str(info.value)
    assert job_count(db) == 0


async def test_unexpected_argument_raises_type_error_before_writing(app: App, db: Conn) -> None:
    """Deferring with a keyword the function does not take raises TypeError naming it, writing nothing."""

    @app.task
    async def send(to: str) -> None: ...

    with pytest.raises(TypeError) as info:
        await send.defer(to="x", too="y")

    assert "'too'" in str(info.value)
    assert job_count(db) == 0


async def test_arguments_over_max_args_bytes_are_refused_with_the_size(dsn: str, schema: str, db: Conn) -> None:
    """Arguments encoding above App(max_args_bytes=...) raise ValueError giving the size and the limit."""
    async with App(dsn=dsn, schema=schema, max_args_bytes=50) as small:
        await small.migrate()

        @small.task
        async def work(s: str) -> None: ...

        # '{"s":"' + 100 characters + '"}' is 108 bytes.
        with pytest.raises(ValueError) as info:
            await work.defer(s="x" * 100)

    message = str(info.value)
    assert "108" in message
    assert "50" in message
    assert "max_args_bytes" in message
    assert job_count(db) == 0


async def test_arguments_of_exactly_max_args_bytes_are_accepted(dsn: str, schema: str, db: Conn) -> None:
    """Arguments encoding to exactly max_args_bytes are accepted (the limit is inclusive, in UTF-8 bytes)."""
    async with App(dsn=dsn, schema=schema, max_args_bytes=108) as small:
        await small.migrate()

        @small.task
        async def work(s: str) -> None: ...

        await work.defer(s="x" * 100)
        with pytest.raises(ValueError):
            await work.defer(s="x" * 99 + "é")  # as many characters, one byte more

    assert job_count(db) == 1


# --- defer_sync -----------------------------------------------------------------------------


async def test_defer_sync_works_from_a_worker_thread(app: App, db: Conn) -> None:
    """defer_sync, called from a thread of an async program, inserts the job and returns it."""

    @app.task
    async def send(to: str) -> None: ...

    job = await anyio.to_thread.run_sync(lambda: send.defer_sync(to="x"))

    assert job.state is JobState.AVAILABLE
    assert job_row(db, job.id)["args"] == {"to": "x"}


def test_defer_sync_works_from_sync_code(app: App, db: Conn) -> None:
    """defer_sync from plain synchronous code inserts the job and returns it."""

    @app.task
    def send(to: str) -> None: ...

    job = send.configure(queue="emails").defer_sync(to="x")

    assert job.queue == "emails"
    assert job_row(db, job.id)["queue"] == "emails"


def test_defer_sync_refuses_bad_arguments_before_writing(app: App, db: Conn) -> None:
    """defer_sync checks the arguments like defer: a set raises TypeError and nothing is written."""

    @app.task
    def send(to: Any) -> None: ...

    with pytest.raises(TypeError):
        send.defer_sync(to={"x"})
    assert job_count(db) == 0


# --- defer_many -----------------------------------------------------------------------------


async def test_defer_many_inserts_5000_jobs_in_input_order(app: App, db: Conn) -> None:
    """defer_many of 5000 specs returns them in input order with increasing ids, each row holding its args."""

    @app.task
    async def work(n: int) -> None: ...

    jobs = await app.defer_many([work.job(n=i) for i in range(5000)])

    assert [j.args["n"] for j in jobs] == list(range(5000))
    ids = [j.id for j in jobs]
    assert ids == sorted(set(ids))  # strictly increasing
    stored = dict(db.execute("SELECT id, (args->>'n')::int FROM jobs").fetchall())
    assert len(stored) == 5000
    assert {j.id: j.args["n"] for j in jobs} == stored


async def test_defer_many_keeps_each_items_options(app: App, db: Conn) -> None:
    """Each item of defer_many keeps its own task, queue, priority and schedule."""

    @app.task
    async def send(to: str) -> None: ...

    @app.task(queue="images")
    async def resize(image_id: int) -> None: ...

    jobs = await app.defer_many(
        [
            send.job(to="a"),
            resize.configure(priority=5).job(image_id=1),
            send.configure(delay=3600).job(to="b"),
            resize.configure(scheduled_at=LONG_AGO, queue="slow").job(image_id=2),
        ]
    )

    summary = [(j.task, j.queue, j.priority, j.state) for j in jobs]
    assert summary == [
        (send.name, "default", 0, JobState.AVAILABLE),
        (resize.name, "images", 5, JobState.AVAILABLE),
        (send.name, "default", 0, JobState.SCHEDULED),
        (resize.name, "slow", 0, JobState.AVAILABLE),
    ]
    for job in jobs:
        row = job_row(db, job.id)
        assert (row["task"], row["queue"], row["priority"], row["state"]) == (
            job.task,
            job.queue,
            job.priority,
            job.state.value,
        )


async def test_defer_many_accepts_any_iterable(app: App) -> None:
    """defer_many takes a generator of specs as well as a list."""

    @app.task
    async def work(n: int) -> None: ...

    jobs = await app.defer_many(work.job(n=i) for i in range(3))

    assert [j.args["n"] for j in jobs] == [0, 1, 2]


@pytest.mark.parametrize("bad", [{"task": "x", "args": {}}, None, "work", 42])
async def test_defer_many_refuses_items_that_are_not_job_specs(app: App, db: Conn, bad: Any) -> None:
    """An item of defer_many that is not a JobSpec raises TypeError naming its index, and nothing is written."""

    @app.task
    async def work(n: int) -> None: ...

    with pytest.raises(TypeError) as info:
        await app.defer_many([work.job(n=1), bad, work.job(n=2)])

    assert "item 1" in str(info.value)
    assert "job(" in str(info.value)
    assert job_count(db) == 0


async def test_defer_many_refuses_a_task_passed_instead_of_a_spec(app: App, db: Conn) -> None:
    """Passing the Task itself (not task.job(...)) to defer_many raises TypeError, and nothing is written."""

    @app.task
    async def work() -> None: ...

    with pytest.raises(TypeError):
        await app.defer_many([work.job(), work])  # type: ignore[list-item]
    assert job_count(db) == 0


async def test_defer_many_of_nothing_returns_an_empty_list(app: App, db: Conn) -> None:
    """defer_many([]) returns [] and writes nothing."""
    assert await app.defer_many([]) == []
    assert job_count(db) == 0


def test_defer_many_sync_inserts_in_order(app: App, db: Conn) -> None:
    """defer_many_sync from synchronous code inserts the jobs in order, like defer_many."""

    @app.task
    def work(n: int) -> None: ...

    jobs = app.defer_many_sync([work.job(n=i) for i in range(10)])

    assert [j.args["n"] for j in jobs] == list(range(10))
    assert job_count(db) == 10


# --- transactional enqueue ------------------------------------------------------------------


async def test_defer_on_a_sync_connection_is_visible_after_commit(app: App, dsn: str, db: Conn) -> None:
    """configure(connection=conn).defer joins conn's transaction: invisible until commit, then present."""

    @app.task
    async def send(to: str) -> None: ...

    with psycopg.connect(dsn) as conn:
        job = await send.configure(connection=conn).defer(to="x")
        assert job_count(db) == 0
        conn.commit()

    assert (await app.get_job(job.id)).args == {"to": "x"}
    assert job_count(db) == 1


async def test_defer_on_a_sync_connection_is_gone_after_rollback(app: App, dsn: str, db: Conn) -> None:
    """A job deferred on a connection whose transaction is rolled back never exists."""

    @app.task
    async def send(to: str) -> None: ...

    with psycopg.connect(dsn) as conn:
        job = await send.configure(connection=conn).defer(to="x")
        conn.rollback()

    assert job_count(db) == 0
    with pytest.raises(JobNotFound):
        await app.get_job(job.id)


async def test_defer_on_a_connection_commits_with_the_callers_own_writes(app: App, dsn: str, db: Conn) -> None:
    """Inside `with conn.transaction()`, the caller's own write and the job commit together."""

    @app.task
    async def send(to: str) -> None: ...

    db.execute("CREATE TABLE orders (id int)")
    with psycopg.connect(dsn) as conn:
        with conn.transaction():
            conn.execute(sql.SQL("INSERT INTO {}.orders VALUES (1)").format(sql.Identifier(app.schema)))
            await send.configure(connection=conn).defer(to="x")
        with pytest.raises(RuntimeError, match="boom"), conn.transaction():
            conn.execute(sql.SQL("INSERT INTO {}.orders VALUES (2)").format(sql.Identifier(app.schema)))
            await send.configure(connection=conn).defer(to="y")
            raise RuntimeError("boom")

    assert db.execute("SELECT array_agg(id) FROM orders").fetchone() == ([1],)
    assert [r[0] for r in db.execute("SELECT args->>'to' FROM jobs").fetchall()] == ["x"]


async def test_defer_many_on_a_sync_connection_is_visible_after_commit(app: App, dsn: str, db: Conn) -> None:
    """app.defer_many(..., connection=conn) joins conn's transaction and appears on commit."""

    @app.task
    async def work(n: int) -> None: ...

    with psycopg.connect(dsn) as conn:
        jobs = await app.defer_many([work.job(n=i) for i in range(3)], connection=conn)
        assert job_count(db) == 0
        conn.commit()

    assert job_count(db) == 3
    assert [(await app.get_job(j.id)).args["n"] for j in jobs] == [0, 1, 2]


async def test_defer_many_on_a_sync_connection_is_gone_after_rollback(app: App, dsn: str, db: Conn) -> None:
    """app.defer_many(..., connection=conn) followed by a rollback leaves no job."""

    @app.task
    async def work(n: int) -> None: ...

    with psycopg.connect(dsn) as conn:
        await app.defer_many([work.job(n=i) for i in range(3)], connection=conn)
        conn.rollback()

    assert job_count(db) == 0


def test_defer_sync_and_defer_many_sync_on_a_connection_roll_back_together(app: App, dsn: str, db: Conn) -> None:
    """The sync variants on a connection join its transaction: a rollback removes all their jobs."""

    @app.task
    def work(n: int) -> None: ...

    with psycopg.connect(dsn) as conn:
        work.configure(connection=conn).defer_sync(n=0)
        app.defer_many_sync([work.job(n=1), work.job(n=2)], connection=conn)
        assert job_count(db) == 0
        conn.rollback()

    assert job_count(db) == 0


async def test_defer_on_an_async_connection_is_visible_after_commit(
    app: App, dsn: str, db: Conn, anyio_backend: str
) -> None:
    """On asyncio, a job deferred on a psycopg.AsyncConnection appears when that connection commits."""
    if anyio_backend == "trio":
        pytest.skip("psycopg.AsyncConnection runs on asyncio only")

    @app.task
    async def send(to: str) -> None: ...

    async with await psycopg.AsyncConnection.connect(dsn) as conn:
        job = await send.configure(connection=conn).defer(to="x")
        jobs = await app.defer_many([send.job(to="y")], connection=conn)
        assert job_count(db) == 0
        await conn.commit()

    assert (await app.get_job(job.id)).args == {"to": "x"}
    assert (await app.get_job(jobs[0].id)).args == {"to": "y"}


async def test_defer_on_an_async_connection_is_gone_after_rollback(
    app: App, dsn: str, db: Conn, anyio_backend: str
) -> None:
    """On asyncio, jobs deferred on a psycopg.AsyncConnection vanish when it rolls back."""
    if anyio_backend == "trio":
        pytest.skip("psycopg.AsyncConnection runs on asyncio only")

    @app.task
    async def send(to: str) -> None: ...

    async with await psycopg.AsyncConnection.connect(dsn) as conn:
        await send.configure(connection=conn).defer(to="x")
        await app.defer_many([send.job(to="y")], connection=conn)
        await conn.rollback()

    assert job_count(db) == 0


@pytest.mark.parametrize("commit", [True, False])
async def test_defer_batch_on_an_async_connection_commits_or_rolls_back_with_it(
    app: App, dsn: str, db: Conn, anyio_backend: str, commit: bool
) -> None:
    """On asyncio, a batch deferred on a psycopg.AsyncConnection follows that connection's commit or rollback."""
    if anyio_backend == "trio":
        pytest.skip("psycopg.AsyncConnection runs on asyncio only")

    @app.task
    async def send(to: str) -> None: ...

    async with await psycopg.AsyncConnection.connect(dsn) as conn:
        ids = await send.configure(connection=conn).defer_batch([{"to": str(i)} for i in range(250)])
        assert job_count(db) == 0
        await (conn.commit() if commit else conn.rollback())

    assert job_count(db) == (250 if commit else 0)
    if commit:
        assert (await app.get_job(ids[-1])).args == {"to": "249"}


def test_defer_batch_with_a_non_connection_raises_type_error(app: App, db: Conn) -> None:
    """configure(connection=<not a psycopg connection>).defer_batch_sync raises TypeError naming connection=."""

    @app.task
    async def send(to: str) -> None: ...

    with pytest.raises(TypeError, match="connection="):
        send.configure(connection=object()).defer_batch_sync([{"to": "x"}])
    assert job_count(db) == 0


@pytest.mark.parametrize("connection", ["postgresql://postgres@127.0.0.1/test", object(), 1])
async def test_defer_with_a_non_connection_raises_type_error(app: App, db: Conn, connection: Any) -> None:
    """configure(connection=<not a psycopg connection>).defer raises TypeError naming connection=, writing nothing."""

    @app.task
    async def send(to: str) -> None: ...

    with pytest.raises(TypeError) as info:
        await send.configure(connection=connection).defer(to="x")

    assert "connection=" in str(info.value)
    assert type(connection).__name__ in str(info.value)
    assert job_count(db) == 0


async def test_defer_with_a_cursor_instead_of_a_connection_raises_type_error(app: App, db: Conn) -> None:
    """Passing a psycopg cursor as connection= raises TypeError, writing nothing."""

    @app.task
    async def send(to: str) -> None: ...

    with db.cursor() as cursor, pytest.raises(TypeError):
        await send.configure(connection=cursor).defer(to="x")
    assert job_count(db) == 0


async def test_defer_many_with_a_non_connection_raises_type_error(app: App, db: Conn) -> None:
    """app.defer_many(..., connection=<not a connection>) raises TypeError, writing nothing."""

    @app.task
    async def send(to: str) -> None: ...

    with pytest.raises(TypeError) as info:
        await app.defer_many([send.job(to="x")], connection="not a connection")

    assert "connection=" in str(info.value)
    assert job_count(db) == 0


def test_defer_sync_with_a_non_connection_raises_type_error(app: App, db: Conn) -> None:
    """defer_sync and defer_many_sync with connection=<not a connection> raise TypeError, writing nothing."""

    @app.task
    def send(to: str) -> None: ...

    with pytest.raises(TypeError):
        send.configure(connection=object()).defer_sync(to="x")
    with pytest.raises(TypeError):
        app.defer_many_sync([send.job(to="x")], connection=object())
    assert job_count(db) == 0


# --- job_by_name ----------------------------------------------------------------------------


async def test_job_by_name_for_an_unregistered_task_uses_the_defaults(app: App, db: Conn) -> None:
    """job_by_name of a name this app does not register builds a spec on queue default, priority 0, 20 attempts."""
    spec = app.job_by_name("billing.send_invoice", {"invoice_id": 7})

    assert isinstance(spec, JobSpec)
    assert (spec.task, spec.queue, spec.priority, spec.max_attempts) == ("billing.send_invoice", "default", 0, 20)
    (job,) = await app.defer_many([spec])
    row = job_row(db, job.id)
    assert (row["task"], row["queue"], row["args"]) == ("billing.send_invoice", "default", {"invoice_id": 7})


async def test_job_by_name_for_an_unregistered_task_takes_options(app: App, db: Conn) -> None:
    """job_by_name's queue=, priority= and max_attempts= apply to an unregistered task's job."""
    spec = app.job_by_name("billing.send_invoice", queue="billing", priority=4, max_attempts=2)

    (job,) = await app.defer_many([spec])

    row = job_row(db, job.id)
    assert (row["queue"], row["priority"], row["max_attempts"], row["args"]) == ("billing", 4, 2, {})


async def test_job_by_name_for_a_registered_task_uses_its_options(app: App, db: Conn) -> None:
    """job_by_name of a registered task's name takes that task's queue, priority and attempts."""

    @app.task(name="images.resize", queue="images", priority=2, max_attempts=5)
    async def resize(image_id: int) -> None: ...

    (job,) = await app.defer_many([app.job_by_name("images.resize", {"image_id": 1})])

    row = job_row(db, job.id)
    assert (row["task"], row["queue"], row["priority"], row["max_attempts"]) == ("images.resize", "images", 2, 5)


def test_job_by_name_for_a_registered_task_checks_its_signature(app: App) -> None:
    """job_by_name of a registered task refuses arguments that do not fit its function with TypeError."""

    @app.task(name="images.resize")
    async def resize(image_id: int) -> None: ...

    with pytest.raises(TypeError) as info:
        app.job_by_name("images.resize", {"image_id": 1, "image": 1})
    assert "'image'" in str(info.value)
    with pytest.raises(TypeError) as info:
        app.job_by_name("images.resize", {})
    assert "'image_id'" in str(info.value)


@pytest.mark.parametrize("args", [[1, 2], "x=1", ("image_id", 1)])
def test_job_by_name_requires_a_dict_of_arguments(app: App, args: Any) -> None:
    """job_by_name with args that are not a dict raises TypeError."""
    with pytest.raises(TypeError) as info:
        app.job_by_name("billing.send_invoice", args)
    assert "dict" in str(info.value)


def test_job_by_name_refuses_non_json_arguments(app: App) -> None:
    """job_by_name of an unregistered task still refuses arguments that are not JSON, naming the path."""
    with pytest.raises(TypeError) as info:
        app.job_by_name("billing.send_invoice", {"ids": {1, 2}})
    assert "ids" in str(info.value)


@pytest.mark.parametrize("name", ["", "has space", "tab\tname", "x" * 256, "nul\x00", "trailing\n"])
def test_job_by_name_refuses_invalid_task_names(app: App, name: str) -> None:
    """job_by_name with an empty, spaced, control-character or over-long name raises ConfigurationError."""
    with pytest.raises(ConfigurationError) as info:
        app.job_by_name(name)
    assert repr(name) in str(info.value)
