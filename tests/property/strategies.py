"""Shared Hypothesis strategies for the pure state machine and the retry policies."""

from __future__ import annotations

from collections.abc import Callable

from hypothesis import strategies as st

from nursery_worker._state import (
    Cancelled,
    ErrorInfo,
    Failed,
    JobRecord,
    JobState,
    Outcome,
    Released,
    Snoozed,
    Succeeded,
)

#: Small attempt budgets make the "last attempt" paths common; large ones check nothing new.
max_attempts = st.integers(min_value=1, max_value=4)

error_infos = st.builds(
    ErrorInfo,
    type=st.sampled_from(["ValueError", "TimeoutError", "TaskNotFound", "WorkerLost"]),
    message=st.text(max_size=20),
    traceback=st.text(max_size=20),
)

failures = st.builds(Failed, error=error_infos, permanent=st.booleans())
transient_failures = st.builds(Failed, error=error_infos, permanent=st.just(False))
permanent_failures = st.builds(Failed, error=error_infos, permanent=st.just(True))
releases = st.builds(Released, reason=st.sampled_from(["worker shutdown", "worker cancelled"]))
#: Snooze(0) hands the job straight back; a positive snooze makes it scheduled for later.
snoozes = st.builds(Snoozed, delay=st.sampled_from([0.0, 0.5, 30.0]))
cancels = st.builds(Cancelled, reason=st.just("cancelled by request"), abandoned=st.booleans())
#: Retry(after=...): a transient failure whose wait the task chose.
chosen_retries = st.builds(
    Failed, error=error_infos, retry_after=st.floats(min_value=0, max_value=1e4, allow_nan=False)
)

#: Every outcome an attempt can have: Succeeded, Failed (permanent or not, with a chosen wait or
#: not), Released, Snoozed, Cancelled.
outcomes: st.SearchStrategy[Outcome] = st.one_of(
    st.builds(Succeeded), failures, chosen_retries, releases, snoozes, cancels
)

#: The same outcomes weighted for the state machine: failures with attempts left lead to the most
#: later steps (retry, promote, re-fetch), so they come twice as often as each other outcome.
machine_outcomes: st.SearchStrategy[Outcome] = st.one_of(
    st.builds(Succeeded), transient_failures, transient_failures, permanent_failures, releases, snoozes, cancels
)

#: Delays a user's retry policy may return, including negative ones (decide() clamps them to 0).
raw_delays = st.floats(min_value=-1e6, max_value=1e6, allow_nan=False, allow_infinity=False)

#: Delays the state machine uses: 0 leaves a retryable job due at once, >0 makes it wait for time.
machine_delays = st.sampled_from([0.0, 0.5, 30.0])


@st.composite
def backoffs(draw: st.DrawFn) -> Callable[[int], float]:
    """A deterministic ``attempt -> seconds`` policy built from a drawn table of raw delays."""
    table = draw(st.lists(raw_delays, min_size=1, max_size=5))
    return lambda attempt: table[attempt % len(table)]


@st.composite
def attempt_and_budget(draw: st.DrawFn, *, last: bool | None = None) -> tuple[int, int]:
    """An ``(attempt, max_attempts)`` pair of an executing job; *last* picks the final attempt or not."""
    budget = draw(st.integers(min_value=1, max_value=50))
    if last is True:
        return budget, budget
    if last is False:
        if budget == 1:
            budget = 2
        return draw(st.integers(min_value=1, max_value=budget - 1)), budget
    return draw(st.integers(min_value=1, max_value=budget)), budget


@st.composite
def executing_records(draw: st.DrawFn, *, worker_id: str = "w1") -> JobRecord:
    """A job row that is executing attempt N of at most max_attempts on *worker_id*."""
    attempt, budget = draw(attempt_and_budget())
    return JobRecord(
        state=JobState.EXECUTING,
        attempt=attempt,
        max_attempts=budget,
        worker_id=worker_id,
        lease=draw(st.integers(min_value=1, max_value=100)),
        errors=draw(st.integers(min_value=0, max_value=attempt - 1)),
    )


#: Parameters of ExponentialBackoff: the range users configure, plus factors whose powers overflow a float.
backoff_bases = st.floats(min_value=1e-3, max_value=1e4, allow_nan=False)
backoff_factors = st.one_of(
    st.floats(min_value=1e-2, max_value=100.0, allow_nan=False), st.floats(min_value=100.0, max_value=1e300)
)
backoff_caps = st.floats(min_value=1e-3, max_value=1e7, allow_nan=False)
jitters = st.floats(min_value=0.0, max_value=1.0, allow_nan=False)
attempts = st.integers(min_value=0, max_value=200)
