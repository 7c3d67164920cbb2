"""examples/django_project on PostgreSQL: a job enqueued on Django's connection inside
``transaction.atomic()`` commits and rolls back with the ORM's writes, and the worker runs it."""

from __future__ import annotations

import os
import sys
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import anyio.to_thread
import psycopg
import pytest
from psycopg import sql

from nursery_worker import App
from nursery_worker.testing import drain, isolated_schema

from ..conftest import TEST_DSN

T = TypeVar("T")
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def django_schema() -> Iterator[str]:
    """Django set up once per process on the example's settings, its tables in a schema of their own."""
    import django

    name = f"t_dj_{uuid.uuid4().hex[:16]}"
    with psycopg.connect(TEST_DSN, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(name)))
    # The settings read these once, at django.setup(); restored so that no other test sees them.
    saved = {k: os.environ.get(k) for k in ("DJANGO_SETTINGS_MODULE", "NURSERY_WORKER_DSN", "NURSERY_WORKER_SCHEMA")}
    os.environ.update(
        DJANGO_SETTINGS_MODULE="examples.django_project.settings",
        NURSERY_WORKER_DSN=TEST_DSN,
        NURSERY_WORKER_SCHEMA=name,
    )
    try:
        django.setup()
        from django.conf import settings

        assert name == settings.SCHEMA, "Django was set up before this module, with other settings"
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    from django.core.management import call_command
    from django.db import connections

    call_command("migrate", "shop", verbosity=0)
    connections.close_all()
    yield name
    with psycopg.connect(TEST_DSN, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(name)))


async def orm(func: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Run ORM code in a thread (Django refuses it on an event loop), closing that thread's connection."""

    def call() -> T:
        from django.db import connections

        try:
            return func(*args, **kwargs)
        finally:
            connections.close_all()

    return await anyio.to_thread.run_sync(call)


@pytest.fixture
async def jobs(django_schema: str) -> AsyncIterator[App]:
    """The example's App on a fresh jobs schema; the shop's orders emptied before the test."""
    from examples.django_project.shop.models import Order
    from examples.django_project.shop.tasks import app

    await orm(lambda: Order.objects.all().delete())
    async with isolated_schema(app) as isolated:
        yield isolated


def order_items(**filters: Any) -> list[str]:
    from examples.django_project.shop.models import Order

    return [o.item for o in Order.objects.filter(**filters).order_by("pk")]


@pytest.mark.anyio
async def test_order_and_its_job_commit_together(jobs: App) -> None:
    """A committed atomic block keeps both the ORM's order and the receipt job it enqueued."""
    from examples.django_project.shop.tasks import place_order, send_receipt

    order = await orm(place_order, "tea")
    assert await orm(order_items) == ["tea"]
    enqueued = await jobs.list_jobs(task=send_receipt.name)
    assert [job.args for job in enqueued] == [{"order_id": order.pk}]


@pytest.mark.anyio
async def test_order_and_its_job_roll_back_together(jobs: App) -> None:
    """An atomic block that raises keeps neither the order nor its job."""
    from examples.django_project.shop.tasks import PaymentDeclined, place_order

    with pytest.raises(PaymentDeclined, match="declined"):
        await orm(place_order, "cake", decline=True)
    assert await orm(order_items) == []
    assert await jobs.list_jobs() == []


@pytest.mark.anyio
async def test_worker_runs_the_job_enqueued_in_the_transaction(jobs: App) -> None:
    """The worker runs the committed job, and the task's ORM write lands."""
    from examples.django_project.shop.tasks import place_order

    order = await orm(place_order, "tea")
    result = await drain(jobs)
    assert [job.result for job in result.completed] == [f"receipt for order {order.pk}"]
    assert await orm(order_items, receipt_sent=True) == ["tea"]


#: The two ways to start the worker: the plain CLI on the app module that sets Django up, and the
#: management command.
WORKER_COMMANDS = {
    "cli": ["-m", "nursery_worker", "run"],
    "manage.py": ["examples/django_project/manage.py", "nursery_worker", "run"],
}


@pytest.mark.slow
@pytest.mark.anyio
@pytest.mark.parametrize("how", sorted(WORKER_COMMANDS))
async def test_worker_started_from_the_command_line_runs_the_orm_task(django_schema: str, how: str) -> None:
    """`nursery-worker run` and `manage.py nursery_worker run` on examples.django_project.jobs:app run the job."""
    from examples.django_project.shop.models import Order
    from examples.django_project.shop.tasks import app, place_order

    # The command line takes the app's schema from the settings: the jobs go where the Django tables are.
    assert app.schema == django_schema
    await orm(lambda: Order.objects.all().delete())
    try:
        await app.migrate()
        await orm(place_order, "tea")
    finally:
        await app.aclose()
    env = {**os.environ, "NURSERY_WORKER_DSN": TEST_DSN, "NURSERY_WORKER_SCHEMA": django_schema}
    env.pop("DJANGO_SETTINGS_MODULE", None)
    command = [sys.executable, *WORKER_COMMANDS[how], "--app", "examples.django_project.jobs:app"]
    done = await anyio.run_process([*command, "--queues", "receipts", "--once"], cwd=ROOT, env=env, check=False)
    assert done.returncode == 0, done.stderr.decode()
    assert "processed 1 job(s): 1 completed" in done.stdout.decode()
    assert await orm(order_items, receipt_sent=True) == ["tea"]
