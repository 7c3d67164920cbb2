"""Property tests of the pure job state machine (``_state.py``) and of ``ExponentialBackoff``.

No database and no event loop: the ``*_guarded`` functions are the Python twins of the driver's SQL,
so what holds here is what the guarded statements promise.

The stateful test models the worker protocol as the engine implements it:

* a *claim* is one successful fetch, as the worker remembers it: (job, worker, attempt, lease), where
  the lease is the row's ``lease`` (``attempted_at`` in SQL) that the fetch stamped; a serial number
  that only the model sees names the claim;
* a worker that is ``running`` fetches and finishes; a ``stopping`` one (graceful shutdown) still
  heartbeats and finishes what it holds but never fetches again, and leaves once it holds nothing;
* ``Released`` hands an attempt back. The engine releases at shutdown and for claims whose fetch
  result was lost, and in the second case the worker goes on fetching; the model lets any worker go
  on after a release, so the same worker can claim the same job again *with the same attempt
  number*, the case only the lease tells apart;
* a worker may "die" (its heartbeat lapses: rescue sees it as gone) while its tasks go on running and
  later try to write, and may come back (the heartbeat re-registers it) in the mode it died in;
* any claim that is no longer the row's current one may try to write again at any time (a completer
  retrying a batch whose first attempt did commit, a partitioned worker, a job that outlived its
  rescue).
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable

import attrs
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from nursery_worker._errors import ConfigurationError
from nursery_worker._retry import ExponentialBackoff
from nursery_worker._state import (
    TERMINAL_STATES,
    TRANSITIONS,
    Cancelled,
    ErrorInfo,
    Failed,
    JobRecord,
    JobState,
    Outcome,
    Released,
    Snoozed,
    Succeeded,
    Transition,
    cancel_guarded,
    decide,
    fetch_guarded,
    finish_guarded,
    promote_guarded,
    rescue_guarded,
    retry_guarded,
)

from . import strategies as nst

MAX_JOBS = 16  # jobs ever enqueued in one run
MAX_OPEN_JOBS = 4  # jobs not yet terminal at any one time
MAX_WORKERS = 3  # workers with a heartbeat at any one time
MAX_WORKER_IDS = 20  # worker processes ever started, including the 2-3 of the start
WAITING = (JobState.SCHEDULED, JobState.RETRYABLE)
REQUEUE = (JobState.AVAILABLE, JobState.RETRYABLE, JobState.SCHEDULED)


@attrs.frozen
class Claim:
    """One successful fetch, as the fetching worker remembers it."""

    serial: int
    job: int
    worker: str
    attempt: int
    lease: int


def _constant(seconds: float) -> Callable[[int], float]:
    return lambda attempt: seconds


def _drive(job: JobRecord, alive: frozenset[str], outcome: Outcome) -> JobRecord:
    """Run *job* forward with the guarded functions only, every attempt ending in *outcome*.

    Time passes between steps (everything waiting becomes due), the promoter and rescuer run, and a
    fresh worker that never dies picks the job up. Returns the record once terminal, or after a
    bounded number of steps.
    """
    for _ in range(4 * job.max_attempts + 8):
        if job.state.is_terminal:
            break
        if job.state is JobState.EXECUTING:
            assert job.worker_id is not None
            if job.worker_id in alive:
                transition = decide(
                    outcome, attempt=job.attempt, max_attempts=job.max_attempts, backoff=_constant(30.0)
                )
                job = finish_guarded(
                    job, worker_id=job.worker_id, attempt=job.attempt, lease=job.lease, transition=transition
                )
            else:
                job = rescue_guarded(job, alive)
        elif job.state in WAITING:
            job = promote_guarded(attrs.evolve(job, due=True))
        elif job.state is JobState.AVAILABLE:
            job = fetch_guarded(job, "probe")
            alive = alive | {"probe"}
    return job


class JobLifecycle(RuleBasedStateMachine):
    """A few jobs and 2-3 workers driven through every guarded write, in any order."""

    def __init__(self) -> None:
        super().__init__()
        self.jobs: dict[int, JobRecord] = {}
        self.before: dict[int, JobRecord] = {}
        self.enqueued = 0
        self.mode: dict[str, str] = {}  # worker -> running | stopping | dead | gone
        self.died_as: dict[str, str] = {}  # a dead worker -> the mode it died in
        self.held: dict[str, dict[int, Claim]] = {}  # worker -> the claims it believes it runs
        self.claims: list[Claim] = []  # every claim ever made
        self.current: dict[int, Claim] = {}  # job -> the claim the row belongs to now
        self.given_back: set[int] = set()  # jobs whose attempt was given back in this step
        self.error_delta: dict[int, int] = {}  # job -> errors a write of this step appended
        self.cancel_asked: set[int] = set()  # jobs app.cancel was called on in this step
        self.retried: set[int] = set()  # jobs app.retry put back in this step

    # --- helpers ----------------------------------------------------------------------------------

    def _workers(self, *modes: str) -> list[str]:
        return sorted(w for w, m in self.mode.items() if m in modes)

    def _alive(self) -> frozenset[str]:
        """Workers with a fresh heartbeat: the rescuer leaves their jobs alone."""
        return frozenset(self._workers("running", "stopping"))

    def _start_worker(self) -> None:
        worker = f"w{len(self.mode) + 1}"
        self.mode[worker] = "running"
        self.held[worker] = {}

    def _leave_if_done(self, worker: str) -> None:
        """A stopping worker that holds nothing deregisters and is gone for good."""
        if self.mode[worker] == "stopping" and not self.held[worker]:
            self.mode[worker] = "gone"

    def _write(self, claim: Claim, outcome: Outcome, delay: float) -> tuple[JobRecord, JobRecord, Transition]:
        """The finish statement for *claim*, with the outcome decided as the worker decides it."""
        old = self.jobs[claim.job]
        transition = decide(outcome, attempt=claim.attempt, max_attempts=old.max_attempts, backoff=_constant(delay))
        new = finish_guarded(
            old, worker_id=claim.worker, attempt=claim.attempt, lease=claim.lease, transition=transition
        )
        self.jobs[claim.job] = new
        if new != old:
            self.current.pop(claim.job, None)
            cancelled_instead = old.cancel_requested and transition.state in REQUEUE
            self.error_delta[claim.job] = int(transition.error is not None or cancelled_instead)
            if transition.give_back_attempt and not cancelled_instead:
                self.given_back.add(claim.job)
        return old, new, transition

    def _claim(self, worker: str, job: int) -> None:
        """The fetch statement's guarded write of one row for *worker*."""
        old = self.jobs[job]
        new = fetch_guarded(old, worker)
        self.jobs[job] = new
        if old.state is not JobState.AVAILABLE or not old.due:
            assert new == old
            return
        assert new == attrs.evolve(
            old, state=JobState.EXECUTING, attempt=old.attempt + 1, worker_id=worker, lease=new.lease
        )
        # A fresh lease at every claim (clock_timestamp() in SQL), never one of this job's before.
        assert new.lease not in {c.lease for c in self.claims if c.job == job}
        claim = Claim(serial=len(self.claims), job=job, worker=worker, attempt=new.attempt, lease=new.lease)
        self.claims.append(claim)
        self.current[job] = claim
        self.held[worker][job] = claim

    # --- rules ------------------------------------------------------------------------------------

    @initialize(
        workers=st.integers(min_value=2, max_value=3),
        jobs=st.lists(st.tuples(nst.max_attempts, st.booleans()), min_size=1, max_size=MAX_OPEN_JOBS),
    )
    def start(self, workers: int, jobs: list[tuple[int, bool]]) -> None:
        """Start 2-3 workers and enqueue a first few jobs."""
        for _ in range(workers):
            self._start_worker()
        for max_attempts, later in jobs:
            self.enqueue(max_attempts, later)

    @precondition(
        lambda self: (
            self.enqueued < MAX_JOBS and sum(not r.state.is_terminal for r in self.jobs.values()) < MAX_OPEN_JOBS
        )
    )
    @rule(max_attempts=nst.max_attempts, later=st.booleans())
    def enqueue(self, max_attempts: int, later: bool) -> None:
        """Insert a job: available now, or scheduled for later (not yet due)."""
        self.enqueued += 1
        state = JobState.SCHEDULED if later else JobState.AVAILABLE
        self.jobs[self.enqueued] = JobRecord(state=state, max_attempts=max_attempts, due=not later)

    @rule(data=st.data(), everything=st.booleans())
    def time_passes(self, data: st.DataObject, everything: bool) -> None:
        """The clock moves on: all waiting jobs, or one of them, become due (always possible, maybe a no-op)."""
        waiting = sorted(j for j, r in self.jobs.items() if r.state in WAITING and not r.due)
        if not waiting:
            return
        chosen = waiting if everything else [data.draw(st.sampled_from(waiting), label="due job")]
        for job in chosen:
            self.jobs[job] = attrs.evolve(self.jobs[job], due=True)

    @precondition(lambda self: any(r.state in WAITING and r.due for r in self.jobs.values()))
    @rule()
    def promote(self) -> None:
        """The promoter makes every due scheduled or retryable job available, and nothing else."""
        for job, old in self.jobs.items():
            new = promote_guarded(old)
            self.jobs[job] = new
            if old.state in WAITING and old.due:
                assert new == attrs.evolve(old, state=JobState.AVAILABLE)
            else:
                assert new == old

    @precondition(lambda self: "running" in self.mode.values())
    @rule(data=st.data(), limit=st.integers(min_value=1, max_value=3), stray=st.booleans())
    def fetch(self, data: st.DataObject, limit: int, stray: bool) -> None:
        """A running worker claims up to *limit* available jobs; the guard refuses every other job."""
        worker = data.draw(st.sampled_from(self._workers("running")), label="worker")
        wanted = sorted(j for j, r in self.jobs.items() if r.state is JobState.AVAILABLE)[:limit]
        if stray:  # a job the statement's WHERE did not pick: the guard must refuse it unless available
            wanted.append(data.draw(st.sampled_from(sorted(self.jobs)), label="stray job"))
        for job in wanted:
            self._claim(worker, job)

    @precondition(lambda self: any(self.held[w] for w, m in self.mode.items() if m != "gone"))
    @rule(
        data=st.data(),
        outcome=nst.machine_outcomes,
        delay=nst.machine_delays,
        reclaim=st.booleans(),
        repeat=st.booleans(),
    )
    def finish(self, data: st.DataObject, outcome: Outcome, delay: float, reclaim: bool, repeat: bool) -> None:
        """The worker running an attempt writes its decided outcome (a dead worker's task may too)."""
        holders = sorted(w for w, m in self.mode.items() if m != "gone" and self.held[w])
        worker = data.draw(st.sampled_from(holders), label="finishing worker")
        held = sorted(self.held[worker].values(), key=lambda c: c.serial)
        claim = data.draw(st.sampled_from(held), label="claim")
        del self.held[worker][claim.job]
        was_current = self.current.get(claim.job) == claim
        old, new, transition = self._write(claim, outcome, delay)
        self._leave_if_done(worker)
        if not was_current:
            assert new == old, f"the write of {claim}, no longer the row's claim, changed {old} into {new}"
            return
        # A job whose cancel was requested never runs again: where it would, it is cancelled.
        cancelled_instead = old.cancel_requested and transition.state in REQUEUE
        assert new.state is (JobState.CANCELLED if cancelled_instead else transition.state)
        assert new.worker_id is None
        # A cancel that ends the attempt counts the attempt and records why.
        assert new.attempt == old.attempt - (transition.give_back_attempt and not cancelled_instead)
        assert new.errors == old.errors + (transition.error is not None or cancelled_instead)
        waits = new.state in WAITING and (transition.delay or 0) > 0
        assert new.due == (not waits)
        if reclaim and new.state is JobState.AVAILABLE and self.mode[worker] == "running":
            # Its next poll claims the job straight back: same worker, and after a give-back the
            # same attempt number; only the lease tells this claim from the one just released.
            self._claim(worker, claim.job)
        if repeat:
            # The completer retries the batch (the first try committed but its answer was lost).
            before, after, _ = self._write(claim, outcome, delay)
            assert after == before, f"the repeated write of {claim} changed {before} into {after}"

    @precondition(lambda self: any(self.current.get(c.job) != c for c in self.claims))
    @rule(data=st.data(), outcome=nst.machine_outcomes, delay=nst.machine_delays, pick=st.sampled_from([0, 0, 1, 2]))
    def late_finish(self, data: st.DataObject, outcome: Outcome, delay: float, pick: int) -> None:
        """A stale claim (worker, attempt, lease) from an earlier fetch writes again; the row must not change."""
        stale = [c for c in self.claims if self.current.get(c.job) != c]
        # The dangerous ones first: an old claim of a job that is executing again right now, and among
        # those one with the same worker and attempt as the current claim (after a give-back).
        rerun = [c for c in stale if c.job in self.current]
        twins = [c for c in rerun if (c.worker, c.attempt) == (self.current[c.job].worker, self.current[c.job].attempt)]
        pool = next(p for p in (twins, rerun, stale)[pick:] if p)
        claim = data.draw(st.sampled_from(pool), label="stale claim")
        old, new, _ = self._write(claim, outcome, delay)
        assert new == old, f"stale write of {claim} changed {old} into {new}"

    @precondition(lambda self: any(m in ("running", "stopping") for m in self.mode.values()))
    @rule(data=st.data())
    def worker_dies(self, data: st.DataObject) -> None:
        """A worker stops heartbeating; what it runs goes on and may still try to write."""
        worker = data.draw(st.sampled_from(self._workers("running", "stopping")), label="dying worker")
        self.died_as[worker] = self.mode[worker]
        self.mode[worker] = "dead"

    @precondition(
        lambda self: (
            len(self._alive()) < MAX_WORKERS and ("dead" in self.mode.values() or len(self.mode) < MAX_WORKER_IDS)
        )
    )
    @rule(data=st.data(), new=st.booleans())
    def worker_joins(self, data: st.DataObject, new: bool) -> None:
        """A new worker process starts (an id never used before), or a dead one's heartbeat gets through again."""
        dead = self._workers("dead")
        if (new or not dead) and len(self.mode) < MAX_WORKER_IDS:
            self._start_worker()
            return
        worker = data.draw(st.sampled_from(dead), label="returning worker")
        # The heartbeat re-registers it, in the mode it died in.
        self.mode[worker] = self.died_as.pop(worker)
        self._leave_if_done(worker)

    @precondition(lambda self: "running" in self.mode.values())
    @rule(data=st.data())
    def stop_worker(self, data: st.DataObject) -> None:
        """A running worker begins a graceful shutdown: no more fetches, it finishes what it holds."""
        worker = data.draw(st.sampled_from(self._workers("running")), label="stopping worker")
        self.mode[worker] = "stopping"
        self._leave_if_done(worker)

    @precondition(lambda self: self._alive() and any(r.state is JobState.EXECUTING for r in self.jobs.values()))
    @rule()
    def rescue(self) -> None:
        """A live worker's rescuer moves every job executing on a worker without a heartbeat out of executing."""
        alive = self._alive()
        for job, old in self.jobs.items():
            new = rescue_guarded(old, alive)
            self.jobs[job] = new
            if old.state is not JobState.EXECUTING or old.worker_id in alive:
                assert new == old
                continue
            if old.cancel_requested:
                expected = JobState.CANCELLED
            else:
                expected = JobState.DISCARDED if old.attempt >= old.max_attempts else JobState.RETRYABLE
            assert new == attrs.evolve(old, state=expected, worker_id=None, due=True, errors=old.errors + 1)
            self.current.pop(job, None)
            self.error_delta[job] = 1

    @precondition(lambda self: bool(self.jobs))
    @rule(data=st.data())
    def cancel(self, data: st.DataObject) -> None:
        """app.cancel: a waiting job is cancelled now, an executing one is asked to stop, a finished one stays."""
        job = data.draw(st.sampled_from(sorted(self.jobs)), label="cancelled job")
        old = self.jobs[job]
        new = cancel_guarded(old)
        self.jobs[job] = new
        self.cancel_asked.add(job)
        if old.state in (*WAITING, JobState.AVAILABLE):
            assert new == attrs.evolve(old, state=JobState.CANCELLED, errors=old.errors + 1)
            self.error_delta[job] = 1
        elif old.state is JobState.EXECUTING:
            # The row stays the claim's: its worker cancels the scope and writes the outcome.
            assert new == attrs.evolve(old, cancel_requested=True)
        else:
            assert new == old

    @precondition(
        lambda self: (
            any(r.state in (JobState.DISCARDED, JobState.CANCELLED) for r in self.jobs.values())
            and sum(not r.state.is_terminal for r in self.jobs.values()) < MAX_OPEN_JOBS
        )
    )
    @rule(data=st.data())
    def retry_dead(self, data: st.DataObject) -> None:
        """app.retry: a discarded or cancelled job is available again, with one attempt more if it had none left."""
        dead = sorted(j for j, r in self.jobs.items() if r.state in (JobState.DISCARDED, JobState.CANCELLED))
        job = data.draw(st.sampled_from(dead), label="retried job")
        old = self.jobs[job]
        new = retry_guarded(old)
        self.jobs[job] = new
        self.retried.add(job)
        assert new == attrs.evolve(
            old,
            state=JobState.AVAILABLE,
            max_attempts=max(old.max_attempts, old.attempt + 1),
            cancel_requested=False,
            due=True,
        )
        assert retry_guarded(new) == new, "retrying twice changes nothing more"

    # --- invariants -------------------------------------------------------------------------------

    @invariant()
    def check(self) -> None:
        """Everything that must hold after any step (each helper below is one invariant)."""
        self._no_job_is_lost()
        for job, new in self.jobs.items():
            self._row_is_consistent(job, new)
            old = self.before.get(job)
            if old is None:
                self._starts_right(new)
            else:
                self._moves_right(job, old, new)
            self._can_still_finish(new)
        self.before = dict(self.jobs)
        self.given_back.clear()
        self.error_delta.clear()
        self.cancel_asked.clear()
        self.retried.clear()

    def _no_job_is_lost(self) -> None:
        assert sorted(self.jobs) == list(range(1, self.enqueued + 1))
        assert all(isinstance(r.state, JobState) for r in self.jobs.values())

    def _starts_right(self, new: JobRecord) -> None:
        assert new.state in (JobState.AVAILABLE, JobState.SCHEDULED)
        assert (new.attempt, new.errors, new.worker_id) == (0, 0, None)

    def _row_is_consistent(self, job: int, row: JobRecord) -> None:
        assert 0 <= row.attempt <= row.max_attempts, row
        if row.state is JobState.EXECUTING:
            assert row.worker_id is not None and row.attempt >= 1, row
            claim = self.current[job]
            assert (claim.worker, claim.attempt, claim.lease) == (row.worker_id, row.attempt, row.lease)
            # Exactly one claim ever made matches what the finish guard compares, so no older claim
            # can pass for the current one and the job runs on one worker only.
            guard = (row.worker_id, row.attempt, row.lease)
            matching = [c for c in self.claims if c.job == job and (c.worker, c.attempt, c.lease) == guard]
            assert matching == [claim], matching
            holders = [w for w, held in self.held.items() if held.get(job) == claim]
            assert holders == [claim.worker]
        else:
            assert row.worker_id is None, row
            assert job not in self.current
        if row.state is JobState.AVAILABLE:
            assert row.due, "an available job that is not due could never be fetched"
        if row.state in (*WAITING, JobState.AVAILABLE):
            assert not row.cancel_requested, "a job whose cancel was requested is queued to run again"

    def _moves_right(self, job: int, old: JobRecord, new: JobRecord) -> None:
        if old.state.is_terminal:
            if job in self.retried and new.state is JobState.AVAILABLE:
                assert old.state in (JobState.DISCARDED, JobState.CANCELLED)
                assert new.attempt == old.attempt and new.max_attempts > new.attempt
                return
            assert new == old, f"terminal job {job} changed: {old} -> {new}"
            return
        if new.state is not old.state:
            assert new.state in TRANSITIONS[old.state], f"illegal edge {old.state} -> {new.state}"
        assert new.max_attempts == old.max_attempts
        if new.cancel_requested != old.cancel_requested:
            assert job in self.cancel_asked and old.state is JobState.EXECUTING and new.cancel_requested
        step = new.attempt - old.attempt
        if step == 1:
            assert (old.state, new.state) == (JobState.AVAILABLE, JobState.EXECUTING)
        elif step == -1:
            # Released or snoozed (never when a requested cancel ended the attempt instead).
            assert old.state is JobState.EXECUTING
            assert new.state in (JobState.AVAILABLE, JobState.SCHEDULED)
            assert job in self.given_back, "attempt went down without a give-back"
        else:
            assert step == 0, f"attempt jumped by {step}"
        assert new.errors - old.errors == self.error_delta.get(job, 0)

    def _can_still_finish(self, row: JobRecord) -> None:
        if row.state.is_terminal:
            return
        alive = self._alive()
        assert _drive(row, alive, Succeeded()).state.is_terminal
        # Even if every remaining attempt fails, the attempt budget (or a requested cancel) ends the job.
        ends = _drive(row, alive, Failed(error=ErrorInfo(type="E", message="boom"))).state
        # (On its last attempt a failure discards the job even when a cancel was requested.)
        assert ends in ((JobState.CANCELLED, JobState.DISCARDED) if row.cancel_requested else (JobState.DISCARDED,))


TestJobLifecycle = JobLifecycle.TestCase
TestJobLifecycle.settings = settings(
    max_examples=200,
    stateful_step_count=50,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)


# --- decide() ---------------------------------------------------------------------------------------


@settings(max_examples=100)
@given(attempt_budget=nst.attempt_and_budget(), backoff=nst.backoffs())
def test_succeeded_completes(attempt_budget: tuple[int, int], backoff: Callable[[int], float]) -> None:
    """A successful attempt completes the job, with no delay, error or give-back, on any attempt."""
    attempt, budget = attempt_budget
    assert decide(Succeeded(), attempt=attempt, max_attempts=budget, backoff=backoff) == Transition(
        state=JobState.COMPLETED
    )


@settings(max_examples=100)
@given(attempt_budget=nst.attempt_and_budget(), outcome=nst.releases, backoff=nst.backoffs())
def test_released_gives_the_attempt_back(
    attempt_budget: tuple[int, int], outcome: Released, backoff: Callable[[int], float]
) -> None:
    """A released attempt makes the job available again and gives the attempt back, even on the last one."""
    attempt, budget = attempt_budget
    transition = decide(outcome, attempt=attempt, max_attempts=budget, backoff=backoff)
    assert transition == Transition(state=JobState.AVAILABLE, give_back_attempt=True)


@settings(max_examples=100)
@given(
    attempt_budget=nst.attempt_and_budget(last=False),
    outcome=nst.transient_failures,
    delays=st.lists(nst.raw_delays, min_size=1, max_size=5),
)
def test_failure_with_attempts_left_is_retried_after_the_backoff(
    attempt_budget: tuple[int, int], outcome: Failed, delays: list[float]
) -> None:
    """A transient failure with attempts left is retryable after max(0, backoff(attempt)), keeping the error."""
    attempt, budget = attempt_budget
    asked: list[int] = []

    def backoff(n: int) -> float:
        asked.append(n)
        return delays[n % len(delays)]

    transition = decide(outcome, attempt=attempt, max_attempts=budget, backoff=backoff)
    assert asked == [attempt]
    assert transition.state is JobState.RETRYABLE
    assert transition.delay == max(0.0, delays[attempt % len(delays)])
    assert transition.error == outcome.error
    assert not transition.give_back_attempt


@settings(max_examples=100)
@given(
    data=st.data(),
    permanent=st.booleans(),
    error=nst.error_infos,
    backoff=nst.backoffs(),
)
def test_last_attempt_or_permanent_failure_discards(
    data: st.DataObject, permanent: bool, error: ErrorInfo, backoff: Callable[[int], float]
) -> None:
    """A failure of the last attempt (or beyond it), or a permanent one on any attempt, discards with the error."""
    if permanent:
        attempt, budget = data.draw(nst.attempt_and_budget())
    else:
        attempt, budget = data.draw(nst.attempt_and_budget(last=True))
        attempt += data.draw(st.integers(min_value=0, max_value=3))  # past the budget: still discarded
    transition = decide(Failed(error=error, permanent=permanent), attempt=attempt, max_attempts=budget, backoff=backoff)
    assert transition == Transition(state=JobState.DISCARDED, error=error)


@settings(max_examples=200)
@given(record=nst.executing_records(), outcome=nst.outcomes, backoff=nst.backoffs())
def test_every_decision_is_a_legal_edge_out_of_executing(
    record: JobRecord, outcome: Outcome, backoff: Callable[[int], float]
) -> None:
    """Whatever the outcome, the decided state is an edge out of executing and the guarded write applies it."""
    transition = decide(outcome, attempt=record.attempt, max_attempts=record.max_attempts, backoff=backoff)
    assert transition.state in TRANSITIONS[JobState.EXECUTING]
    assert transition.delay is None or (transition.delay >= 0 and math.isfinite(transition.delay))
    assert (transition.delay is not None) == (transition.state in WAITING)
    after = finish_guarded(record, worker_id="w1", attempt=record.attempt, lease=record.lease, transition=transition)
    assert after.state is transition.state
    assert after.worker_id is None
    assert 0 <= after.attempt <= after.max_attempts


@settings(max_examples=100)
@given(
    record=nst.executing_records(),
    outcome=nst.outcomes,
    worker=st.sampled_from(["w1", "w2"]),
    attempt_shift=st.integers(min_value=-2, max_value=2),
    lease_shift=st.integers(min_value=-2, max_value=2),
)
def test_finish_applies_only_to_the_claim_it_was_fetched_as(
    record: JobRecord, outcome: Outcome, worker: str, attempt_shift: int, lease_shift: int
) -> None:
    """finish_guarded changes the row only for the exact executing (worker, attempt, lease) it was fetched as."""
    attempt, lease = record.attempt + attempt_shift, record.lease + lease_shift
    transition = decide(outcome, attempt=attempt, max_attempts=record.max_attempts, backoff=_constant(1.0))
    after = finish_guarded(record, worker_id=worker, attempt=attempt, lease=lease, transition=transition)
    assert (after != record) == (worker == record.worker_id and attempt_shift == 0 and lease_shift == 0)
    for state in set(JobState) - {JobState.EXECUTING}:
        idle = attrs.evolve(record, state=state, worker_id=None)
        assert finish_guarded(idle, worker_id=worker, attempt=attempt, lease=lease, transition=transition) == idle


def test_a_stale_write_after_give_back_and_refetch_by_the_same_worker_changes_nothing() -> None:
    """A late write of a released claim misses the same worker's next claim of that job, though the attempt is equal."""
    job = JobRecord(state=JobState.AVAILABLE, max_attempts=3)
    first = fetch_guarded(job, "w1")
    release = decide(Released(), attempt=first.attempt, max_attempts=3, backoff=_constant(0.0))
    released = finish_guarded(first, worker_id="w1", attempt=first.attempt, lease=first.lease, transition=release)
    again = fetch_guarded(released, "w1")
    assert (again.worker_id, again.attempt) == ("w1", first.attempt)  # only the lease differs
    assert again.lease != first.lease
    failed = decide(Failed(error=ErrorInfo(type="E", message="late")), attempt=1, max_attempts=3, backoff=_constant(0))
    assert finish_guarded(again, worker_id="w1", attempt=first.attempt, lease=first.lease, transition=failed) == again


def test_terminal_states_have_no_way_out() -> None:
    """Completed has no outgoing edge, and discarded and cancelled only go back to available (app.retry)."""
    assert {s for s, out in TRANSITIONS.items() if not out} == {JobState.COMPLETED}
    assert all(TRANSITIONS[s] == {JobState.AVAILABLE} for s in TERMINAL_STATES - {JobState.COMPLETED})
    assert set(TRANSITIONS) == set(JobState)
    assert all(out <= set(JobState) for out in TRANSITIONS.values())
    assert all(s.is_terminal == (s in TERMINAL_STATES) for s in JobState)


# --- ExponentialBackoff -----------------------------------------------------------------------------


@settings(max_examples=200)
@given(
    base=nst.backoff_bases,
    factor=nst.backoff_factors,
    cap=nst.backoff_caps,
    jitter=nst.jitters,
    attempt=nst.attempts,
    seed=st.integers(min_value=0, max_value=2**32),
)
def test_backoff_is_non_negative_and_capped(
    base: float, factor: float, cap: float, jitter: float, attempt: int, seed: int
) -> None:
    """Every delay is >= 0, never above max_delay * (1 + jitter), and within ±jitter of the jitter-free delay."""
    policy = ExponentialBackoff(base=base, factor=factor, max_delay=cap, jitter=jitter, rng=random.Random(seed))
    plain = ExponentialBackoff(base=base, factor=factor, max_delay=cap, jitter=0.0)
    delay, middle = policy(attempt), plain(attempt)
    assert math.isfinite(delay)
    assert 0.0 <= delay <= cap * (1 + jitter) * (1 + 1e-12)
    assert middle * (1 - jitter) * (1 - 1e-12) <= delay <= middle * (1 + jitter) * (1 + 1e-12)


@settings(max_examples=200)
@given(
    base=nst.backoff_bases,
    factor=st.floats(min_value=1.0, max_value=100.0),
    cap=nst.backoff_caps,
    attempt=st.integers(min_value=0, max_value=200),
)
def test_backoff_without_jitter_never_decreases(base: float, factor: float, cap: float, attempt: int) -> None:
    """With jitter=0 (the expectation of the jittered delay) and factor >= 1, a later attempt never waits less."""
    policy = ExponentialBackoff(base=base, factor=factor, max_delay=cap, jitter=0.0)
    assert policy(attempt) <= policy(attempt + 1)
    assert policy(1) == min(cap, base)
    assert policy(attempt) == min(cap, base * factor ** min(max(attempt - 1, 0), 64))


@settings(max_examples=50)
@given(
    base=st.floats(max_value=0.0, allow_nan=False),
    jitter=st.one_of(st.floats(max_value=-1e-9), st.floats(min_value=1.0 + 1e-9)).filter(math.isfinite),
)
def test_backoff_rejects_nonsense_settings(base: float, jitter: float) -> None:
    """A base (or factor, or cap) <= 0 or a jitter outside [0, 1] is a configuration error."""
    for kwargs in ({"base": base}, {"factor": base}, {"max_delay": base}, {"jitter": jitter}):
        with pytest.raises(ConfigurationError):
            ExponentialBackoff(**kwargs)  # type: ignore[arg-type]


@settings(max_examples=50)
@given(
    factor=st.floats(min_value=2.0**16 + 1, max_value=1e300),
    attempt=st.integers(min_value=66, max_value=1000),
    cap=nst.backoff_caps,
)
def test_a_huge_factor_is_capped_instead_of_overflowing(factor: float, attempt: int, cap: float) -> None:
    """A factor whose 64th power overflows a float yields max_delay instead of raising in the worker."""
    assert ExponentialBackoff(factor=factor, max_delay=cap, jitter=0.0)(attempt) == cap


@settings(max_examples=100)
@given(attempt_budget=nst.attempt_and_budget(), outcome=nst.snoozes, backoff=nst.backoffs())
def test_snooze_waits_without_using_an_attempt(
    attempt_budget: tuple[int, int], outcome: Snoozed, backoff: Callable[[int], float]
) -> None:
    """A snooze gives the attempt back, even the last one: scheduled after its delay, or available at once for 0."""
    attempt, budget = attempt_budget
    transition = decide(outcome, attempt=attempt, max_attempts=budget, backoff=backoff)
    if outcome.delay > 0:
        assert transition == Transition(state=JobState.SCHEDULED, delay=outcome.delay, give_back_attempt=True)
    else:
        assert transition == Transition(state=JobState.AVAILABLE, give_back_attempt=True)


@settings(max_examples=100)
@given(attempt_budget=nst.attempt_and_budget(), outcome=nst.cancels, backoff=nst.backoffs())
def test_a_cancelled_attempt_ends_the_job_cancelled(
    attempt_budget: tuple[int, int], outcome: Cancelled, backoff: Callable[[int], float]
) -> None:
    """A cancelled attempt ends the job cancelled, with the reason recorded, whatever attempts are left."""
    attempt, budget = attempt_budget
    transition = decide(outcome, attempt=attempt, max_attempts=budget, backoff=backoff)
    assert transition.state is JobState.CANCELLED
    assert transition.error is not None and transition.error.message == outcome.reason
    assert not transition.give_back_attempt


@settings(max_examples=100)
@given(attempt_budget=nst.attempt_and_budget(last=False), outcome=nst.chosen_retries)
def test_a_chosen_retry_wait_overrides_the_policy(attempt_budget: tuple[int, int], outcome: Failed) -> None:
    """Retry(after=...) with attempts left waits exactly the chosen time; the policy is not asked."""
    attempt, budget = attempt_budget

    def policy(n: int) -> float:
        raise AssertionError("the policy must not be asked")

    transition = decide(outcome, attempt=attempt, max_attempts=budget, backoff=policy)
    assert transition == Transition(state=JobState.RETRYABLE, delay=outcome.retry_after, error=outcome.error)


@settings(max_examples=100)
@given(record=nst.executing_records(), outcome=nst.outcomes)
def test_a_requested_cancel_turns_every_requeue_into_cancelled(record: JobRecord, outcome: Outcome) -> None:
    """With a cancel requested, an attempt that would run the job again (released, retried, snoozed) cancels it."""
    requested = attrs.evolve(record, cancel_requested=True)
    transition = decide(outcome, attempt=record.attempt, max_attempts=record.max_attempts, backoff=_constant(1.0))
    after = finish_guarded(requested, worker_id="w1", attempt=record.attempt, lease=record.lease, transition=transition)
    assert after.state is (JobState.CANCELLED if transition.state in REQUEUE else transition.state)
