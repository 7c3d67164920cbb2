"""Pure parts of the poison-outcome handling: the result size check, the failure a refused outcome
becomes, how the completer bounds a batch, and which PostgreSQL errors are transient."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import Any, cast

import anyio
import attrs
import psycopg
import psycopg.errors
import pytest

from nursery_worker import ConstantBackoff
from nursery_worker._completer import Completer, refused_transition
from nursery_worker._driver import Driver
from nursery_worker._driver.postgres._connection import _transient
from nursery_worker._errors import DatabaseError
from nursery_worker._json import DEFAULT_MAX_RESULT_BYTES, POSTGRES_JSONB_MAX_BYTES, check_result_size
from nursery_worker._models import Completion
from nursery_worker._state import JobState, Transition

MiB = 1024 * 1024


def _completion(result: str | None = None, **kwargs: Any) -> Completion:
    return Completion(
        job_id=1,
        attempt=kwargs.pop("attempt", 1),
        attempted_at=dt.datetime(2030, 1, 1, tzinfo=dt.UTC),
        transition=Transition(state=JobState.COMPLETED),
        result_json=result,
        **kwargs,
    )


def test_the_default_result_limit_leaves_room_under_postgres_jsonb_limit() -> None:
    """The default max_result_bytes is 64 MiB, a quarter of what PostgreSQL stores in one jsonb value."""
    assert DEFAULT_MAX_RESULT_BYTES == 64 * MiB  # noqa: SIM300
    assert DEFAULT_MAX_RESULT_BYTES * 4 == POSTGRES_JSONB_MAX_BYTES + 1


def test_a_result_at_the_limit_passes_the_size_check() -> None:
    """A result of exactly the limit's bytes (multi-byte characters counted in UTF-8) passes."""
    check_result_size("é" * 50, 100)
    check_result_size("x" * 100, 100)


def test_a_result_over_the_limit_is_refused_with_its_size_the_limit_and_the_fix() -> None:
    """A result over the limit raises ValueError naming the task, its size in bytes, the limit and the fix."""
    with pytest.raises(ValueError, match="max_result_bytes") as caught:
        check_result_size("é" * 51, 100, task="report")
    message = str(caught.value)
    assert "task 'report' returned a result of 102 bytes of JSON, above the limit of 100" in message
    assert "return a reference" in message


def test_a_refused_outcome_becomes_a_failure_decided_by_the_jobs_policy() -> None:
    """A refused outcome with attempts left becomes retryable after the policy's delay, with an OutcomeRefused error."""
    transition = refused_transition(
        _completion('"x"', max_attempts=3, backoff=ConstantBackoff(seconds=30)), "database error: refused"
    )
    assert (transition.state, transition.delay, transition.give_back_attempt) == (JobState.RETRYABLE, 30.0, False)
    assert transition.error is not None and transition.error.type == "OutcomeRefused"
    assert transition.error.message == (
        "the database refused to record this attempt's outcome (completed, with a result of 3 bytes of JSON): "
        "database error: refused"
    )


def test_a_refused_outcome_of_the_last_attempt_is_discarded() -> None:
    """A refused outcome of the job's last attempt discards the job."""
    transition = refused_transition(_completion(None, attempt=3, max_attempts=3), "refused")
    assert transition.state is JobState.DISCARDED


def test_a_large_refused_result_names_its_size_the_limit_and_the_fix() -> None:
    """The error of a refused result of a MiB or more gives its size, PostgreSQL's limit and how to return less."""
    transition = refused_transition(_completion('"' + "x" * MiB + '"', max_attempts=1), "too long")
    assert transition.error is not None
    message = transition.error.message
    assert f"{MiB + 2:,} bytes of JSON" in message and f"{POSTGRES_JSONB_MAX_BYTES:,}" in message
    assert "store a large result elsewhere" in message and "max_result_bytes" in message


def test_a_refused_hand_back_is_retried_once_more_without_waiting() -> None:
    """A refused completion that carries no retry budget (a hand-back) is retryable at once."""
    transition = refused_transition(_completion(None), "refused")
    assert (transition.state, transition.delay) == (JobState.RETRYABLE, 0.0)


class _RecordingDriver:
    """Just enough of a driver for the completer: records each batch it is asked to write."""

    def __init__(self) -> None:
        self.batches: list[list[int]] = []

    async def finish_jobs(self, *, worker_id: str, completions: Sequence[Completion], error_cap: int) -> list[int]:
        self.batches.append([c.job_id for c in completions])
        return list(range(len(completions)))


@pytest.mark.anyio
async def test_a_batch_holds_at_most_its_result_budget_and_a_larger_result_goes_alone() -> None:
    """Completions queued together are split so that no batch's results exceed the budget, except one result alone."""
    driver = _RecordingDriver()
    completer = Completer(cast(Driver, driver), "w", batch_max_result_chars=100, final_timeout=10.0)
    sizes = [10, 50, 30, 200, 10, 10, 95]
    for i, size in enumerate(sizes):
        completer.submit(attrs.evolve(_completion("x" * size), job_id=i))
    async with anyio.create_task_group() as tg:
        await tg.start(completer.serve)
        completer.close()
    assert driver.batches == [[0, 1, 2], [3], [4, 5], [6]]
    assert not completer.pending


class _ScriptedDriver:
    """A driver whose finish_jobs answers each call from a script: the positions applied, or an error."""

    def __init__(self, script: list[list[int] | Exception]) -> None:
        self.script = script
        self.batches: list[list[int]] = []

    async def finish_jobs(self, *, worker_id: str, completions: Sequence[Completion], error_cap: int) -> list[int]:
        self.batches.append([c.job_id for c in completions])
        step = self.script.pop(0)
        if isinstance(step, Exception):
            raise step
        return step


def _refused() -> DatabaseError:
    error = DatabaseError("refused")
    error.transient = False
    return error


@pytest.mark.anyio
async def test_each_completion_is_reported_once_as_applied_or_ignored_even_across_a_split_and_a_retry() -> None:
    """Each part of a split batch reports what it applied or ignored; a transient error retries only the rest."""
    driver = _ScriptedDriver([_refused(), [0], DatabaseError("connection lost"), [0, 1]])
    reported: list[tuple[int, bool]] = []
    completer = Completer(
        cast(Driver, driver),
        "w",
        final_timeout=10.0,
        on_written=lambda written: reported.extend((c.job_id, t is not None) for c, t in written),
    )
    for i in range(4):
        completer.submit(attrs.evolve(_completion(None), job_id=i))
    async with anyio.create_task_group() as tg:
        await tg.start(completer.serve)
        completer.close()
    assert driver.batches == [[0, 1, 2, 3], [0, 1], [2, 3], [2, 3]]
    assert sorted(reported) == [(0, True), (1, False), (2, True), (3, True)]
    assert not completer.pending


@pytest.mark.parametrize(
    ("error", "transient"),
    [
        (psycopg.errors.ProgramLimitExceeded("string too long to represent as jsonb string"), False),
        (psycopg.errors.DatetimeFieldOverflow("timestamp out of range"), False),
        (psycopg.errors.CheckViolation("check"), False),
        (psycopg.errors.RaiseException("a trigger said no"), False),
        (psycopg.DataError("PostgreSQL text fields cannot contain NUL (0x00) bytes"), False),
        (psycopg.errors.InsufficientPrivilege("permission denied"), True),
        (psycopg.OperationalError("server closed the connection unexpectedly"), True),
        (psycopg.errors.AdminShutdown("terminating connection due to administrator command"), True),
        (psycopg.errors.DiskFull("could not extend file"), True),
        (psycopg.errors.DeadlockDetected("deadlock"), True),
        (psycopg.errors.ReadOnlySqlTransaction("cannot execute UPDATE in a read-only transaction"), True),
    ],
    ids=lambda v: type(v).__name__ if isinstance(v, Exception) else str(v),
)
def test_only_errors_about_the_statement_itself_are_not_transient(error: Exception, transient: bool) -> None:
    """A statement refused for what it holds (data, a limit, a constraint) is not transient; a connection,
    an outage, a lock, a full disk or a read-only standby is."""
    assert _transient(error) is transient
