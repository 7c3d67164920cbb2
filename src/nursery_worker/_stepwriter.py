"""The step writer: the step records of one worker's jobs, written together (a group commit).

Each completed (or failed) step of a durable job is a write that the job waits for before it goes
on. With many jobs running, one statement per step is mostly round trips and per-statement work.
:class:`StepWriter` writes every record submitted while a write is in flight in the next
statement (``Driver.record_steps``), with no task of its own: the first job to submit while no write
is in flight writes the batch in its own task, under its own shielded deadline (the session's);
when it is done, the first job of those that queued meanwhile writes theirs, and so on.

A batch the database refuses as a whole (one record it cannot store, say), or that cannot be sent,
is written again one record at a time, so that one job's record never holds back the others'.
"""

from __future__ import annotations

from collections.abc import Sequence

import anyio
import attrs

from ._driver import Driver
from ._models import StepWrite

#: The most records one statement writes.
BATCH_MAX = 500


@attrs.define(eq=False)
class _Item:
    record: StepWrite
    done: anyio.Event = attrs.field(factory=anyio.Event)
    #: This item's job writes the next batch (the one that wrote the last handed it on).
    lead: bool = False
    written: bool | None = None
    error: BaseException | None = None


class StepWriter:
    """Writes step records in batches: one statement for every record submitted while one is in flight.

    Args:
        driver: the worker's driver.
        batch_max: the most records one statement writes.
    """

    def __init__(self, driver: Driver, *, batch_max: int = BATCH_MAX) -> None:
        self.driver = driver
        self.batch_max = batch_max
        self._queue: list[_Item] = []
        self._busy = False

    async def record(self, record: StepWrite) -> bool:
        """Store *record* (see ``Driver.record_steps``): whether it was written.

        Raises:
            DatabaseError: the database could not be reached, or refused the record.
        """
        item = _Item(record)
        self._queue.append(item)
        if self._busy:
            try:
                await item.done.wait()
            except BaseException:
                # Our deadline passed while we queued: leave the queue, and hand the lead on if it was ours.
                if item in self._queue:
                    self._queue.remove(item)
                if item.lead:
                    self._hand_on()
                raise
            if not item.lead:
                return self._result(item)
        await self._write_batch(item)
        return self._result(item)

    @staticmethod
    def _result(item: _Item) -> bool:
        if item.error is not None:
            raise item.error
        return bool(item.written)

    def _hand_on(self) -> None:
        """Let the first queued job write the next batch, or be idle."""
        if self._queue:
            nxt = self._queue[0]
            nxt.lead = True
            nxt.done.set()
        else:
            self._busy = False

    async def _write_batch(self, own: _Item) -> None:
        # The leader is always first in the queue: it arrived with nothing in flight, or the last
        # writer handed it the lead as the queue's first item.
        self._busy = True
        batch, self._queue = self._queue[: self.batch_max], self._queue[self.batch_max :]
        try:
            await self._write(batch)
        finally:
            for item in batch:
                if item is not own:
                    item.done.set()
            self._hand_on()

    async def _write(self, batch: Sequence[_Item]) -> None:
        try:
            written = await self.driver.record_steps([i.record for i in batch])
        except Exception as exc:  # refused (a DatabaseError), or a record the driver could not send
            if len(batch) == 1:
                batch[0].error = exc
                return
            # Refused as a whole: each record alone, so that one never holds back the others.
            for item in batch:
                try:
                    item.written = (await self.driver.record_steps([item.record]))[0]
                except Exception as one:
                    item.error = one
            return
        except BaseException as exc:
            # Cancelled (our deadline) or worse: the others learn that their write is in doubt.
            for item in batch:
                item.error = exc if isinstance(exc, Exception) else TimeoutError("the step write was cancelled")
            raise
        for item, ok in zip(batch, written, strict=True):
            item.written = ok
