"""The shop's tasks, and the one place orders are placed (the ORM write and its job, together)."""

from __future__ import annotations

import psycopg
from django.conf import settings
from django.db import close_old_connections, connection, transaction

from nursery_worker import App

from .models import Order

app = App(dsn=settings.NURSERY_WORKER_DSN, schema=settings.NURSERY_WORKER_SCHEMA)


class PaymentDeclined(Exception):
    """The order was refused: nothing it wrote, its job included, is kept."""


def django_connection() -> psycopg.Connection[object]:
    """The psycopg connection under Django's default database connection (Django 4.2+, psycopg 3).

    Inside ``transaction.atomic()``, a job enqueued on it is part of the ORM's transaction.
    """
    connection.ensure_connection()
    conn = connection.connection
    if not isinstance(conn, psycopg.Connection):
        raise TypeError(f"Django's connection is {type(conn).__name__}, not psycopg 3's: use Django 4.2+ on psycopg 3")
    return conn


@app.task(queue="receipts", max_attempts=5)
def send_receipt(order_id: int) -> str:
    """Mark the order's receipt sent (a plain def: it runs in a worker thread, as the ORM wants)."""
    try:
        updated = Order.objects.filter(pk=order_id).update(receipt_sent=True)
        return f"receipt for order {order_id}" if updated else f"order {order_id} is gone"
    finally:
        close_old_connections()  # this thread's connection, as Django does at the end of a request


def place_order(item: str, *, decline: bool = False) -> Order:
    """Create an order and enqueue its receipt in one transaction: both are kept, or neither.

    Raises:
        PaymentDeclined: *decline* is true; the order and its job are rolled back.
    """
    with transaction.atomic():
        order = Order.objects.create(item=item)
        send_receipt.configure(connection=django_connection()).defer_sync(order_id=order.pk)
        if decline:
            raise PaymentDeclined(f"payment for {item!r} declined: the order and its job roll back together")
    return order
