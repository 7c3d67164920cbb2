"""Run several worker processes under a supervisor, from Python (``run_supervisor``).

Each child is a fresh interpreter that imports this module as ``examples.supervisor`` and finds
``app`` in it, which is why the program is run with ``python -m`` (a script run by path could not
be imported by the children). The ``if __name__ == "__main__"`` guard keeps the children from
running ``main()`` themselves. From a shell the same is
``nursery-worker run --app examples.supervisor:app --processes 2``.

    NURSERY_WORKER_DSN=postgresql://postgres@127.0.0.1:5432/test python -m examples.supervisor
"""

from __future__ import annotations

import functools
import os

import anyio

from nursery_worker import App, JobState, Supervisor, run_supervisor

app = App(schema="example_supervisor")


@app.task
async def thumbnail(image_id: int) -> None:
    await anyio.sleep(0.05)  # stands in for real work
    print(f"image {image_id} done in worker process {os.getpid()}", flush=True)


async def main() -> None:
    await app.migrate()
    jobs = await app.defer_many([thumbnail.job(image_id=i) for i in range(20)])
    async with anyio.create_task_group() as tg:
        # start() returns once every child is RUNNING; SIGTERM/Ctrl-C would stop them all gracefully.
        supervisor: Supervisor = await tg.start(functools.partial(run_supervisor, app, processes=2, concurrency=5))
        children = supervisor.children()
        for child in children:
            print(f"child {child.index}: pid {child.pid}, {child.state}")
        while True:  # the jobs are done in the children; poll their state
            if [(await app.get_job(job.id)).state for job in jobs] == [JobState.COMPLETED] * len(jobs):
                break
            await anyio.sleep(0.1)
        supervisor.stop()  # graceful: each child drains, then run_supervisor returns
    print(f"worked {len(jobs)} jobs in {len(children)} processes")
    await app.aclose()


if __name__ == "__main__":
    anyio.run(main)
