"""The heartbeat: proves a worker alive, so that its peers leave its jobs alone."""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable

import attrs

from .._driver import Driver
from .._models import WorkerInfo, WorkerLoad

logger = logging.getLogger("nursery_worker.maintenance")


@attrs.define
class Heartbeat:
    """Proves this worker alive by refreshing its row in the workers table."""

    driver: Driver
    info: WorkerInfo
    last: dt.datetime | None = None
    #: What to record with each beat (state and counters, for `nursery-worker status`).
    load: Callable[[], WorkerLoad] | None = None

    async def run_once(self) -> bool:
        """Beat once; return False if the row had vanished (peers had declared this worker dead)."""
        alive = await self.driver.heartbeat(self.info, None if self.load is None else self.load())
        self.last = dt.datetime.now(dt.UTC)
        if not alive:
            logger.warning(
                "worker %s was declared dead by a peer (no heartbeat within the rescue window); its jobs "
                "may have been rescued and their late results will be ignored. Re-registered.",
                self.info.id,
            )
        return alive
