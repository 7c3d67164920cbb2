"""Property tests of the pure model of the durable writes (``_state.py``): no database, no event loop.

``step_guarded``, ``wait_guarded``, ``emit_guarded`` and ``progress_guarded`` are the Python twins of
the driver's durable statements; ``test_durable_model.py`` holds both engines to them. These tests
pin what the twins promise on their own.
"""

from __future__ import annotations

from typing import Any

import attrs
from hypothesis import given
from hypothesis import strategies as st

from nursery_worker._state import (
    ErrorInfo,
    JobRecord,
    JobState,
    StepRecord,
    StepState,
    cancel_guarded,
    emit_guarded,
    progress_guarded,
    promote_guarded,
    step_guarded,
    wait_guarded,
)

from . import strategies as nst

json_values = st.one_of(st.none(), st.integers(), st.text(max_size=5), st.lists(st.booleans(), max_size=2))
names = st.sampled_from(["a", "b"])
keys = st.none() | st.sampled_from(["k1", "k2"])
ends = st.sampled_from([None, True, False])
step_states = st.sampled_from(list(StepState))
errors = st.none() | st.builds(ErrorInfo, type=st.just("ValueError"), message=st.text(max_size=5))


@st.composite
def step_records(draw: st.DrawFn) -> StepRecord:
    """A stored step in any state."""
    state = draw(step_states)
    return StepRecord(
        state=state,
        position=draw(st.integers(min_value=0, max_value=3)),
        attempt=draw(st.integers(min_value=1, max_value=3)),
        runs=draw(st.integers(min_value=0, max_value=3)),
        result=draw(json_values) if state is StepState.COMPLETED else None,
        event=draw(keys),
        over=draw(ends) if state is not StepState.FAILED else None,
    )


@st.composite
def running_jobs(draw: st.DrawFn) -> JobRecord:
    """An executing job on w1, with some steps stored and maybe a cancel request."""
    job = draw(nst.executing_records(worker_id="w1"))
    steps = draw(st.dictionaries(names, step_records(), max_size=2))
    return attrs.evolve(job, steps=steps, cancel_requested=draw(st.booleans()))


def _guard(job: JobRecord) -> dict[str, Any]:
    return {"worker_id": "w1", "attempt": job.attempt, "lease": job.lease}


#: A claim that is not the job's attempt any more: another worker, attempt or lease.
stale_shifts = st.sampled_from([("w2", 0, 0), ("w1", -1, 0), ("w1", 0, -1), ("w1", 0, 1)])


@given(job=running_jobs(), shift=stale_shifts, name=names, event=keys, over=ends, result=json_values)
def test_a_stale_claim_writes_nothing(
    job: JobRecord, shift: tuple[str, int, int], name: str, event: str | None, over: bool | None, result: Any
) -> None:
    """A step, a wait or a progress write by a claim that no longer holds the job changes nothing."""
    worker, attempt, lease = shift
    guard: dict[str, Any] = {"worker_id": worker, "attempt": job.attempt + attempt, "lease": job.lease + lease}
    assert step_guarded(job, **guard, name=name, position=0, result=result) == (job, False)
    assert wait_guarded(job, **guard, name=name, position=0, event=event, over=over, events={}) == (job, "lost", None)
    assert progress_guarded(job, **guard, done=1.0, total=None, note=None) == (job, False)


@given(job=running_jobs(), name=names, result=json_values, error=errors)
def test_only_a_new_or_failed_step_is_written(job: JobRecord, name: str, result: Any, error: ErrorInfo | None) -> None:
    """A step's run is stored if the step is new or failed; a completed step (or a wait's row) never changes."""
    old = job.steps.get(name)
    after, written = step_guarded(job, **_guard(job), name=name, position=7, result=result, error=error)
    if old is not None and old.state is not StepState.FAILED:
        assert (after, written) == (job, False)
        return
    step = after.steps[name]
    assert written and step.state is (StepState.FAILED if error else StepState.COMPLETED)
    assert step.runs == (1 if old is None else old.runs + 1)
    assert step.position == (7 if old is None else old.position)
    assert attrs.evolve(after, steps=job.steps) == job


@given(job=running_jobs(), name=names, event=keys, over=ends, payload=json_values)
def test_a_wait_ends_at_once_or_suspends_the_job(
    job: JobRecord, name: str, event: str | None, over: bool | None, payload: Any
) -> None:
    """A wait is refused on a cancel request, ends when its event was emitted or its end passed, else suspends."""
    events = {} if event is None else {event: payload}
    after, outcome, got = wait_guarded(job, **_guard(job), name=name, position=0, event=event, over=over, events=events)
    old = job.steps.get(name)
    if job.cancel_requested:
        assert (after, outcome) == (job, "cancel_requested")
    elif old is not None and old.state in (StepState.COMPLETED, StepState.TIMED_OUT):
        assert after == job and outcome in ("done", "received", "timeout")
    elif event is not None:
        assert (outcome, got, after.steps[name].state) == ("received", payload, StepState.COMPLETED)
        assert after.state is JobState.EXECUTING
    elif (old.over if old is not None and old.state is StepState.WAITING else over) is True:
        assert (outcome, after.steps[name].state, after.state) == ("done", StepState.COMPLETED, JobState.EXECUTING)
    else:
        assert outcome == "suspended"
        assert (after.state, after.attempt, after.worker_id, after.due) == (
            JobState.SCHEDULED,
            job.attempt - 1,
            None,
            False,
        )
        assert (after.wait_step, after.wait_event, after.steps[name].state) == (name, None, StepState.WAITING)


@given(job=running_jobs(), key=st.sampled_from(["k1", "k2"]), other=st.sampled_from(["k1", "k2"]), end=ends)
def test_an_emit_wakes_the_jobs_suspended_on_its_key_once(
    job: JobRecord, key: str, other: str, end: bool | None
) -> None:
    """The first emit of a key makes its suspended waiters available; a second emit changes nothing."""
    job = attrs.evolve(job, cancel_requested=False, steps={})
    waiter, outcome, _ = wait_guarded(job, **_guard(job), name="w", position=0, event=other, over=False, events={})
    assert outcome == "suspended"
    events, jobs, won = emit_guarded({}, {1: waiter}, key=key, payload=end)
    assert won and events == {key: end}
    if key == other:
        assert (jobs[1].state, jobs[1].due, jobs[1].wait_event, jobs[1].wait_step) == (
            JobState.AVAILABLE,
            True,
            None,
            None,
        )
    else:
        assert jobs[1] == waiter
    assert emit_guarded(events, jobs, key=key, payload="late") == (events, jobs, False)


@given(job=running_jobs(), event=keys)
def test_a_suspended_job_that_leaves_scheduled_keeps_no_wait(job: JobRecord, event: str | None) -> None:
    """A suspended job that is promoted or cancelled no longer waits for its step or its event."""
    job = attrs.evolve(job, cancel_requested=False, steps={})
    waiter, _, _ = wait_guarded(job, **_guard(job), name="w", position=0, event=event, over=False, events={})
    for after in (promote_guarded(attrs.evolve(waiter, due=True)), cancel_guarded(waiter)):
        assert after.state in (JobState.AVAILABLE, JobState.CANCELLED)
        assert (after.wait_step, after.wait_event) == (None, None)
