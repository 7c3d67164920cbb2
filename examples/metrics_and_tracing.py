"""Prometheus metrics and health endpoints of a worker, and the trace a job leaves behind.

    NURSERY_WORKER_DSN=postgresql://postgres@127.0.0.1:5432/test python -m examples.metrics_and_tracing

Needs the extras (from a checkout: the package is not on PyPI yet):
    pip install './nursery-worker[metrics,otel]' opentelemetry-sdk
"""

from __future__ import annotations

import urllib.request

import anyio
import anyio.to_thread
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from nursery_worker import App, open_worker, serve_metrics

app = App(schema="example_metrics")
spans = InMemorySpanExporter()
provider = TracerProvider()
provider.add_span_processor(SimpleSpanProcessor(spans))
trace.set_tracer_provider(provider)


@app.task(queue="images")
async def thumbnail(image: str) -> str:
    await anyio.sleep(0.01)
    return f"thumb-{image}"


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


async def main() -> None:
    await app.migrate()
    async with open_worker(app, queues=["images"]) as worker, anyio.create_task_group() as tg:
        port = await tg.start(serve_metrics, worker, 0)
        jobs = [await thumbnail.defer(image=f"{i}.png") for i in range(5)]
        for job in jobs:
            await app.wait_for(job.id, timeout=30)
        base = f"http://127.0.0.1:{port}"
        status, _ = await anyio.to_thread.run_sync(_get, base + "/readyz")
        print(f"/readyz -> {status}")
        _, text = await anyio.to_thread.run_sync(_get, base + "/metrics")
        for line in text.splitlines():
            if line.startswith("nursery_worker_jobs_completed_total{"):
                print(line)
        tg.cancel_scope.cancel()
    producer = [s for s in spans.get_finished_spans() if s.name.startswith("defer")]
    consumer = [s for s in spans.get_finished_spans() if s.name.startswith("process")]
    linked = sum(
        1 for c in consumer if c.parent is not None and c.parent.trace_id in {p.context.trace_id for p in producer}
    )
    print(f"spans: {len(producer)} defer, {len(consumer)} process, {linked} in the trace of their defer")
    await app.aclose()


if __name__ == "__main__":
    anyio.run(main)
