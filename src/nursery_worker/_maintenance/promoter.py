"""The promoter: makes scheduled and retryable jobs available once they are due."""

from __future__ import annotations

import attrs

from .._driver import Driver


@attrs.define
class Promoter:
    """Makes due scheduled and retryable jobs available (and notifies their queues)."""

    driver: Driver
    batch: int = 1000

    async def run_once(self) -> int:
        """Promote every due job, in batches; return how many."""
        total = 0
        while True:
            n = await self.driver.promote_due(limit=self.batch)
            total += n
            if n < self.batch:
                return total
