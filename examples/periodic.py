"""Periodic jobs: two workers run the same schedules, and the database lets each tick through once.

NURSERY_WORKER_DSN=postgresql://postgres@127.0.0.1:5432/test python -m examples.periodic
"""

from __future__ import annotations

import collections
from zoneinfo import ZoneInfo

import anyio

from nursery_worker import App, open_worker

app = App(schema="example_periodic")
ran: list[str] = []


# Every 2 seconds (a sixth, leading field is seconds); the task receives the tick it runs for.
@app.periodic(cron="*/2 * * * * *", args={"name": "pulse"}, tick_arg="tick")
@app.task
async def pulse(name: str, tick: str) -> None:
    ran.append(tick)


# Weekdays at 06:00 in Paris (summer or winter time alike), on the reports queue.
@app.periodic(cron="0 6 * * MON-FRI", timezone="Europe/Paris", args={"kind": "daily"}, catch_up=3600)
@app.task(queue="reports")
async def send_report(kind: str) -> None: ...


async def main() -> None:
    await app.migrate()
    # Two workers (in one process here; on many hosts in production) both run the scheduler.
    async with open_worker(app, queues=["default", "reports"]), open_worker(app, queues=["default", "reports"]):
        with anyio.fail_after(30):
            while len(ran) < 3:  # noqa: ASYNC110 - waiting for the jobs' side effect
                await anyio.sleep(0.05)
    jobs = await app.list_jobs(task=pulse.name)
    per_tick = collections.Counter(job.args["tick"] for job in jobs)
    print(f"ran for ticks {ran[:3]}")
    once = all(n == 1 for n in per_tick.values())
    print(f"{len(per_tick)} tick(s), {len(jobs)} job(s): " + ("each tick enqueued once" if once else "DUPLICATES"))
    for schedule in await app.list_periodic():
        assert schedule.next_tick is not None
        local = schedule.next_tick.astimezone(ZoneInfo(schedule.timezone))
        print(f"{schedule.name}: {schedule.cron!r} next runs at {local:%Y-%m-%d %H:%M %Z}")
    await app.aclose()


if __name__ == "__main__":
    anyio.run(main)
