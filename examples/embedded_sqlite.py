"""The embedded engine: jobs in one SQLite file beside your own tables, no database server.

Orders and their receipt jobs are written in one SQLite transaction (commit: both; rollback:
neither), then a worker on the same file sends the receipts and one result is awaited. Runs as is,
on a file in a temporary directory (``NURSERY_WORKER_DSN`` is not read: the DSN is explicit)::

    python -m examples.embedded_sqlite
"""

from __future__ import annotations

import sqlite3
import sys
import tempfile
from pathlib import Path

import anyio

from nursery_worker import App, open_worker


def make_app(path: Path) -> App:
    app = App(dsn=f"sqlite:///{path}", schema="example_embedded_sqlite")

    @app.task(name="send_receipt", max_attempts=3)
    async def send_receipt(order_id: int) -> str:
        await anyio.sleep(0.01)
        return f"receipt #{order_id}"

    return app


def place_order(app: App, conn: sqlite3.Connection, order_id: int, *, fail: bool) -> None:
    """One transaction: the order row and its receipt job are committed, or rolled back, together."""
    try:
        conn.execute("INSERT INTO orders (id) VALUES (?)", (order_id,))
        app.get_task("send_receipt").configure(connection=conn).defer_sync(order_id=order_id)
        if fail:
            raise RuntimeError("payment declined")
        conn.commit()
    except RuntimeError as exc:
        conn.rollback()
        print(f"order {order_id}: {exc}; the order and its job rolled back together")


async def work(app: App) -> None:
    async with open_worker(app, once=True) as worker:
        await worker.wait_stopped()
    (job,) = await app.list_jobs(state="completed")
    done = await app.wait_for(job.id, timeout=5)
    print(f"receipts sent for orders {[j.args['order_id'] for j in await app.list_jobs()]}: {done.result!r}")
    await app.aclose()


def main(backend: str = "asyncio") -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "shop.sqlite3"
        app = make_app(path)
        app.migrate_sync()  # optional with SQLite: the tables are also created on first use
        conn = sqlite3.connect(path)
        try:
            conn.execute("CREATE TABLE orders (id INTEGER PRIMARY KEY)")
            conn.commit()
            place_order(app, conn, 1, fail=False)
            place_order(app, conn, 2, fail=True)
        finally:
            conn.close()
        anyio.run(work, app, backend=backend)


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "asyncio")
