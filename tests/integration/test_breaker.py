"""Circuit breakers: after N consecutive failures a task's jobs are held back (no attempt used) for a
cooldown, then one probe runs; its success closes the breaker, its failure opens it again."""

from __future__ import annotations

import anyio
import pytest

from nursery_worker import App, CircuitBreaker, ConfigurationError, JobState, open_worker

from .helpers import fast, wait_for_state, wait_until

pytestmark = pytest.mark.anyio


async def _breaker(app: App, task: str) -> str:
    (info,) = [b for b in await app.list_breakers() if b.task == task]
    return info.state


async def test_consecutive_failures_open_the_breaker_and_hold_jobs_back_without_attempts(app: App) -> None:
    """Three failures open a threshold-3 breaker; the next jobs stay available with attempt 0 during the cooldown."""
    service_up = False

    @app.task(name="call_api", max_attempts=1, circuit_breaker=CircuitBreaker(threshold=3, cooldown=1.5))
    async def call_api(n: int) -> None:
        if not service_up:
            raise ConnectionError("partner API is down")

    failing = await app.defer_many([call_api.job(n=i) for i in range(3)])
    async with open_worker(app, **fast(concurrency=1)) as worker:
        for job in failing:
            await wait_for_state(app, job.id, JobState.DISCARDED)
        assert await _breaker(app, "call_api") == "open"
        held = await app.defer_many([call_api.job(n=i) for i in range(3, 6)])
        await anyio.sleep(0.6)
        for job in held:
            now = await app.get_job(job.id)
            assert (now.state, now.attempt) == (JobState.AVAILABLE, 0)
        assert "call_api" in worker.breakers_open
        (info,) = await app.list_breakers()
        assert info.failures >= 3 and info.reopens_at is not None
        # The service recovers: after the cooldown one probe runs, succeeds, and the rest follow.
        service_up = True
        for job in held:
            await wait_for_state(app, job.id, JobState.COMPLETED, within=15)
        assert await _breaker(app, "call_api") == "closed"


async def test_a_failed_probe_opens_the_breaker_again(app: App) -> None:
    """When the probe after the cooldown fails, the breaker opens again and the other jobs keep waiting."""
    calls: list[int] = []

    @app.task(name="flaky_api", max_attempts=1, circuit_breaker=CircuitBreaker(threshold=1, cooldown=0.5))
    async def flaky_api(n: int) -> None:
        calls.append(n)
        raise ConnectionError("still down")

    first = await flaky_api.defer(n=0)
    async with open_worker(app, **fast(concurrency=4)):
        await wait_for_state(app, first.id, JobState.DISCARDED)
        rest = await app.defer_many([flaky_api.job(n=i) for i in range(1, 4)])

        async def probed() -> bool:
            return len(calls) >= 2

        await wait_until(probed, within=10)
        await anyio.sleep(0.2)
        assert await _breaker(app, "flaky_api") == "open"
        states = [(await app.get_job(j.id)).state for j in rest]
        # Exactly one of them ran as the probe (discarded); the others are still held back.
        assert states.count(JobState.DISCARDED) == 1
        assert states.count(JobState.AVAILABLE) == 2


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
