"""Typed tasks: type checkers check defer's arguments against the function, and results carry its type.

NURSERY_WORKER_DSN=postgresql://postgres@127.0.0.1:5432/test python -m examples.typed_tasks

Type-check it too (the test suite does): ``mypy --strict examples/typed_tasks.py`` and
``basedpyright examples/typed_tasks.py``. The lines marked ``# type: ignore`` are the mistakes a
checker catches before anything runs.
"""

from __future__ import annotations

import anyio

from nursery_worker import App, Job, JobContext, open_worker

app = App(schema="example_typed")


@app.task
async def add(a: int, b: int = 0) -> int:
    return a + b


@app.task
def word_count(text: str) -> dict[str, int]:
    """A plain def task: the result type is the function's return type."""
    counts: dict[str, int] = {}
    for word in text.split():
        counts[word] = counts.get(word, 0) + 1
    return counts


@app.task
async def greet(context: JobContext, name: str) -> str:
    """The context comes first: the worker passes it, so ``defer`` takes ``name`` only."""
    return f"hello {name} (job {context.job_id})"


async def main() -> None:
    async with app:  # opens the engine now: a wrong DSN fails here, not at the first defer
        await app.migrate()
        sum_job: Job[int] = await add.defer(2, b=3)  # positional arguments are stored by name
        count_job = await word_count.configure(priority=5).defer(text="to be or not to be")
        greet_job = await greet.defer(name="ada")
        async with open_worker(app):
            total: int = (await app.wait_for(sum_job, timeout=30)).result
            counts: dict[str, int] = (await app.wait_for(count_job, timeout=30)).result
            hello: str = (await app.wait_for(greet_job, timeout=30)).result
        print(f"add(2, b=3) -> {total}; word_count -> {sorted(counts.items())}; greet -> {hello.split(' (')[0]!r}")

        # A checker refuses this call; at run time too, before anything is written.
        try:
            await add.defer(b=1)  # type: ignore[call-overload]
        except TypeError as exc:
            print(f"add.defer(b=1) -> TypeError: {exc}".split(" (signature")[0])


async def mistakes() -> None:
    """Never called: calls only a type checker refuses (a wrong type is still valid JSON at run time)."""
    await add.defer(a="two")  # type: ignore[call-overload]
    await greet.defer(name=42)  # type: ignore[call-overload]
    await greet.defer(name="ada", extra=1)  # type: ignore[call-overload]


if __name__ == "__main__":
    anyio.run(main)
