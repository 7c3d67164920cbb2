"""The rescuer: takes back the jobs of dead workers, and this worker's own claims it never received."""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection

import attrs

from .._driver import Driver
from .._models import Completion, RescueResult
from .._state import RELEASE

logger = logging.getLogger("nursery_worker.maintenance")
# Lost claims are the worker's own business: logged as the worker, as ever.
_worker_logger = logging.getLogger("nursery_worker.worker")


@attrs.define
class Rescuer:
    """Rescues executing jobs of workers that stopped beating, and removes their rows."""

    driver: Driver
    rescuer_id: str
    rescue_after: float
    error_cap: int = 20
    batch: int = 1000

    async def run_once(self) -> RescueResult:
        """Rescue orphans in batches until none are left; return the totals."""
        total = RescueResult()
        while True:
            result = await self.driver.rescue_orphans(
                rescuer_id=self.rescuer_id, rescue_after=self.rescue_after, limit=self.batch, error_cap=self.error_cap
            )
            total = RescueResult(
                retryable=total.retryable + result.retryable,
                discarded=total.discarded + result.discarded,
                cancelled=total.cancelled + result.cancelled,
                workers_removed=total.workers_removed + result.workers_removed,
            )
            if result.rescued < self.batch:
                break
        if total.rescued:
            logger.warning(
                "rescued %d job(s) from dead workers (%d retryable, %d discarded, %d cancelled)",
                total.rescued,
                total.retryable,
                total.discarded,
                total.cancelled,
                extra={
                    "rescued": total.rescued,
                    "rescued_retryable": total.retryable,
                    "rescued_discarded": total.discarded,
                    "rescued_cancelled": total.cancelled,
                },
            )
        return total


@attrs.define
class LostClaims:
    """Hands back this worker's own claims whose fetch result never reached it.

    The connection broke after the claim's commit: the rows are executing under this worker's id,
    unknown to it, and nobody else would ever rescue them (the worker is alive). *known* says which
    (job id, attempt) pairs the worker does hold (running, or with an outcome not yet written).
    """

    driver: Driver
    worker_id: str
    known: Callable[[], Collection[tuple[int, int]]]
    #: Only claims older than this (seconds) are lost: a fetch result may still be on its way.
    lost_after: float
    error_cap: int = 20

    async def run_once(self) -> int:
        """Release every lost claim (no attempt used); return how many."""
        rows = await self.driver.executing_ids(worker_id=self.worker_id, older_than=self.lost_after)
        known = self.known()
        lost = [(r.job_id, r.attempt, r.attempted_at) for r in rows if (r.job_id, r.attempt) not in known]
        if lost:
            _worker_logger.warning("handing back %d job(s) claimed by this worker but never received", len(lost))
            await self.driver.finish_jobs(
                worker_id=self.worker_id,
                completions=[
                    Completion(job_id=i, attempt=a, attempted_at=lease, transition=RELEASE) for i, a, lease in lost
                ],
                error_cap=self.error_cap,
            )
        return len(lost)
