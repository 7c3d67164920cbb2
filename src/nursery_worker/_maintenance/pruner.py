"""The pruner: deletes finished jobs once they are older than their state's retention, and metric
rollups older than theirs."""

from __future__ import annotations

import logging

import attrs

from .._config import DEFAULT_RETENTION, MINUTE_ROLLUP_RETENTION
from .._driver import Driver

logger = logging.getLogger("nursery_worker.maintenance")


@attrs.define
class Pruner:
    """Deletes finished jobs older than their state's retention, in bounded batches.

    Results, errors and steps go with their jobs. A retention of None keeps that state's jobs
    forever. With *rollup_retention* (seconds), hourly metric rollups older than that go too, and
    minute rollups older than the lesser of it and ``MINUTE_ROLLUP_RETENTION``. With
    *event_retention* (seconds), emitted events older than that go too, unless a suspended job
    waits for them.
    """

    driver: Driver
    retention: dict[str, float | None] = attrs.field(factory=lambda: dict(DEFAULT_RETENTION))
    batch: int = 1000
    max_batches: int = 20  # per run: one pass never holds the reaper for long
    rollup_retention: float | None = None
    event_retention: float | None = None

    async def run_once(self) -> dict[str, int]:
        """Prune every state once (at most ``max_batches`` batches each), then the rollups and the
        events; return the counts by state (and ``"rollups"``: rollup rows deleted; ``"events"``:
        emitted events deleted), leaving out zeros."""
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
        if self.rollup_retention is not None:
            minute_age = min(self.rollup_retention, MINUTE_ROLLUP_RETENTION)
            removed = await self.driver.prune_rollups(
                minute_older_than=minute_age, hour_older_than=self.rollup_retention
            )
            if removed:
                counts["rollups"] = removed
        if self.event_retention is not None:
            removed = 0
            for _ in range(self.max_batches):
                n = await self.driver.prune_events(older_than=self.event_retention, limit=self.batch)
                removed += n
                if n < self.batch:
                    break
            if removed:
                counts["events"] = removed
        if counts:
            logger.info(
                "pruned finished jobs: %s",
                ", ".join(f"{n} {state}" for state, n in counts.items()),
                extra={f"pruned_{state}": n for state, n in counts.items()},
            )
        return counts
