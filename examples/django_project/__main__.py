"""Run the example end to end: create the tables, place two orders (one declined), work the jobs.

NURSERY_WORKER_DSN=postgresql://postgres@127.0.0.1:5432/test python -m examples.django_project
"""

from __future__ import annotations

import os

import django

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "examples.django_project.settings")
django.setup()

from django.core.management import call_command  # noqa: E402 - after django.setup()

from .shop.models import Order  # noqa: E402
from .shop.tasks import PaymentDeclined, app, place_order  # noqa: E402


def main() -> None:
    app.migrate_sync()  # nursery-worker's tables (and the schema the settings put Django's tables in)
    call_command("migrate", "shop", verbosity=0)
    place_order("tea")
    try:
        place_order("cake", decline=True)
    except PaymentDeclined as exc:
        print(exc)
    print("orders:", [o.item for o in Order.objects.order_by("pk")])
    app.close()
    call_command("nursery_worker", "run", "--app", "examples.django_project.jobs:app", "--queues", "receipts", "--once")
    print("receipts sent:", [o.item for o in Order.objects.filter(receipt_sent=True).order_by("pk")])


if __name__ == "__main__":
    main()
