"""Global limits and circuit breakers, enforced where jobs are claimed, for every worker and host:
at most N jobs of a task at once (per customer here), a rate limit, and a breaker that holds a
task's jobs back after consecutive failures, then lets one probe through.

NURSERY_WORKER_DSN=postgresql://postgres@127.0.0.1:5432/test python -m examples.limits_and_breakers
"""

from __future__ import annotations

import time

import anyio

from nursery_worker import App, CircuitBreaker, open_worker

app = App(schema="example_limits")
running: dict[str, int] = {}
peak: dict[str, int] = {}
starts: list[float] = []
partner_up = False


@app.task(max_concurrency=2, limit_by="customer")
async def sync_account(customer: str, n: int) -> None:
    running[customer] = running.get(customer, 0) + 1
    peak[customer] = max(peak.get(customer, 0), running[customer])
    await anyio.sleep(0.05)
    running[customer] -= 1


@app.task(rate_limit="20/s")
async def send_sms(n: int) -> None:
    starts.append(time.monotonic())


@app.task(max_attempts=1, circuit_breaker=CircuitBreaker(threshold=3, cooldown=1))
async def call_partner(n: int) -> None:
    if not partner_up:
        raise ConnectionError("partner API is down")


async def main() -> None:
    global partner_up
    await app.migrate()
    accounts = await app.defer_many([sync_account.job(customer=c, n=i) for c in "ab" for i in range(10)])
    sms = await app.defer_many([send_sms.job(n=i) for i in range(40)])
    async with open_worker(app, concurrency=20):
        for job in accounts + sms:
            await app.wait_for(job.id, timeout=30)
        print("most sync_account jobs at once per customer:", dict(sorted(peak.items())))
        print(f"40 SMS took {starts[-1] - starts[0]:.1f}s at 20/s")
        await app.defer_many([call_partner.job(n=i) for i in range(3)])  # three failures open it
        with anyio.fail_after(30):
            while (await app.list_breakers())[0].state != "open":  # noqa: ASYNC110 - polling the database
                await anyio.sleep(0.05)
        held = await call_partner.defer(n=99)
        await anyio.sleep(0.3)
        print("breaker:", (await app.list_breakers())[0].state, "- held job:", (await app.get_job(held.id)).state.value)
        partner_up = True  # the partner recovers: after the cooldown one probe runs and closes the breaker
        await app.wait_for(held.id, timeout=30)
        print("after the probe:", (await app.list_breakers())[0].state)
    await app.aclose()


if __name__ == "__main__":
    anyio.run(main)
