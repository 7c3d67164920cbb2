"""The pruner: deletes finished jobs once they are older than their state's retention."""

from __future__ import annotations

import logging

import attrs

from .._config import DEFAULT_RETENTION
from .._driver import Driver

logger = logging.getLogger("nursery_worker.maintenance")


@attrs.define
class Pruner:
    """Deletes finished jobs older than their state's retention, in bounded batches.

    Results and errors go with their jobs. A retention of None keeps that state's jobs forever.
    """

    driver: Driver
    retention: dict[str, float | None] = attrs.field(factory=lambda: dict(DEFAULT_RETENTION))
    batch: int = 1000
    max_batches: int = 20  # per run: one pass never holds the reaper for long

    async def run_once(self) -> dict[str, int]:
        """Prune every state once (at most ``max_batches`` batches each); return the counts by state."""
        counts: dict[str, int] = {}
        for state, age in self.retention.items():
            if age is None:
                continue
            total = 0
            for _ in range(self.max_batches):
                n = await self.driver.prune_jobs(state=state, older_than=age, limit=self.batch)
                total += n
                if n < self.batch:
                    break
            if total:
                counts[state] = total
        if counts:
            logger.info(
                "pruned finished jobs: %s",
                ", ".join(f"{n} {state}" for state, n in counts.items()),
                extra={f"pruned_{state}": n for state, n in counts.items()},
            )
        return counts
