"""The completer: batches the decided outcomes of attempts into guarded writes.

Job tasks hand their outcome over with :meth:`Completer.submit`, which never awaits: a job that is
being cancelled can still record that it was released. The completer is the last part of the worker
to stop; its final writes run shielded under their own deadline, so even a worker cancelled from
outside writes its jobs back.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable

import anyio
import attrs
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from ._backoff import ServiceBackoff
from ._driver import Driver
from ._errors import RETRYABLE_ERRORS, DatabaseError
from ._models import Completion

logger = logging.getLogger("nursery_worker.completer")


@attrs.define(eq=False)
class Completer:
    """Writes completions in batches of up to *batch_max*, each in one statement."""

    driver: Driver
    worker_id: str
    error_cap: int = 20
    batch_max: int = 1000
    final_timeout: float = 10.0
    #: Called after each successful write (the worker wakes its fetch loop: capacity is free).
    on_written: Callable[[], None] | None = None
    #: (job id, attempt) of completions submitted but not yet written.
    pending: set[tuple[int, int]] = attrs.field(factory=set)
    _send: MemoryObjectSendStream[Completion] = attrs.field(init=False)
    _receive: MemoryObjectReceiveStream[Completion] = attrs.field(init=False)
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

    async def _write(self, batch: list[Completion]) -> None:
        try:
            await self.driver.finish_jobs(worker_id=self.worker_id, completions=batch, error_cap=self.error_cap)
        except DatabaseError as exc:
            if exc.transient:
                raise
            # The statement itself was refused: retrying the batch would fail forever and take
            # every later outcome with it. Split it to find the completion(s) at fault.
            await self._isolate(batch, exc)
        for c in batch:
            self.pending.discard((c.job_id, c.attempt))
        if self.on_written is not None:
            self.on_written()

    async def _isolate(self, batch: list[Completion], exc: DatabaseError) -> None:
        if len(batch) == 1:
            (c,) = batch
            # Dropped from the completer: the row stays executing under this worker, and the
            # reaper's check for claims this worker no longer knows hands it back to the queue.
            logger.error("could not record the outcome of job %d attempt %d: %s", c.job_id, c.attempt, exc)
            return
        half = len(batch) // 2
        for part in (batch[:half], batch[half:]):
            try:
                await self.driver.finish_jobs(worker_id=self.worker_id, completions=part, error_cap=self.error_cap)
            except DatabaseError as inner:
                if inner.transient:
                    raise
                await self._isolate(part, inner)

    def _take(self, batch: list[Completion]) -> bool:
        """Move queued completions into *batch*; return False once the stream is closed and empty."""
        while len(batch) < self.batch_max:
            try:
                batch.append(self._receive.receive_nowait())
            except anyio.WouldBlock:
                return True
            except anyio.EndOfStream:
                return False
        return True

    async def _drain(self, batch: list[Completion], backoff: ServiceBackoff) -> None:
        """Write until the stream is closed and empty (or the closing deadline passes)."""
        open_ = True
        while open_ or batch:
            if not batch:
                try:
                    batch.append(await self._receive.receive())
                except anyio.EndOfStream:
                    break
            open_ = self._take(batch)
            try:
                await self._write(batch)
            except RETRYABLE_ERRORS as exc:
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
