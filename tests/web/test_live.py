"""Live updates: the event stream sends a change event when the engine notifies (LISTEN/NOTIFY on
PostgreSQL, the events table on SQLite), and the page falls back to polling when streams run out."""

from __future__ import annotations

import anyio
import httpx
import pytest
from starlette.requests import Request

from nursery_worker import App
from nursery_worker._admin import Admin
from nursery_worker.web._live import StreamCounter, change_events
from nursery_worker.web._request import PageRequest, WebOptions

pytestmark = pytest.mark.anyio


async def test_a_deferred_job_sends_a_change_event(migrated: App) -> None:
    """After the stream is ready, deferring a job makes it send one change event."""

    @migrated.task(name="web.ping")
    async def ping() -> None: ...

    request = Request({"type": "http", "method": "GET", "path": "/events", "headers": [], "query_string": b""})
    req = PageRequest(request=request, app=migrated, admin=Admin(migrated), options=WebOptions(), root="")
    counter = StreamCounter(1)
    assert counter.try_acquire()
    stream = change_events(req, counter)
    try:
        with anyio.fail_after(20):
            assert (await stream.__anext__()).startswith("retry:")
            assert (await stream.__anext__()).startswith("event: ready")
            await ping.defer()
            event = await stream.__anext__()
            while event.startswith(":"):
                event = await stream.__anext__()
        assert event.startswith("event: change") and "available" in event
    finally:
        await stream.aclose()
    assert counter.open == 0


async def test_streams_beyond_the_limit_are_refused_so_pages_poll(client_for: object) -> None:
    """With no stream slots left, /events answers 503 (the page's script then polls)."""
    async with client_for(live_connections=0) as c:  # type: ignore[operator]
        response: httpx.Response = await c.get("/events")
    assert response.status_code == 503


async def test_live_pages_carry_the_live_region_and_script(client: httpx.AsyncClient) -> None:
    """A live page marks its live region and loads the live-update script (no inline script)."""
    html = (await client.get("/")).text
    assert 'id="live" data-live="1"' in html
    assert 'src="/static/live.js"' in html
    assert "<script>" not in html
