"""Circuit breakers: after N consecutive failures a task's jobs are held back (no attempt used) for a
cooldown, then one probe runs; its success closes the breaker, its failure opens it again."""

from __future__ import annotations

import pytest

from nursery_worker import App, CircuitBreaker, ConfigurationError, JobState, open_worker

from .helpers import fast, wait_for_state

pytestmark = pytest.mark.anyio


async def _breaker(app: App, task: str) -> str:
    (info,) = [b for b in await app.list_breakers() if b.task == task]
    return info.state


async def test_a_success_resets_the_count_of_consecutive_failures(app: App) -> None:
    """Failures separated by a success never reach the threshold."""
    outcomes = iter([False, True, False, True, False])

    @app.task(name="mixed", max_attempts=1, circuit_breaker=CircuitBreaker(threshold=2, cooldown=60))
    async def mixed(n: int) -> None:
        if not next(outcomes):
            raise ConnectionError("down")

    jobs = await app.defer_many([mixed.job(n=i) for i in range(5)])
    async with open_worker(app, **fast(concurrency=1)):
        for job in jobs:
            await wait_for_state(app, job.id, JobState.COMPLETED, JobState.DISCARDED)
    assert await _breaker(app, "mixed") == "closed"


async def test_invalid_breaker_options_are_refused() -> None:
    """CircuitBreaker refuses a threshold below 1 and a cooldown that is not positive, naming the value."""
    with pytest.raises(ConfigurationError, match="threshold=0"):
        CircuitBreaker(threshold=0)
    with pytest.raises(ConfigurationError, match="cooldown=-1"):
        CircuitBreaker(cooldown=-1)
