"""The rollup writer: adds the worker's counted attempts to the database's metric rollups."""

from __future__ import annotations

import logging

import attrs

from .._driver import Driver
from .._rollup import RollupCounter

logger = logging.getLogger("nursery_worker.maintenance")


@attrs.define
class RollupWriter:
    """Drains the executor's :class:`~nursery_worker._rollup.RollupCounter` into one upsert.

    One statement per pass, however many jobs finished: a busy worker pays one small write every
    ``rollup_interval``. Counts a failed write could not store go back into the counter and out
    with the next pass.
    """

    driver: Driver
    counter: RollupCounter

    async def run_once(self) -> int:
        """Write what was counted since the last pass; return how many rollup rows it touched."""
        rows = self.counter.drain()
        if not rows:
            return 0
        try:
            await self.driver.write_rollups(rows)
        except BaseException:
            self.counter.restore(rows)
            raise
        return len(rows)
