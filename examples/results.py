"""Results: a task's return value is stored on its job; wait_for waits for it (NOTIFY, with polling behind).

NURSERY_WORKER_DSN=postgresql://postgres@127.0.0.1:5432/test python -m examples.results
"""

from __future__ import annotations

import anyio

from nursery_worker import App, JobFailed, open_worker

app = App(schema="example_results")


@app.task
async def resize(image: str, width: int) -> dict[str, object]:
    await anyio.sleep(0.1)
    return {"image": image, "width": width, "url": f"https://cdn.example.com/{width}/{image}"}


@app.task(max_attempts=1)
def parse(text: str) -> int:
    """Plain def tasks return results too (they run in a worker thread)."""
    return int(text)


async def main() -> None:
    await app.migrate()
    async with open_worker(app):
        job = await resize.defer(image="cat.png", width=320)
        done = await app.wait_for(job.id, timeout=30)
        print(f"resize -> {done.result}")
        print(f"parse('42') -> {(await app.wait_for((await parse.defer(text='42')).id, timeout=30)).result}")
        try:
            await app.wait_for((await parse.defer(text="forty-two")).id, timeout=30)
        except JobFailed as exc:
            print(f"parse('forty-two') -> {exc.job.state}: {exc.job.errors[-1].message}")
    await app.aclose()


if __name__ == "__main__":
    anyio.run(main)
