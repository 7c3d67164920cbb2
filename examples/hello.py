"""The quick-start app: two tasks, one async and one sync.

Run it end to end with ``./scripts/demo``, or by hand::

    export NURSERY_WORKER_DSN=postgresql://postgres@127.0.0.1:5432/test
    nursery-worker migrate
    nursery-worker defer examples.hello.greet --args '{"name": "Ada"}'
    nursery-worker run --app examples.hello:app --once
"""

from __future__ import annotations

import hashlib

import anyio

from nursery_worker import App

app = App()  # DSN from $NURSERY_WORKER_DSN (or App(dsn=...)); schema from $NURSERY_WORKER_SCHEMA or "nursery_worker"


@app.task(max_attempts=5, timeout=10)
async def greet(name: str) -> None:
    """An async task: runs on the worker's event loop (trio or asyncio)."""
    await anyio.sleep(0.01)
    print(f"hello, {name}!")


@app.task(queue="default")
def checksum(text: str) -> None:
    """A plain ``def`` task: runs in a worker thread, so blocking work does not stall the loop."""
    print(f"sha256({text!r}) = {hashlib.sha256(text.encode()).hexdigest()[:16]}…")


async def enqueue_some() -> None:
    """Migrate, then enqueue a few jobs (what ``./scripts/demo`` does before running the worker)."""
    await app.migrate()
    await greet.defer(name="Ada")
    await greet.configure(priority=10).defer(name="Grace (high priority, runs first)")
    await app.defer_many([checksum.job(text=word) for word in ("trio", "asyncio", "postgres")])
    await app.aclose()


if __name__ == "__main__":
    anyio.run(enqueue_some)
