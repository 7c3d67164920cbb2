"""The promoter: makes scheduled and retryable jobs available once they are due."""

from __future__ import annotations

import anyio
import attrs

from .._driver import Driver


@attrs.define
class Promoter:
    """Makes due scheduled and retryable jobs available (and notifies their queues)."""

    driver: Driver
    batch: int = 1000
    # One promotion at a time: the promotion skips rows another one has locked, so without this a
    # once-mode fetcher's own promotion could return while the periodic one still held the due
    # retry uncommitted, find nothing to claim and stop with the retry left behind.
    _lock: anyio.Lock = attrs.field(init=False, factory=anyio.Lock)

    async def run_once(self) -> int:
        """Promote every due job, in batches; return how many (after any promotion in flight has ended)."""
        total = 0
        async with self._lock:
            while True:
                n = await self.driver.promote_due(limit=self.batch)
                total += n
                if n < self.batch:
                    return total
