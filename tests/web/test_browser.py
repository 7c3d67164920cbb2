"""A real browser (Debian's headless Chromium, driven by Playwright) on a served dashboard with a
live worker: it logs in, opens the overview, follows the link to a failed job, retries it, and sees
it complete through the live update. It also writes a screenshot of each page to docs/screenshots/.

Skipped when ``/usr/bin/chromium`` or the ``playwright`` package is missing (``.ci/run`` installs
both; Playwright never downloads a browser here).
"""

from __future__ import annotations

import os
import socket
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest

from nursery_worker import App, JobState, open_worker
from nursery_worker.testing import drain

from ..conftest import TEST_DSN

CHROMIUM = "/usr/bin/chromium"
SHOTS = Path(__file__).resolve().parents[2] / "docs" / "screenshots"
TOKEN = "browser-test-token"

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not os.path.exists(CHROMIUM), reason="Debian's chromium is not installed"),
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def schema() -> Iterator[str]:
    """A fresh PostgreSQL schema, dropped after the test."""
    import psycopg

    name = f"t_web_{uuid.uuid4().hex[:12]}"
    yield name
    with psycopg.connect(TEST_DSN, autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')


def test_browser_retries_a_failed_job_and_sees_it_complete_live(schema: str) -> None:
    """The browser follows the overview's link to a failed job, retries it, and the page turns completed live."""
    sync_api = pytest.importorskip("playwright.sync_api")
    from hypercorn.asyncio import serve
    from hypercorn.config import Config

    from nursery_worker.web import create_web_app

    app = App(dsn=TEST_DSN, schema=schema)
    broken = {"on": True}

    @app.task(queue="emails", max_attempts=1, name="send_welcome_email")
    async def send_welcome_email(to: str, api_key: str) -> None:
        if broken["on"]:
            raise ConnectionError(f"mail provider refused {to}")

    @app.task(queue="reports", name="build_report")
    async def build_report(day: str) -> None: ...

    async def setup() -> int:
        await app.migrate()
        job = await send_welcome_email.defer(to="ada@example.com", api_key="sk-live-123")
        await drain(app, queues="emails")
        for day in ("2026-12-01", "2026-12-02"):
            await build_report.configure(delay=3600).defer(day=day)
        await app.pause_queue("emails")  # the retried job waits until the page is live
        await app.aclose()
        return job.id

    job_id = anyio.run(setup)
    broken["on"] = False
    port = _free_port()
    stop = threading.Event()
    ready = threading.Event()

    def redact(task: str, value: object) -> object:
        return {k: "***" if k == "api_key" else v for k, v in value.items()} if isinstance(value, dict) else value

    web = create_web_app(app, read_only=False, token=TOKEN, redact=redact)

    async def serve_all() -> None:
        config = Config()
        config.bind = [f"127.0.0.1:{port}"]
        config.accesslog = None
        finished = anyio.Event()  # Hypercorn's shutdown trigger (no signal handlers off the main thread)
        async with anyio.create_task_group() as tg:
            tg.start_soon(lambda: serve(web, config, shutdown_trigger=finished.wait))
            async with open_worker(app, queues=["emails"]):
                ready.set()
                await anyio.to_thread.run_sync(stop.wait)
            finished.set()

    server = threading.Thread(target=anyio.run, args=(serve_all,), daemon=True)
    server.start()
    assert ready.wait(30)
    base = f"http://127.0.0.1:{port}"
    SHOTS.mkdir(parents=True, exist_ok=True)
    try:
        with sync_api.sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            errors: list[str] = []
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.goto(f"{base}/login")
            page.fill("input[name=token]", TOKEN)
            page.click("button[type=submit]")
            page.goto(f"{base}/")
            page.screenshot(path=str(SHOTS / "overview.png"), full_page=True)
            page.click(f"#recent-failures a[href='/jobs/{job_id}']")
            page.wait_for_url(f"{base}/jobs/{job_id}")
            assert "sk-live-123" not in page.content()
            page.screenshot(path=str(SHOTS / "job-failed.png"), full_page=True)
            page.click("#job-actions button:has-text('Retry')")
            page.wait_for_selector("#job-state:has-text('available')")
            page.wait_for_selector("#live-status[data-state=live]")

            async def resume() -> None:
                async with App(dsn=TEST_DSN, schema=schema) as admin:
                    await admin.resume_queue("emails")

            # Playwright's sync API runs a loop on this thread: the resume runs on its own.
            resumer = threading.Thread(target=anyio.run, args=(resume,))
            resumer.start()
            resumer.join(30)
            page.wait_for_selector("#job-state:has-text('completed')", timeout=20_000)
            page.screenshot(path=str(SHOTS / "job.png"), full_page=True)
            for path, name in (("/jobs", "jobs"), ("/queues", "queues"), ("/queues/reports", "queue")):
                page.goto(base + path)
                page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)
            # A bulk action: the count preview, the confirmation (a dialog), the result in place.
            page.on("dialog", lambda dialog: dialog.accept())
            page.goto(f"{base}/jobs/bulk?action=cancel&queue=reports")
            assert "2 jobs match" in page.inner_text("#bulk-preview")
            page.click("#bulk-confirm button")
            page.wait_for_selector("#bulk-result .flash:has-text('cancelled 2 of 2')")
            page.screenshot(path=str(SHOTS / "bulk.png"), full_page=True)
            others = page.eval_on_selector_all("header nav a", "links => links.map(a => a.getAttribute('href'))")
            for href in others:
                name = href.strip("/").replace("/", "-") or "overview"
                if not (SHOTS / f"{name}.png").exists() or name not in ("overview", "jobs", "queues"):
                    page.goto(base + href)
                    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)
            browser.close()
        assert not [e for e in errors if "Content Security Policy" in e], errors
    finally:
        stop.set()
        server.join(30)

    async def check() -> JobState:
        async with App(dsn=TEST_DSN, schema=schema) as reader:
            return (await reader.get_job(job_id)).state

    assert anyio.run(check) is JobState.COMPLETED
