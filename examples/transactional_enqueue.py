"""Enqueue inside your own transaction: the job exists only if your transaction commits.

NURSERY_WORKER_DSN=postgresql://postgres@127.0.0.1:5432/test python -m examples.transactional_enqueue
"""

from __future__ import annotations

import os

import psycopg

from nursery_worker import App

app = App(schema="example_transactional")


@app.task
async def send_receipt(order_id: int) -> None:
    print(f"receipt for order {order_id}")


def place_order(conn: psycopg.Connection, order_id: int, fail: bool) -> None:
    with conn.transaction():
        conn.execute("CREATE TEMP TABLE IF NOT EXISTS orders (id int)")
        conn.execute("INSERT INTO orders VALUES (%s)", [order_id])
        send_receipt.configure(connection=conn).defer_sync(order_id=order_id)
        if fail:
            raise RuntimeError("payment declined: the order and its job roll back together")


def main() -> None:
    app.migrate_sync()
    with psycopg.connect(os.environ["NURSERY_WORKER_DSN"]) as conn:
        place_order(conn, 1, fail=False)
        try:
            place_order(conn, 2, fail=True)
        except RuntimeError as exc:
            print(f"order 2: {exc}")
        rows = conn.execute(
            "SELECT args->>'order_id' FROM example_transactional.jobs WHERE task = %s", [send_receipt.name]
        ).fetchall()
    print("receipt jobs enqueued for orders:", sorted({r[0] for r in rows}))
    app.close()


if __name__ == "__main__":
    main()
