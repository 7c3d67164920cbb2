"""Durable steps: an order that charges a card, waits for the payment provider's webhook, ships and
asks for a review later, in one job that survives retries without charging the card twice.

The job charges the card in a step (its result is stored; a later attempt gets it back without
calling the provider again), reports its progress, and waits for the event ``payment:<order>``:
the attempt ends and the job sleeps in the database, holding no worker slot. The example then plays
the provider: its webhook handler records the delivery and emits the event in one transaction,
which wakes the job. The carrier's API fails once, so the job is retried: the charge and the
webhook's payload come back from storage, and only shipping runs again. The review request waits
for a durable sleep (1 s here, days in real life).

NURSERY_WORKER_DSN=postgresql://postgres@127.0.0.1:5432/test python -m examples.order_flow
"""

from __future__ import annotations

import os
from typing import Any

import anyio
import anyio.to_thread
import psycopg
from psycopg.types.json import Jsonb

from nursery_worker import App, ExponentialBackoff, Job, JobContext, open_worker, step

SCHEMA = "example_order_flow"
app = App(schema=SCHEMA)

#: What the payment provider has charged, by idempotency key (it charges a key once).
provider_charges: dict[str, dict[str, Any]] = {}
#: Every call of the payment provider's API, and of the carrier's (which fails the first time).
charge_calls: list[int] = []
carrier_calls: list[int] = []
#: What each run of the job's code did.
timeline: list[str] = []


async def charge_card(order_id: int, amount: int, idempotency_key: str) -> dict[str, Any]:
    """The payment provider's API: a second call with the same key returns the first charge."""
    charge_calls.append(order_id)
    timeline.append("  payment provider: card charged")
    if idempotency_key not in provider_charges:
        provider_charges[idempotency_key] = {"charge_id": f"ch_{order_id}", "amount": amount}
    return provider_charges[idempotency_key]


@step
async def ship(order_id: int, items: list[str]) -> str:
    """The carrier's API, as a durable step by decorator: its tracking number is stored."""
    carrier_calls.append(order_id)
    if len(carrier_calls) == 1:
        timeline.append("  carrier: unavailable, the attempt fails")
        raise ConnectionError("carrier API unavailable")
    timeline.append("  carrier: parcel booked")
    return f"TRACK-{order_id}-{len(items)}"


@app.task(max_attempts=5, retry=ExponentialBackoff(base=0.2, max_delay=1))
async def fulfil_order(context: JobContext, order_id: int, amount: int, items: list[str]) -> dict[str, Any]:
    """Charge, wait for the payment's confirmation, ship, then ask for a review."""
    timeline.append(f"run {sum(line.startswith('run') for line in timeline) + 1} (attempt {context.attempt})")
    await context.progress(0, 3, note="charging the card")
    # The key is the same on every attempt of this job: were the worker to crash after the
    # provider charged but before the step was stored, the provider would not charge again.
    charge = await context.step("charge", charge_card, order_id, amount, f"job-{context.job_id}-charge")
    await context.progress(1, 3, note="waiting for the payment provider")
    payment = await context.wait_for_event(f"payment:{order_id}", timeout=3600)
    timeline.append(f"  payment {payment['status']}")
    await context.progress(2, 3, note="shipping")
    tracking = await ship(order_id, items)
    await context.progress(3, 3, note="shipped")
    await context.sleep(1.0, name="before-review")  # durable: above the worker's threshold below
    timeline.append("  review requested")
    return {"charge": charge["charge_id"], "tracking": tracking}


def payment_webhook(body: dict[str, Any]) -> bool:
    """The web handler of the provider's webhook: the delivery is stored and the event emitted in
    one transaction, so the job wakes only if the delivery was recorded."""
    with psycopg.connect(os.environ["NURSERY_WORKER_DSN"]) as conn, conn.transaction():
        conn.execute(f"CREATE TABLE IF NOT EXISTS {SCHEMA}.webhooks (id text PRIMARY KEY, body jsonb)")
        conn.execute(
            f"INSERT INTO {SCHEMA}.webhooks VALUES (%s, %s) ON CONFLICT DO NOTHING",
            [body["id"], Jsonb(body)],
        )
        return app.emit_sync(f"payment:{body['order_id']}", {"status": body["status"]}, connection=conn)


async def wait_until(job_id: int, ready: str) -> Job:
    """Poll the job until it waits for an event (``"event"``) or has finished (``"done"``)."""
    with anyio.fail_after(30):
        while True:
            job = await app.get_job(job_id)
            waits_for_event = job.waiting is not None and job.waiting.kind == "event"
            if (ready == "event" and waits_for_event) or (ready == "done" and job.state.is_terminal):
                return job
            await anyio.sleep(0.05)


def start_afresh() -> None:
    """Drop the example's own schema: the event of an earlier run would be received at once."""
    with psycopg.connect(os.environ["NURSERY_WORKER_DSN"], autocommit=True) as conn:
        conn.execute(f"DROP SCHEMA IF EXISTS {SCHEMA} CASCADE")


async def main() -> None:
    start_afresh()
    await app.migrate()
    job = await fulfil_order.defer(order_id=42, amount=1999, items=["tea", "cups"])
    async with open_worker(app, durable_sleep_threshold=0.5, poll_interval=0.1, promote_interval=0.1):
        waiting = await wait_until(job.id, "event")
        assert waiting.waiting is not None and waiting.progress is not None
        print(
            f"job {job.id} is {waiting.state.value}, waiting for {waiting.waiting.event!r} "
            f"({waiting.progress.done:g}/{waiting.progress.total:g}: {waiting.progress.note})"
        )
        body = {"id": "evt_1", "order_id": 42, "status": "captured"}
        first = await anyio.to_thread.run_sync(payment_webhook, body)
        again = await anyio.to_thread.run_sync(payment_webhook, body)  # providers deliver twice at times
        print(f"webhook delivered: emitted {first}, redelivery emitted {again}")
        done = await wait_until(job.id, "done")
    for line in timeline:
        print(line)
    print("steps:", ", ".join(f"{s.name} {s.state} (runs {s.runs})" for s in await app.get_steps(job.id)))
    print(f"job {done.state.value} after {done.attempt} attempt(s): {done.result}")
    print(f"payment API called {len(charge_calls)} time(s), carrier API {len(carrier_calls)} time(s)")
    await app.aclose()


if __name__ == "__main__":
    anyio.run(main)
