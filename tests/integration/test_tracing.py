"""OpenTelemetry tracing: a PRODUCER span where a job is deferred, a CONSUMER span where it runs, joined
through the trace context stored on the job, in this process and in another one."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from nursery_worker import App, _tracing
from nursery_worker.testing import drain

from .helpers import Connection, query

pytestmark = pytest.mark.anyio

_EXPORTER = InMemorySpanExporter()


class _Switched(SimpleSpanProcessor):
    """Exports only while a test of this module runs: the provider stays for the process's other tests."""

    enabled = False

    def on_end(self, span: ReadableSpan) -> None:
        if self.enabled:
            super().on_end(span)


_PROCESSOR = _Switched(_EXPORTER)


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    """The in-memory exporter of this process's tracer provider, emptied for each test.

    OpenTelemetry allows one global provider per process: the first test sets it, the others reuse it.
    """
    if not isinstance(trace.get_tracer_provider(), TracerProvider):
        provider = TracerProvider()
        provider.add_span_processor(_PROCESSOR)
        trace.set_tracer_provider(provider)
    _EXPORTER.clear()
    _PROCESSOR.enabled = True
    try:
        yield _EXPORTER
    finally:
        _PROCESSOR.enabled = False
        _EXPORTER.clear()


def _one(spans: InMemorySpanExporter, name: str) -> ReadableSpan:
    found = [s for s in spans.get_finished_spans() if s.name == name]
    assert len(found) == 1, [s.name for s in spans.get_finished_spans()]
    return found[0]


async def test_execution_continues_the_trace_of_defer(app: App, spans: InMemorySpanExporter) -> None:
    """The consumer span of a job is a child of, and links to, its defer's producer span, with the job's attributes."""

    @app.task(name="traced", queue="q1")
    async def traced() -> None:
        pass

    job = await traced.defer()
    assert job.trace_context is not None and "traceparent" in job.trace_context
    await drain(app)
    producer = _one(spans, "defer traced")
    consumer = _one(spans, "process traced")
    assert producer.kind is SpanKind.PRODUCER
    assert consumer.kind is SpanKind.CONSUMER
    assert producer.context is not None and consumer.context is not None and consumer.parent is not None
    assert consumer.context.trace_id == producer.context.trace_id
    assert consumer.parent.span_id == producer.context.span_id
    assert [link.context.span_id for link in consumer.links] == [producer.context.span_id]
    attributes = dict(consumer.attributes or {})
    assert attributes["messaging.system"] == "nursery-worker"
    assert attributes["nursery_worker.job.id"] == job.id
    assert attributes["nursery_worker.task"] == "traced"
    assert attributes["nursery_worker.queue"] == "q1"
    assert attributes["nursery_worker.attempt"] == 1
    assert attributes["nursery_worker.outcome"] == "completed"
    assert consumer.status.status_code is not StatusCode.ERROR
    assert dict(producer.attributes or {})["nursery_worker.job.id"] == job.id


async def test_a_failed_attempt_records_its_exception(app: App, spans: InMemorySpanExporter) -> None:
    """Each failed attempt's consumer span has ERROR status and an exception event with the error's type and message."""

    @app.task(name="broken", max_attempts=2, retry=0)
    async def broken() -> None:
        raise ValueError("no such thing")

    await broken.defer()
    await drain(app)
    consumers = [s for s in spans.get_finished_spans() if s.name == "process broken"]
    assert [dict(s.attributes or {})["nursery_worker.attempt"] for s in consumers] == [1, 2]
    producer = _one(spans, "defer broken")
    assert producer.context is not None
    for span in consumers:
        assert span.status.status_code is StatusCode.ERROR
        assert span.status.description == "ValueError: no such thing"
        (event,) = [e for e in span.events if e.name == "exception"]
        assert dict(event.attributes or {})["exception.type"] == "ValueError"
        assert dict(event.attributes or {})["exception.message"] == "no such thing"
        assert "Traceback" in str(dict(event.attributes or {})["exception.stacktrace"])
        assert span.context is not None and span.context.trace_id == producer.context.trace_id


async def test_defer_many_is_one_producer_span_for_every_job(
    app: App, spans: InMemorySpanExporter, db: Connection
) -> None:
    """defer_many of several tasks records one ``defer_many`` span whose context every inserted job stores."""

    @app.task(name="a")
    async def a() -> None:
        pass

    @app.task(name="b")
    async def b() -> None:
        pass

    jobs = await app.defer_many([a.job(), b.job(), a.job()])
    producer = _one(spans, "defer_many")
    assert producer.context is not None
    assert dict(producer.attributes or {})["messaging.batch.message_count"] == 3
    rows = await query(db, "SELECT trace_context->>'traceparent' FROM jobs ORDER BY id")
    expected = f"00-{producer.context.trace_id:032x}-{producer.context.span_id:016x}"
    assert [r[0].rsplit("-", 1)[0] for r in rows] == [expected] * 3
    assert [j.trace_context["traceparent"] for j in jobs if j.trace_context] == [r[0] for r in rows]


async def test_a_bulk_insert_by_copy_and_a_single_defer_store_the_trace_context(
    app: App, spans: InMemorySpanExporter, db: Connection
) -> None:
    """Both fast insert paths (one job with plain parameters, hundreds through COPY) store the producer's context."""

    @app.task(name="c")
    async def c(n: int) -> None:
        pass

    await c.defer(n=-1)
    await app.defer_many([c.job(n=i) for i in range(300)])
    rows = await query(db, "SELECT count(*) FROM jobs WHERE trace_context ? 'traceparent'")
    assert rows[0][0] == 301


async def test_defer_batch_is_one_producer_span_whose_context_every_job_stores(
    app: App, spans: InMemorySpanExporter, db: Connection
) -> None:
    """``task.defer_batch`` under a recording tracer makes one ``defer <task>`` span, stored on every job."""

    @app.task(name="d")
    async def d(n: int) -> None:
        pass

    ids = await d.defer_batch([{"n": i} for i in range(250)])
    producer = _one(spans, "defer d")
    assert producer.context is not None
    assert dict(producer.attributes or {})["messaging.batch.message_count"] == 250
    rows = await query(db, "SELECT id, trace_context->>'traceparent' FROM jobs ORDER BY id")
    expected = f"00-{producer.context.trace_id:032x}-{producer.context.span_id:016x}"
    assert [r[0] for r in rows] == ids
    assert {r[1].rsplit("-", 1)[0] for r in rows} == {expected}


async def test_without_opentelemetry_jobs_carry_no_context(app: App, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without the OpenTelemetry API installed, defer stores no trace context and jobs run as usual."""
    monkeypatch.setattr(_tracing, "_api", None)
    monkeypatch.setitem(sys.modules, "opentelemetry", None)

    @app.task(name="plain")
    async def plain() -> int:
        return 7

    job = await plain.defer()
    assert job.trace_context is None
    result = await drain(app)
    assert result.attempts == 1
    done = await app.get_job(job.id)
    assert (done.result, done.trace_context) == (7, None)


TRACED_APP = """\
import os

from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult

from nursery_worker import App

app = App(schema={schema!r})


class FileExporter(SpanExporter):
    def export(self, spans):
        with open(os.environ["SPANS_FILE"], "a") as f:
            for s in spans:
                parent = f"{{s.parent.span_id:016x}}" if s.parent else "-"
                job_id = s.attributes.get("nursery_worker.job.id")
                f.write(f"{{s.name}} {{s.context.trace_id:032x}} {{parent}} {{job_id}}\\n")
        return SpanExportResult.SUCCESS


provider = TracerProvider()
provider.add_span_processor(SimpleSpanProcessor(FileExporter()))
trace.set_tracer_provider(provider)


@app.task(name="remote")
async def remote() -> None:
    pass
"""


@pytest.mark.slow
def test_the_trace_crosses_processes(dsn: str, schema: str, tmp_path: Path, spans: InMemorySpanExporter) -> None:
    """A job deferred here and run by ``nursery-worker run --once`` in another process continues this defer's trace."""
    (tmp_path / "tracedapp.py").write_text(TRACED_APP.format(schema=schema))
    app = App(dsn=dsn, schema=schema)
    try:
        app.migrate_sync()
        job = app.job_by_name("remote", {})
        (inserted,) = app.defer_many_sync([job])
    finally:
        app.close()
    producer = _one(spans, "defer remote")
    assert producer.context is not None
    assert inserted.trace_context is not None
    env = {k: v for k, v in os.environ.items() if not k.startswith(("NURSERY_WORKER_", "TRACE"))}
    env.update(NURSERY_WORKER_DSN=dsn, SPANS_FILE=str(tmp_path / "spans.txt"))
    result = subprocess.run(
        [sys.executable, "-m", "nursery_worker", "run", "--app", "tracedapp:app", "--once"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    lines = (tmp_path / "spans.txt").read_text().splitlines()
    assert lines == [
        f"process remote {producer.context.trace_id:032x} {producer.context.span_id:016x} {inserted.id}",
    ]


async def test_a_workflow_graph_defers_while_tracing_records(app: App, spans: InMemorySpanExporter) -> None:
    """With a recording trace, the specs of one defer_many call still depend on each other, not on stray copies."""
    from nursery_worker import JobState

    @app.task
    async def step(n: int) -> None:
        pass

    a = step.job(n=1)
    b = step.job(n=2, depends_on=[a])
    c = step.job(n=3, depends_on=[a, b])
    jobs = await app.defer_many([c, b, a])
    assert [j.state for j in jobs] == [JobState.PENDING, JobState.PENDING, JobState.AVAILABLE]
    assert set((await app.get_job(jobs[0].id)).depends_on) == {jobs[1].id, jobs[2].id}
    assert all(j.trace_context for j in jobs)
