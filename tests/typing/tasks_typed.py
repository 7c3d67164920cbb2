"""Type-checker cases for typed tasks: run by tests/test_typing.py under mypy and basedpyright.

Each ``# type: ignore[...]`` marks a call that must be an error: mypy (``warn_unused_ignores``) and
basedpyright (``reportUnnecessaryTypeIgnoreComment``) both fail the file if the error is gone.
This module is never run; it is only type-checked.
"""

from __future__ import annotations

from typing import Any, assert_type

from nursery_worker import App, Job, JobContext, JobSpec, JobStep, Task, step

app = App(dsn="sqlite:///typing-cases.db")


@app.task
async def add(a: int, b: int = 0) -> int:
    return a + b


@app.task(queue="reports", max_attempts=3)
def render(name: str, *, pages: int) -> str:
    return name * pages


@app.task
async def greet(context: JobContext, name: str) -> None:
    del context, name


@app.task
def double(x: int) -> int:
    return 2 * x


@app.task
def loose(payload: Any, tries: int = 1) -> int:
    """A first parameter typed Any (or object) is not taken for the context: arguments unchecked."""
    return tries


@app.task(queue="loose")
def loose_object(payload: object) -> str:
    return str(payload)


@app.task
async def optional_context(context: JobContext | None, name: str) -> str:
    return name


@app.task
async def no_args() -> dict[str, list[int]]:
    return {}


async def async_side() -> None:
    typed: Task[[int], int] = double
    untyped: Task[[str], int] = double  # type: ignore[assignment]
    del typed, untyped
    job = await add.defer(a=1, b=2)
    assert_type(job, Job[int])
    assert_type(await add.defer(1), Job[int])
    assert_type(await render.defer(name="x", pages=2), Job[str])
    assert_type(await greet.defer(name="ada"), Job[None])
    assert_type(await no_args.defer(), Job[dict[str, list[int]]])
    loose_job: Job[int] = await loose.defer(payload={"a": 1}, tries=2, anything="unchecked")  # mypy: Job[Any]
    object_job: Job[str] = await loose_object.defer(payload=[1])
    del loose_job, object_job
    assert_type(await optional_context.defer(name="ada"), Job[str])
    assert_type(await add.configure(priority=5).defer(a=1), Job[int])
    assert_type((await app.wait_for(job)).result, int)
    assert_type(await app.wait_for(job.id), Job[Any])
    assert_type(add.job(a=1), JobSpec)
    await app.defer_many([add.job(a=1), render.job(name="x", pages=1)])
    assert_type(await add.defer_batch([{"a": 1}, {"a": 2, "b": 3}]), list[int])
    assert_type(await add.configure(queue="q").defer_batch({"a": i} for i in range(3)), list[int])
    await add.defer_batch([1, 2])  # type: ignore[list-item]

    await add.defer(a="x")  # type: ignore[call-overload]
    await add.defer()  # type: ignore[call-overload]
    await add.defer(a=1, c=3)  # type: ignore[call-overload]
    await add.configure(queue="q").defer(b=2)  # type: ignore[call-overload]
    await render.defer(name="x")  # type: ignore[call-arg]
    await render.defer("x", 2)  # type: ignore[call-arg]
    await greet.defer(name="ada", context=None)  # type: ignore[call-overload]
    await optional_context.defer(name=1)  # type: ignore[call-overload]
    add.job(a=None)  # type: ignore[arg-type]
    add.configure().job(b=1)  # type: ignore[call-arg]
    wrong: Job[str] = await add.defer(a=1)  # type: ignore[assignment]
    del wrong


def sync_side() -> None:
    assert_type(add.defer_sync(a=1), Job[int])
    assert_type(render.defer_sync(name="x", pages=1), Job[str])
    assert_type(render.configure(queue="other").defer_sync(name="x", pages=1), Job[str])
    render.defer_sync(name=1, pages=1)  # type: ignore[arg-type]
    add.configure().defer_sync(a=1, b="2")  # type: ignore[call-overload]
    assert_type(add.defer_batch_sync([{"a": 1}]), list[int])


async def direct_calls() -> None:
    assert_type(render("x", pages=2), str)
    assert_type(await add(1, 2), int)
    render("x", 2)  # type: ignore[call-arg]
    await add("1")  # type: ignore[arg-type]


async def charge(order_id: int, *, amount: int) -> str:
    return f"{order_id}:{amount}"


def fee(amount: int) -> int:
    return amount // 10


@step
async def notify(user: str) -> bool:
    return bool(user)


@app.task
async def durable_flow(context: JobContext, order_id: int) -> None:
    """Durable steps keep the function's types: the awaited result of an async one, the return of a plain one."""
    assert_type(await context.step("charge", charge, order_id, amount=5), str)
    assert_type(await context.step("fee", fee, 50), int)
    assert_type(await notify("ana"), bool)
    await context.step("charge-2", charge, "x", amount=5)  # type: ignore[arg-type]
    await context.sleep(5)
    await context.progress(1, 10, note="one")
    assert_type(await context.wait_for_event("paid", timeout=60), Any)
    assert_type(await app.emit("paid", {"ok": True}), bool)
    assert_type(await app.get_steps(1), list[JobStep])
