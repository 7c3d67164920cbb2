"""The completer: batches the decided outcomes of attempts into guarded writes.

Job tasks hand their outcome over with :meth:`Completer.submit`, which never awaits: a job that is
being cancelled can still record that it was released. The completer is the last part of the worker
to stop; its final writes run shielded under their own deadline, so even a worker cancelled from
outside writes its jobs back.

The write tells which completions took effect: a late one (its attempt was rescued, handed back or
finished meanwhile) changes nothing, and the worker counts it as ignored rather than by its outcome
(``on_written``).

A batch the database refuses for what it holds (not for the connection) is split until the
completion(s) at fault are found; every other outcome is written, and each faulty attempt is
recorded as failed instead (:func:`refused_transition`), with an error that says what was refused
and why. A poison outcome (a result over PostgreSQL's jsonb limit) therefore never holds up the
others, and is never retried forever. A batch also holds at most ``batch_max_result_chars`` of
results (one larger result goes alone), so that a batch never grows into a message the server
would refuse by dropping the connection.

A write also claims jobs for the worker's free slots when its fetch loop (the :class:`Claimer`)
reserves them: one statement completes the batch and claims the next jobs
(``Driver.finish_and_fetch``), which the fetch loop starts as its own claim. The reservation keeps
the fetch loop from claiming the same slots meanwhile and is given back after. A write with a claim
the database refuses claims nothing and is written again alone, so the refused outcome is found as
above; claims stop riding once the worker is stopping (jobs claimed meanwhile are handed back).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from typing import Protocol

import anyio
import attrs
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from ._backoff import ServiceBackoff
from ._driver import Driver
from ._errors import RETRYABLE_ERRORS, DatabaseError
from ._json import POSTGRES_JSONB_MAX_BYTES, RESULT_SIZE_FIX
from ._models import Completion, Job
from ._state import ErrorInfo, Failed, JobState, Released, Transition, decide

logger = logging.getLogger("nursery_worker.completer")

#: A refused outcome whose result is at least this large is taken to be refused for its size.
_LARGE_RESULT = 1024 * 1024

#: A completion as written: with the transition the database applied to its job (its own, or the
#: failure recorded instead of an outcome the database refused), or None when its guard did not
#: hold and nothing changed (the attempt was no longer this worker's).
Written = tuple[Completion, Transition | None]


def _no_wait(attempt: int) -> float:
    return 0.0


def refused_error(completion: Completion, reason: str) -> ErrorInfo:
    """The error recorded for an attempt whose outcome the database refused to store, for *reason*."""
    what = completion.transition.state.value
    result = completion.result_json
    if result is None:
        return ErrorInfo(
            type="OutcomeRefused",
            message=f"the database refused to record this attempt's outcome ({what}): {reason}",
        )
    size = len(result.encode("utf-8", "surrogatepass"))
    message = (
        f"the database refused to record this attempt's outcome ({what}, with a result of {size:,} bytes of "
        f"JSON): {reason}"
    )
    if size >= _LARGE_RESULT:
        message += (
            f"; a result must fit the database's limit (PostgreSQL stores at most {POSTGRES_JSONB_MAX_BYTES:,} "
            f"bytes in one jsonb value) and the worker's max_result_bytes: {RESULT_SIZE_FIX}"
        )
    return ErrorInfo(type="OutcomeRefused", message=message)


def refused_transition(completion: Completion, reason: str) -> Transition:
    """What to write instead of an outcome the database refused: the attempt failed.

    Decided by the pure state machine like any failure, with the job's own budget and policy
    (retryable, or discarded once its attempts are used up). A completion that carries no budget
    (a hand-back) is retried once more without waiting.
    """
    error = refused_error(completion, reason)
    attempts = completion.max_attempts if completion.max_attempts is not None else completion.attempt + 1
    return decide(
        Failed(error=error), attempt=completion.attempt, max_attempts=attempts, backoff=completion.backoff or _no_wait
    )


class Claimer(Protocol):
    """What lets the completer's writes claim jobs too: the worker's fetch loop (``Fetcher``)."""

    limited_tasks: tuple[str, ...]

    @property
    def queues(self) -> Sequence[str]:
        """The queues to claim from."""

    def reserve(self) -> int:
        """Reserve the free slots for a claim; how many (0: do not claim)."""

    def deliver(self, jobs: Sequence[Job], reserved: int) -> list[Job]:
        """Give back the *reserved* slots and start *jobs*; return those that could not start."""


def handed_back(job: Job) -> Completion:
    """A completion that gives *job*'s attempt back at once: it was claimed but never started."""
    transition = decide(
        Released(reason="claimed while the worker was stopping"),
        attempt=job.attempt,
        max_attempts=job.max_attempts,
        backoff=_no_wait,
    )
    return Completion(job_id=job.id, attempt=job.attempt, attempted_at=job.attempted_at, transition=transition)


@attrs.define(eq=False)
class Completer:
    """Writes completions in batches of up to *batch_max*, each in one statement."""

    driver: Driver
    worker_id: str
    error_cap: int = 20
    batch_max: int = 1000
    #: The most result characters one batch holds; a single larger result is written alone.
    batch_max_result_chars: int = 32 * 1024 * 1024
    #: The deadline of the shielded final writes: the worker passes its ``final_timeout`` option.
    final_timeout: float = attrs.field(kw_only=True)
    #: Called after each successful write with what it did to each completion (the worker counts
    #: the outcomes that took effect and wakes its fetch loop: capacity is free). A completion that
    #: could not be written at all is not reported.
    on_written: Callable[[Sequence[Written]], None] | None = None
    #: Claims jobs for the free slots with each write (one statement: ``Driver.finish_and_fetch``);
    #: set by the worker. Not while closing.
    claimer: Claimer | None = None
    #: (job id, attempt) of completions submitted but not yet written.
    pending: set[tuple[int, int]] = attrs.field(factory=set)
    _send: MemoryObjectSendStream[Completion] = attrs.field(init=False)
    _receive: MemoryObjectReceiveStream[Completion] = attrs.field(init=False)
    #: Taken from the stream but left for the next batch (it would have made this one too large).
    _held: Completion | None = attrs.field(init=False, default=None)
    _closing_deadline: float | None = attrs.field(init=False, default=None)
    _done: bool = attrs.field(init=False, default=False)

    def __attrs_post_init__(self) -> None:
        # Unbounded on purpose: at most `concurrency` completions are ever in flight, and submit()
        # must not block a job that is being cancelled.
        self._send, self._receive = anyio.create_memory_object_stream[Completion](math.inf)

    def submit(self, completion: Completion) -> None:
        """Queue *completion* for writing; never blocks."""
        self.pending.add((completion.job_id, completion.attempt))
        self._send.send_nowait(completion)

    def close(self) -> None:
        """No more submissions: write what is queued (within ``final_timeout``) and stop."""
        if self._closing_deadline is None:
            self._closing_deadline = anyio.current_time() + self.final_timeout
        self._send.close()

    async def _finish(self, batch: Sequence[Completion]) -> None:
        """Write *batch* in one statement and report it (the refused path reports its own)."""
        applied = set(
            await self.driver.finish_jobs(worker_id=self.worker_id, completions=batch, error_cap=self.error_cap)
        )
        self._report([(c, c.transition if i in applied else None) for i, c in enumerate(batch)])

    def _report(self, written: Sequence[Written]) -> None:
        for c, _ in written:
            self.pending.discard((c.job_id, c.attempt))
        if self.on_written is not None:
            self.on_written(written)

    async def _finish_and_claim(self, batch: Sequence[Completion]) -> list[Job]:
        """Write *batch* and, when the claimer reserves free slots, claim jobs for them in the same
        statement; return the claimed jobs that could not start (the worker is stopping)."""
        claimer = self.claimer
        reserved = claimer.reserve() if claimer is not None and self._closing_deadline is None else 0
        if claimer is None or not reserved:
            await self._finish(batch)
            return []
        jobs: list[Job] = []
        back: list[Job] = []
        try:
            applied, jobs = await self.driver.finish_and_fetch(
                worker_id=self.worker_id,
                completions=batch,
                error_cap=self.error_cap,
                queues=claimer.queues,
                limit=reserved,
                exclude_tasks=claimer.limited_tasks,
            )
        except DatabaseError as exc:
            if exc.transient:
                raise
            # Refused as a whole (nothing written, nothing claimed): write the outcomes alone, as
            # without a claim, so that one refused outcome is found and the others written.
            logger.warning("completer: the write with a claim was refused (%s); writing the outcomes alone", exc)
            claimer.deliver([], reserved)
            reserved = 0
            await self._finish(batch)
            return []
        finally:
            if reserved:
                # Started before the outcomes are reported: the slots never look free meanwhile.
                back = claimer.deliver(jobs, reserved)
        position = set(applied)
        self._report([(c, c.transition if i in position else None) for i, c in enumerate(batch)])
        return back

    async def _write(self, batch: list[Completion]) -> None:
        back: list[Job] = []
        try:
            back = await self._finish_and_claim(batch)
        except DatabaseError as exc:
            if exc.transient:
                raise
            # The statement itself was refused: retrying the batch would fail forever and take
            # every later outcome with it. Split it to find the completion(s) at fault.
            await self._isolate(batch, exc)
        for c in batch:  # not reported: could not be written, nor recorded as failed
            self.pending.discard((c.job_id, c.attempt))
        if back:
            handbacks = [handed_back(job) for job in back]
            self.pending.update((c.job_id, c.attempt) for c in handbacks)
            await self._write(handbacks)

    async def _isolate(self, batch: list[Completion], exc: DatabaseError) -> None:
        if len(batch) == 1:
            await self._record_refused(batch[0], exc)
            return
        half = len(batch) // 2
        for part in (batch[:half], batch[half:]):
            try:
                await self._finish(part)
            except DatabaseError as inner:
                if inner.transient:
                    raise
                await self._isolate(part, inner)

    async def _record_refused(self, c: Completion, exc: DatabaseError) -> None:
        """Record the attempt of *c*, whose outcome the database refused, as failed."""
        transition = refused_transition(c, str(exc))
        failed = attrs.evolve(c, transition=transition, result_json=None)
        try:
            applied = await self.driver.finish_jobs(
                worker_id=self.worker_id, completions=[failed], error_cap=self.error_cap
            )
        except DatabaseError as inner:
            if inner.transient:
                raise
            # Even the failure was refused (nothing we wrote, so something about the row itself):
            # end the job rather than hand it back to run, and be refused, again.
            last = Transition(state=JobState.DISCARDED, error=ErrorInfo(type="OutcomeRefused", message=str(inner)))
            try:
                applied = await self.driver.finish_jobs(
                    worker_id=self.worker_id,
                    completions=[attrs.evolve(failed, transition=last)],
                    error_cap=self.error_cap,
                )
            except DatabaseError as final:
                if final.transient:
                    raise
                # Left executing under this worker: the reaper's check for claims this worker no
                # longer knows hands it back to the queue.
                logger.error(
                    "could not record the outcome of job %d attempt %d, nor its failure: %s; then: %s",
                    c.job_id,
                    c.attempt,
                    exc,
                    final,
                )
                return
            transition = last
        self._report([(c, transition if applied else None)])
        if not applied:
            return  # late: the attempt was no longer this worker's, so there was nothing to record
        logger.error(
            "job %d attempt %d: the database refused its outcome (%s); recorded the attempt as failed -> %s: %s",
            c.job_id,
            c.attempt,
            c.transition.state.value,
            transition.state.value,
            transition.error.message if transition.error is not None else "",
        )

    def _next(self) -> Completion:
        """The held completion, else the next queued one (``WouldBlock``/``EndOfStream`` as the stream)."""
        held, self._held = self._held, None
        return held if held is not None else self._receive.receive_nowait()

    def _take(self, batch: list[Completion]) -> bool:
        """Move queued completions into *batch*; return False once the stream is closed and empty."""
        chars = sum(len(c.result_json) for c in batch if c.result_json is not None)
        while len(batch) < self.batch_max:
            try:
                c = self._next()
            except anyio.WouldBlock:
                return True
            except anyio.EndOfStream:
                return False
            size = len(c.result_json) if c.result_json is not None else 0
            if batch and chars + size > self.batch_max_result_chars:
                self._held = c
                return True
            batch.append(c)
            chars += size
        return True

    async def _drain(self, batch: list[Completion], backoff: ServiceBackoff) -> None:
        """Write until the stream is closed and empty (or the closing deadline passes)."""
        open_ = True
        while open_ or batch or self._held is not None:
            if not batch and self._held is None:
                try:
                    batch.append(await self._receive.receive())
                except anyio.EndOfStream:
                    break
            open_ = self._take(batch)
            try:
                await self._write(batch)
            except RETRYABLE_ERRORS as exc:
                # A split batch may have written (and reported) some parts before the error: retry
                # only the rest, or those would be counted again, as ignored.
                batch[:] = [c for c in batch if (c.job_id, c.attempt) in self.pending]
                if self._closing_deadline is not None and anyio.current_time() >= self._closing_deadline:
                    logger.error(
                        "could not record the outcome of %d job(s) before the shutdown deadline (%s); they stay "
                        "executing and peers will rescue them once this worker's heartbeat lapses",
                        len(batch) + len(self.pending),
                        exc,
                    )
                    break
                delay = backoff.next()
                logger.warning("completer: %s; retrying %d write(s) in %.1fs", exc, len(batch), delay)
                await anyio.sleep(delay)
                continue
            backoff.reset()
            batch.clear()
        self._done = True

    async def serve(self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Write completions until :meth:`close` and the queue is drained."""
        task_status.started()
        batch: list[Completion] = []
        backoff = ServiceBackoff()
        try:
            await self._drain(batch, backoff)
        finally:
            if not self._done:
                # Cancelled from outside (the caller's scope): job tasks are being cancelled too and
                # still submit their hand-backs until the worker calls close(). Keep receiving and
                # writing, shielded, under our own deadline.
                with anyio.CancelScope(shield=True) as scope:
                    scope.deadline = anyio.current_time() + self.final_timeout
                    await self._drain(batch, backoff)
                if scope.cancelled_caught:
                    logger.error(
                        "gave up writing %d job outcome(s) at the shutdown deadline; peers will rescue them",
                        len(self.pending),
                    )
