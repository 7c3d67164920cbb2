"""The dashboard mounted in your own ASGI app under a prefix, with a worker in the same process.

Needs the extra: pip install 'nursery-worker[web]'.

    NURSERY_WORKER_DSN=postgresql://postgres@127.0.0.1:5432/test python -m examples.dashboard
        runs a few jobs (one fails), then reads the dashboard's pages in-process and prints them;
    ... python -m examples.dashboard --serve
        serves the host app on http://127.0.0.1:8765/queue/ (read-write, token "example-token")
        with Hypercorn, until Ctrl-C.

Standalone, without a host app: nursery-worker web --app examples.dashboard:app
"""

from __future__ import annotations

import contextlib
import sys

import anyio
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Mount, Route

from nursery_worker import App, JobFailed, open_worker
from nursery_worker.web import create_web_app

app = App(schema="example_dashboard")


@app.task(queue="emails", max_attempts=1)
async def send(to: str, password: str = "") -> None:
    if "@" not in to:
        raise ValueError(f"not an address: {to!r}")


def hide_secrets(task: str, value: object) -> object:
    """The redaction hook: no password reaches a page."""
    if isinstance(value, dict):
        return {k: "***" if "password" in k else v for k, v in value.items()}
    return value


async def home(request: object) -> PlainTextResponse:
    return PlainTextResponse("the host app; the dashboard is under /queue/")


host = Starlette(
    routes=[
        Route("/", home),
        # No lifespan needed: the dashboard opens the app's engine on its first request.
        Mount("/queue", app=create_web_app(app, read_only=False, token="example-token", redact=hide_secrets)),
    ]
)


async def main() -> None:
    import httpx

    await app.migrate()
    async with open_worker(app, queues=["emails"]):
        await send.defer(to="ada@example.com", password="s3cret")
        failed = await send.defer(to="nobody", password="s3cret")
        with contextlib.suppress(JobFailed):  # it fails, as planned
            await app.wait_for(failed.id, timeout=30)
    transport = httpx.ASGITransport(app=host)
    async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1:8765") as client:
        overview = await client.get("/queue/api/overview")
        page = await client.get(f"/queue/jobs/{failed.id}")
        print("overview:", overview.status_code, [q["name"] for q in overview.json()["counts"]["queues"]])
        print("job page:", page.status_code, "ValueError" in page.text, "s3cret" in page.text)
    await app.aclose()


def serve() -> None:
    from hypercorn.asyncio import serve as hypercorn_serve
    from hypercorn.config import Config

    config = Config()
    config.bind = ["127.0.0.1:8765"]
    print("http://127.0.0.1:8765/queue/ (token: example-token)")
    anyio.run(hypercorn_serve, host, config)


if __name__ == "__main__":
    serve() if "--serve" in sys.argv else anyio.run(main)
